"""The one place for cluster concerns: environment (ranks, job ids), run directories, requeue, pre-submit checks.

job            the three calls train.py makes (signal handler, resumable train order, callbacks and plugins)
environment    ranks, job ids, run directory names, MASTER_ADDR, Lightning's SLURM environment (auto-requeue off)
signals        remembers SLURM's warning signal (USR1 from the sbatch templates, USR2 from submitit)
requeue        on that warning: checkpoint at the next batch boundary, `scontrol requeue`, exit (the one mechanism)
resume         exact resume: the train loader's position in checkpoints, per-batch reseeding
checkpointing  atomic checkpoint writes (files and DeepSpeed directories); which checkpoint to resume
preflight      checks before anything is built or submitted (strategy vs model, allocation vs trainer)
launcher       hydra-submitit-launcher's launchers plus those checks and containers (registered for Hydra in
               src/hydra_plugins/pantheon_launcher)
deepspeed      ZeRO checkpoint directories -> one fp32 checkpoint (`python -m pantheon.cluster.deepspeed`)
"""

import warnings

from omegaconf import OmegaConf

from pantheon.cluster.environment import run_id

# Hydra composes `hydra.run.dir` with this resolver, so it must exist before any config is loaded.
if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)

# configs/hydra/launcher/submitit_{slurm,local}.yaml share their names with hydra-submitit-launcher's schemas
# on purpose (`hydra/launcher=submitit_slurm` picks ours), which Hydra 1.3 validates against them and calls
# deprecated on every run. The validation is welcome; the warning is noise.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/submitit_(slurm|local)' is validated against ConfigStore schema"
)
