"""Checks on the composed config before anything is built: bad input fails here, in one line."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pantheon.cluster.preflight import check_job_layout, devices_per_node, reject_unsupported_strategy
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


CUDA_ACCELERATORS = ("gpu", "cuda")


def check_hardware(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without (enough) CUDA GPUs fails here with the fix, not in Lightning's
    MisconfigurationException after the data and model were built. Only where the job runs: a submitting
    machine (a SLURM login node) has no GPU to see."""
    accelerator = cfg.get("trainer", {}).get("accelerator")
    if not isinstance(accelerator, str) or accelerator.lower() not in CUDA_ACCELERATORS:
        return
    from lightning.fabric.accelerators.cuda import num_cuda_devices  # NVML-based: does not initialise CUDA

    visible = num_cuda_devices()
    choice = OmegaConf.select(cfg, "hydra.runtime.choices.trainer", default=None)
    asked = (
        f"trainer={choice}"
        if choice and choice not in ("cpu", "default")
        else f"trainer.accelerator={accelerator}"
    )
    if visible == 0:
        raise UserError(f"{asked} needs a CUDA GPU but torch sees none here: use trainer=cpu")
    try:
        wanted = devices_per_node(cfg)
    except UserError:  # 'auto' or -1: Lightning takes what there is
        return
    devices = cfg.trainer.get("devices")
    highest = max(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else wanted - 1
    if wanted > visible or highest >= visible:
        raise UserError(
            f"{asked} with trainer.devices={devices} needs {max(wanted, highest + 1)} CUDA GPUs but torch sees "
            f"{visible} here: use trainer.devices={visible} (or trainer.devices=auto)"
        )


def check_ckpt_path(cfg: DictConfig) -> None:
    """An explicit ckpt_path must exist before anything is built (pantheon.cluster.resume reads it at fit time)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, "", "none", "null", "last"):
        return
    if not Path(str(ckpt_path)).exists():
        raise UserError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file, `last` or null")


def check_config(cfg: DictConfig, in_job: bool = True) -> None:
    """All pre-flight checks of a training config: in the run itself, before Hydra writes anything
    (pantheon.utils.hydra_preflight), and per job in the submitting process (`in_job=False`,
    pantheon.cluster.launcher) before anything is queued."""
    reject_secrets(cfg)
    reject_unsupported_strategy(cfg)
    if in_job:
        check_job_layout(cfg)
        check_hardware(cfg)
        check_ckpt_path(cfg)
