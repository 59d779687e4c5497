"""Where this process runs: ranks and job identity, read from the launcher's environment, never guessed.

Every cluster concern reads from here: SLURM (sbatch/srun, submitit), torchrun and Lightning's own DDP
launcher all export their rank variables before our code runs.
"""

from __future__ import annotations

import os
import re
from datetime import datetime

from lightning.pytorch.plugins.environments import SLURMEnvironment


def global_rank() -> int:
    """Global rank of this process (0 on a workstation)."""
    for var in ("RANK", "SLURM_PROCID", "PMI_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    # Lightning's subprocess launcher (ddp on one node) sets LOCAL_RANK and NODE_RANK only.
    return int(os.environ.get("LOCAL_RANK", 0))


def slurm_job_id() -> str | None:
    """The SLURM job id, with the array task id for job arrays (stable across requeues), or None."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def run_id() -> str:
    """Name of this run's directory: the SLURM job id on a cluster (so a requeued job finds its
    checkpoints), else a timestamp."""
    job = slurm_job_id()
    if job:
        return f"slurm-{job}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def restart_count() -> int:
    """How often SLURM has requeued this job (0 on the first run and off SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def in_srun_step() -> bool:
    """True in a task that srun started (also submitit's tasks); False in the batch script itself, where
    SLURM's rank variables describe the allocation, not this process."""
    return "SLURM_STEP_ID" in os.environ


def parse_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed per-node task counts, e.g. '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise ValueError(f"not a SLURM tasks-per-node list: {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def srun_layout() -> tuple[int, list[int]] | None:
    """(nodes, tasks on each node) of the srun step this process belongs to, or None outside one."""
    if not in_srun_step():
        return None
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "1")
    nodes = int(os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_NNODES", 1))
    return nodes, parse_tasks_per_node(spec)


def lightning_cluster_environment() -> list[SLURMEnvironment]:
    """Lightning's SLURM environment (ranks from srun) with its auto-requeue switched off, when Lightning
    would pick SLURM at all: requeueing is pantheon.cluster.preemption's job, and two handlers of one signal
    would each save and requeue. An empty list elsewhere (Lightning then detects its own environment)."""
    # SLURMEnvironment.detect()'s rule, without its "srun is available but not used" warning.
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return []
    # MASTER_ADDR: slurm/task.sh, the wrapper of every task, exports it (NodeAddr where DNS does not know the
    # node); without it, Lightning takes the first node's name from SLURM_NODELIST.
    return [SLURMEnvironment(auto_requeue=False)]
