"""Train any experiment: `python -m pantheon.train experiment=<name> [overrides]`.

Hydra composes configs/train.yaml; this file instantiates data, model, callbacks, loggers and trainer,
then fits. On SLURM the same entry point runs under srun on every rank.
"""

from __future__ import annotations

import time

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

import pantheon.cluster  # noqa: F401  (registers the run_id resolver used by hydra.run.dir)
from pantheon.cluster.checkpointing import resolve_resume_checkpoint
from pantheon.cluster.environment import global_rank
from pantheon.cluster.job import job_callbacks, job_plugins, make_train_order_resumable, prepare_job
from pantheon.utils.config_checks import check_config
from pantheon.utils.errors import exit_on_user_error
from pantheon.utils.instantiate import instantiate_callbacks, instantiate_loggers
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)


@exit_on_user_error
def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; returns the final logged metrics."""
    prepare_job()  # first: SLURM's warning signal may come at any time (pantheon.cluster.requeue)
    check_config(cfg)
    # One seed reaches torch, numpy, random and dataloader workers; offset per rank so ranks draw different noise
    # (DDP broadcasts rank 0's initial weights, so models still start identical).
    L.seed_everything(cfg.seed + global_rank(), workers=True)
    output_dir = cfg.paths.output_dir
    log.info(f"run directory: {output_dir}")

    # _convert_="all": plain lists/dicts in hparams, so checkpoints load with torch's weights_only=True.
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    make_train_order_resumable(datamodule, cfg.seed)  # a run resumed mid-epoch continues its data order
    model: L.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[*instantiate_callbacks(cfg.get("callbacks")), *job_callbacks(cfg)],
        logger=loggers or False,
        plugins=job_plugins(),
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_resume_checkpoint(cfg.ckpt_path, output_dir))
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
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric", ""), None)


if __name__ == "__main__":
    main()
