"""Checks that a run fits where it will run, made before anything is built or submitted.

Three moments, one rule each: a job that cannot work fails here, in one line the user can act on.
- when the config is checked (every run): strategies the model declares it cannot use (GAN + DeepSpeed/FSDP);
- in the submitting process, per job of a sweep, before submitit queues anything: the SLURM allocation
  (nodes, tasks per node) equals the processes Lightning expects (num_nodes, devices);
- inside a SLURM job, before any model is built: the srun step that started us has that layout too
  (sbatch users choose the layout on the command line, so it is checked where it lands).
"""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig

from pantheon.cluster.environment import in_slurm_job, srun_layout
from pantheon.models.protocol import GenerativeModule, strategy_family
from pantheon.utils.errors import UserError


def strategy_name(cfg: DictConfig) -> str:
    """The trainer's strategy as one string: a registry name ('ddp', 'deepspeed_stage_2') or a _target_ path."""
    strategy = cfg.trainer.get("strategy")
    if strategy is None:
        return "auto"
    if isinstance(strategy, str):
        return strategy
    return str(strategy.get("_target_", "auto"))


def uses_deepspeed(cfg: DictConfig) -> bool:
    return strategy_family(strategy_name(cfg)) == "deepspeed"


def reject_unsupported_strategy(cfg: DictConfig) -> None:
    """Ask the configured model class (its GenerativeModule declaration) whether it trains under this strategy,
    before anything is built."""
    target = cfg.get("model", {}).get("_target_")
    if not target:
        return
    try:
        cls = get_class(str(target))
    except Exception as err:
        raise UserError(f"model._target_={target} cannot be imported ({type(err).__name__}: {err})") from err
    if isinstance(cls, type) and issubclass(cls, GenerativeModule):
        cls.check_strategy(strategy_name(cfg))


def devices_per_node(cfg: DictConfig) -> int:
    """trainer.devices as a count (an int, a list of device ids or a '0,1' string); 'auto' and -1 are not
    counts, and a cluster job needs one to size its tasks."""
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if not isinstance(devices, (str, int)) and len(devices) > 0:  # a list of device ids
        return len(devices)
    raise UserError(
        f"trainer.devices={devices!r}: set the number of devices per node (e.g. trainer.devices=4)"
    )


def num_nodes(cfg: DictConfig) -> int:
    return int(cfg.trainer.get("num_nodes", 1) or 1)


def batch_size_summary(cfg: DictConfig) -> str:
    """'batch size: 32 per device x 4 devices (2 per node x 2 nodes) = 128 global', plus accumulation."""
    per_device = cfg.get("data", {}).get("batch_size")
    if per_device is None:
        return "batch size: data.batch_size is not set"
    devices, nodes = devices_per_node(cfg), num_nodes(cfg)
    world = devices * nodes
    line = (
        f"batch size: {per_device} per device x {world} device{'s' if world > 1 else ''} "
        f"({devices} per node x {nodes} node{'s' if nodes > 1 else ''}) = {per_device * world} global"
    )
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    if accumulate > 1:
        line += f", x {accumulate} accumulated = {per_device * world * accumulate} per optimizer step"
    return line


def check_slurm_allocation(cfg: DictConfig, nodes: int, tasks_per_node: int) -> None:
    """Pre-submit: srun starts tasks_per_node x nodes processes and Lightning expects devices x num_nodes;
    anything else hangs at the first collective or dies in Lightning's own check, minutes later in a queue."""
    devices = devices_per_node(cfg)
    if tasks_per_node != devices:
        raise UserError(
            f"SLURM would start {tasks_per_node} task(s) per node but trainer.devices={devices}: one task per "
            f"device, so set slurm.tasks_per_node={devices} (or trainer.devices={tasks_per_node})"
        )
    if nodes != num_nodes(cfg):
        raise UserError(
            f"SLURM would allocate {nodes} node(s) but trainer.num_nodes={num_nodes(cfg)}: set "
            f"slurm.nodes={num_nodes(cfg)} (or trainer.num_nodes={nodes})"
        )


def check_local_allocation(cfg: DictConfig, nodes: int, tasks_per_node: int) -> None:
    """submitit's local executor runs each job as one process on this machine, and Lightning cannot start more
    from inside it (its DDP launcher re-runs the command line, which is submitit's, not ours)."""
    if nodes != 1 or tasks_per_node != 1:
        raise UserError(
            f"hydra/launcher=submitit_local runs one process per job on this machine: keep hydra.launcher.nodes=1 "
            f"and hydra.launcher.tasks_per_node=1 (got {nodes} and {tasks_per_node})"
        )
    if devices_per_node(cfg) * num_nodes(cfg) != 1:
        raise UserError(
            f"hydra/launcher=submitit_local runs one process per job but trainer.devices={devices_per_node(cfg)} x "
            f"trainer.num_nodes={num_nodes(cfg)}: use trainer.devices=1 trainer.num_nodes=1, or run multi-process "
            "DDP without submitit (`python -m pantheon.train -m ...`) or with hydra/launcher=submitit_slurm"
        )


def check_job_layout(cfg: DictConfig) -> None:
    """In a SLURM job: the srun step that started this process has one task per device on num_nodes nodes.
    Outside SLURM (a workstation, Lightning's own launcher) there is nothing to check."""
    if not in_slurm_job():
        return
    devices, nodes = devices_per_node(cfg), num_nodes(cfg)
    layout = srun_layout()
    if layout is None:
        if devices * nodes > 1:
            raise UserError(
                f"trainer wants {devices * nodes} processes ({devices} per node x {nodes} nodes) but this runs "
                "in the batch script itself: start it with srun --ntasks-per-node=<devices> (slurm/*.sbatch do)"
            )
        return
    step_nodes, tasks = layout
    if step_nodes != nodes or any(t != devices for t in tasks):
        raise UserError(
            f"srun started {'+'.join(map(str, tasks))} task(s) on {step_nodes} node(s) but trainer.devices={devices} "
            f"and trainer.num_nodes={nodes}: pass trainer.devices=<tasks per node> trainer.num_nodes=<nodes> "
            "matching sbatch's --ntasks-per-node and --nodes"
        )
