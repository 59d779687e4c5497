"""Serve a trained model over HTTP (LitServe): POST /predict, GET /health, GET /metrics, GET /info.

python -m pantheon.serve ckpt=<run>/checkpoints/best.ckpt          # GAN: {"digit": 5, "n": 4}
python -m pantheon.serve pipeline=<run>/pipeline                   # diffusion: {"prompt": "a photo of a sunflower"}
python -m pantheon.serve ckpt=... host=0.0.0.0 port=8000 max_batch_size=32 batch_timeout=0.01

A missing or corrupt model is one `error:` line and exit code 2 before the port is bound. See docs/serving.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys

from pantheon.utils.errors import UserError, exit_on_user_error

_LAUNCHER_PID = os.getpid()


def _stop(signum: int, frame: object) -> None:
    """SIGTERM (docker stop, kubectl) takes LitServe's Ctrl-C path, which stops its worker processes too; the
    forked HTTP process inherits this handler and gets the default (quiet) exit instead."""
    if os.getpid() != _LAUNCHER_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def ensure_port_free(host: str, port: int) -> None:
    """Bind the way uvicorn will (SO_REUSEADDR) and let go: a taken port is one line, not uvicorn's exit 1."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(
                f"port={port}: cannot listen on {host}:{port} ({err.strerror}); pass another port="
            ) from err


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from pantheon.serving.config import parse_args

    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    from pantheon.serving import metrics

    owned = not os.environ.get(metrics.ENV)
    metrics_dir = metrics.use_multiprocess_dir()  # before prometheus_client loads in any process
    try:
        from pantheon.serving.server import build_server

        server = build_server(cfg)  # every check of the user's files happens here, before the port is bound
        ensure_port_free(cfg.host, cfg.port)
        signal.signal(signal.SIGTERM, _stop)
        print(
            f"pantheon.serve: {cfg.kind} model checked; http://{cfg.host}:{cfg.port}/health answers 200 once the "
            "worker has loaded and warmed it up",
            flush=True,
        )
        try:
            server.run(
                host=cfg.host,
                port=cfg.port,
                log_level=cfg.log_level,
                generate_client_file=False,
                num_api_servers=1,
            )
        except RuntimeError as err:  # LitServe: "One or more workers failed to start"
            raise UserError(f"the model worker failed to start ({err}); its traceback is above") from err
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
