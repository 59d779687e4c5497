"""GAN benchmark (prints numbers; not a test). `make bench-gan`.

1. Throughput: steps/s of the Lightning module against a plain PyTorch loop of the same nets, loss, optimizers
   and batch, in this process (ratio target >= 0.95).
2. Quality: one Lightning run on full MNIST under a wall-clock budget, validated every 250 batches of 64; prints
   class_acc and fid_mnist at each budget mark (target: class_acc >= 0.97 within 10 min on 2 CPU cores), writes the run's
   metrics.csv and sample grids, and (with --docs) the curves and final grid under docs/.
3. Peak RSS of the process.
4. Step costs (--step-costs): what freezing D during G's backward saves (the module's toggle_optimizer), and what
   one preemption agreement (a 2-process gloo all-reduce of a flag plus its host sync) costs against a batch.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from pantheon.data.mnist import MNISTDataModule
from pantheon.models.gan.losses import LOSSES, mode_seeking
from pantheon.models.gan.module import ConditionalGAN
from pantheon.models.gan.networks import build_networks

ROOT = Path(__file__).resolve().parents[1]


def mnist_gan_recipe() -> dict:
    """The mnist_gan experiment's loss and optimizer settings, read from its config (what `make train` trains)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        model = compose("train", overrides=["experiment=mnist_gan"]).model
    return {
        "loss": model.loss,
        "lr": model.lr,
        "betas": tuple(model.betas),
        "mode_seeking_weight": model.mode_seeking_weight,
    }


def plain_pytorch_steps_per_s(
    loader, arch: str, recipe: dict, steps: int, warmup: int, freeze_d: bool = True
) -> float:
    """The baseline: the same D-then-G step (label pairing, mode seeking, D frozen during G's backward, as
    the module's toggle_optimizer does) written as a bare loop; freeze_d=False computes D's unused gradients."""
    torch.manual_seed(0)
    generator, discriminator = build_networks(arch, 100, 10)
    loss = LOSSES[recipe["loss"]]
    opt_g = torch.optim.Adam(generator.parameters(), lr=recipe["lr"], betas=recipe["betas"])
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=recipe["lr"], betas=recipe["betas"])
    batches = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        real, labels = next(batches)
        pairs = len(labels) // 2
        fake_labels = torch.cat([labels[: len(labels) - pairs], labels[:pairs]])
        noise = torch.randn(len(fake_labels), 100)
        fake = generator(noise, fake_labels)
        d_loss = loss.discriminator(discriminator(real, labels), discriminator(fake.detach(), fake_labels))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        discriminator.requires_grad_(not freeze_d)
        g_loss = loss.generator(discriminator(fake, fake_labels))
        g_loss = g_loss + recipe["mode_seeking_weight"] * mode_seeking(fake, noise, pairs)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        discriminator.requires_grad_(True)
    return steps / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Times training batches after a warmup, excluding Lightning's setup and teardown."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.timed = warmup, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.timed = batch_idx - self.warmup + 1
            self.elapsed = time.perf_counter() - self.start


def lightning_steps_per_s(datamodule, arch: str, recipe: dict, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2 * (warmup + steps),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(ConditionalGAN(arch=arch, **recipe), datamodule=datamodule)
    return timer.timed / timer.elapsed


class QualityLog(L.Callback):
    """Appends (elapsed s, epoch, class_acc, fid_mnist) to a CSV after every validation (metrics are logged by then)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = (
            time.perf_counter() - self.start,
            trainer.current_epoch,
            float(m["val/class_acc"]),
            float(m["val/fid_mnist"]),
        )
        with self.path.open("a") as fh:
            fh.write(",".join(map(str, row)) + "\n")
        print(
            f"  {row[0]:6.0f} s  epoch {row[1]:2d}  class_acc {row[2]:.4f}  fid_mnist {row[3]:.3f}",
            flush=True,
        )


def quality_run(data_dir: Path, arch: str, budget_s: int, out: Path) -> list[tuple[float, int, float, float]]:
    """Train through the real entry point (composed config, pantheon.train.train) under a wall-clock budget."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pantheon.train import train

    quality_csv = out / "quality.csv"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.data_dir={data_dir}",
                f"model.arch={arch}",
                "logger=csv",
                "~callbacks.rich_progress_bar",
                "trainer.max_epochs=1000",
                "+trainer.val_check_interval=250",
                f"trainer.max_time=00:00:{budget_s // 60:02d}:{budget_s % 60:02d}",
                "ckpt_path=null",
                "+callbacks.quality._target_=__main__.QualityLog",
                f"+callbacks.quality.path={quality_csv}",
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0  # what Hydra's own run sets; the run-dir logic reads it
    HydraConfig().set_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    train(cfg)
    return [tuple(float(x) for x in line.split(",")) for line in quality_csv.read_text().splitlines()]


def _agreement_worker(rank: int, calls: int, port: int, out) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    flag = torch.zeros(1)
    for i in range(20 + calls):
        if i == 20:
            dist.barrier()
            start = time.perf_counter()
        dist.all_reduce(flag)  # what reduce_boolean_decision does, and the host reads the result
        flag.item()
    if rank == 0:
        out.put((time.perf_counter() - start) / calls)
    dist.destroy_process_group()


def agreement_seconds(calls: int = 500) -> float:
    """Seconds per preemption agreement between 2 CPU processes (gloo over loopback)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_agreement_worker, args=(r, calls, port, out)) for r in (0, 1)]
    for w in workers:
        w.start()
    seconds = out.get(timeout=120)
    for w in workers:
        w.join(timeout=30)
    return seconds


def print_step_costs(datamodule: MNISTDataModule, args: argparse.Namespace) -> None:
    """Alternating rounds of the plain loop with D frozen or not in G's step; the agreement's cost per batch."""
    recipe = mnist_gan_recipe()
    frozen, unfrozen = [], []
    for _ in range(args.rounds):
        frozen.append(
            plain_pytorch_steps_per_s(
                datamodule.train_dataloader(), args.arch, recipe, args.steps, args.warmup
            )
        )
        unfrozen.append(
            plain_pytorch_steps_per_s(
                datamodule.train_dataloader(), args.arch, recipe, args.steps, args.warmup, False
            )
        )
    print(
        f"D frozen in G step : {max(frozen):7.2f} batches/s (runs: {', '.join(f'{r:.2f}' for r in frozen)})"
    )
    print(
        f"D grads computed   : {max(unfrozen):7.2f} batches/s (runs: {', '.join(f'{r:.2f}' for r in unfrozen)})"
    )
    print(
        f"freezing D speedup : {max(frozen) / max(unfrozen):7.3f} best/best, {sum(frozen) / sum(unfrozen):.3f} mean/mean"
    )
    agreement = agreement_seconds()
    batch = 1 / max(frozen)
    print(
        f"preemption check   : {agreement * 1e6:7.0f} us per agreement (2 gloo processes) = {agreement / batch:.2%} of a "
        f"{batch * 1e3:.0f} ms batch at preemption.check_every_n_batches=1, {agreement / batch / 10:.3%} at 10"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--arch", default="dcgan")
    parser.add_argument(
        "--steps", type=int, default=150, help="timed batches per throughput run (0 skips it)"
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds per loop")
    parser.add_argument(
        "--budget-s", type=int, default=600, help="quality run wall-clock budget (0 skips it)"
    )
    parser.add_argument(
        "--step-costs", action="store_true", help="measure D freezing and the preemption check"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "bench" / "gan")
    parser.add_argument(
        "--docs", action="store_true", help="write docs/training_curves.png and docs/samples_grid.png"
    )
    args = parser.parse_args()
    if not (args.data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"error: full MNIST not found under {args.data_dir}: pass --data-dir", file=sys.stderr)
        return 2

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, arch={args.arch}, batch 64")
    datamodule = MNISTDataModule(data_dir=str(args.data_dir), source="torchvision", batch_size=64)
    datamodule.setup()
    if args.step_costs:
        print_step_costs(datamodule, args)
    if args.steps:
        print_throughput(datamodule, args)
    if args.budget_s:
        print_quality(args)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS           : {peak_mib:7.0f} MiB")
    return 0


def print_throughput(datamodule: MNISTDataModule, args: argparse.Namespace) -> None:
    """Alternating rounds (plain, Lightning, ...), best of each: both sides get the same number of tries."""
    recipe = mnist_gan_recipe()
    plain, ours = [], []
    for _ in range(args.rounds):
        loader = datamodule.train_dataloader()
        plain.append(plain_pytorch_steps_per_s(loader, args.arch, recipe, args.steps, args.warmup))
        ours.append(lightning_steps_per_s(datamodule, args.arch, recipe, args.steps, args.warmup))
    print(f"recipe             : {recipe}")
    print(f"plain PyTorch loop : {max(plain):7.2f} batches/s (runs: {', '.join(f'{r:.2f}' for r in plain)})")
    print(f"Lightning module   : {max(ours):7.2f} batches/s (runs: {', '.join(f'{r:.2f}' for r in ours)})")
    print(f"ratio (best/best)  : {max(ours) / max(plain):7.3f}  (target >= 0.95)")
    print(f"ratio (mean/mean)  : {sum(ours) / sum(plain):7.3f}")


def print_quality(args: argparse.Namespace) -> None:
    """One budgeted run through pantheon.train on full MNIST; class_acc and fid_mnist at each time mark."""
    if args.out.exists():
        shutil.rmtree(args.out)
    print(f"quality run: {args.budget_s} s budget on full MNIST, validation (6,000 digits) every 250 batches")
    rows = quality_run(args.data_dir, args.arch, args.budget_s, args.out)
    for mark in (120, 300, 600):
        seen = [r for r in rows if r[0] <= mark]
        if seen:
            best = max(seen, key=lambda r: r[2])
            print(
                f"within {mark:4d} s: best class_acc {best[2]:.4f} (epoch {best[1]}), fid_mnist then {best[3]:.3f}"
            )
    if args.docs:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "plot_metrics.py"), str(args.out)],
            check=True,
            cwd=ROOT,
        )
        grids = sorted((args.out / "samples").glob("*.png"))
        shutil.copy(grids[-1], ROOT / "docs" / "samples_grid.png")
        print(f"wrote docs/samples_grid.png from {grids[-1].name}")


if __name__ == "__main__":
    sys.exit(main())
