"""Wiring: a checked config -> the model prepared in this process -> a LitServer with checks, metrics and /metrics.

Everything that can fail because of the user's files (the checkpoint, the pipeline, the export) fails in `build`,
before LitServer binds the port; the inference worker then only reloads what was already checked.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from typing import Any

import litserve as ls
from fastapi import Response

from pantheon.serving import metrics
from pantheon.serving.config import ServeConfig
from pantheon.serving.middleware import CheckRequests, CountRequests
from pantheon.serving.validation import GanLimits, validate_diffusion, validate_gan
from pantheon.utils.errors import UserError

log = logging.getLogger(__name__)
# The largest GAN batch (32 requests x 64 digits) took 0.3-0.5 s through onnxruntime on 2 CPU cores.
GAN_TIMEOUT_S = 30.0


def accelerator(device: str) -> str:
    return "cpu" if device == "cpu" else ("cuda" if device.startswith("cuda") else "auto")


def build_api(cfg: ServeConfig) -> tuple[ls.LitAPI, Any, float, dict[str, Any]]:
    """(LitAPI, request validator, request timeout, /info metadata) for the model named in cfg."""
    batching = {"max_batch_size": cfg.batch_size, "batch_timeout": cfg.batch_timeout}
    if cfg.kind == "gan":
        from pantheon.serving import gan

        model = gan.prepare(cfg.ckpt, cfg.backend, cfg.export_dir)
        limits = GanLimits(max_n=cfg.images_per_request)
        api = gan.GanAPI(model, limits, cfg.threads, **batching)
        info = {
            "kind": "gan",
            "ckpt": cfg.ckpt,
            "backend": model.backend,
            "onnx": model.onnx_path,
            "limits": {"digit": "0..9", "n": f"1..{limits.max_n}", "format": "png | npy"},
        }
        return api, partial(validate_gan, limits=limits), cfg.timeout or GAN_TIMEOUT_S, info
    from pantheon.serving import diffusion

    model = diffusion.prepare(cfg.pipeline, cfg.images_per_request, cfg.max_steps)
    worst = diffusion.worst_case_seconds(model, cfg.batch_size)
    timeout = cfg.timeout or max(60.0, 3 * worst + 10)
    if timeout <= worst:
        log.warning("timeout=%s s is below the estimated worst case of %.0f s per batch", timeout, worst)
    api = diffusion.DiffusionAPI(model, cfg.threads, **batching)
    info = {
        "kind": "diffusion",
        "pipeline": cfg.pipeline,
        "limits": asdict(model.limits),
        "worst_case_batch_seconds": round(worst, 2),
    }
    return api, partial(validate_diffusion, limits=model.limits), timeout, info


async def metrics_endpoint() -> Response:
    return Response(content=metrics.render(), media_type=metrics.CONTENT_TYPE)


def build_server(cfg: ServeConfig) -> ls.LitServer:
    api, validator, timeout, info = build_api(cfg)
    if not cfg.batch_timeout < timeout:
        raise UserError(f"batch_timeout={cfg.batch_timeout} must be below the request timeout ({timeout} s)")
    info |= {"max_batch_size": cfg.batch_size, "batch_timeout": cfg.batch_timeout, "timeout": timeout}
    server = ls.LitServer(
        api,
        accelerator=accelerator(cfg.device),
        devices=1,
        timeout=timeout,
        model_metadata=info,
        # Starlette: the last added is the outermost, so the metrics also count what the checks refuse.
        middlewares=[
            (CheckRequests, {"validator": validator, "max_body_bytes": cfg.max_body_bytes}),
            (CountRequests, {}),
        ],
    )
    server.app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    log.warning("pantheon.serve: %s", info)
    return server
