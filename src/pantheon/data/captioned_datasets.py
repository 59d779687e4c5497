"""The torch Datasets behind captioned-image training, deterministic per index: the random parts of a sample (the
horizontal flip, which caption of several) are drawn in the main process, after batching (see `augment`), so an
exact resume replays them whatever the DataLoader workers do (pantheon.cluster.resume)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision import transforms

from pantheon.data.imagefolder import Record
from pantheon.utils.errors import UserError


def image_transform(resolution: int, center_crop: bool) -> Callable:
    """Resize the short side, crop a square, scale to [-1, 1] (diffusers' text_to_image recipe, flip aside)."""
    crop = transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution)
    resize = transforms.Resize(
        resolution, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True
    )
    return transforms.Compose([resize, crop, transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(
            f"{path} cannot be decoded ({err}); fix or remove it, or set data.skip_bad_images=true"
        ) from err


class CaptionedImages(Dataset):
    """`pixel_values` [3, R, R] in [-1, 1] and `captions` (every caption of the image) per record."""

    def __init__(self, records: list[Record], transform: Callable) -> None:
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"pixel_values": self.transform(open_rgb(record.image)), "captions": record.captions}


class CachedLatents(Dataset):
    """VAE latent moments computed once per image, unflipped and flipped: `latent_moments` [2, 2C, h, w]."""

    def __init__(self, moments: torch.Tensor, captions: list[tuple[str, ...]]) -> None:
        self.moments, self.captions = moments, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"latent_moments": self.moments[index], "captions": self.captions[index]}


def collate(samples: list[dict]) -> dict:
    """Tensors stacked; `captions` kept as one tuple of captions per sample (they differ in count)."""
    captions = [sample["captions"] for sample in samples]
    batch = default_collate([{k: v for k, v in sample.items() if k != "captions"} for sample in samples])
    return {**batch, "captions": captions}


def augment(batch: dict, random_flip: bool) -> dict:
    """The batch's random choices, drawn from the main process's (reseeded) generators: a horizontal flip per
    image (for cached latents, which of the two cached flips), and one caption per image. Returns the training
    batch: `pixel_values` or `latent_moments`, and `text` (one caption each)."""
    out = {k: v for k, v in batch.items() if k != "captions"}
    size = len(batch["captions"])
    flip = torch.rand(size) < 0.5 if random_flip else torch.zeros(size, dtype=torch.bool)
    if "latent_moments" in out:
        out["latent_moments"] = out["latent_moments"][
            torch.arange(size), flip.long().to(out["latent_moments"].device)
        ]
    else:
        pixels = out["pixel_values"]
        out["pixel_values"] = torch.where(
            flip.to(pixels.device)[:, None, None, None], pixels.flip(-1), pixels
        )
    out["text"] = [c[int(torch.randint(len(c), ()))] if len(c) > 1 else c[0] for c in batch["captions"]]
    return out
