"""The serving image (docker/Dockerfile target `serve`), run by `make docker-test` after the build.

A container of it serves the shipped GAN checkpoint (tests/assets/serving/gan_mnist.ckpt, mounted read-only at
/models/model.ckpt as docker/compose.yaml does): Docker's own HEALTHCHECK turns it healthy once the model is
warm, a real HTTP client gets digits the project's evaluator recognises, bad input is a one-line 422 and the
server keeps serving, /metrics counts the requests, and `docker stop` (SIGTERM through tini) ends it with code 0.

Skipped with the reason unless PANTHEON_TEST_SERVE_IMAGE names a built image and a daemon answers.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from pantheon.evaluation.mnist_classifier import load_evaluator
from pantheon.serving.launch import free_port, get, post, scrape
from tests.integration.slurm_helpers import ROOT, sh

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("PANTHEON_TEST_SERVE_IMAGE", "")
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
ASSET = ROOT / "tests" / "assets" / "serving" / "gan_mnist.ckpt"
HEALTHY_WITHIN_S = 240


def container_state(name: str) -> dict:
    result = sh([DOCKER, "inspect", "-f", "{{json .State}}", name], timeout=15)
    return json.loads(result.stdout) if result.returncode == 0 else {}


@pytest.fixture(scope="module")
def served():
    """(base URL, container name) of the serving image on a free host port; removed at the end."""
    if not IMAGE:
        pytest.skip(
            "PANTHEON_TEST_SERVE_IMAGE is not set: run `make docker-test` (it builds the image first)"
        )
    if sh([DOCKER, "image", "inspect", IMAGE], timeout=15).returncode != 0:
        pytest.skip(f"no image {IMAGE}: `make docker-build-serve`")
    port, name = free_port(), f"pantheon-serve-{uuid.uuid4().hex[:8]}"
    started = sh(
        [DOCKER, "run", "-d", "--name", name, "--network", "host", "-e", f"PANTHEON_SERVE_PORT={port}",
         "-v", f"{ASSET}:/models/model.ckpt:ro", IMAGE, "ckpt=/models/model.ckpt", "export_dir=/tmp/export"],
        timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while (state := container_state(name)).get("Health", {}).get("Status") != "healthy":
            assert state.get("Running"), (
                f"the server container stopped: {sh([DOCKER, 'logs', name]).stderr[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"not healthy within {HEALTHY_WITHIN_S} s: {state.get('Health')}"
            )
            time.sleep(2)
        yield f"http://127.0.0.1:{port}", name
    finally:
        print(sh([DOCKER, "logs", name], timeout=30).stderr[-3000:])
        sh([DOCKER, "rm", "-f", name], timeout=60)


def test_the_image_runs_as_a_user_with_a_healthcheck() -> None:
    if not IMAGE:
        pytest.skip("PANTHEON_TEST_SERVE_IMAGE is not set")
    config = json.loads(sh([DOCKER, "image", "inspect", "-f", "{{json .Config}}", IMAGE], timeout=15).stdout)
    assert config["User"] and not config["User"].startswith("0"), "the serving image does not run as root"
    assert "/health" in " ".join(config["Healthcheck"]["Test"])
    assert "pantheon.serve" in " ".join(config["Entrypoint"])
    assert not any(v.startswith("WANDB_API_KEY") for v in config["Env"]), "no secret in the image"


def test_digits_bad_input_and_metrics_over_http(served) -> None:
    url, _ = served
    status, reply = post(f"{url}/predict", {"digit": 7, "n": 8, "seed": 3, "format": "npy"})
    assert status == 200, reply
    digits = np.frombuffer(base64.b64decode(reply["images"]), dtype=np.uint8).reshape(reply["shape"])
    assert digits.shape == (8, 28, 28) and reply["seed"] == 3
    with torch.no_grad():  # the evaluator takes digits in [-1, 1]
        predicted = load_evaluator()(
            torch.from_numpy(digits.copy()).float().div(127.5).sub(1).unsqueeze(1)
        ).argmax(1)
    assert (predicted == 7).float().mean() >= 0.75, f"the evaluator saw {predicted.tolist()}, not sevens"

    status, error = post(f"{url}/predict", {"digit": 10})
    assert status == 422 and "digit" in json.dumps(error) and "\n" not in json.dumps(error)
    assert get(f"{url}/health")[0] == 200, "the server keeps serving after bad input"
    metrics = scrape(get(f"{url}/metrics")[1].decode())
    assert sum(v for k, v in metrics.items() if k.startswith("pantheon_requests_total")) >= 2


def test_docker_stop_ends_the_server_cleanly(served) -> None:
    _, name = served
    stopped = sh([DOCKER, "stop", "-t", "30", name], timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    state = container_state(name)
    assert state.get("Running") is False and state.get("ExitCode") == 0, f"exit state {state}"
