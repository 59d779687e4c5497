"""`python -m pantheon.serve` refuses a bad model or a taken port with one `error:` line and exit code 2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pantheon.serving.launch import HOST, free_port
from tests.conftest import run_cli

ASSET = Path(__file__).resolve().parents[1] / "assets" / "serving" / "gan_mnist.ckpt"


def held_port() -> socket.socket:
    """A listening socket on a free port: a server that got past its checks could not bind it either."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen()
    return sock


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: f"ckpt={tmp / 'missing.ckpt'}", "does not exist"),
        (
            lambda tmp: (tmp / "bad.ckpt").write_bytes(b"not a checkpoint") and f"ckpt={tmp / 'bad.ckpt'}",
            "corrupt",
        ),
        (lambda tmp: f"pipeline={tmp / 'no_pipeline'}", "does not exist"),
        (lambda tmp: "colour=red", "valid keys"),
    ],
    ids=["missing-ckpt", "corrupt-ckpt", "missing-pipeline", "unknown-key"],
)
def test_bad_model_fails_before_the_port_is_bound(tmp_path, make, expected):
    """The port is held: had the server bound it first, the error would be about the port."""
    with held_port() as sock:
        result = run_cli("pantheon.serve", make(tmp_path), f"port={sock.getsockname()[1]}", timeout=120)
    errors = error_lines(result.stderr)
    assert result.returncode == 2 and len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not result.stdout.strip()


def test_taken_port_is_one_line_after_the_model_checks(tmp_path):
    with held_port() as sock:
        port = sock.getsockname()[1]
        result = run_cli("pantheon.serve", f"ckpt={ASSET}", f"port={port}", "backend=eager", timeout=180)
    errors = error_lines(result.stderr)
    assert result.returncode == 2 and len(errors) == 1 and f"port={port}" in errors[0], result.stderr[-2000:]
    assert free_port() > 0
