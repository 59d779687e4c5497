"""The evaluator: a small MNIST CNN that scores generated digits (class accuracy, MNIST-FID features).

Its weights ship with the package (weights/mnist_classifier.pt, ~1.7 MB) and are reproduced by
`python scripts/train_evaluator.py` (full MNIST, >= 99% test accuracy).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pantheon.utils.errors import UserError

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "mnist_classifier.pt"
FEATURE_DIM = 128


class MNISTClassifier(nn.Module):
    """Two conv blocks and a 128-wide penultimate layer; inputs are [N, 1, 28, 28] in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, 10))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: the feature space of MNIST-FID."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class EvaluatorFeatures(nn.Module):
    """Feature extractor for torchmetrics' FID: images in [-1, 1] -> [N, 128] float64-safe features."""

    def __init__(self, classifier: MNISTClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = FEATURE_DIM

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float())


def load_evaluator(path: str | Path | None = None) -> MNISTClassifier:
    """The frozen evaluator in eval mode. A missing weights file names the command that makes it."""
    weights = Path(path) if path else DEFAULT_WEIGHTS
    if not weights.is_file():
        raise UserError(f"evaluator weights not found at {weights}: run `python scripts/train_evaluator.py`")
    model = MNISTClassifier()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval().requires_grad_(False)
    return model
