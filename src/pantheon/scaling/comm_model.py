"""An alpha-beta model of data-parallel communication: what a measured one-device step becomes at N devices.

A message of S bytes between two ranks costs alpha + S / beta (latency plus bytes over bandwidth). Over p ranks,
with the bandwidth-optimal ring algorithms NCCL and gloo use:
  ring all-reduce         2 (p-1) alpha + 2 (p-1)/p * S / beta      (DDP: the gradients, every step)
  reduce-scatter          (p-1) alpha + (p-1)/p * S / beta          (FSDP / ZeRO: the gradients)
  all-gather              (p-1) alpha + (p-1)/p * S / beta          (FSDP / ZeRO: the parameters)
Inside one node the ring runs over NVLink; across nodes NCCL builds one ring per NIC, so each GPU's share of
the traffic crosses the node boundary at its own NIC's bandwidth: with more than one node the inter-node alpha
and the per-GPU NIC bandwidth set the pace (a deliberate simplification: no tree algorithms, no SHARP, no
congestion). Communication issued during backward (DDP buckets, FSDP reduce-scatter) and FSDP's prefetched
all-gathers hide behind compute: the exposed time is max(0, comm - overlap * window) plus the last bucket,
which can never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Interconnect:
    """Links of a cluster. Bandwidths in bytes/s per GPU (uni-directional), latencies in seconds."""

    name: str
    gpus_per_node: int
    intra_bandwidth: float
    intra_latency: float
    inter_bandwidth: float
    inter_latency: float
    source: str = ""


GB = 1e9
# Presets with their sources. NVLink numbers are NCCL-tests bus bandwidths, which is what a ring achieves, not
# the marketing bi-directional totals; InfiniBand: one NIC per GPU, ~90% of the line rate.
INTERCONNECTS: dict[str, Interconnect] = {
    "dgx_a100_hdr": Interconnect(
        "DGX A100, NVLink3 + 8x HDR 200 Gb/s InfiniBand",
        8,
        230 * GB,
        10e-6,
        22.5 * GB,
        15e-6,
        "NVIDIA DGX A100 user guide (8x ConnectX-6 HDR 200 Gb/s per node); nccl-tests all_reduce busbw ~230 GB/s "
        "on 8 A100 (NVIDIA NCCL-tests published results); HDR 200 Gb/s = 25 GB/s line rate",
    ),
    "dgx_h100_ndr": Interconnect(
        "DGX H100, NVLink4 + 8x NDR 400 Gb/s InfiniBand",
        8,
        450 * GB,
        8e-6,
        45 * GB,
        12e-6,
        "NVIDIA DGX H100 user guide (8x ConnectX-7 NDR 400 Gb/s per node); NVLink4 900 GB/s bidirectional per "
        "GPU, nccl-tests all_reduce busbw ~450 GB/s on 8 H100; NDR 400 Gb/s = 50 GB/s line rate",
    ),
    "ethernet_100g": Interconnect(
        "8 GPUs/node with PCIe, 100 Gb/s Ethernet (TCP) between nodes",
        8,
        20 * GB,
        10e-6,
        1.5 * GB,
        50e-6,
        "PCIe Gen4 x16 ~25 GB/s (PCI-SIG); 100 GbE = 12.5 GB/s per node shared by 8 GPUs",
    ),
}


def ring_allreduce_s(size_bytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * size_bytes / bandwidth


def reduce_scatter_s(size_bytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    if ranks <= 1:
        return 0.0
    return (ranks - 1) * latency + (ranks - 1) / ranks * size_bytes / bandwidth


all_gather_s = reduce_scatter_s  # the same traffic, the other direction


def link(net: Interconnect, devices: int) -> tuple[float, float]:
    """(bandwidth, latency) that paces a ring over `devices` GPUs filled node by node."""
    if devices <= net.gpus_per_node:
        return net.intra_bandwidth, net.intra_latency
    return net.inter_bandwidth, net.inter_latency


@dataclass(frozen=True)
class Step:
    """A measured one-device training step."""

    compute_s: float  # forward + backward + optimizer, no data wait
    parameters: int  # trained parameters (what gradients and shards cover)
    grad_bytes_per_param: int = 4  # fp32 gradients (mixed precision keeps fp32 master weights)
    param_bytes_per_param: int = 2  # bf16 parameters gathered by FSDP / ZeRO-3
    backward_fraction: float = 2 / 3  # backward is ~2x forward
    collectives_per_step: int = 1  # gradient syncs per step (the GAN's two backward passes: 2)
    bucket_bytes: float = 25 * 2**20  # DDP's default bucket: the last one cannot overlap


# Strategy -> its collectives per gradient sync, as (kind, what) pairs; what = "grad" or "param".
STRATEGY_COLLECTIVES: dict[str, tuple[tuple[str, str], ...]] = {
    "ddp": (("allreduce", "grad"),),
    "zero2": (("reduce_scatter", "grad"), ("all_gather", "param")),  # DeepSpeed ZeRO-2: updated params
    "fsdp_shard_grad_op": (("all_gather", "param"), ("reduce_scatter", "grad")),
    "fsdp_full_shard": (("all_gather", "param"), ("all_gather", "param"), ("reduce_scatter", "grad")),
    "zero3": (("all_gather", "param"), ("all_gather", "param"), ("reduce_scatter", "grad")),
}
STRATEGY_ALIASES = {"ddp_cpu": "ddp", "deepspeed_stage_2": "zero2", "deepspeed_stage_3": "zero3",
                    "fsdp": "fsdp_shard_grad_op", "fsdp_cpu": "fsdp_shard_grad_op"}  # fmt: skip


def comm_seconds(step: Step, strategy: str, devices: int, net: Interconnect) -> float:
    """Time of one step's collectives at `devices` ranks, nothing overlapped."""
    kinds = STRATEGY_COLLECTIVES[STRATEGY_ALIASES.get(strategy, strategy)]
    bandwidth, latency = link(net, devices)
    cost = {"allreduce": ring_allreduce_s, "reduce_scatter": reduce_scatter_s, "all_gather": all_gather_s}
    total = 0.0
    for kind, what in kinds:
        per_param = step.grad_bytes_per_param if what == "grad" else step.param_bytes_per_param
        total += cost[kind](step.parameters * per_param, devices, bandwidth, latency)
    return total * step.collectives_per_step


@dataclass
class Prediction:
    devices: int
    step_s: float
    comm_s: float
    exposed_comm_s: float
    efficiency: float  # weak scaling: one-device step / N-device step
    samples_per_s: float
    extra: dict = field(default_factory=dict)


def predict(
    step: Step, strategy: str, devices: int, net: Interconnect, per_device_batch: int, overlap: float = 1.0
) -> Prediction:
    """Weak scaling at `devices`: the one-device compute plus the communication compute cannot hide.
    overlap = 1: everything but the last bucket hides behind backward (DDP) or the whole step (FSDP's
    forward all-gathers are prefetched); overlap = 0: communication strictly after compute (one CPU per rank)."""
    comm = comm_seconds(step, strategy, devices, net)
    fsdp_like = STRATEGY_ALIASES.get(strategy, strategy) != "ddp"
    window = step.compute_s * (1.0 if fsdp_like else step.backward_fraction)
    bandwidth, latency = link(net, devices)
    last = min(comm, ring_allreduce_s(step.bucket_bytes, devices, bandwidth, latency)) if devices > 1 else 0.0
    exposed = last + max(0.0, comm - last - overlap * window)
    step_s = step.compute_s + exposed
    return Prediction(
        devices, step_s, comm, exposed, step.compute_s / step_s, devices * per_device_batch / step_s
    )


@dataclass(frozen=True)
class Reference:
    what: str
    devices: int
    value: str
    source: str


# Published points to hold a prediction against, as issue 11 quotes them from MosaicML's 2023 Stable Diffusion
# 2 training write-up (blog "Training Stable Diffusion from Scratch Costs <$160k", January 2023; not
# re-checked offline here).
MOSAIC = "MosaicML, Training Stable Diffusion from Scratch Costs <$160k (blog, 2023)"
REFERENCES: tuple[Reference, ...] = (
    Reference("SD-2 UNet, 512 px, A100 80GB, bf16", 8, "~36 img/s per A100",
              MOSAIC),
    Reference("SD-2 UNet, 512 px: weak scaling efficiency 8 -> 128 A100", 128, "~99%",
              MOSAIC),
    Reference("SD-2 UNet, 256 px: weak scaling efficiency 8 -> 128 A100", 128, "~66%",
              MOSAIC),
)  # fmt: skip

SD2_UNET_PARAMETERS = 865_000_000  # the SD-2 UNet (diffusers UNet2DConditionModel, sd-2-base)


def sd2_example(net: Interconnect = INTERCONNECTS["dgx_a100_hdr"], pixels: int = 512) -> list[Prediction]:
    """The model's own SD-2 case under DDP at batch 32 per GPU: 36 img/s/A100 at 512 px -> 0.89 s of compute
    per step; at 256 px a quarter of that (UNet cost ~ latent pixels, an assumption), the same gradient bytes.
    Printed beside MosaicML's published efficiencies (99% at 512 px, 66% at 256 px on 128 A100s)."""
    step = Step(compute_s=32 / 36 * (pixels / 512) ** 2, parameters=SD2_UNET_PARAMETERS)
    return [predict(step, "ddp", n, net, 32) for n in (8, 16, 32, 64, 128)]
