"""Text -> images with a Stable-Diffusion-style pipeline: the validation grid and the sample CLI share this."""

from __future__ import annotations

import torch

from pantheon.models.diffusion.checks import check_prompt, check_side, inspect_pipeline, side_multiple
from pantheon.utils.errors import UserError


def inference_scheduler(noise_scheduler):
    """DPM-Solver++ over the training scheduler's config: good images in ~20 steps, same prediction type."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(noise_scheduler.config)


def check_size(pipe, size: int | None, field: str = "size") -> None:
    """The side must survive the VAE's and the UNet's downsampling without rounding."""
    check_side(field, size, side_multiple(pipe.vae.config, pipe.unet.config), "this pipeline")


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
    """n images of one prompt from a saved pipeline (a folder, or a Hub id when online): uint8 [n, 3, H, W].
    The folder, the size and the prompt are checked on configs and the tokenizer, before the weights load."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTokenizer

    if steps < 1:
        raise UserError(f"steps={steps}: use at least one denoising step")
    info = inspect_pipeline(pipeline_dir, field="pipeline")
    check_side("size", size, info.side_multiple, "this pipeline")
    tokenizer = CLIPTokenizer.from_pretrained(info.source, subfolder="tokenizer")
    check_prompt(tokenizer, prompt)
    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(info.source, tokenizer=tokenizer).to(device)
    return generate(pipe, [prompt], n, steps, guidance_scale, seed, size)
