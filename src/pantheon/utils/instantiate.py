"""Build callbacks and loggers from their config groups (each entry a `_target_` node)."""

from __future__ import annotations

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from pantheon.utils.logging import RankedLogger
from pantheon.utils.offline import host_reachable

log = RankedLogger(__name__)
WANDB_HOST = "api.wandb.ai"


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return [hydra.utils.instantiate(node) for node in (cfg or {}).values() if node and "_target_" in node]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Loggers; a wandb logger asked to go online falls back to offline when wandb is unreachable, so a
    run never blocks on the network (wandb.init blocks ~70 s offline otherwise)."""
    loggers = []
    for name, node in (cfg or {}).items():
        if not node or "_target_" not in node:
            continue
        if name == "wandb" and not node.get("offline", True) and not host_reachable(WANDB_HOST):
            log.warning(f"{WANDB_HOST} unreachable: wandb logs offline (upload later with `wandb sync`)")
            node = node.copy()
            node.offline = True
        loggers.append(hydra.utils.instantiate(node))
    return loggers
