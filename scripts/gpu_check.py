"""One prepared GPU check (run by scripts/gpu_check.sh; docs/scaling.md, "The GPU check").

On one CUDA GPU, inside a time budget (8 minutes by default), one summary of: NCCL process-group init; bf16 GAN and
tiny-diffusion training steps; the real Lightning FSDP and DeepSpeed (ZeRO-2) strategies on that GPU, each
trained, saved and resumed; the diffusion UNet at the largest width whose step fits a step-time budget; and for
each the throughput, MFU and peak memory from the Throughput callback's JSON. Every training phase is the real
`python -m pantheon.train` with csv logging and synthetic batches (no dataset travels to that machine).

Without CUDA it rehearses the same phases on the CPU, so the one GPU run is spent measuring: gloo instead of
NCCL, bf16 autocast on the CPU, FSDP through trainer=fsdp_cpu, DeepSpeed through the tests' CPUDeepSpeedStrategy
(Lightning's own refuses the CPU), the UNet ladder at toy sizes; and every phase runs `python -S` over a view of
this venv that hides what the GPU machine will lack (scripts/gpu_wheels.py rehearsal_site), so a missing package
fails here, not there. Each phase is bounded; a failing or timed-out phase is reported with its reason and the
others still run.

  python scripts/gpu_check.py run --mode gpu|rehearse [--budget-s 480] [--wheels DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "logs" / "gpu_check"
SYNTHETIC = "data._target_=pantheon.scaling.synthetic.SyntheticData"
CPU_DEEPSPEED = "tests.unit.test_strategies_deepspeed.CPUDeepSpeedStrategy"


@dataclass
class Outcome:
    phase: str
    status: str = "ok"  # ok | failed | timed out | skipped: <why>
    seconds: float = 0.0
    samples_per_s: float | None = None
    step_ms: float | None = None
    mfu: float | None = None
    peak_mib: float | None = None
    note: str = ""
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """Batch and step counts per mode: the GPU measures; the rehearsal only walks the same paths."""

    gan_batch: int
    diffusion_batch: int
    warmup: int
    measured: int
    resume_batches: int  # per run of a train-save-resume pair
    unet_widths: tuple[int, ...]
    unet_latent: int
    unet_batch: int
    unet_step_budget_ms: float
    cap_scale: float  # phase time caps: the rehearsal runs on 2 shared cores (bf16 on a CPU is slow)


SIZES = {
    "gpu": Sizes(256, 64, 5, 40, 15, (64, 128, 192, 256, 320, 384, 448, 512, 640), 64, 8, 500, 1.0),
    "rehearse": Sizes(16, 2, 2, 3, 3, (32,), 8, 1, 60_000, 3.0),
}


def last_error(text: str) -> str:
    """The most telling line of a failed phase's output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if re.search(r"Error|error:|Exception|refused|Killed", line)]
    return (telling or lines or ["no output"])[-1][:240]


class Runner:
    def __init__(self, mode: str, budget_s: float, wheels: Path | None) -> None:
        self.mode, self.sizes, self.wheels = mode, SIZES[mode], wheels
        self.deadline = time.monotonic() + budget_s
        self.gpu = mode == "gpu"
        self.outcomes: list[Outcome] = []
        self.env = {**os.environ, "WANDB_MODE": "offline", "PANTHEON_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "HYDRA_FULL_ERROR": "1", "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/pantheon-torch-extensions")}  # fmt: skip
        self.interpreter = [sys.executable]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str, cap_s: float, body: Callable[[float], Outcome | None]) -> None:
        """Run one phase within min(cap, what is left of the budget); never lets it stop the others."""
        timeout = min(cap_s * self.sizes.cap_scale, self.left() - 5)
        started = time.monotonic()
        if timeout < 15:
            outcome = Outcome(name, "skipped: time budget spent")
        else:
            print(f"[gpu-check] {name} (up to {timeout:.0f} s)", flush=True)
            try:
                outcome = body(timeout) or Outcome(name)
            except subprocess.TimeoutExpired:
                outcome = Outcome(name, "timed out", note=f"no result within {timeout:.0f} s")
            except Exception as err:  # a phase's bug is a finding, not the end of the check
                outcome = Outcome(name, "failed", note=f"{type(err).__name__}: {err}"[:240])
        outcome.phase, outcome.seconds = name, time.monotonic() - started
        print(
            f"[gpu-check]   {outcome.status} in {outcome.seconds:.0f} s {outcome.note}".rstrip(), flush=True
        )
        self.outcomes.append(outcome)

    # --- subprocess helpers ---

    def python(self, args: list[str], log: Path, timeout: float) -> tuple[int, str]:
        """(exit code, output) of a python process; its output goes to `log` as it runs (kept on a timeout)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            f.write(f"$ {' '.join([*self.interpreter, *args])}\n")
            f.flush()
            done = subprocess.run([*self.interpreter, *args], stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=self.env, cwd=ROOT)  # fmt: skip
        return done.returncode, log.read_text(errors="replace")

    def machine_view(self, timeout: float) -> Outcome:
        """Rehearsal only: from here on, phases see this venv as the GPU machine will (see the module doc)."""
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_wheels import rehearsal_site

        site, hidden = rehearsal_site(LOGS / "site", self.wheels or ROOT / ".gpu_wheels")
        self.interpreter = [sys.executable, "-S"]
        self.env["PYTHONPATH"] = f"{site}:{ROOT / 'src'}"
        shown = ", ".join(hidden[:8]) + (", ..." if len(hidden) > 8 else "")
        note = f"python -S over {site.name}/: {len(hidden)} distributions the GPU machine lacks are hidden ({shown})"
        return Outcome("machine_view", note=note, details={"hidden": hidden})

    def train(self, name: str, run_dir: Path, overrides: list[str], timeout: float) -> Outcome:
        """`pantheon.train` with the Throughput callback; the outcome carries its JSON summary."""
        args = ["-m", "pantheon.train", "debug=bare", "logger=csv", "trainer.num_nodes=1", "trainer.devices=1",
                "+callbacks.throughput._target_=pantheon.callbacks.throughput.Throughput",
                f"+callbacks.throughput.warmup_steps={self.sizes.warmup}", f"hydra.run.dir={run_dir}", *overrides]  # fmt: skip
        code, output = self.python(args, run_dir / "output.log", timeout)
        summary_file = run_dir / "throughput.json"
        if code != 0 or not summary_file.is_file():
            return Outcome(name, "failed", note=f"rc {code}: {last_error(output)}")
        s = json.loads(summary_file.read_text())
        peak = s["cuda_max_allocated_mib"] if s["accelerator"] == "cuda" else s["peak_rss_mib"]
        step_ms = s["step_time_s"] * 1e3 if s.get("step_time_s") else None
        return Outcome(name, samples_per_s=s["samples_per_s"], step_ms=step_ms, mfu=s["mfu"], peak_mib=peak,
                       note=f"{s['precision']}, {s['strategy']}, batch {s['per_device_batch_size']}", details=s)  # fmt: skip

    # --- the phases ---

    def nccl(self, timeout: float) -> Outcome:
        code, output = self.python([__file__, "nccl"], LOGS / "nccl" / "output.log", timeout)
        if code != 0:
            return Outcome("nccl", "failed", note=last_error(output))
        r = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
        note = f"{r['backend']}: init {r['init_s']:.2f} s, all_reduce {r['allreduce_mib']:.0f} MiB {r['allreduce_ms']:.2f} ms"
        if not self.gpu:
            note = f"skipped: no CUDA (NCCL); rehearsed with {note}"
        return Outcome("nccl", note=note, details=r)

    def base(self, experiment: str, kind: str, batch: int) -> list[str]:
        trainer = ["trainer=gpu"] if self.gpu else ["trainer=cpu", "trainer.precision=bf16-mixed"]
        return [f"experiment={experiment}", *trainer, SYNTHETIC, f"+data.kind={kind}", f"data.batch_size={batch}",
                "ckpt_path=null", "trainer.max_epochs=1", "trainer.max_steps=-1",
                f"trainer.limit_train_batches={self.sizes.warmup + self.sizes.measured}"]  # fmt: skip

    def gan(self, timeout: float) -> Outcome:
        return self.train("gan_bf16", LOGS / "gan_bf16", self.base("mnist_gan", "gan", self.sizes.gan_batch), timeout)  # fmt: skip

    def diffusion(self, timeout: float) -> Outcome:
        overrides = self.base("flowers_sd_tiny", "diffusion", self.sizes.diffusion_batch)
        return self.train("diffusion_bf16", LOGS / "diffusion_bf16", overrides, timeout)

    def strategy_overrides(self, strategy: str) -> list[str]:
        if self.gpu:
            return [f"trainer={strategy}"]
        if strategy == "fsdp":
            return ["trainer=fsdp_cpu"]
        return ["trainer=deepspeed_stage_2", "trainer.accelerator=cpu", "trainer.precision=32-true",
                f"trainer.strategy._target_={CPU_DEEPSPEED}"]  # fmt: skip

    def save_resume(self, strategy: str, timeout: float) -> Outcome:
        """Train K batches and save last.ckpt; rerun in the same directory with ckpt_path=last for K more:
        the second run must resume (train.log says so) and end at global step 2K. Its throughput is reported."""
        k, run_dir = self.sizes.resume_batches + self.sizes.warmup, LOGS / strategy
        common = [*self.strategy_overrides(strategy), "experiment=flowers_sd_tiny", SYNTHETIC, "+data.kind=diffusion",
                  f"data.batch_size={self.sizes.diffusion_batch}", "trainer.max_steps=-1",
                  f"trainer.limit_train_batches={k}",
                  "+callbacks.last._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                  f"+callbacks.last.dirpath={run_dir}/checkpoints", "+callbacks.last.save_last=true",
                  "+callbacks.last.save_top_k=0"]  # fmt: skip
        started = time.monotonic()
        first = self.train(strategy, run_dir, [*common, "ckpt_path=null", "trainer.max_epochs=1"], timeout)
        last = run_dir / "checkpoints" / "last.ckpt"
        if first.status != "ok":
            return first
        if not last.exists():
            return Outcome(strategy, "failed", note="no checkpoints/last.ckpt after the first run")
        rest = timeout - (time.monotonic() - started)
        second = self.train(strategy, run_dir, [*common, "ckpt_path=last", "trainer.max_epochs=2"], rest)
        if second.status != "ok":
            second.note = f"resume: {second.note}"
            return second
        step = checkpoint_step(last)
        resumed = "resumed" in (run_dir / "train.log").read_text()
        if step != 2 * k or not resumed:
            return Outcome(strategy, "failed", note=f"resume: global step {step} (want {2 * k}), resumed logged: {resumed}")  # fmt: skip
        saved = "a directory of shards" if last.is_dir() else f"{last.stat().st_size / 2**20:.0f} MiB"
        second.note += f"; saved ({saved}), resumed to step {step}"
        if not self.gpu and strategy == "deepspeed":
            second.note += " (rehearsed: CPU DeepSpeed from the tests; Lightning's refuses the CPU)"
        return second

    def unet(self, timeout: float) -> Outcome:
        out = LOGS / "unet" / "ladder.json"
        s = self.sizes
        args = [__file__, "unet", "--out", str(out), "--budget-s", str(max(10, timeout - 20)),
                "--widths", ",".join(map(str, s.unet_widths)), "--latent", str(s.unet_latent), "--batch", str(s.unet_batch),
                "--step-budget-ms", str(s.unet_step_budget_ms)]  # fmt: skip
        out.unlink(missing_ok=True)
        code, output = self.python(args, LOGS / "unet" / "output.log", timeout)
        if code != 0 or not out.is_file():
            return Outcome("unet_ladder", "failed", note=last_error(output))
        ladder = json.loads(out.read_text())
        fit = [r for r in ladder["sizes"] if r.get("fits")]
        if not fit:
            return Outcome("unet_ladder", "failed", note=f"no width fits {ladder['step_budget_ms']} ms", details=ladder)  # fmt: skip
        best = fit[-1]
        note = (f"largest within {ladder['step_budget_ms']:.0f} ms/step: width {best['width']} "
                f"({best['parameters'] / 1e6:.0f}M params, {ladder['latent']}x{ladder['latent']} latents, "
                f"batch {ladder['batch']}); stopped: {ladder['stopped']}")  # fmt: skip
        return Outcome("unet_ladder", samples_per_s=best["samples_per_s"], step_ms=best["step_ms"],
                       mfu=best["mfu"], peak_mib=best["peak_mib"], note=note, details=ladder)  # fmt: skip

    def run(self) -> int:
        shutil.rmtree(LOGS, ignore_errors=True)  # a stale last.ckpt or train.log would fake a resume
        LOGS.mkdir(parents=True)
        if not self.gpu:
            self.phase("machine_view", 60, self.machine_view)
        self.phase("nccl", 60, self.nccl)
        self.phase("gan_bf16", 90, self.gan)
        self.phase("diffusion_bf16", 90, self.diffusion)
        self.phase("fsdp", 120, lambda t: self.save_resume("fsdp", t))
        self.phase("deepspeed", 150, lambda t: self.save_resume("deepspeed", t))
        self.phase("unet_ladder", 120, self.unet)
        print(summary(self.outcomes, self.mode))
        (LOGS / "summary.json").write_text(json.dumps([asdict(o) for o in self.outcomes], indent=2) + "\n")
        out = os.environ.get("OUT")
        if out:  # the device tool brings $OUT back: the summary and the phase logs
            (Path(out) / "gpu_check.json").write_text((LOGS / "summary.json").read_text())
            subprocess.run(["tar", "czf", f"{out}/gpu_check_logs.tgz", "-C", str(LOGS.parent), LOGS.name,
                            "--exclude=*.ckpt", "--exclude=checkpoints"], check=False)  # fmt: skip
        return 0 if all(o.status == "ok" for o in self.outcomes) else 1


def checkpoint_step(path: Path) -> int | None:
    """global_step of a Lightning checkpoint: one file, or DeepSpeed's directory (client state in the
    model-states file)."""
    import torch

    files = [path] if path.is_file() else sorted(path.rglob("*model_states.pt"))
    if not files:
        return None
    return torch.load(files[0], map_location="cpu", weights_only=False).get("global_step")


def summary(outcomes: list[Outcome], mode: str) -> str:
    def num(value: float | None, fmt: str) -> str:
        return format(value, fmt) if value is not None else "n/a"

    title = "GPU check" if mode == "gpu" else "GPU check REHEARSAL on the CPU (numbers are not GPU numbers)"
    head = f"{'phase':<15} {'status':<10} {'s':>5} {'samples/s':>10} {'step ms':>9} {'MFU':>6} {'peak MiB':>9}  note"
    lines = ["", f"==== {title} ====", head, "-" * len(head)]
    for o in outcomes:
        status = o.status if len(o.status) <= 10 else o.status.split(":")[0]
        mfu = num(o.mfu * 100 if o.mfu is not None else None, ".1f") + ("%" if o.mfu is not None else "")
        lines.append(f"{o.phase:<15} {status:<10} {o.seconds:>5.0f} {num(o.samples_per_s, '.1f'):>10} "
                     f"{num(o.step_ms, '.1f'):>9} {mfu:>6} {num(o.peak_mib, '.0f'):>9}  {o.note}")  # fmt: skip
    ok = sum(o.status == "ok" for o in outcomes)
    lines += ["-" * len(head), f"{ok} of {len(outcomes)} phases ok in {sum(o.seconds for o in outcomes):.0f} s; "
              f"peak = CUDA max allocated on the GPU, max RSS on the CPU; details: {LOGS}/summary.json"]  # fmt: skip
    return "\n".join(lines)


# --- phases that run in their own process ---


def nccl_main() -> None:
    """Init a one-rank process group (NCCL with CUDA, else gloo) and time one all_reduce; print JSON."""
    import socket

    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, **({"device_id": device} if cuda else {}))  # fmt: skip
    x = torch.ones(64 * 2**20 // 4 if cuda else 2**18, device=device)
    dist.all_reduce(x)  # the first collective creates the communicator
    if cuda:
        torch.cuda.synchronize()
    init_s = time.perf_counter() - started
    start = time.perf_counter()
    for _ in range(5):
        dist.all_reduce(x)
    if cuda:
        torch.cuda.synchronize()
    result = {"backend": dist.get_backend(), "init_s": init_s, "allreduce_mib": x.numel() * 4 / 2**20,
              "allreduce_ms": (time.perf_counter() - start) / 5 * 1e3,
              "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None}  # fmt: skip
    dist.destroy_process_group()
    print(json.dumps(result))


def unet_step_fn(width: int, latent: int, batch: int, device):
    """An SD-layout UNet (channels w, 2w, 4w, 4w; SD-2 at w=320) and one bf16 training step on random data."""
    import torch
    from diffusers import UNet2DConditionModel

    channels = (width, 2 * width, 4 * width, 4 * width)
    context_dim = 1024 if device.type == "cuda" else 64
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=latent, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=tuple(max(1, c // 64) for c in channels), cross_attention_dim=context_dim,
            use_linear_projection=True,
        )  # fmt: skip
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=device.type == "cuda")
        x, noise = torch.randn(batch, 4, latent, latent), torch.randn(batch, 4, latent, latent)
        context, t = torch.randn(batch, 77, context_dim), torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(unet(x, t, context).sample.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return unet, step


def unet_main(
    out: Path, budget_s: float, widths: list[int], latent: int, batch: int, step_budget_ms: float
) -> None:
    """Widen the UNet until a step exceeds the step budget, memory runs out or the time budget ends."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "src"))
    from pantheon.callbacks.throughput import peak_flops

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = peak_flops(device, torch.bfloat16)
    deadline, rows, stopped = time.monotonic() + budget_s, [], "all widths fit"
    for width in widths:
        if time.monotonic() > deadline:
            stopped = "time budget"
            break
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            unet, step = unet_step_fn(width, latent, batch, device)
            step()  # warm-up: allocator, kernels
            with FlopCounterMode(display=False) as counter:
                step()
            sync()
            start, n = time.perf_counter(), 0
            while n < 5 and (n < 2 or time.perf_counter() - start < 10):
                step()
                n += 1
            sync()
        except torch.OutOfMemoryError:
            stopped = f"out of memory at width {width}"
            break
        ms = (time.perf_counter() - start) / n * 1e3
        flops = counter.get_total_flops()
        achieved = flops / (ms / 1e3)
        row = {"width": width, "parameters": sum(p.numel() for p in unet.parameters()), "step_ms": ms,
               "samples_per_s": batch / (ms / 1e3), "tflops_per_s": achieved / 1e12,
               "mfu": achieved / peak if peak else None, "fits": ms <= step_budget_ms,
               "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        del unet, step
        if not row["fits"]:
            stopped = f"width {width} took {ms:.0f} ms > {step_budget_ms:.0f} ms"
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"latent": latent, "batch": batch, "step_budget_ms": step_budget_ms,
                               "stopped": stopped, "sizes": rows}, indent=2) + "\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--mode", choices=list(SIZES), required=True)
    run.add_argument("--budget-s", type=float, default=480)
    run.add_argument("--wheels", type=Path, default=None)
    sub.add_parser("nccl")
    unet = sub.add_parser("unet")
    unet.add_argument("--out", type=Path, required=True)
    unet.add_argument("--budget-s", type=float, default=90)
    unet.add_argument("--widths", default="64,128,256,320")
    unet.add_argument("--latent", type=int, default=64)
    unet.add_argument("--batch", type=int, default=8)
    unet.add_argument("--step-budget-ms", type=float, default=500)
    a = p.parse_args(argv)
    if a.command == "nccl":
        nccl_main()
    elif a.command == "unet":
        unet_main(
            a.out, a.budget_s, [int(w) for w in a.widths.split(",")], a.latent, a.batch, a.step_budget_ms
        )
    else:
        return Runner(a.mode, a.budget_s, a.wheels).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
