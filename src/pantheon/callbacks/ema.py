"""Exponential moving average (EMA) of any model's trainable weights, as a Lightning callback.

The average lives in the callback and is saved in, and restored from, every checkpoint (`checkpoint["callbacks"]
["EMA"]`), so a resumed run continues the same average. Models read it through `ema_weights(module)`, which swaps
the averaged values into the parameters for a block (sampling, validation, export) and restores them after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch

CHECKPOINT_ATTR = "_ema_from_checkpoint"


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """What the EMA averages: the parameters the optimizer trains (a LoRA run: only the adapters), named as
    the unwrapped module names them (FSDP inserts `_fsdp_wrapped_module.`)."""
    return {
        name.replace("_fsdp_wrapped_module.", ""): p
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def full_parameters(trainer: L.Trainer):
    """Under FSDP, parameters outside forward are this rank's shards: gather them (on every rank) so the shadow
    holds full tensors, which checkpoints (rank 0's copy) and export need. Elsewhere, nothing to do."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = trainer.strategy.model
    return FSDP.summon_full_params(model, writeback=False) if isinstance(model, FSDP) else nullcontext()


class EMA(L.Callback):
    """shadow <- decay * shadow + (1 - decay) * weights after every `every_n_steps` optimizer steps.

    With `warmup`, the decay is min(decay, (1 + n) / (10 + n)) after n updates (diffusers' EMAModel default), so a
    short run is not stuck near its initial weights. The shadow is kept in float32 whatever the training precision.
    """

    def __init__(
        self, decay: float = 0.9999, warmup: bool = True, every_n_steps: int = 1, start_step: int = 0
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.every_n_steps, self.start_step = every_n_steps, start_step
        self.shadow: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self.last_step = 0  # the optimizer step of the last update (0: none yet)

    @property
    def state_key(self) -> str:
        return "EMA"

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with full_parameters(trainer):
            params = trainable_parameters(pl_module)
            if self.shadow is None:  # a fresh run (a resumed one got its shadow from load_state_dict)
                self.shadow = {name: p.detach().float().clone() for name, p in params.items()}
        if self.shadow.keys() != params.keys():
            raise RuntimeError("the checkpoint's EMA covers other parameters than this model trains")
        self.shadow = {name: s.to(params[name].device) for name, s in self.shadow.items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step  # counts optimizer steps: with gradient accumulation, update once per step
        if step <= self.last_step or step < self.start_step or step % self.every_n_steps:
            return
        self.last_step = step
        with full_parameters(trainer):
            self.update(pl_module)

    @torch.no_grad()
    def update(self, pl_module: torch.nn.Module) -> None:
        params = trainable_parameters(pl_module)
        shadows = list(self.shadow.values())
        weights = [params[name].detach().float() for name in self.shadow]
        torch._foreach_lerp_(shadows, weights, 1.0 - self.current_decay())
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "num_updates": self.num_updates, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = state_dict["shadow"]
        self.num_updates = state_dict["num_updates"]
        self.last_step = state_dict["last_step"]


@contextmanager
def swapped_in(module: torch.nn.Module, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Parameters named in `values` take those values inside the block and get their own back after."""
    params = dict(module.named_parameters())
    backup = {name: params[name].detach().clone() for name in values}
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in backup.items():
                params[name].copy_(value)


def find_ema(module: L.LightningModule) -> EMA | None:
    trainer = module._trainer  # `module.trainer` raises when no trainer is attached
    return (
        next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None) if trainer is not None else None
    )


def remember_checkpoint_ema(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Call from `on_load_checkpoint`: a module opened without a trainer (export, sampling) keeps the EMA of its
    checkpoint for `ema_weights`. A trainer resuming a run restores the EMA callback instead (no second copy)."""
    if module._trainer is None:
        setattr(module, CHECKPOINT_ATTR, checkpoint.get("callbacks", {}).get("EMA", {}).get("shadow"))


@contextmanager
def ema_weights(module: L.LightningModule) -> Iterator[bool]:
    """Inside the block the module holds its EMA weights, from its trainer's EMA callback or from the checkpoint
    it was loaded from; without either, its live weights. Yields whether EMA weights are in use."""
    ema = find_ema(module)
    shadow = ema.shadow if ema is not None else getattr(module, CHECKPOINT_ATTR, None)
    if shadow is None:
        yield False
        return
    with swapped_in(module, shadow):
        yield True
