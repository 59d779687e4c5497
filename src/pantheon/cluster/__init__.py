"""The one place for cluster concerns: environment (ranks, job ids), run directories, requeue, pre-submit checks.

environment    ranks, job ids, run directory names, Lightning's SLURM environment (auto-requeue off)
preemption     SLURM's warning signal -> every rank saves last.ckpt atomically at a batch boundary -> requeue
               (the one mechanism, explained in its docstring)
resume         which checkpoint to resume from, and resuming exactly: data order mid-epoch, per-batch reseeding
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
