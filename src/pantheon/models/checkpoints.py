"""Open a training checkpoint as the LightningModule that wrote it: the class path is recorded, not guessed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class

from pantheon.models.protocol import CHECKPOINT_KEY, GenerativeModule
from pantheon.utils.errors import UserError

# What a user who handed an entry point the other kind of model is told: what it needs, and what to do instead.
KIND_NEEDS = {
    "gan": "a GAN checkpoint (experiment=mnist_gan*)",
    "diffusion": "a diffusion checkpoint (experiment=flowers_sd*)",
}
KIND_USES = {
    "gan": "sample it with ckpt=<checkpoint> digit=<0-9>",
    "diffusion": "sample it with pipeline=<run>/pipeline (`python -m pantheon.export ckpt=<checkpoint>` writes one)",
}


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path`; missing, corrupt or foreign files are a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass ckpt=<run dir>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        checkpoint["state_dict"]
    except Exception as err:  # truncated zip, pickle garbage, not a dict: all mean "not a checkpoint"
        raise UserError(
            f"checkpoint {path} is corrupt or not a Lightning checkpoint ({type(err).__name__})"
        ) from err
    return checkpoint


def recorded_kind(path: str | Path) -> str | None:
    """The model kind a checkpoint records, None when the file is unreadable or records none (`ckpt=latest`
    skips those). Memory-mapped: only the pickle is read, not the tensors."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return (checkpoint.get(CHECKPOINT_KEY) or {}).get("kind")
    except Exception:
        return None


def module_class(checkpoint: dict[str, Any], path: str | Path) -> type[GenerativeModule]:
    """The GenerativeModule class recorded in the checkpoint."""
    class_path = (checkpoint.get(CHECKPOINT_KEY) or {}).get("class_path")
    if not class_path:
        raise UserError(
            f"checkpoint {path} records no pantheon model class: it was not written by pantheon.train"
        )
    try:
        cls = get_class(class_path)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} names model class {class_path}, which cannot be imported"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModule)):
        raise UserError(f"checkpoint {path} names {class_path}, which is not a pantheon GenerativeModule")
    return cls


def load_module(ckpt: str | Path, kind: str | None = None, map_location: str = "cpu") -> GenerativeModule:
    """The module a pantheon checkpoint holds, in eval mode; `kind` ("gan" | "diffusion") refuses the other."""
    checkpoint = read_checkpoint(ckpt, map_location)
    cls = module_class(checkpoint, ckpt)
    if kind is not None and cls.kind != kind:
        raise UserError(
            f"checkpoint {ckpt} holds a {cls.kind} model ({cls.__name__}), but this needs {KIND_NEEDS[kind]}: "
            f"{KIND_USES[cls.kind]}"
        )
    return cls.load_from_checkpoint(ckpt, map_location=map_location).eval()
