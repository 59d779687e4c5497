"""Open a training checkpoint as its LightningModule, whichever model kind wrote it."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import torch

from pantheon.utils.errors import UserError

# State-dict prefix -> LightningModule class that owns it (imported lazily: diffusers is heavy).
MODEL_KINDS = {
    "generator.": "pantheon.models.gan.module:ConditionalGAN",
    "unet.": "pantheon.models.diffusion.module:DiffusionModule",
}


def load_module(ckpt: str | Path, map_location: str = "cpu") -> L.LightningModule:
    """The module a pantheon checkpoint holds, in eval mode. Missing, corrupt or foreign files: UserError."""
    path = Path(ckpt)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass ckpt=<run dir>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        keys = checkpoint["state_dict"].keys()
    except Exception as err:  # truncated zip, pickle garbage, not a dict: all mean "not a checkpoint"
        raise UserError(
            f"checkpoint {path} is corrupt or not a Lightning checkpoint ({type(err).__name__})"
        ) from err
    for prefix, target in MODEL_KINDS.items():
        if any(key.startswith(prefix) for key in keys):
            module_name, class_name = target.split(":")
            cls = getattr(importlib.import_module(module_name), class_name)
            module = cls.load_from_checkpoint(path, map_location=map_location)
            return module.eval()
    raise UserError(f"checkpoint {path} holds no pantheon model (no generator.* or unet.* weights)")
