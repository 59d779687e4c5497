"""Finding runs' outputs: `ckpt=latest` / `pipeline=latest` in pantheon.sample, export and serve (and make)."""

from __future__ import annotations

import os
from pathlib import Path

from pantheon.utils.errors import UserError

LATEST = "latest"


def logs_root() -> Path:
    """Where runs live: $PANTHEON_ROOT/logs, else ./logs (configs/paths/default.yaml's log_dir)."""
    return Path(os.environ.get("PANTHEON_ROOT") or Path.cwd()) / "logs"


def latest_checkpoint(kind: str | None = None, root: Path | None = None) -> Path:
    """The newest checkpoint (by modification time) under `root` (logs_root()) whose recorded kind is `kind`
    (any pantheon kind when None); corrupt and foreign files are skipped."""
    # torch and the models load only when `latest` is asked for
    from pantheon.models.checkpoints import recorded_kind

    root = logs_root() if root is None else root
    candidates = sorted(root.glob("**/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.is_file() and (found := recorded_kind(path)) is not None and kind in (None, found):
            return path
    what = f"{kind} checkpoint" if kind else "pantheon checkpoint"
    train = {"gan": "make train", "diffusion": "make train-diffusion"}.get(kind or "", "make train")
    raise UserError(f"ckpt=latest: no {what} under {root}: train one first ({train}) or pass ckpt=<path>")


def run_dir_of(ckpt: Path) -> Path:
    """The run directory of a checkpoint at <run>/checkpoints/<name>.ckpt (else the checkpoint's folder)."""
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def latest_pipeline(root: Path | None = None) -> Path:
    """The newest diffusers pipeline folder (one with a model_index.json) under `root` (logs_root())."""
    root = logs_root() if root is None else root
    found = sorted(root.glob("**/model_index.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise UserError(
            f"pipeline=latest: no diffusers pipeline under {root}: run `make train-diffusion` "
            "(or `python -m pantheon.export ckpt=<diffusion checkpoint>`) first, or pass pipeline=<folder>"
        )
    return found[0].parent


def resolve_latest(cfg: object, kind: str | None = "gan") -> None:
    """Replace `ckpt=latest` (the newest checkpoint of `kind`; None: of any kind) and `pipeline=latest` on an entry
    point's options, saying which file was picked."""
    if getattr(cfg, "ckpt", None) == LATEST:
        cfg.ckpt = str(latest_checkpoint(kind=kind))
        print(f"ckpt=latest: {cfg.ckpt}")
    if getattr(cfg, "pipeline", None) == LATEST:
        cfg.pipeline = str(latest_pipeline())
        print(f"pipeline=latest: {cfg.pipeline}")
