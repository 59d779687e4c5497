"""A generated fallback for text-to-image runs on a bare offline machine: coloured shapes with captions
("a photo of a red circle"), as an imagefolder with metadata.jsonl, seeded and written once."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from pantheon.data.imagefolder import METADATA
from pantheon.utils import atomic

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 190), "orange": (240, 140, 30)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
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
    """The shapes imagefolder at out_dir, generated there first (atomically: ranks may race here) when missing."""
    if (out_dir / METADATA).is_file():
        return out_dir
    rng = random.Random(seed)
    with atomic.publish(out_dir, directory=True, keep_existing=True) as staging:
        (staging / "images").mkdir()
        lines = []
        for i in range(n):
            colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
            name = f"images/{i:05d}.png"
            draw_shape(shape, COLOURS[colour], size, rng).save(staging / name)
            lines.append(json.dumps({"file_name": name, "text": f"a photo of a {colour} {shape}"}))
        (staging / METADATA).write_text("\n".join(lines) + "\n")
    return out_dir
