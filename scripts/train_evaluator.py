"""Train the MNIST evaluator that scores generated digits (class accuracy and MNIST-FID features).

    python scripts/train_evaluator.py [--data-dir ../shared/data/mnist] [--epochs 2] [--out PATH]

Needs full MNIST in torchvision layout. Prints test accuracy; refuses to save below --min-accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pantheon.data.mnist import load_torchvision, torchvision_layout_present
from pantheon.evaluation.mnist_classifier import DEFAULT_WEIGHTS, MNISTClassifier


def evaluate(model: MNISTClassifier, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.numel()
    return correct / total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.99)
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    args = parser.parse_args()

    if not torchvision_layout_present(Path(args.data_dir)):
        print(f"error: no MNIST torchvision layout under {args.data_dir}: pass --data-dir", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    train_set, test_set = load_torchvision(Path(args.data_dir), download=False)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)

    model = MNISTClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=args.epochs * len(train_loader)
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            # Small random shifts make the evaluator robust to slightly off-centre generated digits.
            shift = torch.randint(-2, 3, (2,)).tolist()
            images = torch.roll(images, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        accuracy = evaluate(model, test_loader)
        print(
            f"epoch {epoch + 1}/{args.epochs}: test accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)"
        )

    if accuracy < args.min_accuracy:
        print(f"error: test accuracy {accuracy:.4f} < {args.min_accuracy}; not saving", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    print(f"saved {out} (test accuracy {accuracy:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
