"""Exact resume holds with DataLoader workers: the tiny diffusion experiment on 2 workers, random flips on,
stopped by the warning signal mid-epoch and resumed, ends with the UNet, EMA and global step of an uninterrupted
run bit for bit. (Its first version failed: the diffusion LR schedule asks for estimated_stepping_batches, which
made Lightning drop the loader's resume state; pantheon.cluster.resume hands it over.) The random parts of a batch are drawn in the main process after batching (the datamodule's
on_after_batch_transfer), where exact resume reseeds; inside a worker they would not replay."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from pantheon.data.shapes import ensure_shapes_dataset
from pantheon.models.diffusion.tiny import ensure_tiny_pipeline
from pantheon.train import train
from tests.conftest import compose_train

FINAL_STEP = 6  # 2 epochs of 4 batches, stopped by max_steps in epoch 1


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("cache")
    return ensure_tiny_pipeline(cache / "tiny-sd"), ensure_shapes_dataset(cache / "shapes", n=16, size=32)


def run(run_dir: Path, parts: tuple[Path, Path], *extra: str) -> dict:
    tiny, shapes = parts
    overrides = [
        "experiment=flowers_sd_tiny", "debug=bare", f"model.pretrained_model={tiny}", f"data.data_dir={shapes}",
        "data.resolution=32", "data.batch_size=2", "data.num_workers=2", "data.random_flip=true",
        f"trainer.max_steps={FINAL_STEP}", "seed=11",
        "+callbacks.dump._target_=tests.integration.callbacks.DumpWeights", f"+callbacks.dump.dirpath={run_dir}/w",
        *extra,
    ]  # fmt: skip
    train(compose_train(run_dir, overrides))
    checkpoint = torch.load(run_dir / "w" / "rank0.pt", weights_only=True)
    ema = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]["EMA"]["shadow"]
    return {**checkpoint, "ema": ema}


def test_resume_with_two_workers_and_random_flips_is_exact(parts, tmp_path: Path) -> None:
    def save_at_end(run_dir: Path) -> list[str]:  # the EMA lives in the checkpoint: both runs end with one
        return [
            "+callbacks.end._target_=tests.integration.callbacks.SaveCheckpointAtEnd",
            f"+callbacks.end.path={run_dir}/checkpoints/last.ckpt",
        ]

    reference = run(tmp_path / "whole", parts, "ckpt_path=null", *save_at_end(tmp_path / "whole"))
    stop = ["+callbacks.signal._target_=tests.integration.callbacks.SignalAt", "+callbacks.signal.step=3"]
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path / "cut", parts, "ckpt_path=null", *stop)
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    resumed = run(tmp_path / "cut", parts, "ckpt_path=last", *save_at_end(tmp_path / "cut"))

    assert resumed["global_step"] == reference["global_step"] == FINAL_STEP
    different = [
        k for k, v in reference["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])
    ]
    assert not different, f"{len(different)} UNet tensors differ, e.g. {different[:3]}"
    assert reference["ema"].keys() == resumed["ema"].keys()
    assert all(torch.equal(reference["ema"][k], resumed["ema"][k]) for k in reference["ema"]), "EMA differs"
