"""Text -> images with a Stable-Diffusion-style pipeline: the validation grid and the sample CLI share this."""

from __future__ import annotations

import torch

from pantheon.utils.errors import UserError


def inference_scheduler(noise_scheduler):
    """DPM-Solver++ over the training scheduler's config: good images in ~20 steps, same prediction type."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(noise_scheduler.config)


def check_size(pipe, size: int | None) -> None:
    """The side must survive the VAE's and the UNet's downsampling without rounding."""
    if size is None:
        return
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if size < multiple or size % multiple:
        raise UserError(f"size={size}: this pipeline needs a multiple of {multiple} pixels")


@torch.no_grad()
def generate(pipe, prompts: list[str], n_per_prompt: int, steps: int, guidance_scale: float, seed: int,
             size: int | None = None) -> torch.Tensor:  # fmt: skip
    """uint8 images [len(prompts) * n_per_prompt, 3, H, W], prompt-major. A CPU generator makes the same images on
    any device for the same seed."""
    check_size(pipe, size)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompts,
        num_images_per_prompt=n_per_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    ).images
    return images.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def render_prompt(pipeline_dir: str, prompt: str, n: int, steps: int, guidance_scale: float, seed: int,
                  size: int | None, device: torch.device) -> torch.Tensor:  # fmt: skip
    """n images of one prompt from a saved pipeline (a folder, or a Hub id when online): uint8 [n, 3, H, W]."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from pantheon.models.diffusion.components import resolve_pretrained

    if steps < 1:
        raise UserError(f"steps={steps}: use at least one denoising step")
    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(resolve_pretrained(pipeline_dir, field="pipeline")).to(
        device
    )
    return generate(pipe, [prompt], n, steps, guidance_scale, seed, size)
