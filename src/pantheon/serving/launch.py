"""Start `python -m pantheon.serve` as a subprocess on a free 127.0.0.1 port and stop it: tests and the benchmark.

Every wait is bounded, and the server is stopped (SIGTERM, then SIGKILL of its process group) whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(url: str, body: bytes | dict[str, Any], timeout: float = 60.0, content_type: str | None = None):
    """(status, parsed JSON or raw bytes) of a POST; a dict is sent as JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method="POST")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float) -> float:
    """Seconds until GET /health is 200; raises if the server exits or the timeout passes first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"pantheon.serve exited with code {process.returncode} before it was ready")
        with contextlib.suppress(OSError):
            if get(f"{base_url}/health", timeout=2.0)[0] == 200:
                return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"pantheon.serve was not ready within {timeout:.0f} s")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(process: subprocess.Popen, grace: float = 20.0) -> bool:
    """SIGTERM (LitServe's graceful shutdown), then SIGKILL of the whole process group after `grace` seconds.
    True when the server exited by itself with code 0 and took its worker processes with it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    deadline = time.monotonic() + 5
    while group_alive(process.pid) and time.monotonic() < deadline:  # workers a moment behind the launcher
        time.sleep(0.2)
    graceful = process.poll() == 0 and not group_alive(process.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: only the server and its workers
    process.wait(timeout=10)
    return graceful


class serving:
    """`with serving(args, log) as url:` a running server for `args` (key=value) on a free 127.0.0.1 port.

    On exit it is stopped; `.graceful` then says whether SIGTERM alone stopped it and all its processes."""

    def __init__(self, args: list[str], log_path: Path, ready_timeout: float = 180.0,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.args, self.log_path, self.ready_timeout, self.env = args, log_path, ready_timeout, env
        self.graceful: bool | None = None

    def __enter__(self) -> str:
        port = free_port()
        self.url = f"http://{HOST}:{port}"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pantheon.serve", *self.args, f"host={HOST}", f"port={port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        try:
            wait_ready(self.url, self.process, self.ready_timeout)
        except BaseException:
            stop(self.process)
            raise
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.graceful = stop(self.process)


def scrape(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments dropped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
