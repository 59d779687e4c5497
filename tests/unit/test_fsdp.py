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


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 8, 4, generator=generator), torch.randn(2, 8, 3, generator=generator)


def _full_optim_state_on_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: SHARD_GRAD_OP on a tiny model, two AdamW steps on this rank's half of a batch,
    then the full optimizer state dict as pantheon's FSDPStrategy saves it on CPU (rank 0 writes it)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy

    from pantheon.scaling.fsdp import full_optim_state_dict

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = FSDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)), device_id=torch.device("cpu"),
                 sharding_strategy=ShardingStrategy.SHARD_GRAD_OP, use_orig_params=True)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = _tiny_batch()
    for _ in range(2):
        torch.nn.functional.mse_loss(model(x[rank]), y[rank]).backward()
        optimizer.step()
        optimizer.zero_grad()
    state = full_optim_state_dict(model, optimizer, rank)
    if rank == 0:
        torch.save(state, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo ranks spawned: ~55 s
def test_full_optimizer_state_on_cpu_keeps_every_state(tmp_path: Path) -> None:
    """On a CPU compute device FSDP's offloading `.cpu()` copies nothing, and the states it gathers through one
    reused buffer all came out as the last one (exp_avg == exp_avg_sq): resumed runs diverged. The saved full
    state must equal the optimizer state of the same training without FSDP (gradients averaged over ranks)."""
    import torch.multiprocessing as mp

    out = tmp_path / "optim.pt"
    mp.spawn(_full_optim_state_on_rank, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    state = torch.load(out, weights_only=False)["state"]

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = _tiny_batch()
    for _ in range(2):
        torch.nn.functional.mse_loss(model(x.reshape(16, 4)), y.reshape(16, 3)).backward()
        optimizer.step()
        optimizer.zero_grad()
    expected = optimizer.state_dict()["state"]
    assert state.keys() == expected.keys()
    for i, s in state.items():
        shared = s["exp_avg"].untyped_storage().data_ptr() == s["exp_avg_sq"].untyped_storage().data_ptr()
        assert not shared, f"param {i}: exp_avg and exp_avg_sq are one tensor"
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s[name], expected[i][name], msg=f"param {i} {name}")


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
