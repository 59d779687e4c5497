"""The sweep's table from fabricated results (no cluster): speedup and efficiency against the smallest point,
weak and strong, in wall and CPU seconds; failed points kept with their reason; the plot is written.
tests/integration/test_scaling_sweep.py does the same from a real sweep on the local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from pantheon.scaling.sweep import Point, Result, Settings, impossible
from pantheon.scaling.table import markdown, plot, with_scaling


def ok(nodes: int, batch: int, samples_per_s: float, cpu_s: float) -> Result:
    point = Point("mnist_gan", "ddp_cpu", nodes, 1, batch)
    summary = {"strategy": "DDPStrategy", "accelerator": "cpu", "precision": "32-true", "samples_per_s": samples_per_s,
               "samples_per_s_per_device": samples_per_s / nodes, "cpu_s": cpu_s, "step_time_s": 0.2,
               "data_wait_fraction": 0.05, "peak_rss_mib": 1200.0, "mfu": None, "warmup_steps": 1,
               "measured_steps": 3, "torch_threads": 1, "load_avg_1min": 1.5, "host_cpus": 2, "versions": {}}  # fmt: skip
    return Result(point, "ok", summary=summary)


def test_weak_scaling_rows_and_a_failed_point(tmp_path: Path) -> None:
    failed = Result(Point("mnist_gan", "ddp_cpu", 3, 1, 8), "failed", "SLURM will never start job 7: pending")
    rows = with_scaling([ok(1, 8, 100.0, 0.10), ok(2, 8, 150.0, 0.11), failed])
    one, two, three = rows
    assert one["speedup"] == 1.0 and one["efficiency"] == 1.0 and one["cpu_efficiency"] == 1.0
    assert two["speedup"] == pytest.approx(1.5) and two["efficiency"] == pytest.approx(0.75)
    assert two["cpu_efficiency"] == pytest.approx(0.10 / 0.11)
    assert two["strategy"] == "ddp_cpu" and two["strategy_class"] == "DDPStrategy"
    assert three["status"] == "failed" and three["speedup"] is None
    table = markdown(rows, "t")
    assert "| 2 x 1 | 8 | 150 | 75 | 1.5 | 75% | 91% |" in table
    assert "failed: SLURM will never start job 7: pending" in table and "1.5/2" in table
    plot(rows, tmp_path / "p.png", {"model": [(1, 1.0), (2, 0.9)]})
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_strong_scaling_divides_speedup_by_the_world() -> None:
    rows = with_scaling([ok(1, 16, 100.0, 0.2), ok(2, 8, 160.0, 0.1)], strong=True)
    assert rows[1]["efficiency"] == pytest.approx(0.8)
    assert rows[1]["cpu_efficiency"] == pytest.approx(1.0)  # half the batch in half the CPU time


def test_more_than_one_node_needs_slurm() -> None:
    assert "use --launcher submitit" in impossible(Point("e", "ddp_cpu", 2, 1, 8), Settings(launcher="local"))
    assert impossible(Point("e", "ddp_cpu", 2, 1, 8), Settings(launcher="submitit")) is None
