"""The cluster jobs of test_cluster_jobs.py, inside the SquashFS image (charliecloud's ch-run) on the real local
two-node cluster: every task starts through slurm/task.sh with PANTHEON_CONTAINER set.

(1) sbatch, 2 nodes x 1 task: DDP GAN completes in the container, both ranks end with identical weights.
(2) preemption: a job signalled mid-epoch saves in the container, which has no scontrol, exits 138; task.sh
    requeues it from outside; it resumes at the same step and ends bit-identical to (1).
(3) the submitit launcher with slurm.container set: the job runs in the image and its result comes back.

Each run proves it ran in the image: `+in_container=${oc.env:CH_RUNNING,...}` lands resolved in the csv
logger's hparams.yaml (ch-run sets CH_RUNNING). Skipped with the reason unless PANTHEON_TEST_SQFS names the
image (`make test-container` builds it and sets it) and the cluster is up.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from tests.integration.slurm_helpers import (
    FINAL_STEP,
    JOB_TIMEOUT_S,
    ROOT,
    assert_same_weights,
    job_env,
    preempt_gan_job,
    run_gan_job,
    sh,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster")]

SQFS = os.environ.get("PANTHEON_TEST_SQFS", "")
IN_CONTAINER = ["+in_container=${oc.env:CH_RUNNING,no}"]  # lands resolved in the csv logger's hparams.yaml


@pytest.fixture(scope="module", autouse=True)
def image() -> str:
    if not SQFS:
        pytest.skip("PANTHEON_TEST_SQFS is not set: run `make test-container` (it builds the SquashFS image)")
    if not Path(SQFS).is_file():
        pytest.skip(f"{SQFS} does not exist: `make image-sqfs`")
    if shutil.which("ch-run") is None:
        pytest.skip("ch-run is not installed: apt-get install charliecloud squashfuse")
    return SQFS


def container_env() -> dict[str, str]:
    return job_env(PANTHEON_CONTAINER=SQFS, PANTHEON_CONTAINER_RUNTIME="charliecloud")


def ran_in_container(run_dir: Path) -> bool:
    (hparams,) = run_dir.glob("csv/version_0/hparams.yaml")
    return "in_container: 'no'" not in hparams.read_text() and "in_container:" in hparams.read_text()


@pytest.fixture(scope="module")
def uninterrupted_gan(tmp_path_factory, job_name) -> dict:
    return run_gan_job(tmp_path_factory.mktemp("ct-gan"), job_name, IN_CONTAINER, env=container_env())


def test_sbatch_two_node_ddp_gan_in_the_container(uninterrupted_gan) -> None:
    rank0, rank1 = uninterrupted_gan["weights"]
    assert rank0["global_step"] == rank1["global_step"] == FINAL_STEP
    assert_same_weights(rank0, rank1, "rank 0 vs rank 1 after DDP in the container", parameters_only=True)
    log = uninterrupted_gan["log"].read_text()
    assert f"2 tasks (1(x2) per node), container {SQFS}" in log and "MASTER_ADDR=" in log
    run_dir = uninterrupted_gan["tmp"] / "logs" / "train" / "runs" / f"slurm-{uninterrupted_gan['job']}"
    assert ran_in_container(run_dir), "the job ran on the host, not in the image"


def test_preempted_job_in_the_container_requeues_from_outside(
    uninterrupted_gan, tmp_path: Path, job_name: str
) -> None:
    job, text, run_dir = preempt_gan_job(
        tmp_path, job_name, uninterrupted_gan, IN_CONTAINER, env=container_env()
    )
    assert f"exited 138: requeued SLURM job {job} from outside the container" in text
    assert ran_in_container(run_dir)


def test_submitit_launch_with_a_container(tmp_path: Path, job_name: str) -> None:
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "pantheon.train", "-m", "hydra/launcher=submitit_slurm", "slurm=local",
        f"slurm.container.image={SQFS}", "slurm.container.runtime=charliecloud",
        "experiment=mnist_gan", "trainer=cpu", "debug=bare", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "+optimized_metric=train/g_loss", "+in_container=${oc.env:CH_RUNNING,no}",
        f"hydra.sweep.dir={sweep}", f"hydra.launcher.name={job_name}",
    ]  # fmt: skip
    result = sh(command, timeout=JOB_TIMEOUT_S, cwd=ROOT, env=job_env())
    assert result.returncode == 0, f"multirun failed (rc {result.returncode}):\n{result.stderr[-4000:]}"
    (folder,) = [p for p in (sweep / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit()]
    (pkl,) = folder.glob("*_result.pkl")
    status, job_return = pickle.loads(pkl.read_bytes())
    assert status == "success", job_return
    assert job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, float)
    assert "slurm/task.sh python" in (folder / f"{folder.name}_submission.sh").read_text()
    assert ran_in_container(sweep / "0")


def test_missing_image_is_refused_before_submission(tmp_path: Path, job_name: str) -> None:
    command = [
        sys.executable, "-m", "pantheon.train", "-m", "hydra/launcher=submitit_slurm", "slurm=local",
        f"slurm.container.image={tmp_path}/nope.sqfs", "experiment=mnist_gan", "trainer=cpu",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.launcher.name={job_name}-refused",
    ]  # fmt: skip
    result = sh(command, timeout=120, cwd=ROOT, env=job_env())
    assert result.returncode == 2, f"rc {result.returncode}\n{result.stderr[-3000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: container image {tmp_path}/nope.sqfs does not exist: build it with `make image-sqfs`"
    ], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
