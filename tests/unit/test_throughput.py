"""The Throughput callback: its counts add up, FLOPs are counted, the JSON lands in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pantheon.callbacks.throughput import SUMMARY_FILE, Throughput, batch_size_of, peak_flops
from tests.conftest import run_cli

WARMUP, MEASURED, BATCH = 2, 3, 8


def gan_run(run_dir: Path, *extra: str):
    return run_cli(
        "pantheon.train", "experiment=mnist_gan", "debug=bare", "trainer.max_epochs=1",
        f"trainer.limit_train_batches={WARMUP + MEASURED}", f"data.batch_size={BATCH}", "ckpt_path=null",
        "+callbacks.throughput._target_=pantheon.callbacks.throughput.Throughput",
        f"+callbacks.throughput.warmup_steps={WARMUP}", f"hydra.run.dir={run_dir}", *extra, timeout=600,
    )  # fmt: skip


def check_summary(run_dir: Path, result, world: int) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["world_size"] == world and summary["measured_steps"] == MEASURED
    assert summary["samples"] == MEASURED * BATCH * world, (
        "samples = measured steps x per-device batch x world"
    )
    assert summary["per_device_batch_size"] == BATCH
    assert summary["samples_per_s"] == pytest.approx(summary["samples"] / summary["elapsed_s"])
    assert summary["samples_per_s_per_device"] == pytest.approx(summary["samples_per_s"] / world)
    assert summary["step_time_s"] == pytest.approx(summary["data_wait_s"] + summary["compute_s"], rel=0.05)
    assert summary["flops_per_batch"] > 0 and summary["flops_per_sample"] == pytest.approx(
        summary["flops_per_batch"] / BATCH
    )
    assert summary["mfu"] is None and "n/a" in summary["mfu_note"], "no peak FLOP/s on CPU"
    assert summary["peak_rss_mib"] > 100 and summary["trainable_parameters"] > 0
    assert summary["cpu_s"] > 0 and summary["torch_threads"] >= 1 and summary["load_avg_1min"] >= 0
    return summary


def test_gan_summary_counts_add_up(tmp_path: Path) -> None:
    check_summary(tmp_path, gan_run(tmp_path), world=1)


@pytest.mark.slow
def test_ddp_summary_counts_every_rank(tmp_path: Path) -> None:
    summary = check_summary(tmp_path, gan_run(tmp_path, "trainer=ddp_cpu", "trainer.devices=2"), world=2)
    assert summary["strategy"] == "DDPStrategy"


def test_flops_match_a_hand_count() -> None:
    """FlopCounterMode around a step counts 2 * in * out per sample for a linear layer's forward and twice
    that for its backward (input and weight gradients): 6 * in * out * batch in all."""
    from torch.utils.flop_counter import FlopCounterMode

    layer, x = torch.nn.Linear(16, 4, bias=False), torch.randn(8, 16, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 6 * 16 * 4 * 8


def test_batch_sizes_and_peaks() -> None:
    assert batch_size_of((torch.zeros(5, 1, 28, 28), torch.zeros(5))) == 5
    assert batch_size_of({"pixel_values": torch.zeros(3, 3, 8, 8), "text": ["a"] * 3}) == 3
    assert batch_size_of({"text": ["a", "b"]}) == 2
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        Throughput(warmup_steps=0)
