"""Where this process runs: ranks and job identity, read from the launcher's environment, never guessed.

Every cluster concern reads from here: SLURM (sbatch/srun, submitit), torchrun and Lightning's own DDP
launcher all export their rank variables before our code runs.
"""

from __future__ import annotations

import os
from datetime import datetime


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
