"""The GAN behind a real server: `python -m pantheon.serve ckpt=...` on a free 127.0.0.1 port, real HTTP.

The checkpoint is tests/assets/serving/gan_mnist.ckpt (2.3 MB, made by scripts/make_serve_checkpoint.py, which
names the training command), so the digits are real and the project's evaluator can check them.
"""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pantheon.evaluation.mnist_classifier import load_evaluator
from pantheon.serving.launch import get, post, scrape, serving

ASSET = Path(__file__).resolve().parents[1] / "assets" / "serving" / "gan_mnist.ckpt"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module; batch_timeout 0.2 s so that concurrent requests surely share a batch."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    handle = serving([f"ckpt={ASSET}", "max_batch_size=16", "batch_timeout=0.2", "max_n=32"], log)
    try:
        with handle as url:
            yield url
    finally:
        print(log.read_text()[-3000:])
    # docker stop / kubectl send SIGTERM: the server and its HTTP and worker processes must all exit on it.
    assert handle.graceful, "SIGTERM did not stop the server and all its processes within 20 s (exit code 0)"


def digits_of(reply: dict) -> np.ndarray:
    assert reply["format"] == "npy" and reply["dtype"] == "uint8"
    return np.frombuffer(base64.b64decode(reply["images"]), dtype=np.uint8).reshape(reply["shape"])


def predict(url: str, **body) -> dict:
    status, reply = post(f"{url}/predict", body)
    assert status == 200, reply
    return reply


def test_served_digits_are_the_digits_asked_for(server):
    evaluator = load_evaluator()
    asked, got = [], []
    for digit in range(10):
        digits = digits_of(predict(server, digit=digit, n=20, seed=100 + digit, format="npy"))
        assert digits.shape == (20, 28, 28)
        batch = torch.from_numpy(digits.copy()).float().div(127.5).sub(1).unsqueeze(1)
        got.append(evaluator(batch).argmax(1))
        asked.append(torch.full((20,), digit))
    accuracy = float((torch.cat(got) == torch.cat(asked)).float().mean())
    assert accuracy >= 0.8, f"only {accuracy:.2f} of 200 served digits were classified as asked"


def test_png_grid_holds_n_digits(server):
    reply = predict(server, digit=7, n=5, seed=3)
    image = Image.open(io.BytesIO(base64.b64decode(reply["images"])))
    grid = reply["grid"]
    assert image.format == "PNG" and image.mode == "L" and grid["columns"] == 3
    side = grid["padding"] + grid["columns"] * (grid["cell"] + grid["padding"])
    rows = 2
    assert image.size == (side, grid["padding"] + rows * (grid["cell"] + grid["padding"]))
    cell = np.asarray(image)[2:30, 2:30]  # the first digit, inside its padding
    assert np.array_equal(cell, digits_of(predict(server, digit=7, n=5, seed=3, format="npy"))[0])


def test_same_seed_same_bytes_and_the_seed_is_reported(server):
    first = predict(server, digit=2, n=8, seed=1234)
    assert first["seed"] == 1234 and predict(server, digit=2, n=8, seed=1234)["images"] == first["images"]
    assert predict(server, digit=2, n=8, seed=1235)["images"] != first["images"]
    drawn = predict(server, digit=2, n=8, format="npy")  # no seed: the server picks one and says which
    assert predict(server, digit=2, n=8, seed=drawn["seed"], format="npy")["images"] == drawn["images"]


def test_concurrent_requests_are_batched_and_batching_changes_no_bytes(server):
    before = scrape(get(f"{server}/metrics")[1].decode())
    bodies = [{"digit": i % 10, "n": 1 + i % 4, "seed": i, "format": "npy"} for i in range(12)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: predict(server, **body), bodies))
    after = scrape(get(f"{server}/metrics")[1].decode())
    batches = after["pantheon_batch_requests_count"] - before["pantheon_batch_requests_count"]
    requests = after["pantheon_batch_requests_sum"] - before["pantheon_batch_requests_sum"]
    assert requests == len(bodies) and batches < len(bodies), (
        f"{len(bodies)} requests in {batches} model calls"
    )
    for body, reply in zip(bodies, together, strict=True):
        assert reply["images"] == predict(server, **body)["images"], body


BAD = [
    ({"digit": 10}, 422, "digit"),
    ({"digit": -1}, 422, "digit"),
    ({"digit": 3, "n": 0}, 422, "n"),
    ({"digit": 3, "n": 33}, 422, "n"),  # this server's max_n=32
    ({"digit": "3"}, 422, "digit"),
    ({"digit": 3, "n": 2.5}, 422, "n"),
    ({"digit": 3, "format": "gif"}, 422, "format"),
    ({"digit": 3, "seed": "lucky"}, 422, "seed"),
    ({"n": 3}, 422, "digit"),
    ({"digit": 3, "colour": "red"}, 422, "colour"),
    (b"{digit: 3", 400, "body"),
    (b"[3]", 422, "body"),
    (json.dumps({"digit": 3, "pad": "x" * 40000}).encode(), 413, "body"),
]


def test_bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving(server):
    for body, status, field in BAD:
        got, reply = post(f"{server}/predict", body)
        assert (got, reply["field"]) == (status, field), (
            body if isinstance(body, dict) else body[:40],
            reply,
        )
        assert (
            "allowed: " in reply["error"] and "\n" not in reply["error"] and "Traceback" not in reply["error"]
        )
    assert get(f"{server}/health") == (200, b"ok")
    assert predict(server, digit=1)["n"] == 1


def test_curl_style_form_content_type_is_read_as_json(server):
    """`curl -d '{"digit": 5, "n": 4}' localhost:8000/predict` sends a form Content-Type."""
    status, reply = post(
        f"{server}/predict", b'{"digit": 5, "n": 4}', content_type="application/x-www-form-urlencoded"
    )
    assert status == 200 and (reply["digit"], reply["n"]) == (5, 4)


def test_metrics_count_requests_by_status(server):
    before = scrape(get(f"{server}/metrics")[1].decode())
    for _ in range(3):
        predict(server, digit=4, n=2)
    for _ in range(2):
        post(f"{server}/predict", {"digit": 99})
    status, text = get(f"{server}/metrics")
    after = scrape(text.decode())
    delta = lambda key: after.get(key, 0) - before.get(key, 0)  # noqa: E731
    assert status == 200 and "# TYPE pantheon_request_latency_seconds histogram" in text.decode()
    assert delta('pantheon_requests_total{code="200"}') == 3
    assert delta('pantheon_requests_total{code="422"}') == 2
    assert delta("pantheon_request_latency_seconds_count") == 3
    assert delta("pantheon_batch_images_sum") == 6


def test_info_reports_the_onnx_backend(server):
    info = json.loads(get(f"{server}/info")[1])["model"]
    assert info["kind"] == "gan" and info["backend"] == "onnx" and info["onnx"].endswith("generator.onnx")
