"""Every experiment and every trainer preset composes; Hydra names the valid choices on a typo."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml") if p.stem != "default")


def test_the_issue_experiments_exist() -> None:
    assert {"mnist_gan", "mnist_gan_mlp"} <= set(EXPERIMENTS)
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= set(TRAINERS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(tmp_path: Path, experiment: str) -> None:
    cfg = compose_train(tmp_path, [f"experiment={experiment}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["_target_"].startswith("pantheon.models.")
    assert resolved["trainer"]["default_root_dir"] == str(tmp_path)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_preset_composes(tmp_path: Path, trainer: str) -> None:
    cfg = compose_train(tmp_path, [f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_unknown_experiment_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_train(tmp_path, ["experiment=mnist_gna"])
    assert all(name in str(err.value) for name in EXPERIMENTS)
