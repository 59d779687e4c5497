"""Sample a trained model: digits from a GAN checkpoint, images from a diffusers pipeline.

python -m pantheon.sample ckpt=<run>/checkpoints/last.ckpt digit=5 n=64 out=five.png   # or out=five.npy
python -m pantheon.sample pipeline=<run>/pipeline prompt="a photo of a sunflower" n=4 out=sunflowers.png
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchvision.io import write_png
from torchvision.utils import make_grid

from pantheon.utils.errors import UserError, exit_on_user_error


@dataclass
class SampleConfig:
    ckpt: str | None = None  # GAN: a training checkpoint
    digit: int | None = None  # GAN: which digit, 0-9
    pipeline: str | None = None  # diffusion: a diffusers pipeline folder
    prompt: str | None = None  # diffusion: the text to draw
    n: int = 64
    out: str = "samples.png"
    seed: int = 0
    steps: int = 30  # diffusion: denoising steps
    guidance_scale: float = 7.5  # diffusion: classifier-free guidance
    size: int | None = None  # diffusion: image side in pixels (default: the pipeline's)
    device: str = "auto"


def parse_args(argv: list[str]) -> SampleConfig:
    """key=value arguments on top of SampleConfig; unknown keys and bad values are one-line errors."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SampleConfig), OmegaConf.from_dotlist(argv))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise UserError(
            f"bad argument ({str(err).splitlines()[0]}); valid keys: {', '.join(SampleConfig.__dataclass_fields__)}"
        ) from err


def pick_device(device: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def save_images(images: torch.Tensor, out: Path) -> None:
    """uint8 images [N, H, W] or [N, 3, H, W] -> a PNG grid, or (.npy) the raw array."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, images.cpu().numpy())
    else:
        batch = images.unsqueeze(1) if images.dim() == 3 else images
        grid = make_grid(batch.cpu(), nrow=math.ceil(math.sqrt(len(batch))), padding=2, pad_value=255)
        write_png(grid, str(out))


def sample_digits(cfg: SampleConfig) -> torch.Tensor:
    from pantheon.models.checkpoints import load_module

    if cfg.digit is None or not 0 <= cfg.digit <= 9:
        raise UserError(f"digit={cfg.digit} is not a digit: pass digit=0 ... digit=9")
    module = load_module(cfg.ckpt, kind="gan").to(pick_device(cfg.device))
    torch.manual_seed(cfg.seed)
    return module.generate(torch.full((cfg.n,), cfg.digit, dtype=torch.long))


def sample_prompt(cfg: SampleConfig) -> torch.Tensor:
    from pantheon.models.diffusion.sampling import render_prompt

    if not cfg.prompt:
        raise UserError('pipeline= needs prompt="<text>"')
    return render_prompt(
        cfg.pipeline,
        cfg.prompt,
        n=cfg.n,
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        seed=cfg.seed,
        size=cfg.size,
        device=pick_device(cfg.device),
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> Path:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(cfg.out)
    if out.suffix not in (".png", ".npy"):
        raise UserError(f"out={cfg.out}: write a .png grid or a .npy array")
    if cfg.n < 1:
        raise UserError(f"n={cfg.n}: ask for at least one image")
    if bool(cfg.ckpt) == bool(cfg.pipeline):
        raise UserError("pass exactly one of ckpt=<GAN checkpoint> or pipeline=<diffusers folder>")
    images = sample_digits(cfg) if cfg.ckpt else sample_prompt(cfg)
    save_images(images, out)
    print(f"wrote {len(images)} images to {out}")
    return out


if __name__ == "__main__":
    main()
