"""Checkpoints that survive preemption: atomic writes and the choice of what to resume from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

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


def resolve_resume_checkpoint(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """`last` resumes this run directory's last.ckpt when there is one (a requeued job, a rerun with the
    same hydra.run.dir); an explicit path must exist; null starts fresh."""
    if ckpt_path in (None, "", "none", "null"):
        return None
    if ckpt_path == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file, `last` or null")
    return str(ckpt_path)
