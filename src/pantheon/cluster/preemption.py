"""Preemption: SLURM's warning signal -> every rank saves last.ckpt at a batch boundary -> the job requeues.

How a preemption flows (this module does all of it; pantheon.cluster.resume takes over in the requeued job)
------------------------------------------------------------------------------------------------------------
1. `install()`, the first line of train(): SIGUSR1 (the sbatch templates' `--signal=USR1@<s>`, Lightning's
   convention, or `scancel --signal=USR1`) and SIGUSR2 (submitit's) only set a flag. Saving inside a handler
   would interrupt whatever the process was doing, possibly a collective the other ranks wait in, or a GAN step
   halfway (D updated, G not), which no resume can replay.
2. `Preemption`, a callback: at the end of a training batch the ranks agree whether any of them was signalled
   (one all-reduce of the flag, every `check_every_n_batches` batches; single-process runs read the flag every
   batch, for free), then all of them write `<run dir>/checkpoints/last.ckpt` atomically (`save_checkpoint`).
3. Rank 0 runs `scontrol requeue <job>` and every rank exits 0 (SystemExit, not an exception: submitit would
   record an exception as the job's failed result). SLURM starts the job again in the same run directory
   (named by the job id, or the sweep dir fixed at submit time), where `ckpt_path: last` resumes it. If SLURM
   refuses, rank 0 exits 128 + the signal number with the checkpoint saved. Off SLURM (`kill -USR1 <pid>`)
   every rank saves, says how to resume and exits 128 + the signal number.

Two other mechanisms could react to the same signal and are off: Lightning's SLURMEnvironment auto-requeue
(`auto_requeue=False` in environment.lightning_cluster_environment; it saves from inside the handler) and
submitit's checkpoint-and-requeue (it resubmits without saving training state; our handler replaces its SIGUSR2
handler and the launcher configs set `max_num_timeout: 0`). One mechanism serves sbatch and submitit alike.

Interrupts: Ctrl-C (SIGINT) and SIGTERM (`kill <pid>`, `docker stop`, `scancel`, a time limit) go through the same
path, with one difference: they mean "stop", so the job is never requeued. Every rank saves last.ckpt at the next
batch boundary, the run says how to resume and exits 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C stops at once
(Lightning's KeyboardInterrupt path, exit 1) without saving. DataLoader workers, which a terminal's Ctrl-C reaches
too, inherit the recording handler (they fork after `install()`) and keep serving batches until the save.
Lightning's own SIGTERM handler (it raises at the next batch, saving nothing) is replaced at train start.
"""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

from pantheon.cluster.environment import slurm_job_id
from pantheon.utils import atomic
from pantheon.utils.errors import UserError
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)

WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # "the job will end": save, then requeue
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # "stop": save, never requeue
_received: signal.Signals | None = None


# --- 1. the signal: recorded, acted on at the next batch boundary ---


def _record(signum: int, frame: FrameType | None) -> None:
    global _received
    if signum == signal.SIGINT and _received == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
    if _received in INTERRUPT_SIGNALS and signum in WARNING_SIGNALS:
        return  # a stop asked for stays a stop: a later warning must not turn it into a requeue
    _received = signal.Signals(signum)


def install() -> None:
    """Record WARNING_SIGNALS and INTERRUPT_SIGNALS from now on (idempotent). Call it as early as possible:
    until then SIGUSR1 kills the process (its default action) and SIGUSR2 runs submitit's handler."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (e.g. not in some test runners)
    for sig in (*WARNING_SIGNALS, *INTERRUPT_SIGNALS):
        signal.signal(sig, _record)


def received() -> signal.Signals | None:
    """The warning signal this process received, or None."""
    return _received


def clear() -> None:
    global _received
    _received = None


# --- 2. the save: atomic, on every rank ---


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint file (ModelCheckpoint's too) is written beside its path and renamed into place: a job
    killed mid-save never leaves a truncated checkpoint in place of the previous good one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic.publish(path) as staging:
                super().save_checkpoint(checkpoint, staging, storage_options)
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as a RuntimeError
            if not _disk_full(err):
                raise
            free = shutil.disk_usage(Path(path).parent).free
            raise UserError(
                f"no space left on the device of {path} ({free / 2**20:.0f} MiB free) while saving a checkpoint: "
                "free some space or point paths.log_dir at a larger disk, then rerun to resume; the previous "
                "checkpoint is intact"
            ) from err


def _disk_full(err: BaseException) -> bool:
    """Whether saving failed because the disk (or the user's quota) is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err)


def save_checkpoint(trainer: L.Trainer, path: str | Path) -> None:
    """trainer.save_checkpoint (call it on every rank), never leaving a half-written checkpoint at `path`.
    Files go through AtomicCheckpointIO; DeepSpeed writes a directory of per-rank shards, so every rank writes
    into one staging directory and rank 0 swaps it in once all have finished."""
    path = Path(path)
    if not isinstance(trainer.strategy, DeepSpeedStrategy):
        trainer.save_checkpoint(path)
        return
    staging = path.with_name(path.name + ".tmp")
    if trainer.is_global_zero:
        atomic.discard(staging)
    trainer.strategy.barrier("pantheon.save_checkpoint.clean")
    trainer.save_checkpoint(staging)  # ends with a barrier: every rank's shards are on disk
    if trainer.is_global_zero:
        atomic.swap_in(staging, path)
    trainer.strategy.barrier("pantheon.save_checkpoint.swap")


# --- 3. the requeue ---


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


class Preemption(L.Callback):
    """Checkpoint and requeue when SLURM warns that the job will end (time limit or preemption)."""

    def __init__(
        self,
        dirpath: str | Path,
        check_every_n_batches: int = 1,
        filename: str = "last.ckpt",
        requeue: bool = True,
    ) -> None:
        if check_every_n_batches < 1:
            raise ValueError(f"check_every_n_batches={check_every_n_batches}: use 1 or more")
        self.path = Path(dirpath) / filename
        self.check_every_n_batches = check_every_n_batches
        self.requeue = requeue

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        install()  # idempotent; train() installs it earlier, tests and notebooks may not

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        install()  # again: Lightning registered its SIGTERM handler after setup (it would stop without saving)

    def signalled(self, trainer: L.Trainer) -> bool:
        """Whether any rank was signalled. Every rank must take the same branch, or the save's barrier hangs, so
        several ranks agree through one all-reduce (and a host sync), which runs every check_every_n_batches."""
        if trainer.world_size == 1:
            return received() is not None
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        if batches % self.check_every_n_batches:
            return False
        return trainer.strategy.reduce_boolean_decision(received() is not None, all=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.signalled(trainer):
            return
        signum = signal.Signals(trainer.strategy.broadcast(int(received() or signal.SIGUSR1), src=0))
        code = 128 + signum
        save_checkpoint(trainer, self.path)  # every rank, ends with a barrier
        log.info(f"{signum.name}: saved {self.path} at global step {trainer.global_step}")
        clear()  # handled (matters only to in-process callers that fit again)
        # No collective after this point: once rank 0 requeues, SLURM kills the other ranks at any moment.
        if self.requeue and signum in WARNING_SIGNALS and slurm_job_id() is not None:
            if not trainer.is_global_zero:
                raise SystemExit(0)
            if requeue_job():
                log.info(f"requeued SLURM job {slurm_job_id()}: it resumes from this checkpoint")
                raise SystemExit(0)
            log.warning(
                f"not requeued from here: exiting {code} with the checkpoint saved; slurm/task.sh requeues the job "
                "from outside a container (otherwise resubmit it to resume from this checkpoint)"
            )
            raise SystemExit(code)
        if trainer.is_global_zero:  # on stderr, whatever the logging config: the user is waiting for it
            print(
                f"pantheon: stopped by {signum.name} at global step {trainer.global_step}, exit code {code}; "
                f"resume: rerun the same command with hydra.run.dir={trainer.default_root_dir} "
                f"(or ckpt_path={self.path})",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(code)
