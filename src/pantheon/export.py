"""Export a trained model for stock tools: `python -m pantheon.export ckpt=<path>|latest [out=<dir>]`.

A GAN checkpoint becomes generator.torchscript.pt + generator.onnx; a diffusion checkpoint becomes a
diffusers pipeline folder (`StableDiffusionPipeline.from_pretrained(out)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pantheon.utils.cli import argv_or, parse_key_values
from pantheon.utils.errors import exit_on_user_error
from pantheon.utils.runs import resolve_latest, run_dir_of


@dataclass
class ExportConfig:
    ckpt: str = "???"  # a training checkpoint, or `latest` (the newest pantheon checkpoint under logs/)
    out: str | None = None  # the output folder (default: <run dir>/export next to the checkpoints folder)


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[Path]:
    cfg = parse_key_values(
        argv_or(argv), ExportConfig, prog="pantheon.export", summary=__doc__.split("\n\n")[1]
    )
    resolve_latest(cfg, kind=None)  # either kind: exporting is what both do
    ckpt, out = cfg.ckpt, cfg.out
    out_dir = Path(out) if out else run_dir_of(Path(ckpt)) / "export"
    # torch and the models load only after the arguments are checked
    from pantheon.models.checkpoints import load_module

    module = load_module(ckpt)
    paths = module.export(out_dir)
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
