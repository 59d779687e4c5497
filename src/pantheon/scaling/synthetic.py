"""Synthetic batches (`data._target_=pantheon.scaling.synthetic.SyntheticData data.kind=gan|diffusion`): one
random batch served over and over, no decoding, no augmentation, so a scaling point measures compute and
communication, not the input pipeline. The other keys of the replaced data config are accepted and ignored."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

KINDS = ("gan", "diffusion")


class RepeatedSample(Dataset):
    """`length` copies of one fixed, seeded sample of the given kind."""

    def __init__(self, kind: str, length: int, resolution: int = 64, seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"data.kind={kind!r}: use one of {', '.join(KINDS)}")
        g = torch.Generator().manual_seed(seed)
        self.kind, self.length = kind, length
        if kind == "gan":
            self.sample = (torch.rand(1, 28, 28, generator=g) * 2 - 1, 3)
        else:
            self.sample = {"pixel_values": torch.rand(3, resolution, resolution, generator=g) * 2 - 1,
                           "text": "a photo of a sunflower"}  # fmt: skip

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.sample


class SyntheticData(L.LightningDataModule):
    def __init__(
        self, kind: str, batch_size: int, length: int = 100_000, resolution: int = 64, **_: Any
    ) -> None:
        super().__init__()
        self.kind, self.batch_size, self.length, self.resolution = kind, batch_size, length, resolution

    def train_dataloader(self) -> DataLoader:
        dataset = RepeatedSample(self.kind, self.length, self.resolution)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=0)
