"""Sample a trained model: digits from a GAN checkpoint, images from a diffusers pipeline.

python -m pantheon.sample ckpt=<run>/checkpoints/last.ckpt digit=5 n=64 out=five.png   # or out=five.npy
python -m pantheon.sample ckpt=latest digit=5        # the newest GAN checkpoint -> <its run>/samples/digit_5.png
python -m pantheon.sample pipeline=<run>/pipeline prompt="a photo of a sunflower" n=4 out=sunflowers.png
python -m pantheon.sample --help                     # every key, one line each
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png
from torchvision.utils import make_grid

from pantheon.utils.cli import argv_or, parse_key_values
from pantheon.utils.errors import UserError, exit_on_user_error
from pantheon.utils.runs import resolve_latest, run_dir_of


@dataclass
class SampleConfig:
    ckpt: str | None = None  # GAN: a training checkpoint, or `latest` (the newest GAN checkpoint under logs/)
    digit: int | None = None  # GAN: which digit, 0-9
    pipeline: str | None = None  # diffusion: a diffusers pipeline folder, or `latest` (newest under logs/)
    prompt: str | None = None  # diffusion: the text to draw
    n: int = 64  # how many images
    out: str | None = None  # a .png grid or .npy array (default: <run>/samples/digit_<d>.png or prompt.png)
    seed: int = 0  # the noise seed
    steps: int = 30  # diffusion: denoising steps
    guidance_scale: float = 7.5  # diffusion: classifier-free guidance
    size: int | None = None  # diffusion: image side in pixels (default: the pipeline's)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda


def parse_args(argv: list[str]) -> SampleConfig:
    """key=value arguments on top of SampleConfig; unknown keys and bad values are one-line errors."""
    return parse_key_values(argv, SampleConfig, prog="pantheon.sample", summary=__doc__.splitlines()[0])


def default_out(cfg: SampleConfig) -> Path:
    """Samples go into the run they came from, never into the working directory."""
    if cfg.ckpt:
        return run_dir_of(Path(cfg.ckpt)) / "samples" / f"digit_{cfg.digit}.png"
    return Path(cfg.pipeline).resolve().parent / "samples" / "prompt.png"


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
    cfg = parse_args(argv_or(argv))
    resolve_latest(cfg)
    if bool(cfg.ckpt) == bool(cfg.pipeline):
        raise UserError("pass exactly one of ckpt=<GAN checkpoint> or pipeline=<diffusers folder> (--help)")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if out.suffix not in (".png", ".npy"):
        raise UserError(f"out={out}: write a .png grid or a .npy array (out=<name>.png or .npy)")
    if cfg.n < 1:
        raise UserError(f"n={cfg.n}: ask for at least one image")
    images = sample_digits(cfg) if cfg.ckpt else sample_prompt(cfg)
    save_images(images, out)
    print(f"wrote {len(images)} images to {out}")
    return out


if __name__ == "__main__":
    main()
