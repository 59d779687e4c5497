"""No secret lands in anything a run writes: secrets planted in the environment (where pantheon tells users to
keep them) appear in no file of a real run (Hydra's config dumps, logs, checkpoints, sample grids, the csv and
tensorboard logs and a real wandb offline run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

SECRETS = {
    "WANDB_API_KEY": "planted-wandb-key-0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_plantedTokenZZZ9876543210",
    "AWS_SECRET_ACCESS_KEY": "planted/aws+secret/KEY/0042",
}


@pytest.mark.slow  # a full debug=fast run with three loggers in a subprocess: ~40 s on 2 busy cores
def test_planted_secrets_are_in_no_file_a_run_writes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "pantheon.train",
        "debug=fast",
        "logger=many",  # wandb (offline), csv and tensorboard
        f"hydra.run.dir={run_dir}",
        env=SECRETS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in written}
    assert {".yaml", ".log", ".ckpt", ".png", ".csv"} <= kinds, f"the run wrote what a run writes: {kinds}"
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb")), "a real wandb offline run"
    leaks = [
        f"{path.relative_to(run_dir)} holds {name}"
        for path in written
        for name, value in SECRETS.items()
        if value.encode() in path.read_bytes()
    ]
    assert not leaks, leaks
    for name, value in SECRETS.items():
        assert value not in result.stdout + result.stderr, f"{name} printed"
