"""The alpha-beta communication model (pantheon.scaling.comm_model): hand-computed cases, the link fit, and the
model against a measurement of the local two-node cluster (docs/scaling.md, "The communication model")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pantheon.scaling import comm_model as cm
from pantheon.scaling.collectives import fit_alpha_beta
from pantheon.scaling.report import VALIDATION_TOLERANCE, validate

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "scaling"
# 4 GPUs per node: 10 GB/s and 10 us inside a node, 1 GB/s and 50 us between nodes.
NET = cm.Interconnect("hand", 4, 10e9, 10e-6, 1e9, 50e-6)
# 25M parameters: 100 MB of fp32 gradients, 50 MB of bf16 parameters; 0.3 s of compute, 0.2 s of it backward.
STEP = cm.Step(compute_s=0.3, parameters=25_000_000)
BUCKET = 25 * 2**20


def test_ring_allreduce_inside_a_node_by_hand() -> None:
    # 2 (p-1) alpha + 2 (p-1)/p S / beta with p = 4, S = 1e8, beta = 1e10, alpha = 1e-5
    comm = 6 * 10e-6 + 1.5 * 1e8 / 1e10
    assert comm == pytest.approx(0.01506)
    assert cm.comm_seconds(STEP, "ddp", 4, NET) == pytest.approx(comm)
    last = 6 * 10e-6 + 1.5 * BUCKET / 1e10  # the last 25 MiB bucket never overlaps
    full = cm.predict(STEP, "ddp", 4, NET, per_device_batch=16, overlap=1.0)
    assert full.exposed_comm_s == pytest.approx(last)  # 11 ms left after it: hidden in 200 ms of backward
    assert full.step_s == pytest.approx(0.3 + last)
    assert full.efficiency == pytest.approx(0.3 / (0.3 + last))
    none = cm.predict(STEP, "ddp", 4, NET, per_device_batch=16, overlap=0.0)
    assert none.step_s == pytest.approx(0.3 + comm)
    assert none.samples_per_s == pytest.approx(4 * 16 / (0.3 + comm))


def test_across_nodes_the_nic_sets_the_pace() -> None:
    comm = 2 * 7 * 50e-6 + 2 * 7 / 8 * 1e8 / 1e9  # 8 GPUs > 4 per node: the inter-node link
    assert cm.comm_seconds(STEP, "ddp", 8, NET) == pytest.approx(comm) == pytest.approx(0.1757)
    assert cm.link(NET, 4) == (10e9, 10e-6) and cm.link(NET, 8) == (1e9, 50e-6)


def test_fsdp_and_zero_collectives_by_hand() -> None:
    gather = 3 * 10e-6 + 0.75 * 5e7 / 1e10  # bf16 parameters
    scatter = 3 * 10e-6 + 0.75 * 1e8 / 1e10  # fp32 gradients
    assert cm.comm_seconds(STEP, "fsdp", 4, NET) == pytest.approx(gather + scatter)
    assert cm.comm_seconds(STEP, "fsdp_full_shard", 4, NET) == pytest.approx(2 * gather + scatter)
    assert cm.comm_seconds(STEP, "deepspeed_stage_2", 4, NET) == pytest.approx(scatter + gather)
    # FSDP hides its collectives behind the whole step, DDP only behind backward
    assert cm.predict(STEP, "fsdp", 4, NET, 16).exposed_comm_s < gather + scatter


def test_one_device_and_two_syncs_per_step() -> None:
    assert cm.comm_seconds(STEP, "ddp", 1, NET) == 0.0
    assert cm.predict(STEP, "ddp", 1, NET, 16).efficiency == 1.0
    gan = cm.Step(compute_s=0.3, parameters=25_000_000, collectives_per_step=2)
    assert cm.comm_seconds(gan, "ddp_cpu", 4, NET) == pytest.approx(2 * cm.comm_seconds(STEP, "ddp", 4, NET))


def test_link_fit_recovers_alpha_and_beta() -> None:
    alpha, beta, p = 200e-6, 0.8e9, 2
    sizes = [2.0**k for k in range(12, 25, 2)]
    seconds = [cm.ring_allreduce_s(s, p, beta, alpha) for s in sizes]
    fitted_alpha, fitted_beta = fit_alpha_beta(sizes, seconds, p)
    assert fitted_alpha == pytest.approx(alpha) and fitted_beta == pytest.approx(beta)


def test_sd2_example_lands_near_the_published_512px_efficiency() -> None:
    """MosaicML: ~99% weak-scaling efficiency 8 -> 128 A100 at 512 px (the model's own input is 36 img/s)."""
    at_128 = cm.sd2_example(cm.INTERCONNECTS["dgx_a100_hdr"], 512)[-1]
    assert at_128.devices == 128 and at_128.efficiency == pytest.approx(0.99, abs=0.02)


def test_model_matches_the_local_two_node_measurement() -> None:
    """A recorded sweep of the local cluster (GAN, ddp_cpu, 1 and 2 nodes of 1 CPU, gloo over loopback TCP)
    with its measured link (pantheon.scaling.collectives): the model predicts the 2-rank step from the 1-rank
    step within VALIDATION_TOLERANCE. The integration test re-measures this live (test_scaling_sweep.py)."""
    recorded = json.loads((ASSETS / "local_gan_sweep.json").read_text())
    checks = validate(recorded["rows"], recorded["links"])
    assert [c["world"] for c in checks] == [2]
    assert abs(checks[0]["relative_error"]) <= VALIDATION_TOLERANCE, checks[0]
