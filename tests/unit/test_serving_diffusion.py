"""The text-to-image pipeline behind a real server: the tiny offline pipeline, `python -m pantheon.serve
pipeline=...` on a free 127.0.0.1 port, real HTTP."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from pantheon.models.diffusion.tiny import ensure_tiny_pipeline
from pantheon.serving.launch import get, post, scrape, serving

pytestmark = pytest.mark.slow  # two processes load torch + diffusers, ~40 s on 2 busy cores


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_sd")
    pipeline = ensure_tiny_pipeline(root / "pipeline")
    log = root / "server.log"
    try:
        with serving(
            [f"pipeline={pipeline}", "max_batch_size=4", "batch_timeout=0.2", "max_steps=8"], log
        ) as url:
            yield url
    finally:
        print(log.read_text()[-3000:])


def images_of(reply: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in reply["images"]]


def test_prompt_returns_pngs_of_the_asked_size_and_seed_reproduces_them(server):
    status, reply = post(
        f"{server}/predict", {"prompt": "a photo of a sunflower", "n": 2, "steps": 3, "seed": 5}
    )
    assert status == 200, reply
    images = images_of(reply)
    assert [(im.format, im.mode, im.size) for im in images] == [("PNG", "RGB", (64, 64))] * 2
    assert (reply["seed"], reply["resolution"], reply["steps"]) == (5, 64, 3)
    again = post(f"{server}/predict", {"prompt": "a photo of a sunflower", "n": 2, "steps": 3, "seed": 5})[1]
    assert again["images"] == reply["images"]
    other = post(f"{server}/predict", {"prompt": "a photo of a sunflower", "n": 2, "steps": 3, "seed": 6})[1]
    assert other["images"] != reply["images"]
    small = post(f"{server}/predict", {"prompt": "a red rose", "steps": 2, "resolution": 32})[1]
    assert [im.size for im in images_of(small)] == [(32, 32)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": 7}, "prompt"),
        ({"steps": 2}, "prompt"),
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "n": 5}, "n"),
        ({"prompt": "a", "steps": 9}, "steps"),  # this server's max_steps=8
        ({"prompt": "a", "guidance": 21}, "guidance"),
        ({"prompt": "a", "resolution": 36}, "resolution"),  # not a multiple of 8
        ({"prompt": "a", "resolution": 256}, "resolution"),
    ],
)
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(server, body, field):
    status, reply = post(f"{server}/predict", body)
    assert (status, reply["field"]) == (422, field) and "allowed: " in reply["error"], reply
    assert get(f"{server}/health") == (200, b"ok")


def test_a_prompt_longer_than_the_text_encoder_is_a_422_naming_the_tokens(server):
    status, reply = post(f"{server}/predict", {"prompt": "a " * 80, "steps": 2})
    assert (status, reply["field"]) == (422, "prompt"), reply
    assert reply["error"].startswith("prompt: is 82 tokens, the text encoder takes at most 77: shorten it")
    info = json.loads(get(f"{server}/info")[1])["model"]
    assert info["limits"]["max_prompt_tokens"] == 77


def test_metrics_and_info(server):
    info = json.loads(get(f"{server}/info")[1])["model"]
    assert info["kind"] == "diffusion" and info["limits"]["max_resolution"] == 128
    assert info["timeout"] > info["worst_case_batch_seconds"]
    before = scrape(get(f"{server}/metrics")[1].decode())
    post(f"{server}/predict", {"prompt": "a photo of a daisy", "steps": 2})
    post(f"{server}/predict", {"prompt": ""})
    after = scrape(get(f"{server}/metrics")[1].decode())
    assert (
        after['pantheon_requests_total{code="200"}'] - before.get('pantheon_requests_total{code="200"}', 0)
        == 1
    )
    assert (
        after['pantheon_requests_total{code="422"}'] - before.get('pantheon_requests_total{code="422"}', 0)
        == 1
    )
