"""DeepSpeed ZeRO-2/3 with the real diffusion experiment, on CPU processes with gloo.

Lightning's DeepSpeedStrategy refuses anything but CUDA; CPUDeepSpeedStrategy (test-only, never in src/) lifts
exactly those guards, so training, the atomic preemption save, exact resume, consolidation to fp32 and the
export run here. Each run is `python -m pantheon.train` in a subprocess (Lightning starts the second rank by
re-running that command; a process group left in pytest would leak into other tests). DeepSpeed compiles its
ops on first use into TORCH_EXTENSIONS_DIR (~30 s once, then cached under /tmp).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from pantheon.cluster.deepspeed import consolidate_checkpoint, is_zero_checkpoint
from tests.conftest import ROOT, run_cli

EXPERIMENT = ROOT / "configs" / "experiment" / "flowers_sd_tiny.yaml"
requires_diffusion = pytest.mark.skipif(
    not EXPERIMENT.is_file(), reason=f"{EXPERIMENT.name} is not in configs yet"
)
TORCH_EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/pantheon-torch-extensions")


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy with its CUDA-only guards lifted: ZeRO on CPU processes (gloo). Tests only."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips "The DeepSpeed strategy is only supported on CUDA GPUs"

    def setup_distributed(self) -> None:
        reset_seed()  # as DeepSpeedStrategy.setup_distributed, minus its CUDA device-index validation
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        # Lightning passes root_device.index, which CPU devices do not have; DeepSpeed wants the local rank.
        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer


def deepspeed_run(run_dir: Path, preset: str, *extra: str, steps: int = 6):
    """The tiny diffusion experiment on 2 CPU ranks under `preset`, run by the CLI into run_dir."""
    args = [
        "pantheon.train",
        "experiment=flowers_sd_tiny",
        f"trainer={preset}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        f"trainer.strategy._target_={CPUDeepSpeedStrategy.__module__}.CPUDeepSpeedStrategy",
        "debug=bare",
        f"trainer.max_steps={steps}",
        "data.batch_size=2",
        "+callbacks.save_end._target_=tests.integration.callbacks.SaveCheckpointAtEnd",
        f"+callbacks.save_end.path={run_dir}/final.ckpt",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    return run_cli(*args, timeout=900, env={"TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS_DIR})


def assert_ok(result, what: str) -> None:
    assert result.returncode == 0, f"{what} failed (rc {result.returncode}):\n{result.stderr[-5000:]}"


@pytest.mark.slow
@requires_diffusion
def test_zero2_preempt_resume_is_exact_and_consolidates(tmp_path: Path) -> None:
    """ZeRO-2 on 2 ranks: a run stopped by the warning signal mid-training saves its shards atomically,
    resumes from them and ends bit-identical to an uninterrupted run; the result consolidates to one fp32
    checkpoint that loads as the DiffusionModule and exports a diffusers pipeline."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert_ok(deepspeed_run(whole, "deepspeed_stage_2", "ckpt_path=null"), "uninterrupted ZeRO-2 run")

    signal_at = [
        "+callbacks.signal._target_=tests.integration.callbacks.SignalAt",
        "+callbacks.signal.step=3",
    ]
    first = deepspeed_run(stopped, "deepspeed_stage_2", "ckpt_path=null", *signal_at)
    assert first.returncode == 128 + 10, (
        f"expected the SIGUSR1 stop (138), got {first.returncode}\n{first.stderr[-3000:]}"
    )
    last = stopped / "checkpoints" / "last.ckpt"
    assert is_zero_checkpoint(last), "the preemption save is a complete DeepSpeed checkpoint directory"
    assert not last.with_name("last.ckpt.tmp").exists() and not last.with_name("last.ckpt.old").exists()
    assert_ok(deepspeed_run(stopped, "deepspeed_stage_2", "ckpt_path=last"), "resumed ZeRO-2 run")
    assert "resumed" in (stopped / "train.log").read_text()

    finals = [consolidate_checkpoint(run / "final.ckpt") for run in (whole, stopped)]
    a, b = (torch.load(path, map_location="cpu", weights_only=False) for path in finals)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys() and any(
        k.startswith("unet.") for k in a["state_dict"]
    )
    assert all(v.dtype == torch.float32 for v in a["state_dict"].values() if v.is_floating_point())
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"resumed ZeRO-2 run differs from the uninterrupted one in {len(different)} tensors"

    export_and_load(finals[1], tmp_path / "pipeline")


def export_and_load(checkpoint: Path, out: Path) -> None:
    """The consolidated checkpoint opens as the DiffusionModule and exports a loadable diffusers pipeline."""
    from diffusers import StableDiffusionPipeline

    from pantheon.models.checkpoints import load_module

    module = load_module(checkpoint)
    assert type(module).__name__ == "DiffusionModule"
    module.export(out)
    pipeline = StableDiffusionPipeline.from_pretrained(out)
    assert pipeline.unet is not None and pipeline.vae is not None


@pytest.mark.slow
@requires_diffusion
@pytest.mark.parametrize("preset", ["deepspeed_stage_3", "deepspeed_stage_3_offload"])
def test_zero3_trains_saves_and_consolidates(tmp_path: Path, preset: str) -> None:
    """ZeRO-3 (parameters partitioned across the 2 ranks; offload: also held in CPU memory) trains with the
    frozen VAE and text encoder kept whole outside the partitioned module, and consolidates to fp32.
    Without the EMA callback: pantheon/callbacks/ema.py keeps full-size shadows of the UNet's parameters, and
    under ZeRO-3 each rank holds only its partition of them (it fails in EMA.update: size 0 vs 3)."""
    no_ema = ["~callbacks.ema"]
    offload = ["trainer.strategy.config.zero_optimization.offload_optimizer.pin_memory=false",
               "trainer.strategy.config.zero_optimization.offload_param.pin_memory=false"] if "offload" in preset else []  # fmt: skip
    assert_ok(
        deepspeed_run(tmp_path / "run", preset, "ckpt_path=null", *no_ema, *offload, steps=2), f"{preset} run"
    )
    final = consolidate_checkpoint(tmp_path / "run" / "final.ckpt", tmp_path / "final.fp32.ckpt")
    state = torch.load(final, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(k.startswith("unet.") for k in state), "only the UNet is trained and partitioned"
    assert all(v.numel() > 0 for v in state.values()), "full tensors, gathered from the ZeRO-3 partitions"
    # The pipeline the run exported at its end holds the same (gathered, not partitioned) UNet weights.
    from safetensors.torch import load_file

    (unet_file,) = (tmp_path / "run" / "pipeline" / "unet").glob("*.safetensors")
    exported = load_file(unet_file)
    assert exported.keys() == {k.removeprefix("unet.") for k in state}
    assert all(torch.equal(exported[k.removeprefix("unet.")].float(), v) for k, v in state.items())


def test_consolidate_refuses_a_plain_file(tmp_path: Path) -> None:
    from pantheon.cluster import deepspeed
    from pantheon.utils.errors import UserError

    plain = tmp_path / "last.ckpt"
    plain.write_bytes(b"x")
    with pytest.raises(UserError, match="not a DeepSpeed checkpoint"):
        deepspeed.consolidate_checkpoint(plain)
    assert deepspeed.consolidated_path(tmp_path / "last.ckpt") == tmp_path / "last.fp32.ckpt"
