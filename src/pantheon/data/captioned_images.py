"""Captioned images for text-to-image training: an imagefolder with metadata.jsonl (the Hugging Face datasets /
diffusers convention), a Hub dataset by name when online, or a small generated set of coloured shapes so an
experiment runs on a bare offline machine.

Batches are dicts: `pixel_values` float [B, 3, R, R] in [-1, 1] and `text` (list of captions); with cached latents
`latent_moments` (the VAE's mean and log-variance, one flip picked at random) replaces `pixel_values`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pantheon.utils.errors import UserError, require_choice
from pantheon.utils.logging import RankedLogger
from pantheon.utils.offline import huggingface_hub_reachable

log = RankedLogger(__name__)

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Record:
    image: Path
    caption: str


# --- reading and checking an imagefolder ---


def read_metadata(
    data_dir: Path, image_column: str, caption_column: str, splits: list[str] | None
) -> list[Record]:
    """One Record per metadata.jsonl line (of the chosen splits). Bad lines: a UserError naming file, line, field."""
    if not data_dir.is_dir():
        raise UserError(
            f"data.data_dir={data_dir} does not exist: point it at an image folder with {METADATA}"
        )
    meta = data_dir / METADATA
    if not meta.is_file():
        raise UserError(
            f"{meta} is missing: add one JSON line per image, e.g. "
            f'{{"{image_column}": "images/0001.jpg", "{caption_column}": "a photo of a rose"}}'
        )
    records = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{meta} line {number} is not valid JSON ({err.msg})") from err
        for column, key in ((image_column, "data.image_column"), (caption_column, "data.caption_column")):
            if column not in row:
                raise UserError(
                    f'{meta} line {number} has no "{column}" field (it has {", ".join(row)}): '
                    f"add it or set {key} to the field that holds it"
                )
        if splits is not None and row.get("split") not in splits:
            continue
        records.append(Record(data_dir / row[image_column], str(row[caption_column])))
    if not records:
        which = f" in splits {splits}" if splits is not None else ""
        raise UserError(
            f"{meta} lists no images{which}: the dataset is empty (check data.splits and the file)"
        )
    return records


def unreadable(record: Record) -> str | None:
    """Why this image cannot be used (missing, not an image), or None. Opens the header only: cheap."""
    if not record.image.is_file():
        return "missing"
    try:
        with Image.open(record.image) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"not a readable image ({type(err).__name__})"
    return None


def check_images(records: list[Record], skip_bad: bool) -> list[Record]:
    """All records whose image exists and opens; bad ones fail (naming the first) or, with skip_bad, are dropped
    and counted."""
    problems = {r: why for r in records if (why := unreadable(r))}
    if problems and not skip_bad:
        first, why = next(iter(problems.items()))
        raise UserError(
            f"{len(problems)} image file(s) cannot be used, first {first.image}: {why}; fix or remove them "
            "from metadata.jsonl, or set data.skip_bad_images=true to train without them"
        )
    if problems:
        log.warning(
            f"skipped {len(problems)} missing or unreadable image(s) of {len(records)} (data.skip_bad_images)"
        )
    good = [r for r in records if r not in problems]
    if not good:
        raise UserError("no usable images left after skipping bad ones: the dataset is empty")
    return good


# --- datasets ---


def image_transform(resolution: int, center_crop: bool, random_flip: bool) -> Callable:
    """Resize the short side, crop a square, maybe flip, scale to [-1, 1] (diffusers' text_to_image recipe)."""
    crop = transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution)
    flip = [transforms.RandomHorizontalFlip()] if random_flip else []
    return transforms.Compose(
        [
            transforms.Resize(
                resolution, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True
            ),
            crop,
            *flip,
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(
            f"{path} cannot be decoded ({err}); fix or remove it, or set data.skip_bad_images=true"
        ) from err


class CaptionedImages(Dataset):
    """Images and captions from records (imagefolder) or from a Hub dataset's rows."""

    def __init__(self, items: list[Record] | object, transform: Callable, image_key: str = "image",
                 caption_key: str = "text") -> None:  # fmt: skip
        self.items, self.transform = items, transform
        self.image_key, self.caption_key = image_key, caption_key

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        if isinstance(item, Record):
            image, caption = open_rgb(item.image), item.caption
        else:  # a Hub dataset row
            image, caption = item[self.image_key].convert("RGB"), str(item[self.caption_key])
        return {"pixel_values": self.transform(image), "text": caption}


class CachedLatents(Dataset):
    """VAE latent moments computed once per image and flip: [N, 2, 2C, h, w]; index 1 is the flipped image."""

    def __init__(self, moments: torch.Tensor, captions: list[str], random_flip: bool) -> None:
        self.moments, self.captions, self.random_flip = moments, captions, random_flip

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        flip = int(self.random_flip and torch.rand(()).item() < 0.5)
        return {"latent_moments": self.moments[index, flip], "text": self.captions[index]}


# --- a generated fallback: coloured shapes with captions ---

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 190), "orange": (240, 140, 30)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (size, size), tuple(rng.randint(0, 60) for _ in range(3)))
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = (rng.uniform(r, size - r) for _ in range(2))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def ensure_shapes_dataset(out_dir: Path, n: int = 240, size: int = 64, seed: int = 0) -> Path:
    """A seeded imagefolder of coloured shapes ("a photo of a red circle"), written once (atomically) to out_dir."""
    if (out_dir / METADATA).is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any folder
    rng = random.Random(seed)
    (staging / "images").mkdir()
    lines = []
    for i in range(n):
        colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        name = f"images/{i:05d}.png"
        draw_shape(shape, COLOURS[colour], size, rng).save(staging / name)
        lines.append(json.dumps({"file_name": name, "text": f"a photo of a {colour} {shape}"}))
    (staging / METADATA).write_text("\n".join(lines) + "\n")
    try:
        os.rename(staging, out_dir)
    except OSError:
        if not (out_dir / METADATA).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# --- the datamodule ---


class CaptionedImagesDataModule(L.LightningDataModule):
    """Training pairs (image, caption). Where they come from (`source`):
    auto: data_dir when it exists, else `hub_dataset` when set, else (with `synthetic_fallback`) generated shapes;
    imagefolder | hub | synthetic force one."""

    def __init__(
        self,
        data_dir: str | None = None,
        source: str = "auto",
        hub_dataset: str | None = None,
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
        require_choice("data.source", source, ("auto", "imagefolder", "hub", "synthetic"))
        if batch_size < 1 or resolution < 8:
            raise UserError(f"data.batch_size={batch_size} / data.resolution={resolution}: use >= 1 and >= 8")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.source_used = self.resolve_source()
        # Read the metadata now (cheap): a bad file fails before a large model is loaded, not after.
        self.records = self.read_records() if self.source_used == "imagefolder" else None

    def resolve_source(self) -> str:
        """Which source `auto` means here; a source that cannot work (offline Hub, no folder) fails now."""
        hp = self.hparams
        source = hp.source
        if source == "auto":
            if hp.data_dir and Path(hp.data_dir).exists():
                source = "imagefolder"
            elif hp.hub_dataset:
                source = "hub"
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
        if source == "hub" and not huggingface_hub_reachable():
            raise UserError(
                f"data.hub_dataset={hp.hub_dataset} needs the Hugging Face Hub, which is unreachable (offline): "
                f"set data.data_dir=<image folder with {METADATA}> instead"
            )
        return source

    def read_records(self, data_dir: Path | None = None) -> list[Record]:
        hp = self.hparams
        records = read_metadata(data_dir or Path(hp.data_dir), hp.image_column, hp.caption_column, hp.splits)
        return records[: hp.max_samples]

    def load_items(self) -> list[Record] | object:
        """Checked image records (imagefolder, generated shapes) or the rows of a Hub dataset."""
        hp = self.hparams
        if self.source_used == "hub":
            return self.load_hub()
        if self.source_used == "synthetic":
            if not hp.synthetic_dir:
                raise UserError(
                    "data.source=synthetic needs data.synthetic_dir=<folder to generate the shapes in>"
                )
            self.records = self.read_records(ensure_shapes_dataset(Path(hp.synthetic_dir)))
        return check_images(self.records, hp.skip_bad_images)

    def load_hub(self) -> object:
        hp = self.hparams
        try:
            import datasets
        except ImportError as err:
            raise UserError("data.hub_dataset needs the `datasets` package: pip install datasets") from err
        rows = datasets.load_dataset(hp.hub_dataset, split="train")
        for column in ("image", hp.caption_column):
            if column not in rows.column_names:
                raise UserError(
                    f"Hub dataset {hp.hub_dataset} has no {column!r} column (has {rows.column_names})"
                )
        return rows.select(range(min(len(rows), hp.max_samples or len(rows))))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        items = self.load_items()
        if len(items) < hp.batch_size:
            raise UserError(
                f"the dataset has {len(items)} images, fewer than data.batch_size={hp.batch_size}"
            )
        transform = image_transform(hp.resolution, hp.center_crop, hp.random_flip)
        self.train_set = CaptionedImages(items, transform, caption_key=hp.caption_column)
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
        plain = CaptionedImages(self.train_set.items, image_transform(hp.resolution, True, False),
                                caption_key=hp.caption_column)  # fmt: skip
        moments, captions = [], []
        for batch in DataLoader(plain, batch_size=hp.batch_size, num_workers=hp.num_workers):
            pixels = batch["pixel_values"]
            moments.append(torch.stack([encode(pixels).cpu(), encode(pixels.flip(-1)).cpu()], dim=1))
            captions.extend(batch["text"])
        self.train_set = CachedLatents(torch.cat(moments), captions, hp.random_flip)
        log.info(
            f"cached VAE latents of {len(captions)} images x 2 flips ({self.train_set.moments.nbytes / 2**20:.0f} MiB)"
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )
