"""The cluster package's pure logic, without a cluster: environment parsing, run-directory names, pre-submit
and in-job checks, the launcher configs, container commands, the resumable sampler and loader."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import hydra
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from pantheon.cluster import environment, preemption, preflight
from pantheon.cluster.launcher import TASK_SCRIPT, container_command
from pantheon.cluster.resume import (
    ResumableDataLoader,
    ResumableSampler,
    checkpoint_to_resume,
    make_train_order_resumable,
    resumable_train_loader,
    step_seed,
)
from pantheon.utils.config_checks import check_config
from pantheon.utils.errors import UserError
from tests.conftest import CONFIG_DIR

# Hydra's note on our launcher configs sharing a name with the plugin's schemas (pantheon.cluster filters it
# in real runs; pytest resets warning filters per test).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*.hydra/launcher/submitit_(slurm|local). is validated:UserWarning"
)

SLURM_VARS = [
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_STEP_ID", "SLURM_NTASKS",
    "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NAME",
    "SLURM_RESTART_COUNT", "SLURM_NTASKS_PER_NODE", "RANK", "LOCAL_RANK", "PMI_RANK", "MASTER_ADDR",
]  # fmt: skip


@pytest.fixture
def no_slurm(monkeypatch):
    """A clean environment: no SLURM or torchrun variables (tests may themselves run inside a SLURM job)."""
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def compose(*overrides: str):
    """The real configs as a run sees them, the hydra node included (launcher, run and sweep dirs)."""
    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra.compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- environment: ranks, job ids, run directory names ---


def test_run_id_is_the_job_id_and_stable_for_array_tasks(no_slurm) -> None:
    assert not environment.run_id().startswith("slurm-")  # a timestamp on a workstation
    no_slurm.setenv("SLURM_JOB_ID", "123")
    assert environment.run_id() == "slurm-123"
    no_slurm.setenv("SLURM_ARRAY_JOB_ID", "120")
    no_slurm.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert environment.run_id() == "slurm-120_3", "array tasks share SLURM_ARRAY_JOB_ID; requeues keep both"


def test_run_dir_under_sbatch_is_named_by_the_job(no_slurm) -> None:
    no_slurm.setenv("SLURM_JOB_ID", "4242")
    cfg = compose()
    assert cfg.hydra.run.dir.endswith("/logs/train/runs/slurm-4242")


def test_global_rank_prefers_launcher_variables(no_slurm) -> None:
    assert environment.global_rank() == 0
    no_slurm.setenv("LOCAL_RANK", "1")
    assert environment.global_rank() == 1
    no_slurm.setenv("SLURM_PROCID", "3")
    assert environment.global_rank() == 3
    no_slurm.setenv("RANK", "5")
    assert environment.global_rank() == 5


@pytest.mark.parametrize(
    ("spec", "counts"),
    [("1", [1]), ("2(x3)", [2, 2, 2]), ("2(x2),1", [2, 2, 1]), ("4,4", [4, 4])],
)
def test_parse_tasks_per_node(spec: str, counts: list[int]) -> None:
    assert environment.parse_tasks_per_node(spec) == counts


def test_srun_layout_only_inside_a_step(no_slurm) -> None:
    no_slurm.setenv("SLURM_JOB_ID", "7")
    no_slurm.setenv("SLURM_TASKS_PER_NODE", "1(x2)")
    assert environment.srun_layout() is None, "the batch script is no srun step"
    no_slurm.setenv("SLURM_STEP_ID", "0")
    no_slurm.setenv("SLURM_STEP_NUM_NODES", "2")
    no_slurm.setenv("SLURM_STEP_TASKS_PER_NODE", "1(x2)")
    assert environment.srun_layout() == (2, [1, 1])


def test_lightning_environment_has_auto_requeue_off_under_srun(no_slurm) -> None:
    assert environment.lightning_cluster_environment() == []
    no_slurm.setenv("SLURM_NTASKS", "2")
    no_slurm.setenv("SLURM_NTASKS_PER_NODE", "2")
    no_slurm.setenv("SLURM_JOB_NAME", "interactive")
    assert environment.lightning_cluster_environment() == [], (
        "Lightning's rule: interactive jobs are not SLURM runs"
    )
    no_slurm.setenv("SLURM_JOB_NAME", "pantheon")
    (env,) = environment.lightning_cluster_environment()
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False


# --- preflight: strategies, allocation, in-job layout ---


def test_gan_with_deepspeed_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = compose("experiment=mnist_gan", "trainer=deepspeed_stage_2")
    with pytest.raises(UserError) as excinfo:
        check_config(cfg)
    message = one_line_error(excinfo)
    assert "single optimizer" in message and "trainer=ddp" in message and "trainer=ddp_cpu" in message


def test_gan_with_fsdp_is_refused_in_one_line() -> None:
    cfg = compose("experiment=mnist_gan", "trainer=ddp_cpu")
    cfg.trainer.strategy._target_ = "lightning.pytorch.strategies.FSDPStrategy"
    with pytest.raises(UserError) as excinfo:
        check_config(cfg)
    message = one_line_error(excinfo)
    assert "FSDPStrategy cannot train ConditionalGAN" in message and "trainer=ddp_cpu" in message


@pytest.mark.parametrize(
    "preset",
    ["deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_2_offload", "deepspeed_stage_3_offload"],
)
def test_deepspeed_presets_compose(preset: str) -> None:
    cfg = compose(f"trainer={preset}")
    assert preflight.uses_deepspeed(cfg)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy = OmegaConf.to_container(cfg.trainer.strategy)
    stage = strategy.get("stage") or strategy["config"]["zero_optimization"]["stage"]
    assert stage == (3 if "3" in preset else 2)


@pytest.mark.parametrize("preset", ["ddp", "ddp_cpu"])
def test_ddp_presets_find_unused_parameters_for_the_gan_only(preset: str) -> None:
    for experiment in ("mnist_gan", "mnist_gan_mlp"):
        cfg = compose(f"experiment={experiment}", f"trainer={preset}")
        assert cfg.trainer.strategy.find_unused_parameters is True
        check_config(cfg, in_job=False)  # the GAN's working alternatives pass
    cfg = compose("experiment=flowers_sd_tiny", f"trainer={preset}")
    assert cfg.trainer.strategy.find_unused_parameters is False, "diffusion DDP does not pay for the search"


def test_slurm_allocation_must_match_the_trainer() -> None:
    cfg = compose("trainer=ddp_cpu", "trainer.devices=2", "trainer.num_nodes=2")
    preflight.check_slurm_allocation(cfg, nodes=2, tasks_per_node=2)
    with pytest.raises(UserError) as excinfo:
        preflight.check_slurm_allocation(cfg, nodes=2, tasks_per_node=1)
    assert "1 task(s) per node but trainer.devices=2" in one_line_error(excinfo)
    with pytest.raises(UserError) as excinfo:
        preflight.check_slurm_allocation(cfg, nodes=1, tasks_per_node=2)
    assert "1 node(s) but trainer.num_nodes=2" in one_line_error(excinfo)


def test_local_launcher_runs_one_process_per_job() -> None:
    preflight.check_local_allocation(compose("trainer=cpu"), nodes=1, tasks_per_node=1)
    with pytest.raises(UserError, match="one process per job on this machine"):
        preflight.check_local_allocation(compose("trainer=cpu"), nodes=1, tasks_per_node=2)
    with pytest.raises(
        UserError
    ) as excinfo:  # Lightning's DDP launcher cannot re-run submitit's command line
        preflight.check_local_allocation(compose("trainer=ddp_cpu"), nodes=1, tasks_per_node=1)
    assert "trainer.devices=2 x trainer.num_nodes=1" in one_line_error(excinfo)


@pytest.mark.parametrize(
    ("devices", "count"), [(4, 4), ("2", 2), ("0,1,2", 3), ([0, 1], 2)]
)  # fmt: skip
def test_devices_per_node_counts(devices, count: int) -> None:
    cfg = OmegaConf.create({"trainer": {"devices": devices, "num_nodes": 1}})
    assert preflight.devices_per_node(cfg) == count


def test_devices_auto_cannot_size_a_job() -> None:
    with pytest.raises(UserError, match="number of devices per node"):
        preflight.devices_per_node(OmegaConf.create({"trainer": {"devices": "auto"}}))


def test_batch_size_summary() -> None:
    cfg = compose("trainer=ddp_cpu", "trainer.devices=2", "trainer.num_nodes=2", "data.batch_size=32")
    assert preflight.batch_size_summary(cfg) == (
        "batch size: 32 per device x 4 devices (2 per node x 2 nodes) = 128 global"
    )
    cfg = compose("data.batch_size=8", "+trainer.accumulate_grad_batches=4")
    assert preflight.batch_size_summary(cfg).endswith("= 8 global, x 4 accumulated = 32 per optimizer step")


def test_in_job_layout_check(no_slurm) -> None:
    cfg = compose("trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2")
    preflight.check_job_layout(cfg)  # off SLURM: nothing to check
    no_slurm.setenv("SLURM_JOB_ID", "9")
    with pytest.raises(UserError, match="runs in the batch script itself"):
        preflight.check_job_layout(cfg)
    no_slurm.setenv("SLURM_STEP_ID", "0")
    no_slurm.setenv("SLURM_STEP_NUM_NODES", "2")
    no_slurm.setenv("SLURM_STEP_TASKS_PER_NODE", "1(x2)")
    preflight.check_job_layout(cfg)
    no_slurm.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2)")
    with pytest.raises(UserError) as excinfo:
        preflight.check_job_layout(cfg)
    assert "srun started 2+2 task(s) on 2 node(s) but trainer.devices=1" in one_line_error(excinfo)
    with pytest.raises(UserError):  # one process per task, 4 tasks: each would train alone
        preflight.check_job_layout(compose("trainer=cpu"))


# --- the launcher configs ---


def test_submitit_slurm_reads_the_cluster_preset() -> None:
    cfg = compose(
        "hydra/launcher=submitit_slurm",
        "slurm=local",
        "trainer=ddp_cpu",
        "trainer.num_nodes=2",
        "trainer.devices=1",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.pantheon_launcher.launchers.SlurmLauncher"
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node) == ("debug", 2, 1)
    assert launcher.max_num_timeout == 0, "submitit's own requeue stays off"
    assert launcher.additional_parameters.requeue is True
    assert cfg.hydra.sweep.dir.startswith(cfg.paths.log_dir)


def test_cluster_presets_and_overrides() -> None:
    cfg = compose(
        "hydra/launcher=submitit_slurm",
        "slurm=example_gpu",
        "trainer=ddp",
        "trainer.devices=8",
        "trainer.num_nodes=4",
    )
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.account, launcher.gpus_per_node, launcher.nodes) == (
        "gpu",
        "my_account",
        8,
        4,
    )
    cfg = compose("hydra/launcher=submitit_slurm", "slurm.tasks_per_node=2", "trainer.devices=1")
    assert cfg.hydra.launcher.tasks_per_node == 2  # the pre-submit check then refuses it


def test_submitit_local_config() -> None:
    cfg = compose("hydra/launcher=submitit_local")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.pantheon_launcher.launchers.LocalLauncher"
    assert cfg.hydra.launcher.tasks_per_node == 1


def test_container_commands(monkeypatch, tmp_path: Path) -> None:
    """Every task starts through slurm/task.sh: on the host around this python, in a container around the
    image's python (runtime and image passed in the environment), pyxis through srun arguments; a setting
    the wrapper cannot use is refused before submission, in one line."""
    host = f"bash {TASK_SCRIPT} {sys.executable}"
    assert container_command(None, "/repo") == (host, [])
    assert container_command({"image": None, "runtime": "apptainer"}, "/repo") == (host, [])
    python, srun_args = container_command({"image": "nvcr.io#pantheon:1", "runtime": "pyxis"}, str(tmp_path))
    assert python == (
        f"env PANTHEON_CONTAINER='nvcr.io#pantheon:1' PANTHEON_CONTAINER_RUNTIME=pyxis PANTHEON_CONTAINER_BINDS='' "
        f"bash {TASK_SCRIPT} python"
    )
    assert srun_args == [
        "--container-image=nvcr.io#pantheon:1",
        f"--container-mounts={tmp_path}:{tmp_path}",
        f"--container-workdir={tmp_path}",
    ]
    with pytest.raises(UserError, match=r"apptainer\|singularity\|pyxis"):
        container_command({"image": "x", "runtime": "docker"}, "/repo")
    # a PATH with bash only: no ch-run, no apptainer; the wrapper names what is missing
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "bash").symlink_to(shutil.which("bash"))
    monkeypatch.setenv("PATH", str(bare))
    with pytest.raises(UserError, match="apptainer is not installed"):
        container_command({"image": "/img/p.sif", "runtime": "apptainer"}, str(tmp_path))
    with pytest.raises(UserError, match="ch-run is not installed"):
        container_command({"image": "/img/p.sqfs"}, str(tmp_path))


# --- requeue and resume plumbing ---


def test_requeue_off_slurm_reports_false(no_slurm) -> None:
    assert preemption.requeue_job() is False


def test_warning_signals_are_only_recorded() -> None:
    import os

    preemption.install()
    preemption.clear()
    os.kill(os.getpid(), signal.SIGUSR2)  # submitit's warning; would run submitit's handler otherwise
    assert preemption.received() == signal.SIGUSR2
    preemption.clear()
    assert preemption.received() is None


def test_checkpoint_to_resume(tmp_path: Path) -> None:
    assert checkpoint_to_resume("last", tmp_path) is None
    ckpts = tmp_path / "checkpoints"
    (ckpts / "last.ckpt.old").mkdir(parents=True)
    assert checkpoint_to_resume("last", tmp_path).endswith("last.ckpt.old"), "an interrupted DeepSpeed swap"
    (ckpts / "last.ckpt").mkdir()  # DeepSpeed checkpoints are directories
    assert checkpoint_to_resume("last", tmp_path).endswith("last.ckpt")
    assert checkpoint_to_resume(None, tmp_path) is None
    with pytest.raises(UserError, match="does not exist"):
        checkpoint_to_resume(str(tmp_path / "nope.ckpt"), tmp_path)


def test_resumable_sampler_shards_and_skips() -> None:
    data = TensorDataset(torch.arange(20))
    shards = [list(ResumableSampler(data, num_replicas=2, rank=r, shuffle=True, seed=1)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(20)), (
        "disjoint shards of one permutation on every rank"
    )
    sampler = ResumableSampler(data, num_replicas=2, rank=0, shuffle=True, seed=1)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.skip_next(epoch=3, samples=4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full, "a skip applies once"
    sampler.skip_next(epoch=2, samples=4)
    assert list(sampler) == full, "a skip for another epoch (the saved one ended) is ignored"
    sampler.set_epoch(4)
    assert list(sampler) != full, "each epoch has its own order"


def test_resumable_loader_continues_its_epoch() -> None:
    data = TensorDataset(torch.arange(40))
    plain = DataLoader(data, batch_size=4, shuffle=True, drop_last=True)
    loader = resumable_train_loader(plain, seed=5)
    assert isinstance(loader, ResumableDataLoader) and len(loader) == len(plain)
    loader.sampler.set_epoch(2)
    iterator = iter(loader)
    seen = [next(iterator)[0] for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3}
    rest = [batch[0] for batch in iterator]

    again = resumable_train_loader(plain, seed=5)
    again.load_state_dict(state)
    again.sampler.set_epoch(2)
    resumed = [batch[0] for batch in again]
    assert len(resumed) == len(rest) and all(torch.equal(a, b) for a, b in zip(resumed, rest, strict=True))
    assert again.state_dict() == {"epoch": 2, "batches": 10}
    assert not any(torch.equal(seen[0], b) for b in resumed)


def test_unrebuildable_loaders_are_left_alone() -> None:
    data = TensorDataset(torch.arange(8))
    custom = DataLoader(data, batch_sampler=[[0, 1], [2, 3]])
    assert resumable_train_loader(custom, seed=0) is custom


def test_datamodule_wrapper_keeps_hook_overridden() -> None:
    import lightning as L
    from lightning.pytorch.utilities.model_helpers import is_overridden

    class DM(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)

    dm = make_train_order_resumable(DM(), seed=0)
    assert is_overridden("train_dataloader", dm)
    assert isinstance(dm.train_dataloader(), ResumableDataLoader)


def test_step_seeds_differ_per_rank_and_batch() -> None:
    seeds = {step_seed(42, rank, batch) for rank in range(4) for batch in range(50)}
    assert len(seeds) == 200
    assert step_seed(42, 1, 7) == step_seed(42, 1, 7)
