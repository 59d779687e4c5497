"""The local two-node SLURM dev cluster (slurm/slurm-up.sh) really schedules work.

Skipped, with the reason, when the SLURM client tools are missing or the cluster is not up. Every
call runs under `timeout`: srun and sbatch wait forever when the nodes are down.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.slurm_helpers import NODES, USABLE_STATES, node_states, sh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster")]


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
