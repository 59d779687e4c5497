"""The text-to-image datamodule: captioned images from an imagefolder with metadata.jsonl (the Hugging Face /
diffusers convention, pantheon.data.imagefolder), or generated coloured shapes (pantheon.data.shapes) so an
experiment runs on a bare offline machine. For a Hub dataset, download it as an imagefolder
(`huggingface-cli download --repo-type dataset <name> --local-dir <dir>`) and point data.data_dir at it.

Training batches are dicts: `pixel_values` float [B, 3, R, R] in [-1, 1] and `text` (one caption per image);
with cached latents `latent_moments` (the VAE's mean and log-variance) replaces `pixel_values`. The random flip
and caption choice are drawn after batching, in the main process (pantheon.data.captioned_datasets.augment).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from pantheon.data.captioned_datasets import CachedLatents, CaptionedImages, augment, collate, image_transform
from pantheon.data.imagefolder import METADATA, Record, check_images, read_metadata
from pantheon.data.shapes import ensure_shapes_dataset
from pantheon.utils.errors import UserError, require_choice
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)

__all__ = ["CaptionedImagesDataModule", "ensure_shapes_dataset"]


class CaptionedImagesDataModule(L.LightningDataModule):
    """Training pairs (image, caption). Where they come from (`source`): auto: data_dir when it exists, else (with
    `synthetic_fallback`) generated shapes; imagefolder | synthetic force one."""

    def __init__(
        self,
        data_dir: str | None = None,
        source: str = "auto",
        synthetic_dir: str | None = None,
        synthetic_fallback: bool = False,
        image_column: str = "file_name",
        caption_column: str = "text",
        splits: list[str] | None = None,
        max_samples: int | None = None,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = True,
        skip_bad_images: bool = False,
        cache_latents: bool = False,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        require_choice("data.source", source, ("auto", "imagefolder", "synthetic"))
        if batch_size < 1 or resolution < 8:
            raise UserError(f"data.batch_size={batch_size} / data.resolution={resolution}: use >= 1 and >= 8")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.source_used = self.resolve_source()
        # Read the metadata now (cheap): a bad file fails before a large model is loaded, not after.
        self.records = self.read_records() if self.source_used == "imagefolder" else None

    def resolve_source(self) -> str:
        """Which source `auto` means here; a source that cannot work fails now."""
        hp = self.hparams
        source = hp.source
        if source == "auto":
            if hp.data_dir and Path(hp.data_dir).exists():
                source = "imagefolder"
            elif hp.synthetic_fallback:
                log.warning(
                    f"data.data_dir={hp.data_dir} not found: training on generated coloured shapes instead "
                    "(set data.data_dir or PANTHEON_FLOWERS to an image folder with metadata.jsonl for real images)"
                )
                source = "synthetic"
            else:
                source = "imagefolder"
        if source == "imagefolder" and not hp.data_dir:
            raise UserError(f"data.data_dir is not set: point it at an image folder with {METADATA}")
        if source == "synthetic" and not hp.synthetic_dir:
            raise UserError(
                "data.source=synthetic needs data.synthetic_dir=<folder to generate the shapes in>"
            )
        return source

    def read_records(self, data_dir: Path | None = None) -> list[Record]:
        hp = self.hparams
        records = read_metadata(data_dir or Path(hp.data_dir), hp.image_column, hp.caption_column, hp.splits)
        return records[: hp.max_samples]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if self.source_used == "synthetic":
            self.records = self.read_records(ensure_shapes_dataset(Path(hp.synthetic_dir)))
        records = check_images(self.records, hp.skip_bad_images)
        if len(records) < hp.batch_size:
            raise UserError(
                f"the dataset has {len(records)} images, fewer than data.batch_size={hp.batch_size}"
            )
        self.train_set = CaptionedImages(records, image_transform(hp.resolution, hp.center_crop))
        log.info(
            f"captioned images from {self.source_used}: {len(self.train_set)} pairs at {hp.resolution} px"
        )

    @torch.no_grad()
    def cache_latents_with(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Encode every image once, unflipped and flipped, with `encode` (pixels -> latent moments); training then
        reads latents instead of images. Caching always centre-crops (a random crop cannot be cached); the random
        flip survives because both flips are cached."""
        if isinstance(self.train_set, CachedLatents):
            return
        hp = self.hparams
        if not hp.center_crop:
            log.warning(
                "data.cache_latents: images are centre-cropped for the cache (data.center_crop=false ignored)"
            )
        plain = CaptionedImages(self.train_set.records, image_transform(hp.resolution, True))
        moments, captions = [], []
        loader = DataLoader(plain, batch_size=hp.batch_size, num_workers=hp.num_workers, collate_fn=collate)
        for batch in loader:
            pixels = batch["pixel_values"]
            moments.append(torch.stack([encode(pixels).cpu(), encode(pixels.flip(-1)).cpu()], dim=1))
            captions.extend(batch["captions"])
        self.train_set = CachedLatents(torch.cat(moments), captions)
        log.info(
            f"cached VAE latents of {len(captions)} images x 2 flips ({self.train_set.moments.nbytes / 2**20:.0f} MiB)"
        )

    def warn_long_captions(self, count_tokens: Callable[[list[str]], list[int]], max_tokens: int) -> int:
        """Captions over the text encoder's `max_tokens` are cut to fit in training (as diffusers' own script
        does); one warning says how many, so a user can shorten them. Returns that count."""
        sets = (
            self.train_set.captions
            if isinstance(self.train_set, CachedLatents)
            else [record.captions for record in self.train_set.records]
        )
        captions = sorted({caption for captions in sets for caption in captions})
        long = sum(count > max_tokens for count in count_tokens(captions)) if captions else 0
        if long:
            log.warning(
                f"{long} of {len(captions)} distinct captions are longer than the text encoder's {max_tokens} "
                "tokens: training cuts them to fit (shorten them to keep their ends)"
            )
        return long

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=collate,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict:
        """The random flip and caption choice, in the main process (exact resume replays them)."""
        return augment(batch, self.hparams.random_flip)
