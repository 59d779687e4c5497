"""Train any experiment: `python -m pantheon.train experiment=<name> [overrides]`.

Hydra composes configs/train.yaml; this file instantiates data, model, callbacks, loggers and trainer,
then fits. On SLURM the same entry point runs under srun on every rank.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from pantheon.callbacks.nonfinite import NonFiniteLoss
from pantheon.cluster import (  # pantheon.cluster also registers hydra.run.dir's run_id resolver
    preemption,
    resume,
)
from pantheon.cluster.environment import global_rank, lightning_cluster_environment
from pantheon.utils import run_lock
from pantheon.utils.config_checks import check_config
from pantheon.utils.errors import exit_on_user_error
from pantheon.utils.hydra_preflight import check_command_line, removed_if_refused
from pantheon.utils.instantiate import instantiate_callbacks, instantiate_loggers
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)


@exit_on_user_error
def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; returns the final logged metrics."""
    preemption.install()  # first: SLURM's warning signal may come at any time
    check_config(cfg)
    # One seed reaches torch, numpy, random and dataloader workers; offset per rank so ranks draw different noise
    # (DDP broadcasts rank 0's initial weights, so models still start identical).
    L.seed_everything(cfg.seed + global_rank(), workers=True)
    output_dir = cfg.paths.output_dir
    with run_lock.held(output_dir, enabled=global_rank() == 0):  # one run per directory, one last.ckpt writer
        return fit(cfg, output_dir)


def fit(cfg: DictConfig, output_dir: str) -> dict[str, float]:
    """Build data, model, callbacks, loggers and trainer from `cfg`, and fit in `output_dir`."""
    log.info(f"run directory: {output_dir}")

    # _convert_="all": plain lists/dicts in hparams, so checkpoints load with torch's weights_only=True.
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    resume.make_train_order_resumable(
        datamodule, cfg.seed
    )  # a run resumed mid-epoch continues its data order
    model: L.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    loggers = instantiate_loggers(cfg.get("logger"))
    checkpoints = Path(output_dir) / "checkpoints"
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[
            *instantiate_callbacks(cfg.get("callbacks")),
            resume.ExactResume(cfg.seed),  # reseeds per batch: random streams replay after a resume
            NonFiniteLoss(cfg.on_nonfinite_loss),  # a NaN/inf loss never reaches the weights or a checkpoint
            preemption.Preemption(checkpoints, cfg.preemption.check_every_n_batches),
        ],
        logger=loggers or False,
        plugins=[preemption.AtomicCheckpointIO(), *lightning_cluster_environment()],
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(
        model, datamodule=datamodule, ckpt_path=resume.checkpoint_to_resume(cfg.ckpt_path, output_dir)
    )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    log.info(f"done in {time.perf_counter() - started:.0f} s at epoch {trainer.current_epoch}: {summary}")
    log.info(f"run directory: {output_dir}")
    log.info(
        f"train longer: rerun with trainer.max_epochs=<N> (or trainer.max_steps=<N>) hydra.run.dir={output_dir} "
        "to resume from its last.ckpt; other data: data.data_dir=<folder> (README: Quickstart)"
    )
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with removed_if_refused(cfg.paths.output_dir):  # a run its checks refuse leaves no empty run directory
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric", ""), None)


if __name__ == "__main__":
    check_command_line()  # bad input: one `error:` line and exit 2 before Hydra writes a run directory
    main()
