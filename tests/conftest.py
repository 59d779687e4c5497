"""Shared fixtures: compose the real configs in-process (fast), or run the real CLIs in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import pantheon.cluster  # noqa: F401  (registers the run_id resolver)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
SHARED_MNIST = SHARED_DATA / "mnist"
SHARED_FLOWERS = SHARED_DATA / "flowers" / "oxford102_128"

requires_shared_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").exists(),
    reason=f"full MNIST not found at {SHARED_MNIST}",
)
requires_shared_flowers = pytest.mark.skipif(
    not (SHARED_FLOWERS / "metadata.jsonl").exists(), reason=f"flowers not found at {SHARED_FLOWERS}"
)

# Small, quick, offline settings for every composed test config (configs/debug/fast.yaml).
FAST = ["debug=fast"]


def compose_train(output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """configs/train.yaml composed with `overrides`, writing into output_dir, as Hydra's run would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def fast_cfg(tmp_path: Path):
    """compose(overrides) -> a quick CPU config for this test's own tmp run directory."""

    def make(*overrides: str) -> DictConfig:
        return compose_train(tmp_path / "run", [*FAST, *overrides])

    return make


def run_cli(*args: str, timeout: int = 600, env: dict | None = None, cwd: Path | None = None):
    """Run `python -m <args>` as a user would; returns the CompletedProcess (never raises on exit code)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PANTHEON_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )
