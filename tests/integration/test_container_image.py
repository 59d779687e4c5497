"""Smoke tests inside the training image (docker/Dockerfile), run by `make docker-test` after the build.

(1) the image runs as its non-root user, with tini as PID 1, labelled with the commit and the pins;
(2) the GAN fast-dev-run, through the entrypoint;
(3) `docker-compose run` of a short GAN training writes its run directory to the host, owned by the user it ran as,
    with /dev/shm as compose.yaml documents; then `pantheon.sample digit=5` and `pantheon.export` in the image
    read that run's checkpoint;
(4) a SIGUSR1 to the container (docker kill) reaches Python through the init: it saves and exits 138.

Skipped with the reason unless PANTHEON_TEST_IMAGE names a built image and a daemon answers (`make docker-test`
sets it), so `make test-integration` does not run them against a stale image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.slurm_helpers import ROOT, sh

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("PANTHEON_TEST_IMAGE", "")
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
RUN = [DOCKER, "run", "--rm", "--init", "--network", "host", "-e", "PANTHEON_OFFLINE=1"]
# A short GAN run: 1 epoch of 2 batches, 1 validation batch (class_acc and FID run), a checkpoint, csv logs.
SHORT = ["debug=fast", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=16"]
HOST_UID = 4242  # no such user in the image or on the host: any UID must work (HOME is world-writable)


@pytest.fixture(scope="module", autouse=True)
def image() -> str:
    if not IMAGE:
        pytest.skip("PANTHEON_TEST_IMAGE is not set: run `make docker-test` (it builds the image first)")
    if sh([DOCKER, "version"], timeout=15).returncode != 0:
        pytest.skip("no Docker daemon answers: `make docker-up`")
    if sh([DOCKER, "image", "inspect", IMAGE], timeout=15).returncode != 0:
        pytest.skip(f"no image {IMAGE}: `make docker-build`")
    return IMAGE


def docker(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = sh(args, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"rc {result.returncode}: {' '.join(args)}\n{result.stderr[-3000:]}"
    return result


def test_image_user_init_and_labels() -> None:
    out = docker(
        [*RUN, "--entrypoint", "bash", IMAGE, "-c", "id -u; id -un; echo $HOME; readlink /proc/1/exe"]
    )
    uid, name, home, init = out.stdout.split()
    assert int(uid) != 0 and name == "pantheon", "the image's default user is not root"
    assert home == "/home/pantheon"
    assert init.endswith("docker-init") or "tini" in init, f"PID 1 is {init}, not an init"
    entry = docker([DOCKER, "image", "inspect", "-f", "{{json .Config.Entrypoint}}", IMAGE]).stdout
    assert '"tini"' in entry.replace("/usr/bin/tini", "tini") and "pantheon.train" in entry
    labels = docker([DOCKER, "image", "inspect", "-f", "{{json .Config.Labels}}", IMAGE]).stdout
    assert "org.opencontainers.image.revision" in labels and "torch==2.14.1" in labels
    env = docker([DOCKER, "image", "inspect", "-f", "{{json .Config.Env}}", IMAGE]).stdout
    assert "WANDB_API_KEY" not in env, "no secret in the image"


def test_gan_fast_dev_run() -> None:
    out = docker(
        [*RUN, "--shm-size", "1g", IMAGE, "+trainer.fast_dev_run=true", "logger=csv", "data.batch_size=16"]
    )
    assert "Running in `fast_dev_run` mode" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def compose_run(tmp_path_factory) -> dict:
    """`docker-compose run` of a short GAN training as HOST_UID, its logs/ a host directory of that user."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed: apt-get install docker-compose")
    tmp = tmp_path_factory.mktemp("compose")
    for name in ("logs", "data", "wandb"):
        (tmp / name).mkdir()
        os.chown(tmp / name, HOST_UID, HOST_UID)
    env = {
        **os.environ,
        "PANTHEON_IMAGE": IMAGE,
        "PANTHEON_UID": str(HOST_UID),
        "PANTHEON_GID": str(HOST_UID),
        "PANTHEON_LOGS": str(tmp / "logs"),
        "PANTHEON_DATA": str(tmp / "data"),
        "PANTHEON_WANDB": str(tmp / "wandb"),
        "PANTHEON_OFFLINE": "1",
        "WANDB_API_KEY": "dummy-secret-" + uuid.uuid4().hex,  # passed through, never printed
    }
    compose = ["docker-compose", "-f", "docker/compose.yaml", "--project-name", f"pantheon-test-{tmp.name}"]
    script = 'id -u; df -m /dev/shm | tail -n 1; test -n "$WANDB_API_KEY" && echo key-passed; ' + " ".join(
        ["python -m pantheon.train", *SHORT]
    )
    result = sh(
        [*compose, "run", "--rm", "--entrypoint", "bash", "train-cpu", "-c", script],
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, f"compose run failed (rc {result.returncode}):\n{result.stderr[-4000:]}"
    return {"tmp": tmp, "out": result.stdout + result.stderr, "key": env["WANDB_API_KEY"]}


def test_compose_run_writes_run_dir_owned_by_the_user(compose_run) -> None:
    out, tmp = compose_run["out"], compose_run["tmp"]
    lines = out.splitlines()
    assert lines[0].strip() == str(HOST_UID)
    shm_mb = int(lines[1].split()[1])
    assert shm_mb >= 8000, f"/dev/shm is {shm_mb} MB, compose.yaml sets 8 GB"
    assert "key-passed" in out and compose_run["key"] not in out, "WANDB_API_KEY reaches the run, unprinted"
    (ckpt,) = (tmp / "logs").glob("train/runs/*/checkpoints/last.ckpt")
    run_dir = ckpt.parents[1]
    for path in (run_dir, ckpt, run_dir / ".hydra" / "config.yaml"):
        assert path.stat().st_uid == HOST_UID, f"{path} belongs to uid {path.stat().st_uid}"


def test_sample_and_export_in_the_image(compose_run) -> None:
    tmp = compose_run["tmp"]
    (ckpt,) = (tmp / "logs").glob("train/runs/*/checkpoints/last.ckpt")
    inside = "/app/logs/" + str(ckpt.relative_to(tmp / "logs"))
    mount = ["-u", f"{HOST_UID}:{HOST_UID}", "-v", f"{tmp / 'logs'}:/app/logs"]
    python = ["--entrypoint", "python", IMAGE]
    docker(
        [
            *RUN,
            *mount,
            *python,
            "-m",
            "pantheon.sample",
            f"ckpt={inside}",
            "digit=5",
            "n=16",
            "out=/app/logs/five.png",
        ]
    )
    assert (tmp / "logs" / "five.png").stat().st_size > 0
    docker([*RUN, *mount, *python, "-m", "pantheon.export", f"ckpt={inside}"])
    exported = {p.name for p in ckpt.parents[1].glob("export/*")}
    assert {"generator.torchscript.pt", "generator.onnx"} <= exported, exported


def test_sigusr1_reaches_python_through_the_init(tmp_path: Path) -> None:
    """What a preemption warning does to a container: the signal goes to PID 1 (tini), which forwards it."""
    name = f"pantheon-sig-{uuid.uuid4().hex[:8]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    os.chown(logs, HOST_UID, HOST_UID)
    args = [
        DOCKER,
        "run",
        "--name",
        name,
        "--network",
        "host",
        "-u",
        f"{HOST_UID}:{HOST_UID}",
        "-e",
        "PANTHEON_OFFLINE=1",
    ]
    args += ["-v", f"{logs}:/app/logs", IMAGE, "debug=bare", "trainer.max_epochs=50"]
    proc = subprocess.Popen(
        ["timeout", "300", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list(logs.glob("train/runs/*/csv/version_0/metrics.csv")) and time.monotonic() < deadline:
            time.sleep(1)
        sh([DOCKER, "kill", "--signal=USR1", name], timeout=15)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        sh([DOCKER, "rm", "-f", name], timeout=30)
    assert proc.returncode == 138, f"rc {proc.returncode}, expected 128 + SIGUSR1:\n{out[-3000:]}"
    assert "SIGUSR1: saved" in out
    assert list(logs.glob("train/runs/*/checkpoints/last.ckpt"))
