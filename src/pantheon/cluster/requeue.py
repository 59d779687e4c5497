"""Preemption-safe runs: on SLURM's warning signal, checkpoint at the next batch boundary and requeue the job.

The one mechanism
-----------------
Three could handle the warning; exactly one does:

- this callback: the signal only sets a flag (pantheon.cluster.signals); at the end of the next training batch
  all ranks agree (one all-reduce of the flag: whichever rank was signalled, all save together), write
  `<run dir>/checkpoints/last.ckpt` atomically, rank 0 runs `scontrol requeue <job>`, and every rank exits.
  The requeued job lands in the same run directory (named by the job id, or the sweep dir fixed at submit
  time) and resumes from last.ckpt (`ckpt_path: last`), at the same global step.
- Lightning's SLURMEnvironment auto-requeue: switched off (`SLURMEnvironment(auto_requeue=False)`, see
  environment.lightning_cluster_environment). It saves from inside the signal handler, wherever the ranks
  happen to be: in DDP one rank may be in a gradient all-reduce while another starts the save's barrier, and
  the checkpoint can be taken halfway through a GAN step (D updated, G not), which no resume can replay.
- submitit's checkpoint-and-requeue: switched off. hydra-submitit-launcher's `checkpoint()` resubmits the
  same call without saving any training state, and it exists only for submitit-launched jobs, not for sbatch.
  Our handler replaces submitit's SIGUSR2 handler at the start of the job, and the launcher configs set
  `max_num_timeout: 0` so that submitit never requeues on its own.

One mechanism therefore serves sbatch (warning SIGUSR1 via `--signal=USR1@<s>`) and submitit (SIGUSR2) alike.

Exiting: once the checkpoint is on disk, the other ranks exit 0 and rank 0 requeues, then exits 0 (SystemExit,
not an exception: submitit would record an exception as the job's failed result and the submitting process
would stop waiting). SLURM kills what is left of this run and starts the requeued one. If SLURM refuses the
requeue, rank 0 exits 128 + the signal number and the job fails with the checkpoint saved. Off SLURM (a
workstation, `kill -USR1 <pid>`) every rank saves, says how to resume and exits 128 + the signal number.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L

from pantheon.cluster import signals
from pantheon.cluster.checkpointing import save_checkpoint_atomically
from pantheon.cluster.environment import slurm_job_id
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)


def requeue_job() -> bool:
    """`scontrol requeue` this job (array task included); False off SLURM or when SLURM refuses."""
    job = slurm_job_id()
    if job is None:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning(f"scontrol requeue {job} failed: {err}")
        return False
    if result.returncode != 0:
        log.warning(f"scontrol requeue {job} failed (exit {result.returncode}): {result.stderr.strip()}")
        return False
    return True


class RequeueOnSignal(L.Callback):
    """Checkpoint and requeue when SLURM warns that the job will end (time limit or preemption)."""

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt", requeue: bool = True) -> None:
        self.path = Path(dirpath) / filename
        self.requeue = requeue

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        signals.install()  # idempotent; train() installs it earlier, tests and notebooks may not

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # One cheap collective per batch: every rank must take the same branch, or the save's barrier hangs.
        if not trainer.strategy.reduce_boolean_decision(signals.received() is not None, all=False):
            return
        code = 128 + trainer.strategy.broadcast(int(signals.received() or signal.SIGUSR1), src=0)
        save_checkpoint_atomically(trainer, self.path)  # every rank, ends with a barrier
        log.info(f"warning signal: saved {self.path} at global step {trainer.global_step}")
        signals.clear()  # handled (matters only to in-process callers that fit again)
        # No collective after this point: once rank 0 requeues, SLURM kills the other ranks at any moment.
        if self.requeue and slurm_job_id() is not None:
            if not trainer.is_global_zero:
                raise SystemExit(0)
            if requeue_job():
                log.info(f"requeued SLURM job {slurm_job_id()}: it resumes from this checkpoint")
                raise SystemExit(0)
            log.error("the job was not requeued: resubmit it to resume from this checkpoint")
            raise SystemExit(code)
        log.warning(
            f"stopped at global step {trainer.global_step}; resume with ckpt_path={self.path} "
            f"(or rerun with hydra.run.dir={trainer.default_root_dir} and ckpt_path=last)"
        )
        raise SystemExit(code)
