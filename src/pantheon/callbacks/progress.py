"""The progress bar: Lightning's RichProgressBar, with an epoch count that makes sense for step-bounded runs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning shows `Epoch i/<max_epochs - 1>`, which reads "Epoch 0/-2" for a run bounded by
    trainer.max_steps (max_epochs=-1, the diffusion experiments). Such a run says what bounds it instead."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch} (to max_steps={self.trainer.max_steps})"
        return f"{description:{len(self.validation_description)}}"
