"""The one copy of what the cluster tests share: bounded SLURM calls, sbatch from the repository root, job
state, polling, the weight and training-state comparisons behind the bit-identical resume checks, and the
seeded plans of the chaos preemption test.

Every call runs under coreutils `timeout`: srun and sbatch wait forever when the nodes are down. The fixtures
built on these (`slurm_cluster`, `job_name`) live in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
UP_HINT = "start it with `make slurm-up` (slurm/slurm-up.sh)"
JOB_TIMEOUT_S = 300
NODES = ["n1", "n2"]
# A node other people's jobs are using is still a healthy node.
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}

T = TypeVar("T")


def sh(args: list[str], timeout: int = 30, **kwargs) -> subprocess.CompletedProcess:
    """args under coreutils `timeout` (which also kills a hung srun/sbatch), never raising on exit code."""
    return subprocess.run(
        ["timeout", "-k", "5", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 15,
        **kwargs,
    )


def cluster_skip_reason() -> str | None:
    """Why the local cluster cannot take jobs (tools missing, slurmctld silent, no usable node), or None."""
    if shutil.which("sinfo") is None:
        return f"SLURM client tools not installed (no sinfo on PATH); {UP_HINT}"
    probe = sh(["sinfo", "-h", "-o", "%T"], timeout=5)
    if probe.returncode != 0 or not probe.stdout.strip():
        if probe.returncode == 124:
            reason = "timed out, slurmctld does not answer"
        else:
            reason = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"SLURM cluster not up (`sinfo`: {reason}); {UP_HINT}"
    states = set(probe.stdout.split())
    if not states & USABLE_STATES:
        return f"no usable SLURM node (states: {', '.join(sorted(states))}); {UP_HINT}"
    return None


def node_states() -> dict[str, str]:
    out = sh(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=5).stdout
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a submitted job: offline wandb and data, unbuffered output."""
    return {**os.environ, "WANDB_MODE": "offline", "PANTHEON_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def sbatch(
    tmp: Path,
    name: str,
    args: list[str],
    wait: bool = True,
    script: str = "multi_node",
    options: tuple = ("--nodes=2",),
    env: dict[str, str] | None = None,
) -> tuple[str, Path]:
    """Submit slurm/<script>.sbatch from the repository root; returns (job id, its output file)."""
    out = tmp / f"{name}-%j.out"
    command = ["sbatch", "--parsable", f"--job-name={name}", "--time=10", f"--output={out}", *options]
    command += ["--wait"] if wait else []
    result = sh(
        [*command, f"slurm/{script}.sbatch", *args], timeout=JOB_TIMEOUT_S, cwd=ROOT, env=env or job_env()
    )
    job = result.stdout.strip().split(";")[0]
    log = Path(str(out).replace("%j", job)) if job else out
    text = log.read_text() if log.is_file() else "(no output file)"
    assert job, f"sbatch failed (rc {result.returncode}): {result.stderr.strip()}"
    if wait:
        assert result.returncode == 0, (
            f"job {job} failed (rc {result.returncode}); its output:\n{text[-4000:]}"
        )
    return job, log


def job_state(job: str) -> tuple[str, int]:
    """(state, restarts) from scontrol (works without accounting too). scontrol forgets a job MinJobAge (300 s)
    after its end: then the state comes from sacct, and restarts are unknown (-1)."""
    text = sh(["scontrol", "show", "job", job], timeout=10).stdout
    state = re.search(r"JobState=(\S+)", text)
    restarts = re.search(r"Restarts=(\d+)", text)
    if state is None:
        rows = sh(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], timeout=10).stdout.splitlines()
        return (rows[-1].split()[0] if rows else "UNKNOWN"), -1  # "CANCELLED by 0"
    return state.group(1), int(restarts.group(1)) if restarts else 0


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 1.0) -> T:
    """Poll until predicate() is truthy and return it; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_until_finished(job: str, timeout_s: float = JOB_TIMEOUT_S) -> tuple[str, int]:
    """Block until the job reaches a final state; returns (state, restarts)."""
    return wait_for(
        lambda: (s := job_state(job))[0] in FINISHED_STATES and s, timeout_s, f"job {job} to finish"
    )


def dump_weights(dirpath: Path) -> list[str]:
    """Overrides that make every rank dump its final weights to <dirpath>/rank<r>.pt (tests.integration.callbacks)."""
    return [
        "+callbacks.dump._target_=tests.integration.callbacks.DumpWeights",
        f"+callbacks.dump.dirpath={dirpath}",
    ]


def load_weights(dirpath: Path, ranks: int = 2) -> list[dict]:
    return [torch.load(dirpath / f"rank{r}.pt", weights_only=True) for r in range(ranks)]


def assert_same_weights(a: dict, b: dict, what: str, parameters_only: bool = False) -> None:
    """Bit-identical tensors. DDP keeps parameters identical across ranks, not buffers: BatchNorm running
    statistics follow each rank's own batches (unless trainer.sync_batchnorm=true), so comparing ranks with
    each other uses parameters_only."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    names = a["parameters"] if parameters_only else list(a["state_dict"])
    assert names, f"{what}: nothing to compare"
    different = [k for k in names if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{what}: {len(different)} of {len(names)} tensors differ, e.g. {different[:3]}"


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two nested structures (dicts, lists, tensors, numbers) differ; tensors bit for bit, dtype included."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return [] if same and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path} (keys {sorted(map(str, a))} vs {sorted(map(str, b))})"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path} ({a!r} vs {b!r})"]


def assert_same_training_state(a: dict, b: dict, what: str, parameters_only: bool = False) -> None:
    """What DumpWeights wrote, bit-identical: global step, weights (see assert_same_weights for parameters_only),
    every optimizer's state, the LR schedulers and the EMA callback's average."""
    assert a["global_step"] == b["global_step"], (
        f"{what}: global step {a['global_step']} vs {b['global_step']}"
    )
    assert_same_weights(a, b, what, parameters_only)
    for key in ("optimizers", "schedulers", "ema"):
        different = differences(a[key], b[key], key)
        assert not different, f"{what}: {len(different)} {key} entries differ, e.g. {different[:3]}"


def run_dir(tmp: Path, job: str) -> Path:
    """The run directory of a job submitted with paths.log_dir=<tmp>/logs."""
    return tmp / "logs" / "train" / "runs" / f"slurm-{job}"


# --- chaos preemption: where a job is preempted, drawn from a seed (tests.integration.callbacks.ChaosPreemption) ---
CHAOS_SEED_VARIABLE = "PANTHEON_CHAOS_SEED"


def chaos_seed() -> int:
    """PANTHEON_CHAOS_SEED when set (to replay a failure), else a new random seed."""
    value = os.environ.get(CHAOS_SEED_VARIABLE, "").strip()
    return int(value) if value else random.SystemRandom().randrange(1, 10**6)


def chaos_plan(
    seed: int, batches: int, validations: Sequence[int] = (), saves: Sequence[int] = (), events: int = 5
) -> list[dict]:
    """`events` preemption moments in a run of `batches` batches, drawn from `seed`: each kind at least once (a
    validation's first batch when the run validates after the batch counts in `validations`, ModelCheckpoint's
    save after a count in `saves`, the first batches of a resumed run), the rest batch ends at random offsets,
    in random order. Each moment lies after the previous one's resume point (the batch count its checkpoint is
    saved at, `resumes_at`) and leaves batches to train after its own."""
    rng = random.Random(seed)
    kinds = (["validation"] if validations else []) + ["save", "resume"]
    kinds += ["batch"] * (events - len(kinds))
    for _ in range(10_000):
        order = rng.sample(kinds, len(kinds))
        plan: list[dict] = []
        point = 0  # batches trained when the run that takes the next event started
        for kind in order:
            if kind == "batch":  # at the end of batch n; saved there
                options = [(n, n) for n in range(point + 1, point + 4)]
            elif (
                kind == "resume"
            ):  # the k-th batch of a resumed run (0: its start): saved after batch 1 at least
                options = [(k, point + max(k, 1)) for k in (0, 1, 2)] if plan else []
            else:  # during that validation or save; saved at the end of the next batch
                options = [(n, n + 1) for n in (validations if kind == "validation" else saves) if n > point][
                    :2
                ]
            options = [option for option in options if option[1] < batches]
            if not options:
                break
            at, point = rng.choice(options)
            plan.append({"kind": kind, "batch": at, "resumes_at": point})
        else:
            return plan
    raise ValueError(f"no plan of {events} events fits {batches} batches (seed {seed})")


# --- the GAN job of the host and container tests: 2 nodes x 1 task DDP, 2 epochs of 4 batches (global step 16:
# 2 optimizer steps a batch), preempted mid-epoch 0 (3 of its 4 batches done) ---
GAN_ARGS = [
    "experiment=mnist_gan",
    "trainer=ddp_cpu",
    "trainer.num_nodes=2",
    "trainer.devices=1",
    "debug=bare",  # 2 epochs of 4 batches of 16, no validation (configs/debug/bare.yaml)
    "seed=5",
]
FINAL_STEP = 16
PREEMPT_AT_STEP = 6


def run_gan_job(tmp: Path, job_name: str, extra: list[str] = (), env: dict | None = None) -> dict:
    """sbatch the GAN job to the end; every rank dumps its weights. Returns job, log path, tmp, weights."""
    args = [*GAN_ARGS, *extra, f"paths.log_dir={tmp}/logs", *dump_weights(tmp / "weights")]
    job, log = sbatch(tmp, job_name, args, env=env)
    return {"job": job, "log": log, "tmp": tmp, "weights": load_weights(tmp / "weights")}


def preempt_gan_job(
    tmp: Path, job_name: str, reference: dict, extra: list[str] = (), env: dict | None = None
):
    """The GAN job, held at PREEMPT_AT_STEP and sent SLURM's warning signal (`scancel --signal=USR1`, what
    --signal=USR1@<s> does before the time limit); it must save, be requeued once, resume where it stopped and
    end bit-identical to `reference` (run_gan_job's result). Returns (job, its output, its run directory)."""
    marker = tmp / "held"
    hold = [
        "+callbacks.hold._target_=tests.integration.callbacks.HoldAtStep",
        f"+callbacks.hold.step={PREEMPT_AT_STEP}",
        f"+callbacks.hold.marker={marker}",
    ]
    args = [*GAN_ARGS, *extra, f"paths.log_dir={tmp}/logs", *dump_weights(tmp / "weights"), *hold]
    job, log = sbatch(tmp, job_name, args, wait=False, env=env)
    wait_for(marker.is_file, JOB_TIMEOUT_S, f"job {job} to reach global step {PREEMPT_AT_STEP}")
    signalled = sh(["scancel", "--signal=USR1", job], timeout=10)
    assert signalled.returncode == 0, signalled.stderr
    state, restarts = wait_until_finished(job)
    text = log.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}; output:\n{text[-4000:]}"
    assert restarts == 1, f"expected one requeue, scontrol says Restarts={restarts}"
    run_dir = tmp / "logs" / "train" / "runs" / f"slurm-{job}"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert f"saved {ckpt} at global step {PREEMPT_AT_STEP}" in text
    assert f"resumed {ckpt} at global step {PREEMPT_AT_STEP} (epoch 0, 3 batches into it)" in text

    preempted = load_weights(tmp / "weights")
    assert all(w["restart_count"] == 1 for w in preempted), "final weights come from the requeued run"
    assert all(w["global_step"] == FINAL_STEP for w in preempted)
    # The model the run produces (rank 0's full state, BatchNorm statistics included: the checkpoint's) and every
    # rank's parameters are bit-identical to the uninterrupted run's. Ranks > 0 keep their own BatchNorm running
    # statistics, which no checkpoint holds (it is rank 0's); they resume from rank 0's.
    reference_weights = reference["weights"]
    assert_same_weights(
        preempted[0], reference_weights[0], "rank 0 of the preempted run vs the uninterrupted run"
    )
    assert_same_weights(
        preempted[1], reference_weights[1], "rank 1, preempted vs uninterrupted", parameters_only=True
    )
    return job, text, run_dir
