"""The user-facing commands: train, sample and export as a user runs them, and every bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
import torch

from pantheon import export, sample
from pantheon.train import train
from pantheon.utils.runs import resolve_latest
from tests.conftest import FAST, compose_train, run_cli


@pytest.fixture(scope="module")
def gan_checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gan") / "run"
    train(compose_train(run, FAST))
    return run / "checkpoints" / "last.ckpt"


def test_sample_writes_grid_and_array(gan_checkpoint: Path, tmp_path: Path) -> None:
    png = sample.main([f"ckpt={gan_checkpoint}", "digit=5", "n=16", f"out={tmp_path}/five.png"])
    assert png.is_file() and png.stat().st_size > 0
    npy = sample.main([f"ckpt={gan_checkpoint}", "digit=5", "n=16", f"out={tmp_path}/five.npy"])
    digits = np.load(npy)
    assert digits.shape == (16, 28, 28) and digits.dtype == np.uint8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digit=10"], "digit=10 is not a digit"),
        (["digit=-1"], "digit=-1 is not a digit"),
        (["digit=5", "out=x.jpg"], "write a .png grid or a .npy array"),
        (["digit=5", "colour=red"], "valid keys"),
    ],
)
def test_sample_bad_arguments(gan_checkpoint: Path, tmp_path: Path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sample.main([f"ckpt={gan_checkpoint}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_sample_missing_and_corrupt_checkpoints(tmp_path: Path, capsys, gan_checkpoint: Path) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(gan_checkpoint.read_bytes()[:1000])
    for ckpt, message in [(tmp_path / "missing.ckpt", "does not exist"), (corrupt, "is corrupt")]:
        with pytest.raises(SystemExit) as exit_info:
            sample.main([f"ckpt={ckpt}", "digit=3"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_checkpoints_record_their_class_and_unrecorded_ones_are_refused(
    gan_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    checkpoint = torch.load(gan_checkpoint, weights_only=False)
    assert checkpoint["pantheon"] == {
        "class_path": "pantheon.models.gan.module.ConditionalGAN",
        "kind": "gan",
    }
    del checkpoint["pantheon"]
    foreign = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, foreign)
    with pytest.raises(SystemExit) as exit_info:
        sample.main([f"ckpt={foreign}", "digit=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: checkpoint {foreign} records no pantheon model class: it was not written by pantheon.train"
    ]


def test_export_torchscript_and_onnx_match_eager(gan_checkpoint: Path, tmp_path: Path) -> None:
    from pantheon.models.checkpoints import load_module
    from pantheon.models.gan.export import DeployedGenerator

    script_path, onnx_path = export.main([f"ckpt={gan_checkpoint}", f"out={tmp_path}"])
    eager = DeployedGenerator(load_module(gan_checkpoint).generator)
    noise, labels = torch.randn(7, 100), torch.arange(7)  # a batch size the export never saw
    with torch.no_grad():
        expected = eager(noise, labels).numpy()
        scripted = torch.jit.load(str(script_path))(noise, labels).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"noise": noise.numpy(), "labels": labels.numpy()})[0]
    assert expected.shape == (7, 1, 28, 28)
    np.testing.assert_allclose(scripted, expected, atol=1e-5)
    np.testing.assert_allclose(from_onnx, expected, atol=1e-5)


# Secrets where pantheon tells users to keep them: the environment.
SECRETS = {
    "WANDB_API_KEY": "planted-wandb-key-0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_plantedTokenZZZ9876543210",
    "AWS_SECRET_ACCESS_KEY": "planted/aws+secret/KEY/0042",
}


def test_train_cli_end_to_end_with_offline_wandb_and_no_secret_in_any_file(tmp_path: Path) -> None:
    """The real entry point as `make train` runs it, with the default (wandb, offline) and the csv logger, and
    secrets planted in its environment: none of them appears in any file the run writes (Hydra's config dumps,
    logs, checkpoints, sample grids, the csv log, the wandb offline run) or in its output."""
    run = tmp_path / "run"
    result = run_cli(
        "pantheon.train",
        f"hydra.run.dir={run}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "data.batch_size=16",
        "~callbacks.rich_progress_bar",
        "+logger.csv._target_=lightning.pytorch.loggers.CSVLogger",
        f"+logger.csv.save_dir={run}",
        env=SECRETS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run directory: {run}" in result.stdout + result.stderr
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), (
        "wandb wrote an offline run for `wandb sync`"
    )
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()

    written = [p for p in run.rglob("*") if p.is_file()]
    assert {".yaml", ".log", ".ckpt", ".png", ".csv", ".wandb"} <= {p.suffix for p in written}
    leaks = [
        f"{path.relative_to(run)} holds {name}"
        for path in written
        for name, value in SECRETS.items()
        if value.encode() in path.read_bytes()
    ]
    assert not leaks, leaks
    assert not [name for name, value in SECRETS.items() if value in result.stdout + result.stderr]


def test_latest_picks_the_newest_gan_checkpoint_and_samples_into_its_run(
    gan_checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`make sample` after `make train-diffusion`: ckpt=latest skips the newer diffusion checkpoint and a
    corrupt file, and the grid lands in the GAN run's samples/, not in the working directory."""
    import os
    import shutil

    runs = tmp_path / "logs" / "train" / "runs"
    gan = runs / "gan" / "checkpoints" / "last.ckpt"
    gan.parent.mkdir(parents=True)
    shutil.copy(gan_checkpoint, gan)
    newer = runs / "diffusion" / "checkpoints" / "last.ckpt"
    newer.parent.mkdir(parents=True)
    torch.save({"pantheon": {"class_path": "x.Diffusion", "kind": "diffusion"}}, newer)
    (runs / "diffusion" / "checkpoints" / "broken.ckpt").write_bytes(b"not a checkpoint")
    for i, path in enumerate([gan, newer, runs / "diffusion" / "checkpoints" / "broken.ckpt"]):
        os.utime(path, (1_000 + i, 1_000 + i))
    monkeypatch.setenv("PANTHEON_ROOT", str(tmp_path))
    out = sample.main(["ckpt=latest", "digit=5", "n=4"])
    assert out == runs / "gan" / "samples" / "digit_5.png" and out.is_file()
    assert f"ckpt=latest: {gan}" in capsys.readouterr().out
    export_options = SimpleNamespace(ckpt="latest")
    resolve_latest(export_options, kind=None)  # pantheon.export's: the newest checkpoint of either kind
    assert export_options.ckpt == str(newer)

    monkeypatch.setenv("PANTHEON_ROOT", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["ckpt=latest", "digit=5"])
    assert exit_info.value.code == 2
    assert "no gan checkpoint under" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [sample, export])
def test_help_lists_every_key(entry, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m pantheon.")
    for key in ("ckpt", "out"):
        assert f"\n  {key} " in text


def test_train_help_lists_groups_keys_and_exit_codes() -> None:
    result = run_cli("pantheon.train", "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in [
        "python -m pantheon.train [group=option",
        "experiment: flowers_sd",
        "on_nonfinite_loss: stop",
    ]:
        assert text in result.stdout
    assert "== Exit codes ==" in result.stdout and "130  Ctrl-C (SIGINT), 143 SIGTERM" in result.stdout
