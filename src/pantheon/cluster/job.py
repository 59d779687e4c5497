"""What every training process takes from the cluster package: three calls in train.py.

prepare_job()                        first thing: catch SLURM's warning signal from now on
make_train_order_resumable(dm, seed) the train loader's position becomes part of checkpoints
Trainer(callbacks=[..., *job_callbacks(cfg)], plugins=job_plugins())
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from pantheon.cluster import signals
from pantheon.cluster.checkpointing import AtomicCheckpointIO
from pantheon.cluster.environment import lightning_cluster_environment
from pantheon.cluster.requeue import RequeueOnSignal
from pantheon.cluster.resume import ExactResume, make_train_order_resumable

__all__ = ["job_callbacks", "job_plugins", "make_train_order_resumable", "prepare_job"]


def prepare_job() -> None:
    """Install the warning-signal handler (before SIGUSR1's default action can kill a slow start-up)."""
    signals.install()


def job_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Exact resume (reseeding per batch) and checkpoint-and-requeue on SLURM's warning, into this run's
    checkpoints/last.ckpt, which `ckpt_path: last` resumes."""
    return [ExactResume(cfg.seed), RequeueOnSignal(Path(cfg.paths.output_dir) / "checkpoints")]


def job_plugins() -> list:
    """Atomic checkpoint files, and Lightning's SLURM environment with its own auto-requeue off."""
    return [AtomicCheckpointIO(), *lightning_cluster_environment()]
