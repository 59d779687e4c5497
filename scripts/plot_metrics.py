"""Plot a run's metrics.csv (Lightning CSVLogger) into a PNG: losses, class accuracy and MNIST-FID per epoch.

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
    """metric -> epoch -> values logged in that epoch, over every version (a resumed run adds one)."""
    per_epoch: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    rows = []
    for path in paths:
        with path.open() as fh:
            rows += list(csv.DictReader(fh))
    for row in rows:
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in ("", None):
                per_epoch[key][epoch].append(float(value))
    return per_epoch


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
                epochs = sorted(metrics[key])
                ax.plot(
                    epochs,
                    [sum(metrics[key][e]) / len(metrics[key][e]) for e in epochs],
                    marker="o",
                    label=key,
                )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
