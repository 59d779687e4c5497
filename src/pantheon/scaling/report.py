"""What `scripts/scaling.py` writes and prints: the table files, the plot, the model checked against the
measurement, and the model's extrapolation beside published reference points."""

from __future__ import annotations

import json
from pathlib import Path

from pantheon.scaling import comm_model as cm
from pantheon.scaling.sweep import Result
from pantheon.scaling.table import markdown, plot, with_scaling, write_csv

# The local cluster's ranks have one CPU each: gloo's reduction competes with compute, nothing overlaps.
LOCAL_OVERLAP = 0.0
VALIDATION_TOLERANCE = 0.25  # |predicted - measured| / measured step time, stated in docs/scaling.md


def collectives_per_step(row: dict) -> int:
    """Gradient syncs per batch: the GAN runs two backward passes (D, then G), each synchronised by DDP."""
    return 2 if row.get("model") == "ConditionalGAN" else 1


def step_time(row: dict) -> float:
    """A point's compute per batch as the model takes it: CPU seconds on CPU ranks (the local cluster's ranks
    share one host's cores with each other and with other jobs, which stretches wall time but not CPU time;
    compare points run with the same --threads), else wall seconds."""
    if row.get("accelerator") == "cpu" and row.get("cpu_s"):
        return row["cpu_s"]
    return row["compute_s"]


def measured_step(row: dict) -> cm.Step:
    return cm.Step(compute_s=step_time(row), parameters=row["trainable_parameters"],
                   collectives_per_step=collectives_per_step(row))  # fmt: skip


def validate(rows: list[dict], links: dict) -> list[dict]:
    """Predict every multi-rank point from its one-rank base and the measured link; compare step times."""
    net = cm.Interconnect("measured gloo/TCP", 1, links["beta_bytes_per_s"], links["alpha_s"],
                          links["beta_bytes_per_s"], links["alpha_s"], "pantheon.scaling.collectives")  # fmt: skip
    checks = []
    for row in rows:
        base = next((b for b in rows if b["status"] == "ok" and b["world"] == 1 and b["experiment"] == row["experiment"]
                     and b["strategy"] == row["strategy"]), None)  # fmt: skip
        if row["status"] != "ok" or row["world"] == 1 or base is None:
            continue
        pred = cm.predict(
            measured_step(base), row["strategy"], row["world"], net, row["per_device_batch"], LOCAL_OVERLAP
        )
        measured = step_time(row)
        error = (pred.step_s - measured) / measured
        checks.append({"experiment": row["experiment"], "strategy": row["strategy"], "world": row["world"],
                       "base_compute_s": base["compute_s"], "predicted_comm_s": pred.comm_s,
                       "predicted_step_s": pred.step_s, "measured_step_s": measured, "relative_error": error,
                       "measured_as": "cpu seconds" if measured != row["compute_s"] else "wall seconds",
                       "within_tolerance": abs(error) <= VALIDATION_TOLERANCE})  # fmt: skip
    return checks


def extrapolation(base: dict | None, preset: str) -> str:
    """The model at 8..128 GPUs on `preset` (from the measured base step when given), then the references."""
    net = cm.INTERCONNECTS[preset]
    lines = [f"communication model on {net.name} ({preset}; source: {net.source})"]
    if base is not None:
        step = measured_step(base)
        lines.append(f"  from this sweep's 1-rank step ({step.compute_s * 1e3:.1f} ms compute, {step.parameters:,} "
                     f"trained parameters), as if it ran on these GPUs at the same speed:")  # fmt: skip
        for strategy in ("ddp", "fsdp_shard_grad_op", "fsdp_full_shard"):
            effs = [cm.predict(step, strategy, n, net, base["per_device_batch"]) for n in (8, 16, 64, 128)]
            lines.append(
                f"    {strategy:<20}" + "  ".join(f"{p.devices:>3} GPUs {p.efficiency:5.0%}" for p in effs)
            )
    for pixels in (512, 256):
        lines.append(
            f"  SD-2 UNet {pixels} px under DDP (865M params, batch 32/GPU, 36 img/s/A100 at 512 px):"
        )
        for p in cm.sd2_example(net, pixels):
            lines.append(f"    {p.devices:>3} GPUs: step {p.step_s:.3f} s, exposed comm {p.exposed_comm_s * 1e3:.0f} ms, "
                     f"efficiency {p.efficiency:.1%}, {p.samples_per_s / p.devices:.1f} img/s per GPU")  # fmt: skip
    lines.append("  published reference points (MosaicML SD-2):")
    lines += [f"    {r.what}: {r.value} ({r.devices} GPUs; {r.source})" for r in cm.REFERENCES]
    return "\n".join(lines)


def write(results: list[Result], out: Path, strong: bool = False, links: Path | None = None,
          preset: str = "dgx_a100_hdr") -> str:  # fmt: skip
    rows = with_scaling(results, strong)
    write_csv(rows, out / "scaling.csv")
    title = f"{'strong' if strong else 'weak'} scaling, {out.name}"
    text = markdown(rows, title)
    checks = validate(rows, json.loads(links.read_text())) if links and links.is_file() else []
    if checks:
        text += "\nModel vs measurement (compute per batch without data wait, in CPU seconds on CPU ranks; "
        text += f"overlap 0 on 1-CPU ranks; tolerance {VALIDATION_TOLERANCE:.0%}):\n\n"
        for c in checks:
            text += (f"- {c['experiment']} {c['strategy']} {c['world']} ranks: predicted {c['predicted_step_s']:.4f} s "
                     f"(comm {c['predicted_comm_s'] * 1e3:.1f} ms) vs measured {c['measured_step_s']:.4f} s: "
                     f"{c['relative_error']:+.0%} ({'within' if c['within_tolerance'] else 'OUTSIDE'} tolerance)\n")  # fmt: skip
        (out / "model_validation.json").write_text(json.dumps(checks, indent=2) + "\n")
    (out / "scaling.md").write_text(text)
    predicted = {}
    if links and links.is_file() and checks:
        lk = json.loads(links.read_text())
        net = cm.Interconnect(
            "measured", 1, lk["beta_bytes_per_s"], lk["alpha_s"], lk["beta_bytes_per_s"], lk["alpha_s"]
        )
        for c in checks:
            base = next(
                r for r in rows if r["world"] == 1 and r["status"] == "ok" and r["strategy"] == c["strategy"]
            )
            step = measured_step(base)
            pts = [
                (n, cm.predict(step, c["strategy"], n, net, 1, LOCAL_OVERLAP).efficiency)
                for n in (1, 2, 4, 8)
            ]
            predicted[f"{c['experiment']} {c['strategy']} (measured link)"] = pts
    plot(rows, out / "scaling.png", predicted)
    base = next((r for r in rows if r["status"] == "ok" and r["world"] == 1), None)
    return (
        text
        + "\n"
        + extrapolation(base, preset)
        + f"\n\nwritten: {out}/scaling.csv, scaling.md, scaling.png\n"
    )
