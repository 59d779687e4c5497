"""The scaling harness on the real local SLURM cluster (slurm/slurm-up.sh: nodes n1, n2 of one CPU each).

One sweep through the submitit launcher, as `make scale` runs it but tiny: the GAN under ddp_cpu on 1, 2 and 3
nodes (synthetic batches of 8, 1 warm-up + 3 measured batches, one torch thread per rank). The cluster has two
nodes, so the 3-node point is an impossible layout: SLURM refuses it and the table must keep it, with the
reason. From the two real points the harness writes the CSV, the Markdown table and the plot; speedup and
efficiency must follow from the measured throughputs. The link is measured too (pantheon.scaling.collectives
under srun) and the model check is written and printed; it is not asserted here, since 3 batches of 8 are
dominated by per-step overheads the model leaves out (tests/unit/test_comm_model.py asserts it on a recorded
20-batch sweep).

Bounded throughout: the sweep and srun run under `timeout`, each point has its own limit, the module has one.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from pantheon.scaling.report import VALIDATION_TOLERANCE
from tests.integration.slurm_helpers import ROOT, job_env, sh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster"), pytest.mark.timeout(420)]

BATCH, WARMUP, STEPS = 8, 1, 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("scaling")
    links = out / "links.json"
    probe = sh(["srun", "-N2", "-n2", "--ntasks-per-node=1", "--time=2", "env", "OMP_NUM_THREADS=1", "bash",
                "slurm/task.sh", sys.executable, "-m", "pantheon.scaling.collectives", str(links)],
               timeout=60, cwd=ROOT)  # fmt: skip
    assert probe.returncode == 0 and links.is_file(), f"link measurement failed: {probe.stderr[-2000:]}"
    command = [sys.executable, "scripts/scaling.py", "--experiment", "mnist_gan", "--strategies", "ddp_cpu",
               "--nodes", "1,2,3", "--launcher", "submitit", "--synthetic", "--batch", str(BATCH),
               "--warmup", str(WARMUP), "--steps", str(STEPS), "--threads", "1", "--timeout", "150",
               "--links", str(links), "--out", str(out)]  # fmt: skip
    done = subprocess.run(["timeout", "-k", "10", "300", *command], capture_output=True, text=True, cwd=ROOT,
                          env=job_env(), timeout=320)  # fmt: skip
    assert done.returncode == 0, (
        f"sweep failed (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    with (out / "scaling.csv").open() as f:
        rows = {int(r["nodes"]): r for r in csv.DictReader(f)}
    return {"out": out, "rows": rows, "stdout": done.stdout}


def number(row: dict, key: str) -> float:
    return float(row[key])


def test_two_points_measured_and_counted(sweep) -> None:
    rows = sweep["rows"]
    assert set(rows) == {1, 2, 3}
    for nodes in (1, 2):
        r = rows[nodes]
        assert r["status"] == "ok", r["reason"]
        assert int(r["world_size"]) == nodes and int(r["measured_steps"]) == STEPS
        assert int(r["samples"]) == STEPS * BATCH * nodes, (
            "samples = measured steps x per-device batch x world"
        )
        assert number(r, "samples_per_s") == pytest.approx(number(r, "samples") / number(r, "elapsed_s"))
        assert r["strategy"] == "ddp_cpu" and r["strategy_class"] == "DDPStrategy"
        assert int(r["torch_threads"]) == 1


def test_speedup_and_efficiency_follow_from_throughput(sweep) -> None:
    one, two = sweep["rows"][1], sweep["rows"][2]
    assert number(one, "speedup") == pytest.approx(1.0) and number(one, "efficiency") == pytest.approx(1.0)
    assert number(two, "speedup") == pytest.approx(
        number(two, "samples_per_s") / number(one, "samples_per_s")
    )
    assert number(two, "efficiency") == pytest.approx(
        number(two, "samples_per_s_per_device") / number(one, "samples_per_s_per_device")
    )
    assert number(two, "efficiency") == pytest.approx(number(two, "speedup") / 2)
    # the same in CPU seconds per batch, which a rank waiting for one of the host's two cores does not stretch
    assert number(two, "cpu_efficiency") == pytest.approx(number(one, "cpu_s") / number(two, "cpu_s"))


def test_impossible_point_is_kept_with_its_reason(sweep) -> None:
    three = sweep["rows"][3]
    assert three["status"] == "failed" and three["reason"], three
    assert three["samples_per_s"] == "" and three["speedup"] == ""
    table = (sweep["out"] / "scaling.md").read_text()
    line = next(line for line in table.splitlines() if "| 3 x 1 |" in line)
    assert "failed: " in line and three["reason"][:40] in line


def test_table_plot_and_model_check_are_written(sweep) -> None:
    out = sweep["out"]
    table = (out / "scaling.md").read_text()
    assert table.count("| mnist_gan | ddp_cpu |") == 3
    assert "1 torch threads per rank" in table
    png = out / "scaling.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    (check,) = json.loads((out / "model_validation.json").read_text())
    assert check["world"] == 2 and check["measured_step_s"] > 0 and check["predicted_step_s"] > 0
    assert "published reference points" in sweep["stdout"]
    # Reported, not asserted: 3 batches on two shared cores are too few to hold the model to its tolerance
    # here; tests/unit/test_comm_model.py holds it to VALIDATION_TOLERANCE on a recorded 20-batch sweep.
    print(
        f"model vs measured 2-node step: {check['relative_error']:+.0%} (tolerance {VALIDATION_TOLERANCE:.0%})"
    )
