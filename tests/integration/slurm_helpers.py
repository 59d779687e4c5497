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
