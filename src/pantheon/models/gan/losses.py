"""GAN objectives on raw discriminator logits. Each returns (discriminator loss, generator loss) pieces."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class GANLoss(Protocol):
    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor: ...
    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor: ...


class NonSaturatingBCE:
    """Goodfellow et al.: D maximises log D(x) + log(1 - D(G(z))); G maximises log D(G(z))."""

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class LeastSquares:
    """LSGAN (Mao et al.): squared distance of D's output to 1 (real) and 0 (fake); the assignment's choice."""

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean())

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return 0.5 * (fake_logits - 1).pow(2).mean()


class Hinge:
    """Hinge loss (SAGAN, BigGAN): D pushes real logits above +1 and fake below -1."""

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


def mode_seeking(fakes: torch.Tensor, noise: torch.Tensor, pairs: int) -> torch.Tensor:
    """Mode-seeking term (Mao et al., 2019), added to G's loss: 1 / (image distance / noise distance).

    Sample i of the first `pairs` and sample i of the last `pairs` share a label but not their noise. A
    generator that ignores its noise (mode collapse: every 5 looks alike) makes the ratio small and this
    term large."""
    if pairs == 0:
        return fakes.new_zeros(())
    image_distance = (fakes[:pairs] - fakes[-pairs:]).abs().flatten(1).mean(1)
    noise_distance = (noise[:pairs] - noise[-pairs:]).abs().mean(1)
    return 1.0 / ((image_distance / noise_distance).mean() + 1e-5)


LOSSES: dict[str, GANLoss] = {"bce": NonSaturatingBCE(), "lsgan": LeastSquares(), "hinge": Hinge()}
