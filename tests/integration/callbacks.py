"""Test-only callbacks, added to a run from the command line (`+callbacks.<name>._target_=tests.integration...`).

Jobs run from the repository root, where `tests` is importable (python -m puts the working directory first
on sys.path), so srun tasks on the local cluster can load these.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch

from pantheon.cluster import preemption
from pantheon.cluster.environment import restart_count


class DumpWeights(L.Callback):
    """At the end of training every rank writes its state dict (parameters and buffers, with the parameters'
    names) and global step to `<dirpath>/rank<r>.pt`."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {
                "global_step": trainer.global_step,
                "state_dict": state,
                "parameters": [name for name, _ in pl_module.named_parameters()],
                "restart_count": restart_count(),
            },
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )


class HoldAtStep(L.Callback):
    """On the first run of a job (not after a requeue), at global step `step`: write `<marker>` and wait until
    this process receives SLURM's warning signal (at most `timeout_s`), so a test can signal a job at a known
    step. Holding changes no weights, data or random numbers."""

    def __init__(self, step: int, marker: str, timeout_s: float = 120.0) -> None:
        self.step, self.marker, self.timeout_s = step, Path(marker), timeout_s

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if restart_count() > 0 or trainer.global_step != self.step:
            return
        if trainer.is_global_zero:
            self.marker.write_text(f"{trainer.global_step}\n")
        deadline = time.monotonic() + self.timeout_s
        while preemption.received() is None and time.monotonic() < deadline:
            time.sleep(0.1)


class SignalAt(L.Callback):
    """Send this process SIGUSR1 at global step `step`, as SLURM's warning would (in-process tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class SaveCheckpointAtEnd(L.Callback):
    """Every rank calls trainer.save_checkpoint(path) when training ends (a DeepSpeed checkpoint is a directory
    of per-rank shards, so all ranks must take part)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)
