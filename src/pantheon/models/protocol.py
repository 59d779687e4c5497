"""What every pantheon model offers the entry points, the cluster checks and the server, declared once.

`pantheon.sample`, `pantheon.export`, `pantheon.serve`, the pre-submit checks and the sample-grid callback never
guess what a module can do: they ask it through this base class. A checkpoint records the class that wrote it
(`checkpoint["pantheon"]`), so `pantheon.models.checkpoints.load_module` opens it as that class and refuses the
wrong kind in one line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from pantheon.utils.errors import UserError

CHECKPOINT_KEY = "pantheon"
KINDS = ("gan", "diffusion")


def strategy_family(strategy: str) -> str:
    """'deepspeed' | 'fsdp' | 'ddp' | the name itself, for a registry name or a strategy class path."""
    lowered = strategy.lower()
    for family in ("deepspeed", "fsdp", "ddp"):
        if family in lowered:
            return family
    return lowered


class GenerativeModule(L.LightningModule, ABC):
    """A trainable generator that can draw a sample grid, export itself and say which strategies it refuses."""

    #: "gan" or "diffusion": which sampler, exporter and server apply to its checkpoints.
    kind: ClassVar[str]
    #: Strategy families (see strategy_family) this model cannot train under -> why, and what to use instead.
    unsupported_strategies: ClassVar[dict[str, str]] = {}

    @classmethod
    def class_path(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def check_strategy(cls, strategy: str) -> None:
        """Refuse, in one line, a strategy this model cannot train under (before anything is built)."""
        reason = cls.unsupported_strategies.get(strategy_family(strategy))
        if reason:
            raise UserError(f"trainer strategy {strategy} cannot train {cls.__name__}: {reason}")

    @abstractmethod
    def sample_grid(self) -> torch.Tensor:
        """A uint8 image grid [3, H, W] from fixed inputs, comparable across epochs (the grid callback logs it)."""

    @abstractmethod
    def export(self, out_dir: str | Path) -> list[Path]:
        """Write files that stock tools load without this code; returns what was written."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record who wrote the checkpoint; subclasses that extend this hook call super()."""
        checkpoint[CHECKPOINT_KEY] = {"class_path": self.class_path(), "kind": self.kind}
