"""Deployable generators: TorchScript and ONNX files that take (noise [N, latent], labels [N]) -> images."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class DeployedGenerator(nn.Module):
    """The generator in eval mode, mapping its tanh output to [0, 1] pixels for consumers."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator.eval()

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(noise, labels).add(1).div(2)


def example_inputs(latent_dim: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, latent_dim), torch.arange(n) % 10


def export_generator(generator: nn.Module, latent_dim: int, out_dir: Path) -> list[Path]:
    """Write generator.torchscript.pt and generator.onnx (dynamic batch) under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    deployed = DeployedGenerator(generator).cpu()
    inputs = example_inputs(latent_dim)
    script_path, onnx_path = out_dir / "generator.torchscript.pt", out_dir / "generator.onnx"
    with torch.no_grad():
        torch.jit.trace(deployed, inputs).save(str(script_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                deployed,
                inputs,
                str(onnx_path),
                input_names=["noise", "labels"],
                output_names=["images"],
                dynamic_axes={"noise": {0: "batch"}, "labels": {0: "batch"}, "images": {0: "batch"}},
                dynamo=False,
            )
    return [script_path, onnx_path]
