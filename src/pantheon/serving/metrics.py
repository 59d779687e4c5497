"""Prometheus metrics shared by LitServe's processes: the HTTP process counts and times requests, the inference
worker records batch sizes, and GET /metrics sums both.

LitServe runs the HTTP server and the model in different processes, so the metrics use prometheus_client's
multiprocess mode: each process writes its values into PROMETHEUS_MULTIPROC_DIR and /metrics aggregates the files.
`use_multiprocess_dir` must run before prometheus_client is first imported (it picks its storage at import).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def use_multiprocess_dir() -> Path:
    """PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless set); child processes inherit it."""
    if "prometheus_client" in sys.modules and not os.environ.get(ENV):
        raise RuntimeError("prometheus_client was imported before the multiprocess folder was set")
    if not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="pantheon-metrics-")
    path = Path(os.environ[ENV])
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def register() -> SimpleNamespace:
    """This process's metrics, created at start-up so /metrics lists them at zero before the first request."""
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter("pantheon_requests", "POST /predict responses by HTTP status code", ["code"]),
        latency=Histogram(
            "pantheon_request_latency_seconds",
            "POST /predict time from request to response (status 200 only)",
            buckets=LATENCY_BUCKETS,
        ),
        batch_requests=Histogram(
            "pantheon_batch_requests", "requests per model call (dynamic batching)", buckets=BATCH_BUCKETS
        ),
        batch_images=Histogram("pantheon_batch_images", "images per model call", buckets=BATCH_BUCKETS),
        predict=Histogram("pantheon_predict_seconds", "model time per batch", buckets=LATENCY_BUCKETS),
    )


def observe_request(status: int, seconds: float) -> None:
    m = register()
    m.requests.labels(code=str(status)).inc()
    if status == 200:
        m.latency.observe(seconds)


def observe_batch(requests: int, images: int, seconds: float) -> None:
    m = register()
    m.batch_requests.observe(requests)
    m.batch_images.observe(images)
    m.predict.observe(seconds)


def render() -> bytes:
    """Every process's metrics in Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)
