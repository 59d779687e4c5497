"""The conditional GAN as a LightningModule: one training step, D then G, with manual optimization."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.utils import make_grid

from pantheon.evaluation.mnist_classifier import EvaluatorFeatures, load_evaluator
from pantheon.models.gan.losses import LOSSES, mode_seeking
from pantheon.models.gan.networks import ARCHITECTURES, build_networks
from pantheon.models.protocol import GenerativeModule
from pantheon.utils.errors import require_choice

ALTERNATIVES = "use trainer=ddp (GPUs) or trainer=ddp_cpu (CPU, gloo)"


class ConditionalGAN(GenerativeModule):
    """G(noise, label) -> digit; D(image, label) -> realness. Validation scores G with the MNIST evaluator."""

    kind: ClassVar[str] = "gan"
    unsupported_strategies: ClassVar[dict[str, str]] = {
        "deepspeed": f"Lightning's DeepSpeed accepts a single optimizer, and the GAN steps two (G and D); {ALTERNATIVES}",
        "fsdp": f"sharding buys nothing for a 2M-parameter model whose two optimizers step in turn; {ALTERNATIVES}",
    }

    def __init__(
        self,
        arch: Literal["mlp", "dcgan"] = "dcgan",  # networks.ARCHITECTURES
        width: int | None = None,
        latent_dim: int = 100,
        num_classes: int = 10,
        loss: str = "hinge",
        lr: float = 4e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        mode_seeking_weight: float = 0.1,
        grid_seed: int = 1234,
        evaluator_weights: str | None = None,
    ) -> None:
        super().__init__()
        require_choice("model.arch", arch, ARCHITECTURES)
        require_choice("model.loss", loss, LOSSES)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator, self.discriminator = build_networks(arch, latent_dim, num_classes, width)
        self.loss = LOSSES[loss]
        grid_labels = torch.arange(num_classes).repeat_interleave(10)  # row r holds digit r
        grid_noise = torch.randn(
            len(grid_labels), latent_dim, generator=torch.Generator().manual_seed(grid_seed)
        )
        self.register_buffer("grid_labels", grid_labels, persistent=False)
        self.register_buffer("grid_noise", grid_noise, persistent=False)
        self._metrics: dict | None = None  # built lazily: the evaluator is not part of the checkpoint

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(noise, labels)

    def sample_noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, labels = batch
        opt_g, opt_d = self.optimizers()
        # Fakes for the batch's labels; the last `pairs` repeat the first `pairs` labels with other noise,
        # so the mode-seeking term can compare two digits of one label.
        pairs = len(labels) // 2
        fake_labels = torch.cat([labels[: len(labels) - pairs], labels[:pairs]])
        noise = self.sample_noise(len(fake_labels))
        fake = self.generator(noise, fake_labels)

        # Discriminator: tell real digits of this label from generated ones (G's weights frozen meanwhile).
        self.toggle_optimizer(opt_d)
        d_loss = self.loss.discriminator(
            self.discriminator(real, labels), self.discriminator(fake.detach(), fake_labels)
        )
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator: make the (just updated) discriminator call its digits real, without ignoring the noise.
        # D is frozen, so this backward computes no D gradients (which DDP would otherwise all-reduce).
        self.toggle_optimizer(opt_g)
        g_loss = self.loss.generator(self.discriminator(fake, fake_labels))
        collapse = mode_seeking(fake, noise, pairs)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss + self.hparams.mode_seeking_weight * collapse)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        if batch_idx % self.trainer.log_every_n_steps == 0:  # each log call costs ~1 ms of bookkeeping on CPU
            losses = {"train/d_loss": d_loss, "train/g_loss": g_loss, "train/mode_seeking": collapse}
            self.log_dict(losses, prog_bar=True)

    def configure_optimizers(self):
        lr, betas = self.hparams.lr, tuple(self.hparams.betas)
        return (
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
        )

    # --- validation: class accuracy and MNIST-FID of generated digits, judged by the evaluator ---

    def metrics(self) -> dict:
        """The evaluator and its metrics, kept out of the module tree (and so out of checkpoints)."""
        if self._metrics is None:
            evaluator = load_evaluator(self.hparams.evaluator_weights)
            self._metrics = {
                "evaluator": evaluator,
                "class_acc": MulticlassAccuracy(num_classes=self.hparams.num_classes, average="micro"),
                "fid": FrechetInceptionDistance(feature=EvaluatorFeatures(evaluator)),
            }
        for value in self._metrics.values():
            value.to(self.device)
        return self._metrics

    def on_validation_epoch_start(self) -> None:
        for name in ("class_acc", "fid"):
            self.metrics()[name].reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, labels = batch
        metrics = self.metrics()
        fake = self.generator(self.sample_noise(real.size(0)), labels)
        metrics["class_acc"].update(metrics["evaluator"](fake).argmax(1), labels)
        metrics["fid"].update(real, real=True)
        metrics["fid"].update(fake, real=False)

    def on_validation_epoch_end(self) -> None:
        metrics = self.metrics()
        self.log("val/class_acc", metrics["class_acc"].compute(), prog_bar=True, sync_dist=False)
        self.log("val/fid_mnist", metrics["fid"].compute(), prog_bar=True, sync_dist=False)

    # --- images for people: the grid callback and the sample CLI use these ---

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 digits [N, 28, 28] for the given labels."""
        was_training = self.generator.training
        self.generator.eval()
        noise = self.sample_noise(len(labels)) if noise is None else noise
        images = self.generator(noise.to(self.device), labels.to(self.device))
        self.generator.train(was_training)
        return images.squeeze(1).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)

    def sample_grid(self) -> torch.Tensor:
        """A 10x10 uint8 grid [3, H, W]: row = digit 0-9, fixed noise, comparable across epochs."""
        digits = self.generate(self.grid_labels, self.grid_noise).unsqueeze(1)
        return make_grid(digits, nrow=10, padding=2, pad_value=255)

    def export(self, out_dir):
        """TorchScript + ONNX generator files for deployment (see pantheon.export)."""
        from pantheon.models.gan.export import export_generator

        return export_generator(self.generator, self.hparams.latent_dim, out_dir)
