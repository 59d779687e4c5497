"""A NaN or inf loss stops the run before it can reach the weights (or, if asked, skips that optimizer step).

A diverged step writes NaN into every weight it touches, and the next periodic checkpoint would then replace the
last good one with garbage. The check sits just before each optimizer step, on the gradients: they are what the
step applies, a non-finite loss makes them non-finite, and under DDP they are already all-reduced, so every rank
sees the same verdict and takes the same branch with no extra collective. Manual optimization (the GAN's two
steps per batch) and automatic optimization pass through the same hook. DeepSpeed keeps gradients in its own
partitions (none on the parameters): there the check sees nothing and its own overflow handling applies.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from pantheon.utils.errors import UserError, require_choice
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)

ACTIONS = ("stop", "skip")


class NonFiniteLoss(L.Callback):
    """`stop`: raise a UserError naming the step (one `error:` line, exit 2) with the weights and the checkpoints
    on disk untouched. `skip`: drop the step's gradients (the optimizer then leaves every parameter as it is),
    count it in `train/nonfinite_steps_skipped`, and go on."""

    def __init__(self, action: Literal["stop", "skip"] = "stop") -> None:
        require_choice("on_nonfinite_loss", action, ACTIONS)
        self.action = action
        self.skipped = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        self._loss = loss.detach()  # kept for the message only: reading it here would sync every step

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return
        loss = "" if self._loss is None else f" (loss {self._loss.float().item():g})"
        where = f"global step {trainer.global_step}, epoch {trainer.current_epoch}"
        if self.action == "skip":
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            pl_module.log("train/nonfinite_steps_skipped", float(self.skipped), rank_zero_only=True)
            log.warning(f"non-finite gradients at {where}{loss}: step skipped ({self.skipped} so far)")
            return
        raise UserError(
            f"the loss diverged: non-finite gradients at {where}{loss}; the weights were not updated and the "
            f"checkpoints in {trainer.default_root_dir}/checkpoints are the last good ones. Lower the learning "
            "rate, or set on_nonfinite_loss=skip to skip such steps"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
