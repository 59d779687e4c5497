"""Plot a run's metrics.csv (Lightning CSVLogger) into a PNG: losses, class accuracy and MNIST-FID per step.

python scripts/plot_metrics.py <run dir or metrics.csv> [--out docs/training_curves.png]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_metrics(paths: list[Path]) -> dict[str, dict[int, list[float]]]:
    """metric -> logger step (batches) -> values logged there, over every version (a resumed run adds one)."""
    per_step: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    rows = []
    for path in paths:
        with path.open() as fh:
            rows += list(csv.DictReader(fh))
    for row in rows:
        if not row.get("step"):
            continue
        step = int(float(row["step"]))
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in ("", None):
                per_step[key][step].append(float(value))
    return per_step


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/training_curves.png"))
    args = parser.parse_args()
    csv_paths = [args.run] if args.run.suffix == ".csv" else sorted(args.run.rglob("metrics.csv"))
    if not csv_paths or not all(p.is_file() for p in csv_paths):
        print(
            f"error: no metrics.csv under {args.run}: train with logger=csv (or logger=many)", file=sys.stderr
        )
        return 2
    metrics = read_metrics(csv_paths)
    panels = [
        ("losses", ["train/d_loss", "train/g_loss"]),
        ("class accuracy of generated digits", ["val/class_acc"]),
        ("MNIST-FID (evaluator features)", ["val/fid_mnist"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            if key in metrics:
                steps = sorted(metrics[key])
                values = [sum(metrics[key][s]) / len(metrics[key][s]) for s in steps]
                ax.plot(steps, values, marker="o" if len(steps) < 50 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("training batches (Lightning's logger step)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
