"""Export a trained model for stock tools: `python -m pantheon.export ckpt=<path> [out=<dir>]`.

A GAN checkpoint becomes generator.torchscript.pt + generator.onnx; a diffusion checkpoint becomes a
diffusers pipeline folder (`StableDiffusionPipeline.from_pretrained(out)`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pantheon.models.checkpoints import load_module
from pantheon.utils.errors import UserError, exit_on_user_error


@dataclass
class ExportConfig:
    ckpt: str = "???"
    out: str | None = None  # default: <run dir>/export next to the checkpoints folder


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[Path]:
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(ExportConfig), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
        )
        ckpt, out = cfg.ckpt, cfg.out
    except OmegaConfBaseException as err:
        raise UserError(f"bad argument ({str(err).splitlines()[0]}); usage: ckpt=<path> [out=<dir>]") from err
    out_dir = Path(out) if out else Path(ckpt).resolve().parent.parent / "export"
    module = load_module(ckpt)
    paths = module.export(out_dir)
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
