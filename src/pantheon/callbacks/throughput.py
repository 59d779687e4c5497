"""Training throughput, step-time split, peak memory, FLOPs and MFU: Lightning's ThroughputMonitor plus what it lacks.

Lightning's `ThroughputMonitor` (rank 0, a sliding window, logged at the trainer's log cadence) already gives
samples/s, batches/s, FLOPs/s and MFU once the module has `flops_per_batch`. This subclass adds:
- `flops_per_batch` itself, counted with torch's FlopCounterMode (what `measure_flops` wraps) around one real
  warm-up training step: it fits a UNet with frozen encoders or a two-optimizer GAN, where 6N does not, and
  needs no example input from the model;
- a measurement window that skips `warmup_steps` batches (start-up, allocator growth, the FLOP-counted step);
- the step time split into data wait (fetch and host-to-device copy: previous batch end -> this batch start)
  and compute (batch start -> end, CUDA synchronised), on every rank;
- peak memory (CPU max RSS; CUDA max allocated and reserved) and a dense bf16/fp16 peak table (Lightning's
  table lists sparsity peaks for some chips and does not parse "NVIDIA H200");
- a JSON summary in the run directory when training ends, reduced over ranks (samples summed, time and
  memory maxed), which the scaling harness collects.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from torch.utils.flop_counter import FlopCounterMode

SUMMARY_FILE = "throughput.json"

# Dense (no sparsity) tensor-core peaks in FLOP/s for 16-bit inputs, from NVIDIA's datasheets: A100 (312 T),
# H100 SXM / H200 SXM (989 T), H100 PCIe (756 T), H100 NVL / H200 NVL (835 T), L40S (362 T), L4 (121 T),
# A10G (70 T dense per AWS), B200 (2.25 P), GH200 (989 T). Matched by substring of the CUDA device name, most
# specific first; anything else falls back to Lightning's table.
DENSE_16BIT_PEAKS: tuple[tuple[str, float], ...] = (
    ("gh200", 989e12),
    ("h200 nvl", 835e12),
    ("h200", 989e12),
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("b200", 2250e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for `dtype`; None on CPU (MFU is n/a there) and on unknown chips."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    if dtype in (torch.bfloat16, torch.float16):
        for key, value in DENSE_16BIT_PEAKS:
            if key in name:
                return value
    found = get_available_flops(device, dtype)
    return float(found) if found else None


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor or list ((images, labels), {"text": [...]})."""
    if isinstance(batch, torch.Tensor):
        return int(batch.size(0))
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        return batch_size_of(first) if isinstance(first, (torch.Tensor, dict, list, tuple)) else len(batch)
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class Throughput(ThroughputMonitor):
    """ThroughputMonitor with FLOPs counted on a warm-up step, a warm-up-free window, the data/compute split,
    peak memory and `<run dir>/throughput.json` at train end (see the module docstring)."""

    def __init__(
        self,
        warmup_steps: int = 5,
        count_flops: bool = True,
        filename: str = SUMMARY_FILE,
        window_size: int = 20,
    ) -> None:
        super().__init__(batch_size_fn=batch_size_of, window_size=window_size)
        if warmup_steps < 1:
            raise ValueError(
                "Throughput needs warmup_steps >= 1: FLOPs are counted on the first (warm-up) batch"
            )
        self.warmup_steps, self.count_flops, self.filename = warmup_steps, count_flops, filename
        self.batches = 0  # training batches seen by this rank in this fit
        self.measured = {"steps": 0, "samples": 0, "data_wait_s": 0.0, "compute_s": 0.0, "cpu_s": 0.0}
        self.flops_per_batch: int | None = None
        self.summary: dict[str, Any] | None = None
        self._last_end: float | None = None
        self._start_time = 0.0
        self._start_cpu = 0.0
        self._wait = 0.0
        self._counter: FlopCounterMode | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Counted before the strategy wraps (and FSDP/ZeRO-3 shard) the module: what gradients cover.
        self.trainable_parameters = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        self.dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        self.available_flops = peak_flops(trainer.strategy.root_device, self.dtype)
        for window in self._throughputs.values():
            window.available_flops = self.available_flops

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_end = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *_: Any
    ) -> None:
        self._start_time, self._start_cpu = time.perf_counter(), time.process_time()
        self._wait = self._start_time - (self._last_end or self._start_time)
        if self.count_flops and self.batches == 0:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any) -> None:  # fmt: skip
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_batch = int(self._counter.get_total_flops())
            pl_module.flops_per_batch = self.flops_per_batch  # what ThroughputMonitor reads
            self._counter = None
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        self.batches += 1
        if self.batches > self.warmup_steps:
            m = self.measured
            m["steps"] += 1
            m["samples"] += batch_size_of(batch)
            m["data_wait_s"] += self._wait
            m["compute_s"] += end - self._start_time
            m["cpu_s"] += time.process_time() - self._start_cpu  # all this process's threads
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)  # rank 0: Lightning's window
        if (
            trainer.is_global_zero
            and self.batches > self.warmup_steps
            and trainer._logger_connector.should_update_logs
        ):
            trainer._logger_connector.log_metrics(
                {"train/data_wait_s": self._wait, "train/compute_s": end - self._start_time},
                step=trainer.global_step,
            )
        self._last_end = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = self.reduce_summary(trainer, pl_module)
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.summary, indent=2) + "\n")

    # --- the summary: one number per quantity for the whole job ---

    def local_numbers(self, device: torch.device) -> list[float]:
        m, cuda = self.measured, device.type == "cuda"
        allocated = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0
        reserved = torch.cuda.max_memory_reserved(device) / 2**20 if cuda else 0.0
        elapsed = m["data_wait_s"] + m["compute_s"]
        return [m["steps"], m["samples"], elapsed, m["data_wait_s"], m["compute_s"], peak_rss_mib(), allocated, reserved, m["cpu_s"]]  # fmt: skip

    def reduce_summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """All ranks take part (an all_gather); every rank returns the same summary."""
        device = trainer.strategy.root_device
        local = torch.tensor(self.local_numbers(device), dtype=torch.float64, device=device)
        gathered = trainer.strategy.all_gather(local).reshape(-1, local.numel()).cpu()
        steps, samples, elapsed, wait, compute, rss, allocated, reserved, cpu = gathered.T
        world = int(gathered.shape[0])
        window = float(elapsed.max())  # the slowest rank sets the pace (every step synchronises)
        n_steps = int(steps.min())
        global_rate = float(samples.sum()) / window if window > 0 else None
        flops_per_sample = self.flops_per_batch / (float(samples[0]) / n_steps) if self.flops_per_batch and n_steps else None  # fmt: skip
        achieved = flops_per_sample * global_rate / world if flops_per_sample and global_rate else None
        return {
            "model": type(pl_module).__name__,
            "strategy": type(trainer.strategy).__name__,
            "accelerator": device.type,
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "precision": str(trainer.precision),
            "world_size": world,
            "num_nodes": trainer.num_nodes,
            "devices_per_node": world // max(trainer.num_nodes, 1),
            "warmup_steps": self.warmup_steps,
            "measured_steps": n_steps,
            "per_device_batch_size": int(samples[0]) // n_steps if n_steps else None,
            "samples": int(samples.sum()),
            "elapsed_s": window,
            "samples_per_s": global_rate,
            "samples_per_s_per_device": global_rate / world if global_rate else None,
            "step_time_s": window / n_steps if n_steps else None,
            "data_wait_s": float(wait.max()) / n_steps if n_steps else None,
            "compute_s": float(compute.max()) / n_steps if n_steps else None,
            # CPU seconds of the compute per batch (process time, every thread), slowest rank: unlike the wall
            # time above it does not grow while a rank waits for a core on a shared host
            "cpu_s": float(cpu.max()) / n_steps if n_steps else None,
            "data_wait_fraction": float(wait.max() / elapsed.max()) if window > 0 else None,
            "trainable_parameters": getattr(self, "trainable_parameters", None),
            "flops_per_batch": self.flops_per_batch,
            "flops_per_sample": flops_per_sample,
            "achieved_flops_per_s_per_device": achieved,
            "peak_flops_per_device": self.available_flops,
            "mfu": achieved / self.available_flops if achieved and self.available_flops else None,
            "mfu_note": None if self.available_flops else f"n/a: no peak FLOP/s known for {device.type}",
            "torch_threads": torch.get_num_threads(),  # rank 0's intra-op threads (OMP_NUM_THREADS)
            # rank 0's host at the end: on shared cores a load above the core count slows every rank
            "load_avg_1min": os.getloadavg()[0],
            "host_cpus": os.cpu_count(),
            "peak_rss_mib": float(rss.max()),
            "cuda_max_allocated_mib": float(allocated.max()) if device.type == "cuda" else None,
            "cuda_max_reserved_mib": float(reserved.max()) if device.type == "cuda" else None,
            "versions": versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def versions() -> dict[str, str]:
    import lightning

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
    }
