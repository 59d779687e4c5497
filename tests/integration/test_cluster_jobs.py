"""Training jobs on the real local SLURM cluster (slurm/slurm-up.sh: nodes n1, n2, one CPU each), CPU + gloo.

(1) sbatch, 2 nodes x 1 task: DDP GAN completes, both ranks end with identical weights.
(2) submitit launcher: a 2-point sweep runs as a job array, both results come back.
(3) preemption: a job signalled mid-epoch saves, requeues itself, resumes at the same step and ends with the
    final step and weights of an uninterrupted run with the same seed (the run of test 1).
(4) a sweep whose allocation does not match its trainer is refused before submission: no job appears.
(5) the tiny diffusion experiment under DDP on 2 tasks.

Skipped with the reason when the SLURM tools are missing or the cluster is down. Every SLURM call and every job
wait is bounded; jobs are cancelled by name when a test ends. Runs are tiny (a few batches, csv logger, no
progress bar, no validation): the time goes into Python start-up on two shared cores.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.utils import JobStatus

from tests.integration.slurm_helpers import (
    FINAL_STEP,
    GAN_ARGS,
    JOB_TIMEOUT_S,
    PREEMPT_AT_STEP,
    ROOT,
    assert_same_weights,
    dump_weights,
    job_env,
    job_state,
    load_weights,
    preempt_gan_job,
    run_gan_job,
    sbatch,
    sh,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster")]


@pytest.fixture(scope="module")
def uninterrupted_gan(tmp_path_factory, job_name) -> dict:
    """Test 1's run, also test 3's reference: sbatch 2 nodes x 1 task DDP GAN, weights dumped by every rank."""
    return run_gan_job(tmp_path_factory.mktemp("gan"), job_name)


def test_sbatch_two_node_ddp_gan_ranks_agree(uninterrupted_gan) -> None:
    rank0, rank1 = uninterrupted_gan["weights"]
    assert rank0["global_step"] == rank1["global_step"] == FINAL_STEP
    assert_same_weights(rank0, rank1, "rank 0 vs rank 1 after DDP", parameters_only=True)
    log = uninterrupted_gan["log"].read_text()
    assert "2 tasks (1(x2) per node)" in log and "MASTER_ADDR=" in log
    run_dir = uninterrupted_gan["tmp"] / "logs" / "train" / "runs" / f"slurm-{uninterrupted_gan['job']}"
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file(), (
        "one run dir named by the job id, rank 0 logs"
    )
    assert not list(run_dir.glob("csv/version_1")), "only rank 0 writes loggers"


def test_preempted_job_requeues_and_resumes_exactly(uninterrupted_gan, tmp_path: Path, job_name: str) -> None:
    job, text, _ = preempt_gan_job(tmp_path, job_name, uninterrupted_gan)
    assert f"requeued SLURM job {job}" in text
    assert "restart 1 on n[1-2]" in text, "the requeued run started again on both nodes"


def test_submitit_sweep_runs_as_a_job_array(tmp_path: Path, job_name: str) -> None:
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "pantheon.train", "-m", "hydra/launcher=submitit_slurm", "slurm=local",
        "experiment=mnist_gan", "trainer=cpu", "debug=bare", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "+optimized_metric=train/g_loss",
        f"hydra.sweep.dir={sweep}", f"hydra.launcher.name={job_name}", "seed=1,2",
    ]  # fmt: skip
    result = sh(command, timeout=JOB_TIMEOUT_S, cwd=ROOT, env=job_env())
    assert result.returncode == 0, f"multirun failed (rc {result.returncode}):\n{result.stderr[-4000:]}"
    assert "batch size: 16 per device x 1 device (1 per node x 1 node) = 16 global" in result.stdout

    # One folder per array task (<array id>_<index>), next to the array's own (<array id>: the sbatch script).
    folders = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    array_id = folders[0].split("_")[0] if folders else "?"
    assert folders == [f"{array_id}_0", f"{array_id}_1"], f"not a 2-task job array: {folders}"
    results = []
    for folder in folders:
        (pkl,) = (sweep / ".submitit" / folder).glob("*_result.pkl")
        status, job_return = pickle.loads(pkl.read_bytes())  # submitit's ("success", Hydra's JobReturn)
        assert status == "success", job_return
        assert job_return.status == JobStatus.COMPLETED, job_return
        results.append(job_return.return_value)  # train/g_loss, the task function's return
    assert all(isinstance(v, float) for v in results) and results[0] != results[1], results
    for num in (0, 1):
        assert (sweep / str(num) / "csv" / "version_0" / "metrics.csv").is_file(), (
            "each point has its own run dir"
        )


def test_submitit_job_preempted_resumes_in_its_sweep_dir(tmp_path: Path, job_name: str) -> None:
    """The same one mechanism under submitit: its warning (SIGUSR2) reaches pantheon's handler, not submitit's;
    the job saves, requeues, runs again from submitit's pickle in the sweep directory fixed at submit time,
    resumes there, and the waiting multirun gets its result."""
    sweep, marker = tmp_path / "sweep", tmp_path / "held"
    command = [
        sys.executable, "-m", "pantheon.train", "-m", "hydra/launcher=submitit_slurm", "slurm=local",
        *[a for a in GAN_ARGS if not a.startswith(("trainer=", "trainer.num_nodes", "trainer.devices"))],
        "trainer=cpu", f"hydra.sweep.dir={sweep}", f"hydra.launcher.name={job_name}",
        "+callbacks.hold._target_=tests.integration.callbacks.HoldAtStep", f"+callbacks.hold.step={PREEMPT_AT_STEP}",
        f"+callbacks.hold.marker={marker}",
    ]  # fmt: skip
    output = tmp_path / "multirun.out"
    with output.open("w") as sink:
        multirun = subprocess.Popen(
            ["timeout", "-k", "5", str(JOB_TIMEOUT_S), *command],
            cwd=ROOT,
            env=job_env(),
            stdout=sink,
            stderr=sink,
        )
    try:
        wait_for(marker.is_file, JOB_TIMEOUT_S, f"the submitit job to reach global step {PREEMPT_AT_STEP}")
        # One sweep point: submitit submits a plain job (folder <job id>), not an array.
        (task,) = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)]
        signalled = sh(["scancel", "--signal=USR2", task], timeout=10)
        assert signalled.returncode == 0, signalled.stderr
        multirun.wait(timeout=JOB_TIMEOUT_S + 30)
    finally:
        multirun.kill()
    assert multirun.returncode == 0, (
        f"multirun failed (rc {multirun.returncode}):\n{output.read_text()[-4000:]}"
    )
    log = (sweep / ".submitit" / task / f"{task}_0_log.out").read_text()
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    assert f"saved {ckpt} at global step {PREEMPT_AT_STEP}" in log, log[-3000:]
    assert f"resumed {ckpt} at global step {PREEMPT_AT_STEP}" in log
    assert "Caught signal SIGUSR2" not in log, "submitit's own handler must not run"
    assert job_state(task)[1] == 1, "requeued once"
    (pkl,) = (sweep / ".submitit" / task).glob("*_result.pkl")
    assert pickle.loads(pkl.read_bytes())[0] == "success"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0"], (
        "one run dir, kept across requeue"
    )


def test_single_node_template_runs(tmp_path: Path, job_name: str) -> None:
    """slurm/single_node.sbatch, its GPU defaults overridden on the command line as on the CPU dev cluster. One
    task: the dev nodes have one CPU each, and SLURM 22.05 refuses --ntasks-per-node=2 there even with
    --overcommit (multi-task DDP is tested across nodes above)."""
    options = ("--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1")
    args = [
        *(a for a in GAN_ARGS if not a.startswith(("trainer=", "trainer.num_nodes", "trainer.devices", "trainer.max_epochs"))),
        "trainer=cpu", "trainer.max_epochs=1", f"paths.log_dir={tmp_path}/logs", *dump_weights(tmp_path / "weights"),
    ]  # fmt: skip
    job, log = sbatch(tmp_path, job_name, args, script="single_node", options=options)
    weights = torch.load(tmp_path / "weights" / "rank0.pt", weights_only=True)
    assert weights["global_step"] == FINAL_STEP // 2
    assert "1 tasks (1 per node)" in log.read_text()
    assert (
        tmp_path / "logs" / "train" / "runs" / f"slurm-{job}" / "csv" / "version_0" / "metrics.csv"
    ).is_file()


def test_mismatched_allocation_is_refused_before_submission(tmp_path: Path, job_name: str) -> None:
    """A 2-point sweep whose second point wants 2 devices while the allocation gives 1 task per node: the whole
    sweep is refused, in one line, before submitit submits anything (not even the valid first point)."""
    command = [
        sys.executable, "-m", "pantheon.train", "-m", "hydra/launcher=submitit_slurm", "slurm=local",
        "experiment=mnist_gan", "trainer=ddp_cpu", "trainer.num_nodes=2", "slurm.tasks_per_node=1",
        "trainer.devices=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.launcher.name={job_name}-refused",
    ]  # fmt: skip
    result = sh(command, timeout=120, cwd=ROOT, env=job_env())
    assert result.returncode == 2, f"rc {result.returncode}\n{result.stderr[-3000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: SLURM would start 1 task(s) per node but trainer.devices=2: one task per device, so set "
        "slurm.tasks_per_node=2 (or trainer.devices=1)"
    ]
    assert "Traceback" not in result.stderr
    queued = sh(["squeue", "-h", "--name", f"{job_name}-refused"], timeout=10)
    assert queued.returncode == 0 and not queued.stdout.strip(), f"a job was queued: {queued.stdout}"
    assert not (tmp_path / "sweep" / ".submitit").exists(), "submitit wrote nothing"


def test_tiny_diffusion_ddp_on_two_tasks(tmp_path: Path, job_name: str) -> None:
    if not (ROOT / "configs" / "experiment" / "flowers_sd_tiny.yaml").is_file():
        pytest.skip(
            "configs/experiment/flowers_sd_tiny.yaml is missing (the diffusion experiment is not in yet)"
        )
    args = [
        "experiment=flowers_sd_tiny",
        "trainer=ddp_cpu",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "debug=bare",
        "trainer.max_steps=4",
        f"paths.log_dir={tmp_path}/logs",
        *dump_weights(tmp_path / "weights"),
    ]
    _, log = sbatch(tmp_path, job_name, args)
    rank0, rank1 = load_weights(tmp_path / "weights")
    assert rank0["global_step"] == rank1["global_step"] == 4
    assert any(k.startswith("unet.") for k in rank0["state_dict"])
    assert not any(k.startswith(("vae.", "text_encoder.", "frozen.")) for k in rank0["state_dict"]), (
        "the frozen parts stay out of the module tree"
    )
    assert_same_weights(rank0, rank1, "diffusion rank 0 vs rank 1 after DDP", parameters_only=True)
    assert "2 tasks (1(x2) per node)" in log.read_text()
