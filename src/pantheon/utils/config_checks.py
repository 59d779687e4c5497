"""Checks on the composed config before anything is built: bad input fails here, in one line."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pantheon.cluster.preflight import check_job_layout, reject_unsupported_strategy
from pantheon.utils.errors import UserError

SECRET_WORDS = ("api_key", "apikey", "token", "password", "secret")


def reject_secrets(cfg: DictConfig) -> None:
    """Secrets never enter a config (it is dumped to the run dir and to loggers): they come from the environment."""

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                if any(word in str(key).lower() for word in SECRET_WORDS) and value not in (None, ""):
                    raise UserError(
                        f"config key {name} looks like a secret: remove it and set it in the environment "
                        "(e.g. WANDB_API_KEY) so it never lands in a config dump, log or checkpoint"
                    )
                walk(value, name)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{prefix}[{i}]")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def check_config(cfg: DictConfig, in_job: bool = True) -> None:
    """All pre-flight checks of a training config: in the run itself, and per job in the submitting process
    (`in_job=False`, pantheon.cluster.launcher) before anything is queued."""
    reject_secrets(cfg)
    reject_unsupported_strategy(cfg)
    if in_job:
        check_job_layout(cfg)
