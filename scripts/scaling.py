"""Scaling sweep CLI (`make scale`): nodes x devices x strategy for one experiment, then a table, plots and the
communication model's prediction beside published reference points. docs/scaling.md explains every option.

  python scripts/scaling.py --experiment mnist_gan --nodes 1,2 --strategies ddp_cpu --launcher submitit
  python scripts/scaling.py --predict-only --preset dgx_a100_hdr
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pantheon.scaling import report
from pantheon.scaling.sweep import Settings, grid, run_sweep


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="mnist_gan")
    p.add_argument("--strategies", default="ddp_cpu", help="trainer presets, comma separated")
    p.add_argument("--nodes", type=ints, default=[1, 2])
    p.add_argument("--devices", type=ints, default=[1], help="devices per node")
    p.add_argument("--batch", type=int, default=64, help="per-device batch (weak scaling)")
    p.add_argument(
        "--global-batch", type=int, default=None, help="fixed global batch instead (strong scaling)"
    )
    p.add_argument("--steps", type=int, default=20, help="measured batches after warm-up")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--launcher", choices=["local", "submitit"], default="local")
    p.add_argument("--slurm", default="local", help="configs/slurm preset for --launcher submitit")
    p.add_argument("--synthetic", action="store_true", help="one repeated random batch: no input pipeline")
    p.add_argument("--timeout", type=int, default=600, help="seconds per point")
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads per rank (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="default: logs/scaling/<experiment>")
    p.add_argument(
        "--links", type=Path, default=None, help="alpha-beta JSON from pantheon.scaling.collectives"
    )
    p.add_argument("--preset", default="dgx_a100_hdr", help="interconnect preset for the extrapolation")
    p.add_argument("--predict-only", action="store_true", help="print the model and references, run nothing")
    p.add_argument("overrides", nargs="*", help="extra pantheon.train overrides for every point")
    a = p.parse_args(argv)

    if a.predict_only:
        print(report.extrapolation(None, a.preset))
        return 0
    out = a.out or Path("logs/scaling") / a.experiment
    out.mkdir(parents=True, exist_ok=True)
    points = grid(a.experiment, a.strategies.split(","), a.nodes, a.devices, a.batch, a.global_batch)
    settings = Settings(
        a.steps, a.warmup, a.launcher, a.slurm, a.synthetic, a.timeout, a.overrides, a.threads
    )
    results = run_sweep(points, settings, out)
    print(report.write(results, out, strong=a.global_batch is not None, links=a.links, preset=a.preset))
    return 0 if any(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
