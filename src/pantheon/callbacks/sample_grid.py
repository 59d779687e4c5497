"""Save the model's sample grid as a PNG in the run directory and log it to every logger, each epoch.

Shared by every model kind: the LightningModule provides `sample_grid() -> uint8 [3, H, W]` (the GAN's
10x10 digits, the diffusion model's validation prompts); this callback owns files and loggers.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.io import write_png


def log_image(trainer: L.Trainer, key: str, image: torch.Tensor) -> None:
    """Send a uint8 [3, H, W] image to each logger that takes images (uint8: float arrays log all black)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image.permute(1, 2, 0).cpu().numpy()], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=trainer.global_step)


class SampleGrid(L.Callback):
    """Every `every_n_epochs` validation epochs (or every `every_n_steps` train steps), write and log a grid."""

    def __init__(self, dirpath: str, every_n_epochs: int = 1, every_n_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps

    @rank_zero_only
    def save_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        grid = pl_module.sample_grid().cpu()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"epoch={trainer.current_epoch:03d}-step={trainer.global_step:07d}.png"
        write_png(grid, str(path))
        log_image(trainer, "samples/grid", grid)
        return path

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_steps:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save_and_log(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save_and_log(trainer, pl_module)
