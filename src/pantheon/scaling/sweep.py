"""The sweep: one experiment over nodes x devices x strategy, each point a real `pantheon.train` run.

Every point trains `warmup + steps` batches with the Throughput callback (warm-up skipped) and nothing else
that costs time (debug=bare: no validation, no checkpoints, csv logger). Weak scaling keeps the per-device
batch; strong scaling keeps the global batch (per-device = global / world). A point runs locally (one node,
Lightning starts the ranks) or through the submitit launcher on SLURM (one job per point, run one after the
other so points do not share the machine); a point that fails or times out is kept with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pantheon.callbacks.throughput import SUMMARY_FILE


@dataclass(frozen=True)
class Point:
    experiment: str
    strategy: str
    nodes: int
    devices: int
    per_device_batch: int

    @property
    def world(self) -> int:
        return self.nodes * self.devices

    @property
    def name(self) -> str:
        return f"{self.experiment}-{self.strategy}-n{self.nodes}x{self.devices}-b{self.per_device_batch}"


@dataclass
class Settings:
    steps: int = 20
    warmup: int = 5
    launcher: str = "local"  # local | submitit
    slurm_preset: str = "local"
    synthetic: bool = False
    timeout_s: int = 600
    extra: list[str] = field(default_factory=list)
    # OMP/MKL threads per rank (1 on the local cluster's 1-CPU nodes); None: torch's
    threads: int | None = None


@dataclass
class Result:
    point: Point
    status: str  # ok | failed | timed out
    reason: str = ""
    summary: dict | None = None
    wall_s: float = 0.0

    def row(self) -> dict:
        """The point's own fields win over the summary's: its `strategy` is the Lightning class name
        (kept as strategy_class), while tables, grouping and the model key on the trainer preset."""
        summary = dict(self.summary or {})
        summary["strategy_class"] = summary.pop("strategy", None)
        return {**summary, **asdict(self.point), "world": self.point.world, "status": self.status,
                "reason": self.reason, "wall_s": self.wall_s}  # fmt: skip


def grid(experiment: str, strategies: list[str], nodes: list[int], devices: list[int], batch: int,
         global_batch: int | None = None) -> list[Point]:  # fmt: skip
    """Weak scaling (fixed per-device `batch`) or, with global_batch, strong scaling."""
    points = []
    for strategy in strategies:
        for n in nodes:
            for d in devices:
                per_device = batch if global_batch is None else max(1, global_batch // (n * d))
                points.append(Point(experiment, strategy, n, d, per_device))
    return points


SYNTHETIC_KIND = {"mnist_gan": "gan", "mnist_gan_mlp": "gan"}


def overrides(point: Point, settings: Settings, run_dir: Path) -> list[str]:
    """The `pantheon.train` overrides of one point."""
    batches = settings.warmup + settings.steps
    args = [
        f"experiment={point.experiment}",
        f"trainer={point.strategy}",
        f"trainer.num_nodes={point.nodes}",
        f"trainer.devices={point.devices}",
        "debug=bare",
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        f"trainer.limit_train_batches={batches}",
        f"data.batch_size={point.per_device_batch}",
        "ckpt_path=null",
        "+callbacks.throughput._target_=pantheon.callbacks.throughput.Throughput",
        f"+callbacks.throughput.warmup_steps={settings.warmup}",
    ]
    if settings.synthetic:
        kind = SYNTHETIC_KIND.get(point.experiment, "diffusion")
        args += ["data._target_=pantheon.scaling.synthetic.SyntheticData", f"+data.kind={kind}"]
    if settings.launcher == "submitit":
        minutes = max(2, -(-settings.timeout_s // 60))
        args = ["-m", "hydra/launcher=submitit_slurm", f"slurm={settings.slurm_preset}",
                f"slurm.time_min={minutes}", f"hydra.sweep.dir={run_dir}", *args]  # fmt: skip
    else:
        args.append(f"hydra.run.dir={run_dir}")
    return [*args, *settings.extra]


def failure_reason(text: str) -> str:
    """The most telling line of a failed run's output: the last error-looking line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    keys = ("error", "Error", "Exception", "refused", "CANCELLED", "TIMEOUT")
    telling = [line for line in lines if any(k in line for k in keys)]
    return (telling or lines or ["no output"])[-1][:300]


def impossible(point: Point, settings: Settings) -> str | None:
    """Why a point cannot run at all under these settings (kept in the table as failed), or None."""
    if settings.launcher == "local" and point.nodes > 1:
        return f"the local launcher runs one node, not {point.nodes}: use --launcher submitit"
    return None


def point_env(settings: Settings) -> dict[str, str]:
    """The point's environment; SLURM jobs inherit it from the submitting process (sbatch --export=ALL)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PANTHEON_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if settings.threads:
        env |= {"OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads)}
    return env


# squeue reasons a pending job never outgrows: the cluster cannot hold the layout (e.g. 3 nodes on this 2-node one).
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                "QOSMaxNodePerJobLimit", "AssocMaxNodesPerJobLimit", "InvalidQOS", "InvalidAccount")  # fmt: skip


def job_ids(run_dir: Path) -> list[str]:
    """The point's SLURM jobs: submitit names a folder per job id under .submitit/."""
    return sorted(
        {p.name.split("_")[0] for p in run_dir.glob(".submitit/*") if p.name.split("_")[0].isdigit()}
    )


def cancel_jobs(run_dir: Path) -> None:
    if jobs := job_ids(run_dir):
        subprocess.run(["timeout", "20", "scancel", *jobs], capture_output=True, check=False)


def never_starts(run_dir: Path) -> str | None:
    """Why one of the point's jobs will pend forever, from squeue, or None."""
    jobs = job_ids(run_dir)
    if not jobs:
        return None
    queue = subprocess.run(["timeout", "10", "squeue", "-h", "-j", ",".join(jobs), "-o", "%i %t %r"],
                           capture_output=True, text=True, check=False).stdout  # fmt: skip
    for job, state, reason in (line.split(maxsplit=2) for line in queue.splitlines() if line.count(" ") >= 2):
        if state == "PD" and reason.strip() in NEVER_STARTS:
            return f"SLURM will never start job {job}: pending ({reason.strip()}), cancelled"
    return None


def run_point(point: Point, settings: Settings, out: Path) -> Result:
    run_dir = out / "points" / point.name
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pantheon.train", *overrides(point, settings, run_dir)]
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    refused = impossible(point, settings)
    if refused:
        return Result(point, "failed", refused)
    started, limit = time.perf_counter(), settings.timeout_s + 60
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=point_env(settings))  # fmt: skip
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=5)
            break
        except subprocess.TimeoutExpired:
            stuck = never_starts(run_dir) if settings.launcher == "submitit" else None
            if stuck or time.perf_counter() - started > limit:
                proc.kill()
                proc.communicate()
                cancel_jobs(run_dir)  # a job left behind would share the machine with the next point
                status, reason = ("failed", stuck) if stuck else ("timed out", f"no result within {limit} s")
                return Result(point, status, reason, wall_s=time.perf_counter() - started)
    wall = time.perf_counter() - started
    (run_dir / "output.log").write_text(stdout + stderr)
    found = sorted(run_dir.rglob(SUMMARY_FILE))
    if proc.returncode != 0 or not found:
        logs = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*_log.out"))
        reason = failure_reason(stderr + logs) if proc.returncode else f"no {SUMMARY_FILE} written"
        status = "timed out" if "TIMEOUT" in reason or "timed-out" in reason else "failed"
        return Result(point, status, f"rc {proc.returncode}: {reason}", wall_s=wall)
    return Result(point, "ok", summary=json.loads(found[0].read_text()), wall_s=wall)


def run_sweep(points: list[Point], settings: Settings, out: Path, log=print) -> list[Result]:
    results = []
    for point in points:
        log(
            f"[scaling] {point.name}: {settings.launcher}, {settings.warmup} warm-up + {settings.steps} measured"
        )
        result = run_point(point, settings, out)
        rate = (result.summary or {}).get("samples_per_s")
        log(f"[scaling]   {result.status}{f' {rate:.1f} samples/s' if rate else ''} {result.reason}".rstrip())
        results.append(result)
    return results
