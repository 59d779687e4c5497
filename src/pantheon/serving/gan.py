"""Serving the conditional GAN: the exported ONNX generator through onnxruntime, the eager module as fallback.

`prepare` runs in the launching process before anything binds: it opens the checkpoint (a missing or corrupt one is
a one-line UserError), finds `<run>/export/generator.onnx` or exports one into a temporary folder, and checks the
ONNX model against the eager generator. `GanAPI` is the LitServe API that the inference worker runs.
"""

import atexit
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException

from pantheon.serving import metrics
from pantheon.serving.encoding import GRID_PADDING, b64, grid_columns, png_grid
from pantheon.serving.validation import GanLimits, GanRequest, RequestError, validate_gan
from pantheon.utils.errors import UserError

log = logging.getLogger(__name__)
ONNX_TOLERANCE = 1e-4  # pixels in [0, 1]; the export test holds 1e-5


@dataclass(frozen=True)
class GanModel:
    """What the worker loads: the checkpoint (eager) or the verified ONNX file, and the noise size."""

    ckpt: str
    latent_dim: int
    onnx_path: str | None  # None: eager

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx_path else "eager"


def noise_for(seed: int, n: int, latent_dim: int) -> np.ndarray:
    """A request's noise from its seed alone, so its digits do not depend on what it was batched with."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed)).numpy()


def to_uint8(images01: np.ndarray) -> np.ndarray:
    """[N, 1, 28, 28] in [0, 1] -> uint8 [N, 28, 28], rounded as ConditionalGAN.generate rounds."""
    return np.clip(np.round(images01[:, 0] * 255.0), 0, 255).astype(np.uint8)


def onnx_session(path: str, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_onnx(path: Path, module, latent_dim: int) -> float:
    """The largest pixel difference between the ONNX file and the eager generator on fixed inputs."""
    from pantheon.models.gan.export import DeployedGenerator

    noise, labels = noise_for(0, 10, latent_dim), np.arange(10, dtype=np.int64)
    onnx_out = onnx_session(str(path)).run(["images"], {"noise": noise, "labels": labels})[0]
    with torch.no_grad():
        eager_out = DeployedGenerator(module.generator).cpu()(
            torch.from_numpy(noise), torch.from_numpy(labels)
        )
    if onnx_out.shape != tuple(eager_out.shape):
        return float("inf")
    return float(np.abs(onnx_out - eager_out.numpy()).max())


def _matches(path: Path, module, latent_dim: int, reasons: list[str]) -> bool:
    """Whether the ONNX file at path serves what the checkpoint holds; why not goes into reasons."""
    try:
        diff = check_onnx(path, module, latent_dim)
    except Exception as err:  # onnxruntime missing, or refusing the file
        reasons.append(f"{path}: {type(err).__name__} {(str(err).splitlines() or [''])[0][:160]}")
        return False
    if diff > ONNX_TOLERANCE:
        reasons.append(f"{path} differs from the checkpoint by {diff:.2g}")
    return diff <= ONNX_TOLERANCE


def prepare(ckpt: str, backend: str = "auto", export_dir: str | None = None) -> GanModel:
    """Open and check the checkpoint, then pick the ONNX file to serve: the run's export when it matches, else a
    fresh export; the eager module when neither works (an error for backend=onnx)."""
    from pantheon.models.checkpoints import load_module

    module = load_module(ckpt, kind="gan")
    latent_dim = int(module.hparams.latent_dim)
    if backend == "eager":
        return GanModel(ckpt, latent_dim, None)
    existing = Path(export_dir or Path(ckpt).resolve().parent.parent / "export") / "generator.onnx"
    reasons = [] if existing.is_file() else [f"no {existing}"]
    if existing.is_file() and _matches(existing, module, latent_dim, reasons):
        return GanModel(ckpt, latent_dim, str(existing))
    fresh = Path(tempfile.mkdtemp(prefix="pantheon-serve-export-"))
    atexit.register(shutil.rmtree, fresh, True)  # the launching process outlives the worker that reads it
    try:
        with warnings.catch_warnings():  # torch.jit.trace's deprecation notice, for the TorchScript file
            warnings.simplefilter("ignore", FutureWarning)
            module.export(fresh)
    except Exception as err:
        reasons.append(f"export failed: {type(err).__name__} {(str(err).splitlines() or [''])[0][:160]}")
    else:
        if _matches(fresh / "generator.onnx", module, latent_dim, reasons):
            log.warning("serving a fresh ONNX export of %s from %s (%s)", ckpt, fresh, "; ".join(reasons))
            return GanModel(ckpt, latent_dim, str(fresh / "generator.onnx"))
    if backend == "onnx":
        raise UserError(f"backend=onnx: cannot serve {ckpt} through onnxruntime ({'; '.join(reasons)})")
    log.warning("serving the eager generator of %s: %s", ckpt, "; ".join(reasons))
    return GanModel(ckpt, latent_dim, None)


class GanAPI(ls.LitAPI):
    """POST /predict {"digit", "n", "seed", "format"} -> digits; concurrent requests share one generator call."""

    def __init__(self, model: GanModel, limits: GanLimits, threads: int = 0, **litapi: Any) -> None:
        super().__init__(**litapi)
        self.model, self.limits, self.threads = model, limits, threads

    def setup(self, device: str) -> None:
        """Load and warm up (the largest batch once) before LitServe reports the worker ready."""
        metrics.register()
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.model.onnx_path:
            session = onnx_session(self.model.onnx_path, self.threads)
            self._run = lambda noise, labels: session.run(["images"], {"noise": noise, "labels": labels})[0]
        else:
            from pantheon.models.checkpoints import load_module

            generator = load_module(self.model.ckpt, kind="gan").to(device).generator.eval()

            @torch.no_grad()
            def run(noise: np.ndarray, labels: np.ndarray) -> np.ndarray:
                out = generator(torch.from_numpy(noise).to(device), torch.from_numpy(labels).to(device))
                return out.add(1).div(2).cpu().numpy()

            self._run = run
        most = self.max_batch_size * self.limits.max_n
        for n in (most, 1):
            self._run(noise_for(0, n, self.model.latent_dim), np.zeros(n, dtype=np.int64))

    def decode_request(self, request: dict, **kwargs: Any) -> GanRequest:
        """Checked again here (the HTTP middleware already did): the API stays safe without it. The annotation
        is read by LitServe (a JSON body), so this module does not use postponed annotations."""
        try:
            return validate_gan(request, self.limits)
        except RequestError as err:
            raise HTTPException(status_code=422, detail=str(err)) from None

    def predict(self, x: GanRequest | list[GanRequest], **kwargs: Any) -> Any:
        requests = x if isinstance(x, list) else [x]
        start = time.perf_counter()
        noise = np.concatenate([noise_for(r.seed, r.n, self.model.latent_dim) for r in requests])
        labels = np.concatenate([np.full(r.n, r.digit, dtype=np.int64) for r in requests])
        images = to_uint8(self._run(noise, labels))
        metrics.observe_batch(len(requests), len(labels), time.perf_counter() - start)
        splits = np.split(images, np.cumsum([r.n for r in requests])[:-1])
        outputs = [(r, digits) for r, digits in zip(requests, splits, strict=True)]
        return outputs if isinstance(x, list) else outputs[0]

    def encode_response(self, output: tuple[GanRequest, np.ndarray], **kwargs: Any) -> dict[str, Any]:
        request, digits = output
        body = {**request.to_json(), "backend": self.model.backend}
        if request.format == "npy":
            return {**body, "shape": list(digits.shape), "dtype": "uint8", "images": b64(digits.tobytes())}
        return {
            **body,
            "grid": {"columns": grid_columns(request.n), "padding": GRID_PADDING, "cell": 28},
            "images": b64(png_grid(digits)),
        }
