"""The `python -m pantheon.serve key=value ...` keys, checked before anything loads or binds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pantheon.utils.cli import parse_key_values
from pantheon.utils.errors import UserError, require_choice
from pantheon.utils.runs import resolve_latest

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds to
BACKENDS = ("auto", "onnx", "eager")
DEFAULT_BATCH = {"gan": 32, "diffusion": 4}
DEFAULT_MAX_N = {"gan": 64, "diffusion": 4}


@dataclass
class ServeConfig:
    ckpt: str | None = None  # GAN: a training checkpoint, or `latest` (the newest GAN checkpoint under logs/)
    pipeline: str | None = None  # diffusion: a diffusers pipeline folder, or `latest` (newest under logs/)
    host: str = "127.0.0.1"  # 0.0.0.0 in a container
    port: int = 8000
    # requests per model call; 1 = no batching (default: gan 32, diffusion 4)
    max_batch_size: int | None = None
    batch_timeout: float = 0.01  # seconds the worker waits for a batch to fill
    timeout: float | None = None  # seconds a request may take (default: gan 30, diffusion from the warm-up)
    max_n: int | None = None  # images per request (default: gan 64, diffusion 4)
    max_steps: int = 50  # diffusion: most denoising steps per request
    backend: str = "auto"  # GAN: onnx (onnxruntime) | eager (the LightningModule) | auto = onnx, else eager
    # GAN: where generator.onnx is (default <run>/export; a file that disagrees with ckpt is re-exported)
    export_dir: str | None = None
    device: str = "auto"
    threads: int = 0  # intra-op threads of the model (0 = the library's default)
    max_body_bytes: int = 16384
    log_level: str = "warning"

    @property
    def kind(self) -> str:
        return "gan" if self.ckpt else "diffusion"

    @property
    def batch_size(self) -> int:
        return self.max_batch_size or DEFAULT_BATCH[self.kind]

    @property
    def images_per_request(self) -> int:
        return self.max_n or DEFAULT_MAX_N[self.kind]


def parse_args(argv: list[str]) -> ServeConfig:
    """key=value arguments on top of ServeConfig (`--help` lists them); bad keys and values are one line."""
    cfg = parse_key_values(
        argv, ServeConfig, prog="pantheon.serve", summary="Serve a trained model over HTTP."
    )
    resolve_latest(cfg)
    check(cfg)
    return cfg


def check(cfg: ServeConfig) -> None:
    if bool(cfg.ckpt) == bool(cfg.pipeline):
        raise UserError("pass exactly one of ckpt=<GAN checkpoint> or pipeline=<diffusers pipeline folder>")
    check_paths(cfg)
    require_choice("host", cfg.host, HOSTS)
    require_choice("backend", cfg.backend, BACKENDS)
    if not 1024 <= cfg.port <= 65535:
        raise UserError(f"port={cfg.port}: use a port from 1024 to 65535")
    if cfg.max_batch_size is not None and cfg.max_batch_size < 1:
        raise UserError(f"max_batch_size={cfg.max_batch_size}: use 1 (no batching) or more")
    if cfg.max_n is not None and cfg.max_n < 1:
        raise UserError(f"max_n={cfg.max_n}: allow at least one image per request")
    if cfg.max_steps < 1:
        raise UserError(f"max_steps={cfg.max_steps}: allow at least one denoising step")
    if cfg.batch_timeout < 0 or (cfg.timeout is not None and not cfg.batch_timeout < cfg.timeout):
        raise UserError(
            f"batch_timeout={cfg.batch_timeout}: use 0 or more seconds, below timeout={cfg.timeout}"
        )
    if cfg.timeout is not None and cfg.timeout <= 0:
        raise UserError(f"timeout={cfg.timeout}: use a positive number of seconds")
    if cfg.max_body_bytes < 256:
        raise UserError(f"max_body_bytes={cfg.max_body_bytes}: allow at least 256 bytes")
    if cfg.threads < 0:
        raise UserError(f"threads={cfg.threads}: use 0 (library default) or more")


def check_paths(cfg: ServeConfig) -> None:
    """Missing files fail here, in a fraction of a second, before torch is even imported; what is inside them is
    checked when the model loads (still before the port is bound)."""
    if cfg.ckpt and not Path(cfg.ckpt).expanduser().is_file():
        raise UserError(
            f"checkpoint {cfg.ckpt} does not exist: pass ckpt=<run dir>/checkpoints/best.ckpt (or last.ckpt)"
        )
    if cfg.pipeline:
        path = Path(cfg.pipeline).expanduser()
        local = (
            path.exists() or cfg.pipeline.startswith(("/", ".", "~")) or cfg.pipeline.count("/") > 1
        )  # else a Hub id
        if local and not (path / "model_index.json").is_file():
            what = (
                "does not exist"
                if not path.exists()
                else "has no model_index.json (not a diffusers pipeline folder)"
            )
            raise UserError(f"pipeline={cfg.pipeline} {what}: pass pipeline=<run dir>/pipeline")
