"""Tiny text-to-image diffusion benchmark (prints numbers; not a test). `make bench-diffusion`.

The tiny pipeline at 64 px, batch 4, on the CPU, all in this process, measured in alternating rounds (the median
is reported, so a neighbour's burst on a shared machine does not decide the result):
1. Our Lightning module (trainer.fit: AdamW, LR warmup, grad clipping, EMA, min-SNR) against a plain PyTorch +
   diffusers loop doing the same math on the same batches: steps/s and peak RSS (target ratio >= 0.95).
2. The Lightning module with cached VAE latents against on-the-fly encoding (target >= 1.3x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import lightning as L
import psutil
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler

from pantheon.callbacks.ema import EMA
from pantheon.data.captioned_images import CaptionedImagesDataModule, ensure_shapes_dataset
from pantheon.models.diffusion.losses import denoising_loss, min_snr_weights, target_for
from pantheon.models.diffusion.module import DiffusionModule
from pantheon.models.diffusion.tiny import ensure_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "data" / "flowers" / "oxford102_128"
HPARAMS = {"lr": 1e-4, "lr_warmup_steps": 20, "snr_gamma": 5.0, "caption_dropout": 0.1}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms by a thread)."""

    def __enter__(self) -> PeakRSS:
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def datamodule(args, cache_latents: bool = False) -> CaptionedImagesDataModule:
    dm = CaptionedImagesDataModule(data_dir=str(args.data_dir), resolution=args.resolution, batch_size=args.batch_size,
                                   max_samples=args.max_samples, cache_latents=cache_latents)  # fmt: skip
    dm.setup()
    return dm


def plain_loop(args, pipeline: Path) -> tuple[float, float]:
    """The baseline: DiffusionModule's training step + configure_optimizers + EMA, written as a bare loop over the
    same diffusers parts (the module only supplies the loaded parts; no Lightning code runs)."""
    torch.manual_seed(0)
    parts = DiffusionModule(str(pipeline), **HPARAMS)
    unet, vae, text_encoder = parts.unet, parts.frozen.vae, parts.frozen.text_encoder
    tokenizer, scheduler = parts.tokenizer, parts.noise_scheduler
    optimizer = torch.optim.AdamW(unet.parameters(), lr=HPARAMS["lr"], weight_decay=1e-2)
    lr_schedule = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=HPARAMS["lr_warmup_steps"]
    )
    ema = [p.detach().float().clone() for p in unet.parameters()]
    dm = datamodule(args)
    loader = dm.train_dataloader()
    batches = (batch for _ in iter(int, 1) for batch in loader)  # epochs without end, like the trainer's
    with PeakRSS() as rss:
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                start = time.perf_counter()
            batch = dm.on_after_batch_transfer(next(batches), 0)  # the random flip and caption choice
            with torch.no_grad():
                moments = vae.encode(batch["pixel_values"]).latent_dist.parameters
                latents = DiagonalGaussianDistribution(moments).sample() * vae.config.scaling_factor
                drop = torch.rand(len(batch["text"])) < HPARAMS["caption_dropout"]
                captions = ["" if d else c for d, c in zip(drop.tolist(), batch["text"], strict=True)]
                ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids  # fmt: skip
                context = text_encoder(ids)[0]
            noise = torch.randn(latents.shape)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample
            target = target_for(scheduler, latents, noise, timesteps)
            weights = min_snr_weights(scheduler.alphas_cumprod, timesteps, HPARAMS["snr_gamma"], "epsilon")
            loss = denoising_loss(prediction, target, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            with torch.no_grad():
                decay = min(0.999, (1 + i) / (10 + i))  # the EMA callback's warmup
                torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1 - decay)
        elapsed = time.perf_counter() - start
    return args.steps / elapsed, rss.mib


class StepTimer(L.Callback):
    """Wall time from the first batch after warmup to the last one (data loading included, like the loop)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and not self.start:
            self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.end = time.perf_counter()


def lightning_run(args, pipeline: Path, cache_latents: bool) -> tuple[float, float, float]:
    """trainer.fit of DiffusionModule: steps/s after warmup, peak RSS, and the one-time latent caching seconds."""
    torch.manual_seed(0)
    module = DiffusionModule(str(pipeline), **HPARAMS)
    dm = datamodule(args, cache_latents)
    timer, caching = StepTimer(args.warmup), [0.0]
    cache = dm.cache_latents_with

    def timed_cache(encode) -> None:
        started = time.perf_counter()
        cache(encode)
        caching[0] = time.perf_counter() - started

    dm.cache_latents_with = timed_cache
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            default_root_dir=root, accelerator="cpu", max_steps=args.warmup + args.steps, gradient_clip_val=1.0,
            callbacks=[EMA(decay=0.999), timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        module.on_fit_end = lambda: None  # measure training, not the end-of-fit export
        with PeakRSS() as rss:
            trainer.fit(module, datamodule=dm)
    return args.steps / (timer.end - timer.start), rss.mib, caching[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="imagefolder (default: shared flowers, else shapes)"
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-samples", type=int, default=512, help="images used (and cached)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a busy machine)"
    )
    parser.add_argument(
        "--cache", type=Path, default=ROOT / ".cache", help="where the tiny pipeline is built"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir is None:
        args.data_dir = (
            FLOWERS
            if (FLOWERS / "metadata.jsonl").is_file()
            else ensure_shapes_dataset(args.cache / "shapes")
        )
    pipeline = ensure_tiny_pipeline(args.cache / "tiny-sd")
    print(f"tiny pipeline {pipeline}, data {args.data_dir}, {args.resolution} px, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds, {torch.get_num_threads()} threads")  # fmt: skip

    results: dict[str, list[tuple]] = {"plain": [], "lightning": [], "cached": []}
    runs = {
        "plain": lambda: plain_loop(args, pipeline),
        "lightning": lambda: lightning_run(args, pipeline, cache_latents=False),
        "cached": lambda: lightning_run(args, pipeline, cache_latents=True),
    }
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # no run always goes first
        for key in order:
            results[key].append(runs[key]())
        print(
            f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} steps/s" for k, v in results.items()),
            flush=True,
        )

    load = os.getloadavg()[0]
    if load > os.cpu_count():
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: other processes share the CPU; "
              "--threads 1 gives steadier numbers")  # fmt: skip
    speed = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    rss = {k: max(r[1] for r in v) for k, v in results.items()}
    caching = statistics.median(r[2] for r in results["cached"])
    print(f"\n{'':34}{'steps/s':>10}{'peak RSS MiB':>14}")
    for key, label in [("plain", "plain PyTorch + diffusers loop"), ("lightning", "Lightning DiffusionModule"),
                       ("cached", "Lightning, cached latents")]:  # fmt: skip
        print(f"{label:34}{speed[key]:>10.2f}{rss[key]:>14.0f}")
    ratio, cache_gain = speed["lightning"] / speed["plain"], speed["cached"] / speed["lightning"]
    print(f"\nLightning / plain: {ratio:.3f} (target >= 0.95) {'OK' if ratio >= 0.95 else 'BELOW TARGET'}")
    print(f"cached / on-the-fly: {cache_gain:.2f}x (target >= 1.3x) {'OK' if cache_gain >= 1.3 else 'BELOW TARGET'}; "
          f"caching {args.max_samples} images x 2 flips took {caching:.1f} s once")  # fmt: skip


if __name__ == "__main__":
    main()
