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


def test_gan_defaults_have_one_source(tmp_path: Path) -> None:
    """configs/model/gan.yaml and ConditionalGAN.__init__ agree; mnist_gan adds no model values of its own."""
    import inspect

    from pantheon.models.gan.module import ConditionalGAN

    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "gan.yaml"))
    del config["_target_"]
    signature = inspect.signature(ConditionalGAN.__init__).parameters
    defaults = {name: signature[name].default for name in config}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == config
    composed = compose_train(tmp_path, ["experiment=mnist_gan"]).model
    assert {k: v for k, v in OmegaConf.to_container(composed).items() if k != "_target_"} == config


def test_only_experiments_with_a_quality_metric_monitor_it(tmp_path: Path) -> None:
    gan = compose_train(tmp_path, ["experiment=mnist_gan"]).callbacks.model_checkpoint
    assert (gan.monitor, gan.mode) == ("val/class_acc", "max")
    for experiment in ("flowers_sd_tiny", "flowers_sd", "flowers_sd_lora"):
        assert (
            compose_train(tmp_path, [f"experiment={experiment}"]).callbacks.model_checkpoint.monitor is None
        )


@pytest.mark.parametrize("debug", ["fast", "bare"])
def test_debug_configs_make_tiny_runs(tmp_path: Path, debug: str) -> None:
    cfg = compose_train(tmp_path, ["experiment=flowers_sd_tiny", f"debug={debug}"])
    assert cfg.logger.keys() == {"csv"} and cfg.trainer.limit_train_batches == 4
    assert cfg.trainer.enable_model_summary is False


def test_experiments_override_the_root_keys(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=mnist_gan_mlp"])
    assert list(cfg.tags) == ["mnist", "gan", "mlp"] and cfg.ddp_find_unused_parameters is True
