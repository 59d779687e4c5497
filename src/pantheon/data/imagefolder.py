"""Reading and checking an imagefolder with metadata.jsonl (the Hugging Face datasets / diffusers convention):
one JSON object per image, `{"file_name": "images/0001.jpg", "text": "a photo of a rose"}`. A caption field may
hold a list of captions (diffusers' convention); one of them is picked per sample at training time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pantheon.utils.errors import UserError
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Record:
    image: Path
    captions: tuple[str, ...]


def captions_of(value: object, where: str) -> tuple[str, ...]:
    """A caption field as a tuple of captions: a string, or a non-empty list of strings."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UserError(f"{where}: the caption must be a string or a non-empty list of strings, got {value!r}")


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
        records.append(
            Record(data_dir / row[image_column], captions_of(row[caption_column], f"{meta} line {number}"))
        )
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
