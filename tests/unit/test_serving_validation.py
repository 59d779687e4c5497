"""Request checks, the serve CLI's config checks and the ASGI middlewares, in-process (no model, no port)."""

from __future__ import annotations

import asyncio
import json

import pytest

from pantheon.serving.config import parse_args
from pantheon.serving.middleware import CheckRequests
from pantheon.serving.validation import (
    DiffusionLimits,
    GanLimits,
    RequestError,
    validate_diffusion,
    validate_gan,
)
from pantheon.utils.errors import UserError

GAN = GanLimits(max_n=64)
SD = DiffusionLimits(resolution=64, multiple=8, max_resolution=128, max_n=4, max_steps=50)


def test_gan_request_defaults_and_seed():
    request = validate_gan({"digit": 3}, GAN)
    assert (request.digit, request.n, request.format) == (3, 1, "png")
    assert 0 <= request.seed < 2**31
    assert validate_gan({"digit": 0, "n": 64, "seed": 7, "format": "npy"}, GAN).seed == 7


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({"digit": 10}, "digit", "0..9"),
        ({"digit": -1}, "digit", "0..9"),
        ({}, "digit", "0..9"),
        ({"digit": "5"}, "digit", "0..9"),
        ({"digit": 5.0}, "digit", "0..9"),
        ({"digit": True}, "digit", "0..9"),
        ({"digit": 1, "n": 0}, "n", "1..64"),
        ({"digit": 1, "n": 65}, "n", "1..64"),
        ({"digit": 1, "seed": -3}, "seed", "0..2147483647"),
        ({"digit": 1, "format": "jpg"}, "format", '"png" | "npy"'),
        ({"digit": 1, "size": 3}, "size", "digit, n, seed, format"),
        ([1, 2], "body", "{digit, n, seed, format}"),
    ],
)
def test_bad_gan_requests_name_the_field_and_range(body, field, allowed):
    with pytest.raises(RequestError) as info:
        validate_gan(body, GAN)
    message = info.value.as_json()
    assert message["field"] == field and allowed in message["allowed"]
    assert message["error"].startswith(f"{field}: ") and "\n" not in message["error"]


def test_diffusion_request_defaults():
    request = validate_diffusion({"prompt": "a photo of a sunflower"}, SD)
    assert (request.n, request.steps, request.guidance, request.resolution) == (1, 20, 7.5, 64)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"prompt": "a", "n": 5}, "n"),
        ({"prompt": "a", "steps": 0}, "steps"),
        ({"prompt": "a", "steps": 51}, "steps"),
        ({"prompt": "a", "guidance": -1}, "guidance"),
        ({"prompt": "a", "guidance": "high"}, "guidance"),
        ({"prompt": "a", "resolution": 60}, "resolution"),
        ({"prompt": "a", "resolution": 256}, "resolution"),
        ({"prompt": "a", "negative": "b"}, "negative"),
    ],
)
def test_bad_diffusion_requests_name_the_field(body, field):
    with pytest.raises(RequestError) as info:
        validate_diffusion(body, SD)
    assert info.value.field == field and "allowed: " in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["ckpt=a.ckpt", "pipeline=p"],
        ["ckpt=a.ckpt", "port=80"],
        ["ckpt=a.ckpt", "host=example.com"],
        ["ckpt=a.ckpt", "backend=tensorrt"],
        ["ckpt=a.ckpt", "max_batch_size=0"],
        ["ckpt=a.ckpt", "batch_timeout=-1"],
        ["ckpt=a.ckpt", "timeout=1", "batch_timeout=2"],
        ["ckpt=a.ckpt", "colour=red"],
        ["ckpt=a.ckpt", "port=eighty"],
    ],
)
def test_bad_serve_arguments_are_user_errors(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.ckpt").write_bytes(b"")
    with pytest.raises(UserError):
        parse_args(argv)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("ckpt=missing.ckpt", "does not exist"),
        ("pipeline=./missing", "does not exist"),
        ("pipeline=runs/x/pipeline", "does not exist"),
        ("pipeline=.", "no model_index.json"),
    ],
)
def test_missing_model_files_fail_before_anything_loads(arg, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=expected):
        parse_args([arg])


def test_serve_defaults_per_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.ckpt").write_bytes(b"")
    gan, sd = parse_args(["ckpt=a.ckpt"]), parse_args(["pipeline=org/model", "max_batch_size=1"])
    assert (gan.kind, gan.batch_size, gan.images_per_request, gan.host, gan.port) == (
        "gan",
        32,
        64,
        "127.0.0.1",
        8000,
    )
    assert (sd.kind, sd.batch_size, sd.images_per_request) == ("diffusion", 1, 4)


def run_middleware(body: bytes, headers: dict[str, str] | None = None, max_body_bytes: int = 1024):
    """(status, JSON sent to the client or None, body passed on to the app or None)."""
    passed, sent = {}, []

    async def app(scope, receive, send):
        passed["headers"] = dict(scope["headers"])
        passed["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    chunks = [body[i : i + 100] for i in range(0, len(body), 100)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    raw_headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "path": "/predict", "method": "POST", "headers": raw_headers}
    asyncio.run(CheckRequests(app, lambda p: validate_gan(p, GAN), max_body_bytes)(scope, receive, send))
    status = sent[0]["status"]
    reply = json.loads(sent[1]["body"]) if status != 200 else None
    return status, reply, passed.get("body"), passed.get("headers")


def test_middleware_normalizes_a_form_typed_json_body():
    """`curl -d '{...}'` sends application/x-www-form-urlencoded: the body is still read as JSON."""
    status, _, body, headers = run_middleware(
        b'{"digit": 4}', {"content-type": "application/x-www-form-urlencoded"}
    )
    forwarded = json.loads(body)
    assert status == 200 and forwarded["digit"] == 4 and forwarded["n"] == 1 and "seed" in forwarded
    assert headers[b"content-type"] == b"application/json"


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        (b'{"digit": 12}', {}, 422, "digit"),
        (b"not json", {}, 400, "body"),
        (b"\xff\xfe", {}, 400, "body"),
        (b'{"digit": 1, "pad": "' + b"x" * 2000 + b'"}', {}, 413, "body"),  # streamed past the limit
        (b'{"digit": 1}', {"content-length": "999999"}, 413, "body"),  # refused from its header
    ],
)
def test_middleware_refuses_in_one_json_line(body, headers, status, field):
    got, reply, passed, _ = run_middleware(body, headers)
    assert (got, reply["field"]) == (status, field) and passed is None
