"""Exact resume on one process: a GAN run stopped by the warning signal at any batch (mid-epoch, at an epoch's
last batch, in a later epoch) and resumed ends with the global step and bit-identical weights of an
uninterrupted run with the same seed. The two-node version runs on the SLURM cluster (tests/integration)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from pantheon.cluster import preemption, resume
from pantheon.train import train
from pantheon.utils.errors import UserError
from tests.conftest import compose_train

# 2 epochs of 3 batches; the GAN steps two optimizers per batch, so global step 12 at the end.
RUN = ["debug=bare", "trainer.limit_train_batches=3", "seed=3"]
FINAL_STEP = 12


def run(run_dir: Path, *extra: str) -> dict:
    """Train into run_dir; returns the weights DumpWeights wrote at the end (rank 0)."""
    dump = [
        "+callbacks.dump._target_=tests.integration.callbacks.DumpWeights",
        f"+callbacks.dump.dirpath={run_dir}/w",
    ]
    train(compose_train(run_dir, [*RUN, *dump, *extra]))
    return torch.load(run_dir / "w" / "rank0.pt", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == FINAL_STEP
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} of {len(a['state_dict'])} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("whole"), "ckpt_path=null")


@pytest.mark.parametrize(
    "stop_at",
    [
        4,  # mid-epoch 0: its data order continues after 2 of 3 batches
        6,  # epoch 0's last batch: the resumed run starts epoch 1
        10,  # mid-epoch 1
    ],
)
def test_stopped_and_resumed_run_equals_uninterrupted(
    uninterrupted: dict, tmp_path: Path, stop_at: int, capsys
) -> None:
    signal_at = [
        "+callbacks.signal._target_=tests.integration.callbacks.SignalAt",
        f"+callbacks.signal.step={stop_at}",
    ]
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path, "ckpt_path=null", *signal_at)
    assert stopped.value.code == 128 + signal.SIGUSR1, "off SLURM: saved, not requeued, 128 + signal"
    assert preemption.received() is None, "the handled signal is cleared"
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == stop_at
    assert not last.with_name("last.ckpt.tmp").exists(), "written atomically"

    resumed = run(tmp_path, "ckpt_path=last")
    assert_identical(resumed, uninterrupted)
    assert any(not torch.equal(saved["state_dict"][k], v) for k, v in resumed["state_dict"].items()), (
        "it trained on"
    )


def test_epoch_end_checkpoint_resumes_exactly(uninterrupted: dict, tmp_path: Path) -> None:
    """ModelCheckpoint's last.ckpt after epoch 0, resumed for epoch 1: the same as one 2-epoch run."""
    checkpoint = ["callbacks=model_checkpoint", "callbacks.model_checkpoint.monitor=null"]
    run(tmp_path, "ckpt_path=null", "trainer.max_epochs=1", *checkpoint)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert_identical(run(tmp_path, "ckpt_path=last", *checkpoint), uninterrupted)


def test_other_seeds_differ(uninterrupted: dict, tmp_path: Path) -> None:
    """The comparison above can fail: another seed ends elsewhere."""
    other = run(tmp_path, "ckpt_path=null", "seed=4")
    assert any(not torch.equal(other["state_dict"][k], v) for k, v in uninterrupted["state_dict"].items())


def test_a_corrupt_last_checkpoint_falls_back_to_the_newest_that_loads(
    uninterrupted: dict, tmp_path: Path, caplog
) -> None:
    """last.ckpt truncated (a full disk, a bad copy): the resume warns once, naming it, keeps it aside, and
    continues from the newest periodic checkpoint that loads, ending bit-identical to the uninterrupted run."""
    every_batch = [
        "callbacks=model_checkpoint",
        "callbacks.model_checkpoint.monitor=null",
        "+callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.save_top_k=-1",
    ]
    run(tmp_path, "ckpt_path=null", "trainer.max_epochs=1", *every_batch)
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    newest_good = max((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime)
    assert resume.checkpoint_to_resume("last", tmp_path) == str(newest_good)
    warnings = [r.getMessage() for r in caplog.records if "cannot resume from" in r.getMessage()]
    assert len(warnings) == 1 and "last.ckpt" in warnings[0] and str(newest_good) in warnings[0]
    kept = list(folder.glob("last.ckpt.bad-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == data[: len(data) // 2], "the bad file is kept"

    assert_identical(run(tmp_path, "ckpt_path=last", *every_batch), uninterrupted)
    assert kept[0].exists(), "still there after the run wrote a new last.ckpt"


def test_no_loadable_checkpoint_is_one_error_and_deletes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    (folder / "step=4.ckpt").write_bytes(b"")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(
        UserError, match=r"no checkpoint of .* loads: .*last.ckpt.*step=4.ckpt.*ckpt_path=null"
    ):
        resume.checkpoint_to_resume("last", tmp_path)
    assert set(before) <= {p.name for p in folder.iterdir()}, "nothing deleted"
    with pytest.raises(UserError, match="cannot be resumed from"):
        resume.checkpoint_to_resume(str(folder / "last.ckpt"), tmp_path)
