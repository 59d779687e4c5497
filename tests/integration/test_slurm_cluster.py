"""The local two-node SLURM dev cluster (slurm/slurm-up.sh) really schedules work.

Skipped, with the reason, when the SLURM client tools are missing or the cluster is not up. Every
call runs under `timeout`: srun and sbatch wait forever when the nodes are down.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NODES = ["n1", "n2"]
# A node other people's jobs are using is still a healthy node.
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}
UP_HINT = "start it with slurm/slurm-up.sh"


def sh(args: list[str], timeout: int = 30) -> subprocess.CompletedProcess:
    """Run args under coreutils `timeout` (which also kills a hung srun), never raising on exit code."""
    return subprocess.run(
        ["timeout", "-k", "5", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 15,
    )


def node_states() -> dict[str, str]:
    out = sh(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=5).stdout
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


@pytest.fixture(scope="module", autouse=True)
def cluster_up():
    if shutil.which("sinfo") is None:
        pytest.skip(f"SLURM client tools not installed (no sinfo on PATH); {UP_HINT}")
    probe = sh(["sinfo", "-h"], timeout=5)
    if probe.returncode != 0 or not probe.stdout.strip():
        if probe.returncode == 124:
            reason = "timed out, slurmctld does not answer"
        else:
            reason = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        pytest.skip(f"SLURM cluster not up (`timeout 5 sinfo -h`: {reason}); {UP_HINT}")


@pytest.fixture
def job_name():
    """A unique job name; whatever is still queued under it is cancelled afterwards (e.g. after a timeout)."""
    name = f"pantheon-test-{uuid.uuid4().hex[:8]}"
    yield name
    sh(["scancel", "--name", name], timeout=10)


def accounting_enabled() -> bool:
    out = sh(["scontrol", "show", "config"], timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("AccountingStorageType"):
            return "accounting_storage/none" not in line
    return False


def test_both_nodes_up():
    states = node_states()
    assert set(NODES) <= set(states), f"sinfo shows nodes {states}, expected {NODES}"
    bad = {n: s for n, s in states.items() if n in NODES and s not in USABLE_STATES}
    assert not bad, f"nodes not usable: {bad} (resume with: scontrol update nodename=n[1-2] state=resume)"


def test_srun_runs_one_task_per_node(job_name):
    r = sh(
        ["srun", "-J", job_name, "-t", "2", "-N2", "-n2", "bash", "-c", "echo $SLURMD_NODENAME"], timeout=60
    )
    assert r.returncode == 0, f"srun failed (rc {r.returncode}): {r.stderr.strip()}"
    assert sorted(r.stdout.split()) == NODES


def sbatch_wait(tmp_path: Path, job_name: str) -> tuple[str, Path]:
    """sbatch --wait a tiny script; returns (job id, output file)."""
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/bash\necho "hello from $SLURMD_NODENAME job $SLURM_JOB_ID"\n')
    r = sh(
        [
            "sbatch",
            "--wait",
            "--parsable",
            "-J",
            job_name,
            "-t",
            "2",
            "-N1",
            "-n1",
            "-D",
            str(tmp_path),
            "-o",
            str(out),
            str(script),
        ],
        timeout=60,
    )
    assert r.returncode == 0, f"sbatch --wait failed (rc {r.returncode}): {r.stderr.strip()}"
    return r.stdout.strip().split(";")[0], out


def test_sbatch_wait_writes_output(tmp_path, job_name):
    job_id, out = sbatch_wait(tmp_path, job_name)
    assert out.exists(), f"job {job_id} wrote no {out}"
    text = out.read_text()
    assert f"job {job_id}" in text and any(f"from {n} " in text for n in NODES), text


def test_sacct_sees_finished_job(tmp_path, job_name):
    if not accounting_enabled():
        pytest.skip(
            "accounting is disabled (AccountingStorageType=accounting_storage/none): slurmdbd not running"
        )
    job_id, _ = sbatch_wait(tmp_path, job_name)
    # slurmctld sends the job's end to slurmdbd asynchronously: poll briefly.
    deadline = time.monotonic() + 30
    state, name = "", ""
    while time.monotonic() < deadline:
        r = sh(["sacct", "-a", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,JobName,State"], timeout=10)
        assert r.returncode == 0, f"sacct failed: {r.stderr.strip()}"
        rows = [line.split("|") for line in r.stdout.splitlines() if line.startswith(job_id + "|")]
        name, state = (rows[0][1], rows[0][2]) if rows else ("", "")
        # slurmdbd may list the job as "allocation" until the batch step's record arrives: poll for both.
        if state == "COMPLETED" and name == job_name:
            return
        time.sleep(0.5)
    pytest.fail(
        f"sacct never showed job {job_id} {job_name} COMPLETED (last: {name!r} {state or 'not listed'})"
    )
