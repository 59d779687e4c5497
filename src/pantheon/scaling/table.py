"""Sweep results as a table: CSV (every field), Markdown (the columns a reader compares) and PNG plots.

Speedup and efficiency are against the smallest successful point of the same experiment and strategy:
weak scaling (fixed per-device batch) efficiency = per-device throughput / the base's; strong scaling
(fixed global batch) efficiency = speedup / (world / base world). Failed and timed-out points stay in.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pantheon.scaling.sweep import Result

COLUMNS = ("experiment", "strategy", "nodes", "devices", "world", "per_device_batch", "status", "samples_per_s",
           "samples_per_s_per_device", "speedup", "efficiency", "cpu_efficiency", "step_time_s", "cpu_s", "data_wait_fraction",
           "peak_rss_mib", "cuda_max_allocated_mib", "mfu", "flops_per_sample", "reason")  # fmt: skip


def with_scaling(results: list[Result], strong: bool = False) -> list[dict]:
    rows = [r.row() for r in results]
    for row in rows:
        base = min((b for b in rows if b["status"] == "ok" and b["experiment"] == row["experiment"]
                    and b["strategy"] == row["strategy"]), key=lambda b: b["world"], default=None)  # fmt: skip
        if row["status"] != "ok" or base is None:
            row["speedup"] = row["efficiency"] = row["cpu_efficiency"] = None
            continue
        row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
        scale = row["world"] / base["world"]
        row["efficiency"] = row["speedup"] / scale if strong else row["samples_per_s_per_device"] / base["samples_per_s_per_device"]  # fmt: skip
        row["cpu_efficiency"] = cpu_efficiency(row, base, scale)
    return rows


def cpu_efficiency(row: dict, base: dict, scale: float) -> float | None:
    """The efficiency in CPU seconds per batch instead of wall seconds (CPU ranks only): what the ranks would
    reach with a core each, since waiting for a core on a shared host costs wall time but no CPU time."""
    if row.get("accelerator") != "cpu" or not row.get("cpu_s") or not base.get("cpu_s"):
        return None
    rate = row["world"] * row["per_device_batch"] / row["cpu_s"]
    return rate / (base["world"] * base["per_device_batch"] / base["cpu_s"]) / scale


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in keys})


def fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def load(row: dict) -> str:
    """The host's 1-minute load average over its CPU count when the point ended: above 1, ranks waited for
    cores (shared machines; the local cluster's nodes share one host)."""
    if row.get("load_avg_1min") is None:
        return "n/a"
    return f"{row['load_avg_1min']:.1f}/{row.get('host_cpus') or '?'}"


def markdown(rows: list[dict], title: str = "") -> str:
    head = ["experiment", "strategy", "nodes x dev", "batch/dev", "samples/s", "per dev", "speedup",
            "efficiency", "eff. (CPU s)", "step s", "data wait", "peak RSS MiB", "MFU", "host load", "status"]  # fmt: skip
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        wait = f"{r['data_wait_fraction']:.0%}" if r.get("data_wait_fraction") is not None else "n/a"
        eff, cpu_eff = (
            f"{r[k]:.0%}" if r.get(k) is not None else "n/a" for k in ("efficiency", "cpu_efficiency")
        )
        mfu = (
            fmt(r.get("mfu"))
            if r.get("mfu") is not None
            else ("n/a (CPU)" if r.get("accelerator") == "cpu" else "n/a")
        )
        cells = [r["experiment"], r["strategy"], f"{r['nodes']} x {r['devices']}", r["per_device_batch"],
                 fmt(r.get("samples_per_s")), fmt(r.get("samples_per_s_per_device")), fmt(r.get("speedup")), eff, cpu_eff,
                 fmt(r.get("step_time_s")), wait, fmt(r.get("peak_rss_mib"), 4), mfu, load(r), status]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    ok = next((r for r in rows if r["status"] == "ok"), None)
    if ok:
        v = ok.get("versions", {})
        lines += ["", f"Config per point: `points/<name>/command.txt`; {ok['warmup_steps']} warm-up + "
                  f"{ok['measured_steps']} measured batches; {ok['accelerator']} {ok['precision']}, "
                  f"{ok.get('torch_threads', '?')} torch threads per rank; "
                  f"python {v.get('python')}, torch {v.get('torch')}, lightning {v.get('lightning')}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, predicted: dict[str, list[tuple[int, float]]] | None = None) -> None:
    """Throughput, efficiency and peak memory against devices, one line per experiment/strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault(f"{r['experiment']} {r['strategy']}", []).append(r)
    for label, group in groups.items():
        group.sort(key=lambda r: r["world"])
        x = [r["world"] for r in group]
        axes[0].plot(x, [r["samples_per_s"] for r in group], "o-", label=label)
        axes[1].plot(x, [r["efficiency"] for r in group], "o-", label=label)
        if all(r.get("cpu_efficiency") is not None for r in group):
            axes[1].plot(x, [r["cpu_efficiency"] for r in group], "s:", label=f"{label} (CPU seconds)")
        axes[2].plot(x, [r["peak_rss_mib"] for r in group], "o-", label=label)
    for label, points in (predicted or {}).items():
        axes[1].plot([p[0] for p in points], [p[1] for p in points], "x--", label=f"model: {label}")
    for ax, title in zip(axes, ("samples/s (global)", "weak-scaling efficiency", "peak RSS per rank (MiB)"),
                         strict=True):  # fmt: skip
        ax.set_xlabel("devices (ranks)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)  # a 15% gain must not look like a doubling
    axes[1].set_ylim(0, 1.1)
    if axes[1].get_legend_handles_labels()[0]:  # nothing to label when every point failed
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
