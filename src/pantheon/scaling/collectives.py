"""Measure alpha and beta of this cluster's all-reduce: `srun -N2 -n2 python -m pantheon.scaling.collectives OUT`.

Each task joins one gloo process group (SLURM's ranks; MASTER_ADDR/MASTER_PORT from the environment, else
127.0.0.1 for the local one-host cluster), times all_reduce of float32 tensors from 4 KiB to 16 MiB (median of
several), and rank 0 fits t = a + b * S. For a ring over p ranks a = 2 (p-1) alpha, b = 2 (p-1)/p / beta, so the
fit gives the link's latency and bandwidth that the communication model needs (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

SIZES = [2**k for k in range(12, 25, 2)]  # bytes: 4 KiB .. 16 MiB


def fit_alpha_beta(sizes: list[float], seconds: list[float], ranks: int) -> tuple[float, float]:
    """Least squares t = a + b S -> (alpha, beta) of a ring all-reduce over `ranks`."""
    n = len(sizes)
    mean_s, mean_t = sum(sizes) / n, sum(seconds) / n
    b = sum((s - mean_s) * (t - mean_t) for s, t in zip(sizes, seconds, strict=True)) / sum(
        (s - mean_s) ** 2 for s in sizes
    )
    a = mean_t - b * mean_s
    return max(a, 0.0) / (2 * (ranks - 1)), 2 * (ranks - 1) / ranks / b


def main(out: str) -> None:
    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 2000))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    times = []
    for size in SIZES:
        x = torch.ones(size // 4)
        for _ in range(2):
            dist.all_reduce(x)
        runs = []
        for _ in range(7):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            runs.append(time.perf_counter() - start)
        times.append(statistics.median(runs))
    dist.destroy_process_group()
    if rank == 0:
        alpha, beta = fit_alpha_beta(SIZES, times, world)
        result = {
            "ranks": world,
            "sizes_bytes": SIZES,
            "allreduce_s": times,
            "alpha_s": alpha,
            "beta_bytes_per_s": beta,
        }
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"alpha {alpha * 1e6:.0f} us, beta {beta / 1e9:.2f} GB/s over {world} ranks")


if __name__ == "__main__":
    main(sys.argv[1])
