"""FSDP (trainer=fsdp_cpu: the fsdp preset on 2 CPU ranks with gloo) with the real tiny diffusion experiment.

Lightning's accelerator connector refuses its own FSDPStrategy class without a GPU; pantheon's subclass
(pantheon.scaling.fsdp, the one trainer=fsdp uses on GPUs too) passes that check and hands torch's FSDP an
explicit CPU device, so these runs use the shipped strategy, not a test-only one. Each run is the CLI in a
subprocess (Lightning starts the second rank by re-running the command).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli

EXPERIMENT = ROOT / "configs" / "experiment" / "flowers_sd_tiny.yaml"


def fsdp_run(run_dir: Path, *extra: str, steps: int = 6):
    args = [
        "pantheon.train",
        "experiment=flowers_sd_tiny",
        "trainer=fsdp_cpu",
        "debug=bare",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "data.batch_size=2",
        "+callbacks.save_end._target_=tests.integration.callbacks.SaveCheckpointAtEnd",
        f"+callbacks.save_end.path={run_dir}/final.ckpt",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    return run_cli(*args, timeout=900)


def assert_ok(result, what: str) -> None:
    assert result.returncode == 0, f"{what} failed (rc {result.returncode}):\n{result.stderr[-5000:]}"


def test_fsdp_preset_composes_to_pantheons_strategy() -> None:
    from tests.conftest import compose_train

    cfg = compose_train(ROOT / "unused", ["experiment=flowers_sd_tiny", "trainer=fsdp"])
    assert cfg.trainer.strategy._target_ == "pantheon.scaling.fsdp.FSDPStrategy"
    assert cfg.trainer.strategy.sharding_strategy == "SHARD_GRAD_OP" and cfg.trainer.precision == "bf16-mixed"


@pytest.mark.slow
@pytest.mark.skipif(not EXPERIMENT.is_file(), reason="flowers_sd_tiny is not in configs")
def test_fsdp_preempt_resume_is_exact_ema_and_export(tmp_path: Path) -> None:
    """SHARD_GRAD_OP on 2 ranks: a run stopped by the warning signal at step 3 saves last.ckpt (one full state
    dict), resumes and ends bit-identical (weights and EMA) to an uninterrupted run; the EMA shadow is full
    size; the fit-end pipeline holds the EMA weights of the checkpoint, and the checkpoint exports too."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert_ok(fsdp_run(whole, "ckpt_path=null"), "uninterrupted FSDP run")
    signal_at = [
        "+callbacks.signal._target_=tests.integration.callbacks.SignalAt",
        "+callbacks.signal.step=3",
    ]
    first = fsdp_run(stopped, "ckpt_path=null", *signal_at)
    assert first.returncode == 128 + 10, (
        f"expected the SIGUSR1 stop (138), got {first.returncode}\n{first.stderr[-3000:]}"
    )
    assert (stopped / "checkpoints" / "last.ckpt").is_file()
    assert_ok(fsdp_run(stopped, "ckpt_path=last"), "resumed FSDP run")
    assert "resumed" in (stopped / "train.log").read_text()

    a, b = (
        torch.load(run / "final.ckpt", map_location="cpu", weights_only=False) for run in (whole, stopped)
    )
    assert a["global_step"] == b["global_step"] == 6
    state = a["state_dict"]
    assert state and all(k.startswith("unet.") and "_fsdp" not in k for k in state), (
        "only the UNet, clean names"
    )
    different = [k for k in state if not torch.equal(state[k], b["state_dict"][k])]
    assert not different, f"resumed FSDP run differs from the uninterrupted one in {len(different)} tensors"
    shadow_a, shadow_b = a["callbacks"]["EMA"]["shadow"], b["callbacks"]["EMA"]["shadow"]
    assert {k: v.shape for k, v in shadow_a.items()} == {k: v.shape for k, v in state.items()}, (
        "full-size EMA"
    )
    assert all(torch.equal(shadow_a[k], shadow_b[k]) for k in shadow_a), "the EMA resumes exactly too"

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    (unet_file,) = (whole / "pipeline" / "unet").glob("*.safetensors")
    exported = load_file(unet_file)
    assert all(torch.equal(exported[k.removeprefix("unet.")].float(), v) for k, v in shadow_a.items())

    from pantheon.models.checkpoints import load_module

    load_module(whole / "final.ckpt").export(tmp_path / "pipeline")
    assert StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline").unet is not None
