"""What people and machines do to a run on a workstation, each on a real `python -m pantheon.train` process: Ctrl-C
and SIGTERM save and say how to resume, a SIGKILL in the middle of a checkpoint save loses nothing, a full disk is
one error line with the previous checkpoint intact, a second run into a busy run directory is refused, and a
NaN loss stops the run before it reaches the weights. (The cluster versions run in tests/integration.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from pantheon.cluster.resume import checkpoint_problem
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow  # real training processes, signalled and killed: 20-60 s each

# The GAN on MNIST (or its offline fallback), 2 epochs of 3 batches, no callbacks but the ones a test adds.
RUN = ["debug=bare", "trainer.limit_train_batches=3", "seed=3", "logger=none"]
HOLD = "+callbacks.hold._target_=tests.integration.callbacks.HoldAtStep"
EVERY_STEP = [  # a checkpoint after every batch (2 optimizer steps): the newest and last.ckpt
    "++callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "++callbacks.model_checkpoint.dirpath=${paths.output_dir}/checkpoints",
    "++callbacks.model_checkpoint.every_n_train_steps=1",
    "++callbacks.model_checkpoint.save_top_k=1",
    "++callbacks.model_checkpoint.monitor=null",
    "++callbacks.model_checkpoint.save_last=true",
]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    """A training process in its own session (so a test can Ctrl-C its whole process group, as a terminal does)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PANTHEON_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pantheon.train", *RUN, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_file(path: Path, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"exited {process.returncode} before {path.name}:\n{process.stderr.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.05)


def global_step(checkpoint: Path) -> int:
    assert checkpoint_problem(checkpoint) is None
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.parametrize(
    ("sig", "to_group", "code"),
    [
        (signal.SIGINT, True, 130),  # Ctrl-C in a terminal: the process group, DataLoader workers included
        (signal.SIGTERM, False, 143),  # kill <pid>, docker stop
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_interrupt_saves_at_the_next_batch_and_says_how_to_resume(
    tmp_path: Path, sig: signal.Signals, to_group: bool, code: int
) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "at-step-4"
    process = start(
        run_dir, "data.num_workers=2", HOLD, "+callbacks.hold.step=4", f"+callbacks.hold.marker={marker}"
    )
    wait_for_file(marker, process)
    if to_group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("pantheon: stopped by")]
    assert len(lines) == 1 and f"exit code {code}" in lines[0] and f"hydra.run.dir={run_dir}" in lines[0], (
        stderr
    )
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 4, "saved at the batch the signal came in"
    assert "Traceback" not in stderr


class Ballast(L.Callback):
    """Test-only: `mib` MiB of zeros in every checkpoint, so that writing one takes long enough to be caught."""

    def __init__(self, mib: int) -> None:
        self.mib = mib

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["ballast"] = torch.zeros(self.mib * 2**18)


def test_sigkill_in_the_middle_of_a_save_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL at a random point while a checkpoint is being written (its staging file exists): every checkpoint
    in place loads, and the run resumes from the newest one and ends where an uninterrupted run ends."""
    seed = int(os.environ.get("PANTHEON_CHAOS_SEED", time.time_ns() % 10_000))
    print(f"kill moment seed: PANTHEON_CHAOS_SEED={seed}")
    delay = random.Random(seed).uniform(0.0, 0.02)
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    ballast = ["+callbacks.ballast._target_=tests.unit.test_faults.Ballast", "+callbacks.ballast.mib=32"]
    process = start(run_dir, *EVERY_STEP, *ballast)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if (checkpoints / "last.ckpt").exists() and list(checkpoints.glob(".*.tmp")):
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "caught and killed during a save"
    for checkpoint in checkpoints.glob("*.ckpt"):
        assert checkpoint_problem(checkpoint) is None, f"{checkpoint.name} was left half-written"
    killed_at = global_step(checkpoints / "last.ckpt")
    assert killed_at < 12

    resumed = run_cli("pantheon.train", *RUN, f"hydra.run.dir={run_dir}", *EVERY_STEP)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at global step {killed_at}" in resumed.stdout + resumed.stderr, "resumed from the last good save"
    assert global_step(checkpoints / "last.ckpt") == 12


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 20 MiB tmpfs: room for the first periodic checkpoint of the GAN (7 MB) and its last.ckpt, not for the next."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_error_line_and_keeps_the_previous_checkpoint(tiny_disk: Path) -> None:
    run_dir = tiny_disk / "run"
    result = run_cli(
        "pantheon.train",
        *RUN,
        f"hydra.run.dir={run_dir}",
        *EVERY_STEP,
        "hydra.job_logging.root.handlers=[console]",
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and "no space left" in errors[0] and "previous checkpoint is intact" in errors[0]
    saved = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert saved, "the saves before the disk filled are there"
    for checkpoint in saved:
        assert checkpoint_problem(checkpoint) is None, f"{checkpoint.name} is damaged"
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "the failed save's staging file is gone"


def test_a_second_run_into_a_busy_run_directory_is_refused(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "at-step-2"
    first = start(run_dir, HOLD, "+callbacks.hold.step=2", f"+callbacks.hold.marker={marker}")
    try:
        wait_for_file(marker, first)
        second = run_cli("pantheon.train", *RUN, f"hydra.run.dir={run_dir}")
        assert second.returncode == 2, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert (
            len(errors) == 1 and "is in use by another run" in errors[0] and f"pid {first.pid}" in errors[0]
        )
        assert "Seed set" not in second.stdout + second.stderr, (
            "refused before Hydra ran (its .hydra/ untouched)"
        )
    finally:
        first.send_signal(signal.SIGUSR1)  # releases the hold: it saves and exits 138
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGUSR1
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 2, "the first run's checkpoint is its own"


class PoisonBatch(L.Callback):
    """Test-only: turn the images of the batch trained at global step `step` into NaN (a corrupt sample, an
    overflow upstream), as a `+callbacks.poison._target_=tests.unit.test_faults.PoisonBatch` override."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_nan_loss_stops_before_the_weights_or_is_skipped(tmp_path: Path, action: str) -> None:
    """NaN images at global step 4 make the discriminator's loss NaN: `stop` ends the run there in one line,
    the checkpoint of step 4 (the last good one) in place; `skip` drops that step and finishes with finite weights."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "pantheon.train",
        *RUN,
        f"hydra.run.dir={run_dir}",
        f"on_nonfinite_loss={action}",
        *EVERY_STEP,
        "+callbacks.poison._target_=tests.unit.test_faults.PoisonBatch",
        "+callbacks.poison.step=4",
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    if action == "stop":
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, result.stderr[-3000:]
        assert len(errors) == 1 and "non-finite gradients at global step 4" in errors[0], result.stderr[
            -2000:
        ]
        assert global_step(last) == 4, "the last good checkpoint stays the newest"
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "step skipped (1 so far)" in result.stdout + result.stderr
        assert global_step(last) == 12, "the run went on to its end"
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), (
        "no NaN reached them"
    )
