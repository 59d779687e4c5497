"""Images -> JSON-safe strings: a base64 PNG grid, base64 PNGs one per image, or base64 raw uint8 bytes."""

from __future__ import annotations

import base64
import math

import numpy as np
import torch
from torchvision.io import encode_png
from torchvision.utils import make_grid

GRID_PADDING = 2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def grid_columns(n: int) -> int:
    """The grid `pantheon.sample` writes: ceil(sqrt(n)) columns, 2 px white padding."""
    return math.ceil(math.sqrt(n))


def png_grid(images: np.ndarray) -> bytes:
    """uint8 [N, H, W] -> one grayscale PNG grid."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    grid = make_grid(batch, nrow=grid_columns(len(images)), padding=GRID_PADDING, pad_value=255)
    return encode_png(grid[:1].contiguous()).numpy().tobytes()


def png(image: torch.Tensor) -> bytes:
    """uint8 [C, H, W] -> PNG bytes."""
    return encode_png(image.contiguous()).numpy().tobytes()
