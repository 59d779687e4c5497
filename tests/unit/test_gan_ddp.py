"""DDP over two CPU processes (gloo): the GAN's alternating D/G steps train without an unused-parameter crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli


@pytest.mark.slow
def test_gan_trains_under_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(
        "pantheon.train",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        f"hydra.run.dir={run}",
        "debug=fast",
        "trainer.limit_train_batches=3",
        "data.batch_size=16",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 6, "3 batches x 2 optimizer steps on every rank"
    assert len(list((run / "samples").glob("*.png"))) == 1, "rank zero alone writes the grid"
    assert not list(tmp_path.glob("**/train_ddp_process_1*")), "one run directory, not one per rank"
