"""Test-only callbacks, added to a run from the command line (`+callbacks.<name>._target_=tests.integration...`).

Jobs run from the repository root, where `tests` is importable (python -m puts the working directory first
on sys.path), so srun tasks on the local cluster can load these.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pantheon.cluster import preemption
from pantheon.cluster.environment import restart_count, slurm_job_id


def training_state(trainer: L.Trainer) -> dict[str, Any]:
    """What else a resumed run must reproduce besides the weights: every optimizer's state (Adam moments, step
    counts, param groups), the LR schedulers' positions and the EMA callback's average (None without one)."""
    ema = next((cb for cb in trainer.callbacks if getattr(cb, "state_key", None) == "EMA"), None)
    return {
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        # LambdaLR also saves its lambdas' __dict__ (a functools.partial's): not state, and not weights_only-safe.
        "schedulers": [
            {k: v for k, v in config.scheduler.state_dict().items() if k != "lr_lambdas"}
            for config in trainer.lr_scheduler_configs
        ],
        "ema": ema.state_dict() if ema is not None else None,
    }


class DumpWeights(L.Callback):
    """At the end of training every rank writes its state dict (parameters and buffers, with the parameters'
    names), global step and training_state (optimizers, schedulers, EMA) to `<dirpath>/rank<r>.pt`."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {
                "global_step": trainer.global_step,
                "state_dict": state,
                "parameters": [name for name, _ in pl_module.named_parameters()],
                "restart_count": restart_count(),
                **training_state(trainer),
            },
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )


class HoldAtStep(L.Callback):
    """On the first run of a job (not after a requeue), at global step `step`: write `<marker>` and wait until
    this process receives SLURM's warning signal (at most `timeout_s`), so a test can signal a job at a known
    step. Holding changes no weights, data or random numbers. `rank`: hold only that rank (it writes the marker),
    the others run on into the next collective and wait there, as behind a node that stopped."""

    def __init__(self, step: int, marker: str, timeout_s: float = 120.0, rank: int | None = None) -> None:
        self.step, self.marker, self.timeout_s, self.rank = step, Path(marker), timeout_s, rank

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if restart_count() > 0 or trainer.global_step != self.step:
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_rank == (self.rank or 0):
            self.marker.write_text(f"{trainer.global_step}\n")
        deadline = time.monotonic() + self.timeout_s
        while preemption.received() is None and time.monotonic() < deadline:
            time.sleep(0.1)


class SignalAt(L.Callback):
    """Send this process SIGUSR1 at global step `step`, as SLURM's warning would (in-process tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class SaveCheckpointAtEnd(L.Callback):
    """Every rank calls trainer.save_checkpoint(path) when training ends (a DeepSpeed checkpoint is a directory
    of per-rank shards, so all ranks must take part)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


class PidFile(L.Callback):
    """Every rank writes `<dirpath>/rank<r>.pid` ("<pid> <node>") when training starts, so a test can kill one
    rank's process from outside, as a node that dies would."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
        (self.dirpath / f"rank{trainer.global_rank}.pid").write_text(f"{os.getpid()} {node}\n")


class ChaosPreemption(L.Callback):
    """Preempts this SLURM job at the moments of a plan (the file `plan`: {"seed": n, "events":
    tests.integration.slurm_helpers.chaos_plan(n, ...)}), one per run of the job: rank 0 records the event in `<run dir>/chaos.json` (so the
    requeued job moves on to the next one) and runs `scancel --signal=USR1 <job>`, then every rank waits until
    the signal has arrived. Events: {"kind": "batch", "batch": n} at the end of the n-th batch trained;
    "validation": the first batch of the validation that starts after n batches; "save": inside ModelCheckpoint's
    save after n batches (its on_save_checkpoint hook, before the file is written); "resume": the n-th batch of
    a resumed run (0: when its training starts).

    Why from inside the job and not a test driving scancel: those moments last milliseconds, and only a hook in
    the process can hit them; a test outside could aim at wall-clock times only. The signal still travels the
    real way (scancel -> slurmctld -> slurmstepd -> every task of the step), and waiting for it makes the moment
    exactly the planned one, so a seed replays. Not `scancel --full`: that signals the batch shell as well, which
    has no handler for USR1 and dies with the job (SLURM's `--signal=USR1@<s>` signals the steps only, as here).
    """

    def __init__(self, plan: str, timeout_s: float = 60.0) -> None:
        spec = json.loads(Path(plan).read_text())
        self.seed, self.plan = spec["seed"], spec["events"]
        self.timeout_s = timeout_s
        self.fired: list[dict[str, Any]] = []
        self.start = 0  # batches trained when this run's training started

    @staticmethod
    def batches(trainer: L.Trainer) -> int:
        """Batches trained so far, the count pantheon.cluster.resume reseeds from."""
        return trainer.fit_loop.epoch_loop.batch_progress.total.processed

    def record_path(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / "chaos.json"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = self.record_path(trainer)
        self.fired = json.loads(path.read_text()) if path.is_file() else []

    def fire(self, trainer: L.Trainer, kind: str, at: int) -> None:
        """Preempt now if the plan's next event is (kind, at)."""
        if len(self.fired) >= len(self.plan):
            return
        event = self.plan[len(self.fired)]
        if (event["kind"], event["batch"]) != (kind, at):
            return
        self.fired.append({**event, "restart": restart_count(), "global_step": trainer.global_step})
        if trainer.is_global_zero:
            path = self.record_path(trainer)
            path.with_suffix(".tmp").write_text(json.dumps(self.fired))
            path.with_suffix(".tmp").replace(path)
            job = slurm_job_id()
            print(
                f"chaos: event {len(self.fired)}/{len(self.plan)} {kind}@{at} (seed {self.seed}): "
                f"scancel --signal=USR1 {job}",
                flush=True,
            )
            subprocess.run(["scancel", "--signal=USR1", str(job)], check=True, timeout=30)
        deadline = time.monotonic() + self.timeout_s
        while preemption.received() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"chaos: SIGUSR1 did not arrive within {self.timeout_s:.0f} s of scancel")
            time.sleep(0.02)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self.batches(trainer)
        if trainer.ckpt_path:
            self.fire(trainer, "resume", 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.fire(trainer, "batch", self.batches(trainer))
        if trainer.ckpt_path:
            self.fire(trainer, "resume", self.batches(trainer) - self.start)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.fire(trainer, "validation", self.batches(trainer))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if preemption.received() is None:  # not the preemption's own save
            self.fire(trainer, "save", self.batches(trainer))
