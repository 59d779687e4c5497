"""The generic EMA callback: the average's math, swapping, and a resumed run continuing the same average."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pantheon.callbacks.ema import EMA, ema_weights, remember_checkpoint_ema, swapped_in


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 1).requires_grad_(False)  # not trained, so not averaged

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x) + self.frozen(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def loader() -> DataLoader:
    """3 batches an epoch, in a fixed order."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def fit(
    root: Path, max_epochs: int, ema: EMA, ckpt_path: str | None = None, accumulate: int = 1
) -> Regression:
    torch.manual_seed(0)
    model = Regression()
    trainer = L.Trainer(
        default_root_dir=root, max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ema], accumulate_grad_batches=accumulate,
    )  # fmt: skip
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model


def test_ema_follows_the_formula_and_covers_only_trained_weights(tmp_path: Path) -> None:
    ema = EMA(decay=0.5, warmup=False)
    model = Regression()
    ema.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert set(ema.shadow) == {"net.weight", "net.bias"}
    start = model.net.weight.detach().clone()
    with torch.no_grad():
        model.net.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["net.weight"], start + 0.5)  # 0.5 * old + 0.5 * (old + 1)
    with ema_weights(model):  # no trainer, no checkpoint EMA: live weights
        torch.testing.assert_close(model.net.weight, start + 1)
    with swapped_in(model, ema.shadow):
        torch.testing.assert_close(model.net.weight, start + 0.5)
    torch.testing.assert_close(model.net.weight, start + 1), "swapped back"


def test_warmup_decay_and_one_update_per_optimizer_step(tmp_path: Path) -> None:
    ema = EMA(decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    fit(tmp_path, max_epochs=2, ema=ema, accumulate=3)
    assert ema.num_updates == 2, "6 micro-batches, 2 optimizer steps"


def test_resumed_run_continues_the_same_average(tmp_path: Path) -> None:
    straight = EMA(decay=0.9)
    straight_model = fit(tmp_path / "a", max_epochs=2, ema=straight)

    first = EMA(decay=0.9)
    fit(tmp_path / "b", max_epochs=1, ema=first)
    ckpt = next((tmp_path / "b").rglob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=False)
    assert saved["callbacks"]["EMA"]["num_updates"] == 3
    resumed = EMA(decay=0.9)
    resumed_model = fit(tmp_path / "b", max_epochs=2, ema=resumed, ckpt_path=str(ckpt))
    torch.testing.assert_close(resumed_model.net.weight, straight_model.net.weight)

    assert resumed.num_updates == straight.num_updates == 6
    for name, value in straight.shadow.items():
        torch.testing.assert_close(resumed.shadow[name], value)

    # A module opened from the checkpoint (no trainer) uses the checkpoint's EMA in ema_weights.
    model = Regression()
    remember_checkpoint_ema(model, saved)
    with ema_weights(model) as used:
        assert used
        torch.testing.assert_close(model.net.weight, saved["callbacks"]["EMA"]["shadow"]["net.weight"])
