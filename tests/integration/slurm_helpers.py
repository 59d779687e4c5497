"""The one copy of what the cluster tests share: bounded SLURM calls, sbatch from the repository root, job
state, polling, and the weight comparisons behind the bit-identical resume checks.

Every call runs under coreutils `timeout`: srun and sbatch wait forever when the nodes are down. The fixtures
built on these (`slurm_cluster`, `job_name`) live in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
UP_HINT = "start it with `make slurm-up` (slurm/slurm-up.sh)"
JOB_TIMEOUT_S = 300
NODES = ["n1", "n2"]
# A node other people's jobs are using is still a healthy node.
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}

T = TypeVar("T")


def sh(args: list[str], timeout: int = 30, **kwargs) -> subprocess.CompletedProcess:
    """args under coreutils `timeout` (which also kills a hung srun/sbatch), never raising on exit code."""
    return subprocess.run(
        ["timeout", "-k", "5", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 15,
        **kwargs,
    )


def cluster_skip_reason() -> str | None:
    """Why the local cluster cannot take jobs (tools missing, slurmctld silent, no usable node), or None."""
    if shutil.which("sinfo") is None:
        return f"SLURM client tools not installed (no sinfo on PATH); {UP_HINT}"
    probe = sh(["sinfo", "-h", "-o", "%T"], timeout=5)
    if probe.returncode != 0 or not probe.stdout.strip():
        if probe.returncode == 124:
            reason = "timed out, slurmctld does not answer"
        else:
            reason = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"SLURM cluster not up (`sinfo`: {reason}); {UP_HINT}"
    states = set(probe.stdout.split())
    if not states & USABLE_STATES:
        return f"no usable SLURM node (states: {', '.join(sorted(states))}); {UP_HINT}"
    return None


def node_states() -> dict[str, str]:
    out = sh(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=5).stdout
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a submitted job: offline wandb and data, unbuffered output."""
    return {**os.environ, "WANDB_MODE": "offline", "PANTHEON_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def sbatch(
    tmp: Path,
    name: str,
    args: list[str],
    wait: bool = True,
    script: str = "multi_node",
    options: tuple = ("--nodes=2",),
    env: dict[str, str] | None = None,
) -> tuple[str, Path]:
    """Submit slurm/<script>.sbatch from the repository root; returns (job id, its output file)."""
    out = tmp / f"{name}-%j.out"
    command = ["sbatch", "--parsable", f"--job-name={name}", "--time=10", f"--output={out}", *options]
    command += ["--wait"] if wait else []
    result = sh(
        [*command, f"slurm/{script}.sbatch", *args], timeout=JOB_TIMEOUT_S, cwd=ROOT, env=env or job_env()
    )
    job = result.stdout.strip().split(";")[0]
    log = Path(str(out).replace("%j", job)) if job else out
    text = log.read_text() if log.is_file() else "(no output file)"
    assert job, f"sbatch failed (rc {result.returncode}): {result.stderr.strip()}"
    if wait:
        assert result.returncode == 0, (
            f"job {job} failed (rc {result.returncode}); its output:\n{text[-4000:]}"
        )
    return job, log


def job_state(job: str) -> tuple[str, int]:
    """(state, restarts) from scontrol (works without accounting too)."""
    text = sh(["scontrol", "show", "job", job], timeout=10).stdout
    state = re.search(r"JobState=(\S+)", text)
    restarts = re.search(r"Restarts=(\d+)", text)
    return (state.group(1) if state else "UNKNOWN"), int(restarts.group(1)) if restarts else 0


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 1.0) -> T:
    """Poll until predicate() is truthy and return it; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_until_finished(job: str, timeout_s: float = JOB_TIMEOUT_S) -> tuple[str, int]:
    """Block until the job reaches a final state; returns (state, restarts)."""
    return wait_for(
        lambda: (s := job_state(job))[0] in FINISHED_STATES and s, timeout_s, f"job {job} to finish"
    )


def dump_weights(dirpath: Path) -> list[str]:
    """Overrides that make every rank dump its final weights to <dirpath>/rank<r>.pt (tests.integration.callbacks)."""
    return [
        "+callbacks.dump._target_=tests.integration.callbacks.DumpWeights",
        f"+callbacks.dump.dirpath={dirpath}",
    ]


def load_weights(dirpath: Path, ranks: int = 2) -> list[dict]:
    return [torch.load(dirpath / f"rank{r}.pt", weights_only=True) for r in range(ranks)]


def assert_same_weights(a: dict, b: dict, what: str, parameters_only: bool = False) -> None:
    """Bit-identical tensors. DDP keeps parameters identical across ranks, not buffers: BatchNorm running
    statistics follow each rank's own batches (unless trainer.sync_batchnorm=true), so comparing ranks with
    each other uses parameters_only."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    names = a["parameters"] if parameters_only else list(a["state_dict"])
    assert names, f"{what}: nothing to compare"
    different = [k for k in names if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{what}: {len(different)} of {len(names)} tensors differ, e.g. {different[:3]}"


# --- the GAN job of the host and container tests: 2 nodes x 1 task DDP, 2 epochs of 4 batches (global step 16:
# 2 optimizer steps a batch), preempted mid-epoch 0 (3 of its 4 batches done) ---
GAN_ARGS = [
    "experiment=mnist_gan",
    "trainer=ddp_cpu",
    "trainer.num_nodes=2",
    "trainer.devices=1",
    "debug=bare",  # 2 epochs of 4 batches of 16, no validation (configs/debug/bare.yaml)
    "seed=5",
]
FINAL_STEP = 16
PREEMPT_AT_STEP = 6


def run_gan_job(tmp: Path, job_name: str, extra: list[str] = (), env: dict | None = None) -> dict:
    """sbatch the GAN job to the end; every rank dumps its weights. Returns job, log path, tmp, weights."""
    args = [*GAN_ARGS, *extra, f"paths.log_dir={tmp}/logs", *dump_weights(tmp / "weights")]
    job, log = sbatch(tmp, job_name, args, env=env)
    return {"job": job, "log": log, "tmp": tmp, "weights": load_weights(tmp / "weights")}


def preempt_gan_job(
    tmp: Path, job_name: str, reference: dict, extra: list[str] = (), env: dict | None = None
):
    """The GAN job, held at PREEMPT_AT_STEP and sent SLURM's warning signal (`scancel --signal=USR1`, what
    --signal=USR1@<s> does before the time limit); it must save, be requeued once, resume where it stopped and
    end bit-identical to `reference` (run_gan_job's result). Returns (job, its output, its run directory)."""
    marker = tmp / "held"
    hold = [
        "+callbacks.hold._target_=tests.integration.callbacks.HoldAtStep",
        f"+callbacks.hold.step={PREEMPT_AT_STEP}",
        f"+callbacks.hold.marker={marker}",
    ]
    args = [*GAN_ARGS, *extra, f"paths.log_dir={tmp}/logs", *dump_weights(tmp / "weights"), *hold]
    job, log = sbatch(tmp, job_name, args, wait=False, env=env)
    wait_for(marker.is_file, JOB_TIMEOUT_S, f"job {job} to reach global step {PREEMPT_AT_STEP}")
    signalled = sh(["scancel", "--signal=USR1", job], timeout=10)
    assert signalled.returncode == 0, signalled.stderr
    state, restarts = wait_until_finished(job)
    text = log.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}; output:\n{text[-4000:]}"
    assert restarts == 1, f"expected one requeue, scontrol says Restarts={restarts}"
    run_dir = tmp / "logs" / "train" / "runs" / f"slurm-{job}"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert f"saved {ckpt} at global step {PREEMPT_AT_STEP}" in text
    assert f"resumed {ckpt} at global step {PREEMPT_AT_STEP} (epoch 0, 3 batches into it)" in text

    preempted = load_weights(tmp / "weights")
    assert all(w["restart_count"] == 1 for w in preempted), "final weights come from the requeued run"
    assert all(w["global_step"] == FINAL_STEP for w in preempted)
    # The model the run produces (rank 0's full state, BatchNorm statistics included: the checkpoint's) and every
    # rank's parameters are bit-identical to the uninterrupted run's. Ranks > 0 keep their own BatchNorm running
    # statistics, which no checkpoint holds (it is rank 0's); they resume from rank 0's.
    reference_weights = reference["weights"]
    assert_same_weights(
        preempted[0], reference_weights[0], "rank 0 of the preempted run vs the uninterrupted run"
    )
    assert_same_weights(
        preempted[1], reference_weights[1], "rank 1, preempted vs uninterrupted", parameters_only=True
    )
    return job, text, run_dir
