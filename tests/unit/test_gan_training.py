"""The conditional GAN trains, validates with the evaluator, checkpoints, resumes and reproduces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pantheon.models.gan.losses import LOSSES, mode_seeking
from pantheon.models.gan.networks import build_networks
from pantheon.train import train


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_networks_condition_on_labels(arch: str) -> None:
    generator, discriminator = build_networks(arch, latent_dim=16, num_classes=10)
    noise = torch.randn(4, 16)
    images = generator.eval()(noise, torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    other = generator(noise, torch.tensor([9, 8, 7, 6]))
    assert not torch.allclose(images, other), "the label must change the generated image"
    assert discriminator(images, torch.tensor([0, 1, 2, 3])).shape == (4,)


def test_losses_on_known_logits() -> None:
    real, fake = torch.tensor([2.0, 2.0]), torch.tensor([-2.0, -2.0])
    # LSGAN: 0.5 * ((2-1)^2 + (-2)^2) = 2.5 for D; 0.5 * (-2-1)^2 = 4.5 for G.
    assert LOSSES["lsgan"].discriminator(real, fake).item() == pytest.approx(2.5)
    assert LOSSES["lsgan"].generator(fake).item() == pytest.approx(4.5)
    # Hinge: relu(1-2) + relu(1-2) = 0 for D; G = -mean(fake) = 2.
    assert LOSSES["hinge"].discriminator(real, fake).item() == pytest.approx(0.0)
    assert LOSSES["hinge"].generator(fake).item() == pytest.approx(2.0)
    # BCE: -log(sigmoid(2)) twice for D.
    expected = 2 * torch.nn.functional.softplus(torch.tensor(-2.0)).item()
    assert LOSSES["bce"].discriminator(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_mode_seeking_penalises_a_generator_that_ignores_its_noise() -> None:
    noise = torch.stack([torch.zeros(8), torch.ones(8)])  # the pair's noise differs by 1 per dimension
    same = torch.zeros(2, 1, 28, 28)
    assert mode_seeking(same, noise, pairs=1).item() == pytest.approx(1e5), "identical digits: 1 / 1e-5"
    apart = torch.stack([torch.zeros(1, 28, 28), torch.full((1, 28, 28), 0.5)])
    assert mode_seeking(apart, noise, pairs=1).item() == pytest.approx(2.0, rel=1e-4), "1 / (0.5 / 1)"
    assert mode_seeking(apart, noise, pairs=0).item() == 0.0, "a batch of one has no pair"


@pytest.mark.parametrize("experiment", ["mnist_gan", "mnist_gan_mlp"])
def test_experiment_trains_validates_and_saves(fast_cfg, experiment: str) -> None:
    cfg = fast_cfg(f"experiment={experiment}")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert {
        "val/class_acc",
        "val/fid_mnist",
        "train/d_loss",
        "train/g_loss",
        "train/mode_seeking",
    } <= metrics.keys()
    assert 0.0 <= metrics["val/class_acc"] <= 1.0
    assert metrics["val/fid_mnist"] > 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1, "best-by-class_acc checkpoint"
    grids = list((run / "samples").glob("*.png"))
    assert len(grids) == 1
    from torchvision.io import read_image

    grid = read_image(str(grids[0]))
    assert grid.shape == (3, 10 * 30 + 2, 10 * 30 + 2), "10x10 digits of 28 px with 2 px padding"
    assert (run / "csv" / "version_0" / "metrics.csv").is_file()


def test_resume_continues_at_the_same_global_step(fast_cfg) -> None:
    first = fast_cfg("trainer.max_epochs=1", "ckpt_path=null")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=False)["global_step"]
    assert saved_step == 8, "4 batches x 2 optimizer steps (manual optimization counts both)"

    resumed = fast_cfg("trainer.max_epochs=2", "ckpt_path=last")
    train(resumed)
    assert torch.load(last, weights_only=False)["global_step"] == 16, "resumed at step 8, ran one more epoch"


def test_same_seed_reproduces_metrics(tmp_path: Path) -> None:
    from tests.conftest import FAST, compose_train

    runs = [train(compose_train(tmp_path / f"r{i}", [*FAST, "seed=7", "ckpt_path=null"])) for i in range(2)]
    assert runs[0] == runs[1]
    other = train(compose_train(tmp_path / "r2", [*FAST, "seed=8", "ckpt_path=null"]))
    assert other["train/g_loss"] != runs[0]["train/g_loss"]


def test_progress_bar_names_the_step_bound_instead_of_a_negative_epoch() -> None:
    from types import SimpleNamespace

    from pantheon.callbacks.progress import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=300)
    assert bar._get_train_description(0).strip() == "Epoch 0 (to max_steps=300)"
    bar._trainer = SimpleNamespace(max_epochs=10, max_steps=-1)
    assert bar._get_train_description(3).strip() == "Epoch 3/9"
