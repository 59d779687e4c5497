"""Checkpoints that survive preemption: atomic writes and the choice of what to resume from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

from pantheon.utils.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to `<path>.tmp` then rename: a job killed mid-save never leaves a truncated checkpoint
    in place of the previous good one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Swap a finished directory in: the previous one stays as `<path>.old` until the new one is in place,
    so a crash at any moment leaves either `path` or `<path>.old` complete (resolve_resume_checkpoint
    falls back to .old)."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint_atomically(trainer: L.Trainer, path: str | Path) -> None:
    """trainer.save_checkpoint (call it on every rank), never leaving a half-written checkpoint at `path`.
    Files go through AtomicCheckpointIO; DeepSpeed writes a directory of per-rank shards, so it is written
    beside `path` and swapped in by rank 0 once every rank has finished."""
    path = Path(path)
    if not isinstance(trainer.strategy, DeepSpeedStrategy):
        trainer.save_checkpoint(path)
        return
    tmp = path.with_name(path.name + ".tmp")
    if trainer.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.strategy.barrier("pantheon.save_checkpoint_atomically.clean")
    trainer.save_checkpoint(tmp)  # ends with a barrier: every rank's shards are on disk
    if trainer.is_global_zero:
        _replace_dir(tmp, path)
    trainer.strategy.barrier("pantheon.save_checkpoint_atomically.swap")


def resolve_resume_checkpoint(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """`last` resumes this run directory's last.ckpt when there is one (a requeued job, a rerun with the
    same hydra.run.dir); an explicit path must exist; null starts fresh. A checkpoint is a file, or a
    directory for DeepSpeed (with `last.ckpt.old` left by an interrupted swap as the fallback)."""
    if ckpt_path in (None, "", "none", "null"):
        return None
    if ckpt_path == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        for candidate in (last, last.with_name(last.name + ".old")):
            if candidate.exists():
                return str(candidate)
        return None
    if not Path(ckpt_path).exists():
        raise UserError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file, `last` or null")
    return str(ckpt_path)
