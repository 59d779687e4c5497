"""Make the small GAN checkpoint the serving tests ship (tests/assets/serving/gan_mnist.ckpt), from a training run.

Reproduce (full MNIST from ../shared/data/mnist; 12 minutes of training reached step 2,520 and val/class_acc 0.91
on 2 CPU cores shared with other jobs):

    python -m pantheon.train data.data_dir=../shared/data/mnist trainer.max_time=00:00:12:00 \
        +trainer.val_check_interval=400 logger=csv hydra.run.dir=logs/serve_asset
    python scripts/make_serve_checkpoint.py logs/serve_asset/checkpoints/last.ckpt

The copy keeps what `load_module` needs (weights, hyperparameters, the recorded class) and drops the optimizer,
loop and callback state (7 MB -> 2.3 MB). It is refused unless the evaluator classifies >= 85% of 1,000 generated
digits as the digit asked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

KEEP = (
    "epoch",
    "global_step",
    "pytorch-lightning_version",
    "state_dict",
    "hparams_name",
    "hyper_parameters",
    "pantheon",
)
OUT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "serving" / "gan_mnist.ckpt"


def class_accuracy(ckpt: Path, per_digit: int = 100) -> float:
    from pantheon.evaluation.mnist_classifier import load_evaluator
    from pantheon.models.checkpoints import load_module

    module, evaluator = load_module(ckpt, kind="gan"), load_evaluator()
    labels = torch.arange(10).repeat_interleave(per_digit)
    torch.manual_seed(0)
    with torch.no_grad():
        digits = module.generate(labels).float().div(127.5).sub(1).unsqueeze(1)  # the evaluator reads [-1, 1]
        predicted = evaluator(digits).argmax(1)
    return float((predicted == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--min-accuracy", type=float, default=0.85)
    args = parser.parse_args()
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: checkpoint[key] for key in KEEP if key in checkpoint}, args.out)
    accuracy = class_accuracy(args.out)
    print(
        f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, step {checkpoint.get('global_step')}, "
        f"evaluator class accuracy {accuracy:.3f}"
    )
    if accuracy < args.min_accuracy:
        args.out.unlink()
        raise SystemExit(f"class accuracy {accuracy:.3f} < {args.min_accuracy}: train longer")


if __name__ == "__main__":
    main()
