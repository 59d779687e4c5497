"""Text-to-image fine-tuning of a Stable-Diffusion-style model as a LightningModule: one training step.

Only the UNet (or its LoRA adapters) trains. The VAE and text encoder are frozen and held outside the module tree
(in a plain dataclass), so they are not in checkpoints, not in DDP's parameter list and not partitioned by
DeepSpeed ZeRO-3; they follow the module's device and the trainer's precision on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torchvision.utils import make_grid

from pantheon.callbacks.ema import ema_weights, remember_checkpoint_ema
from pantheon.models.diffusion.checks import check_prompt, check_side, side_multiple, token_counts, vae_factor
from pantheon.models.diffusion.components import (
    add_lora,
    has_lora,
    load_components,
    make_pipeline,
    merged_unet,
    save_lora,
    save_pipeline,
)
from pantheon.models.diffusion.losses import denoising_loss, min_snr_weights, target_for
from pantheon.models.diffusion.sampling import generate, inference_scheduler
from pantheon.models.diffusion.tiny import ensure_tiny_pipeline
from pantheon.models.protocol import GenerativeModule
from pantheon.utils.errors import UserError, require_choice
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)

ATTENTION = ("sdpa", "eager")


@dataclass
class Frozen:
    """The parts that never train. A dataclass, not an nn.Module: invisible to state_dict, DDP and ZeRO-3."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    placed: tuple[torch.device, torch.dtype] | None = None


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the frozen parts: the trainer's compute precision (bf16/fp16 mixed or true), else float32."""
    if str(precision).startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if str(precision).startswith("16") else torch.float32


class DiffusionModule(GenerativeModule):
    """Fine-tune the UNet of a diffusers pipeline (`pretrained_model`: a local folder or a Hub id) on captions."""

    kind: ClassVar[str] = "diffusion"

    def __init__(
        self,
        pretrained_model: str,
        build_tiny: bool = False,
        prediction_type: str | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        adam_eps: float = 1e-8,
        lr_scheduler: str = "constant_with_warmup",
        lr_warmup_steps: int = 0,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        caption_dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",
        validation_prompts: list[str] = ("a photo of a sunflower", "a photo of a pink primrose"),
        validation_images_per_prompt: int = 2,
        validation_steps: int = 20,
        validation_guidance_scale: float = 7.5,
        validation_seed: int = 0,
        validation_resolution: int | None = None,
    ) -> None:
        super().__init__()
        require_choice("model.attention", attention, ATTENTION)
        if not 0.0 <= caption_dropout <= 1.0:
            raise UserError(f"model.caption_dropout={caption_dropout}: use a probability in [0, 1]")
        self.save_hyperparameters()
        if build_tiny:
            ensure_tiny_pipeline(pretrained_model)
        parts = load_components(pretrained_model, prediction_type)
        self.unet = parts["unet"].train()  # from_pretrained returns eval mode
        self.frozen = Frozen(
            parts["vae"].requires_grad_(False).eval(), parts["text_encoder"].requires_grad_(False).eval()
        )
        self.tokenizer, self.noise_scheduler = parts["tokenizer"], parts["scheduler"]
        self.check_validation_settings()
        self.configure_unet()

    def check_validation_settings(self) -> None:
        """Validation prompts and side that the pipeline would cut or round fail now, not at the first grid."""
        hp = self.hparams
        multiple = side_multiple(self.frozen.vae.config, self.unet.config)
        check_side("model.validation_resolution", hp.validation_resolution, multiple, "the pipeline")
        for i, prompt in enumerate(hp.validation_prompts):
            check_prompt(self.tokenizer, prompt, field=f"model.validation_prompts[{i}]")

    def setup(self, stage: str) -> None:
        """Data the frozen parts cannot take whole: the first hook that knows both the data and the model."""
        datamodule = getattr(self.trainer, "datamodule", None)
        resolution = getattr(datamodule, "hparams", {}).get("resolution")
        if resolution is not None:
            whose = f"the autoencoder of model.pretrained_model={self.hparams.pretrained_model}"
            check_side("data.resolution", resolution, vae_factor(self.frozen.vae.config), whose)
        if hasattr(datamodule, "warn_long_captions"):
            datamodule.warn_long_captions(
                lambda texts: token_counts(self.tokenizer, texts), self.tokenizer.model_max_length
            )

    def configure_unet(self) -> None:
        """Attention kernel, activation checkpointing and (optionally) LoRA adapters on the trained UNet."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        hp = self.hparams
        self.unet.set_attn_processor(AttnProcessor2_0() if hp.attention == "sdpa" else AttnProcessor())
        if hp.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if hp.lora_rank:
            add_lora(self.unet, hp.lora_rank, hp.lora_alpha)
            self.strict_loading = False  # LoRA checkpoints hold the adapters only (see on_save_checkpoint)

    # --- the frozen parts: encode images and captions ---

    def frozen_parts(self) -> Frozen:
        """The VAE and text encoder on this module's device, in the trainer's weight dtype (moved once)."""
        precision = self._trainer.precision if self._trainer is not None else "32-true"
        place = (self.device, weight_dtype(precision))
        if self.frozen.placed != place:
            for part in (self.frozen.vae, self.frozen.text_encoder):
                torch.nn.Module.to(part, *place)  # diffusers' own .to(dtype) warns spuriously on every cast
            self.frozen.placed = place
        return self.frozen

    @torch.no_grad()
    def encode_moments(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the VAE posterior's mean and log-variance (what the latent cache stores)."""
        vae = self.frozen_parts().vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.parameters

    def latents(self, batch: dict) -> torch.Tensor:
        """A latent sample per image, from the VAE now or from the moments cached before training."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        moments = (
            batch["latent_moments"]
            if "latent_moments" in batch
            else self.encode_moments(batch["pixel_values"])
        )
        return DiagonalGaussianDistribution(moments).sample() * self.frozen.vae.config.scaling_factor

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
        return self.frozen_parts().text_encoder(ids.to(self.device))[0]

    def drop_captions(self, captions: list[str]) -> list[str]:
        """Empty captions with probability caption_dropout: trains the unconditional branch guidance needs."""
        drop = torch.rand(len(captions)) < self.hparams.caption_dropout
        return ["" if d else caption for d, caption in zip(drop.tolist(), captions, strict=True)]

    def sample_noise(self, latents: torch.Tensor) -> torch.Tensor:
        """Gaussian noise, plus a per-channel offset (noise_offset) that lets the model learn very dark/bright images."""
        # Not randn_like: it follows the input's memory layout, so VAE and cached latents would draw other noise.
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
        if self.hparams.noise_offset:
            noise += self.hparams.noise_offset * torch.randn(*latents.shape[:2], 1, 1, device=latents.device)
        return noise

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Min-SNR-gamma weight per sample (None: plain MSE)."""
        if not self.hparams.snr_gamma:
            return None
        s = self.noise_scheduler
        return min_snr_weights(s.alphas_cumprod, timesteps, self.hparams.snr_gamma, s.config.prediction_type)

    # --- training ---

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        latents = self.latents(batch)  # frozen VAE (or the latent cache)
        context = self.encode_text(self.drop_captions(batch["text"]))  # frozen text encoder
        noise = self.sample_noise(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),))
        timesteps = timesteps.to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        prediction = self.unet(noisy, timesteps, encoder_hidden_states=context).sample
        target = target_for(self.noise_scheduler, latents, noise, timesteps)  # epsilon or v
        loss = denoising_loss(prediction, target, self.loss_weights(timesteps))

        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        hp = self.hparams
        params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, eps=hp.adam_eps
        )
        scheduler = get_scheduler(
            hp.lr_scheduler,
            optimizer,
            num_warmup_steps=hp.lr_warmup_steps,
            num_training_steps=int(self.trainer.estimated_stepping_batches),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "hparams", {}).get("cache_latents"):
            datamodule.cache_latents_with(self.encode_moments)  # each image through the VAE once, both flips

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            paths = self.export(Path(self.trainer.default_root_dir) / "pipeline")
            log.info(f"pipeline (EMA weights) saved to {paths[0]}; try: python -m pantheon.sample pipeline={paths[0]} "
                     'prompt="a photo of a sunflower" n=4 out=sunflowers.png')  # fmt: skip
            if len(paths) > 1:
                log.info(f"LoRA adapters saved to {paths[1]} (pipe.load_lora_weights)")

    # --- checkpoints: LoRA runs keep only the adapters; the EMA rides along for export ---

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if has_lora(self.unet):
            trained = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        remember_checkpoint_ema(self, checkpoint)

    # --- images and export (EMA weights when there is an EMA) ---

    def pipeline(self):
        """A StableDiffusionPipeline over this module's live parts (no copies), for sampling."""
        frozen = self.frozen_parts()
        parts = {
            "unet": self.unet,
            "vae": frozen.vae,
            "text_encoder": frozen.text_encoder,
            "tokenizer": self.tokenizer,
        }
        return make_pipeline(parts, scheduler=inference_scheduler(self.noise_scheduler))

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """The validation prompts (one row each) with a fixed seed, as a uint8 grid [3, H, W]."""
        hp = self.hparams
        dtype = self.frozen_parts().placed[1]
        was_training = self.unet.training
        self.unet.eval()
        with ema_weights(self), torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            images = generate(self.pipeline(), list(hp.validation_prompts), hp.validation_images_per_prompt,
                              hp.validation_steps, hp.validation_guidance_scale, hp.validation_seed,
                              hp.validation_resolution)  # fmt: skip
        self.unet.train(was_training)
        return make_grid(images, nrow=hp.validation_images_per_prompt, padding=2, pad_value=255)

    def export_parts(self) -> dict:
        """Pipeline parts for saving: the frozen ones in float32 (re-read if training cast them down)."""
        if self.frozen.placed is not None and self.frozen.placed[1] != torch.float32:
            parts = load_components(self.hparams.pretrained_model, names=("vae", "text_encoder", "tokenizer"))
        else:
            parts = {
                "vae": self.frozen.vae,
                "text_encoder": self.frozen.text_encoder,
                "tokenizer": self.tokenizer,
            }
        return {**parts, "scheduler": inference_scheduler(self.noise_scheduler)}

    @torch.no_grad()
    def export(self, out_dir: str | Path) -> list[Path]:
        """Write a diffusers pipeline folder with the EMA weights at out_dir (LoRA folded in); a LoRA run also
        writes its adapters to out_dir/lora. The end of fit and `python -m pantheon.export` both land here."""
        out_dir = Path(out_dir)
        with ema_weights(self):
            lora = has_lora(self.unet)
            unet = merged_unet(self.unet) if lora else self.unet
            paths = [save_pipeline({**self.export_parts(), "unet": unet}, out_dir)]
            if lora:
                paths.append(save_lora(self.unet, out_dir / "lora"))
        return paths
