"""The one place for cluster concerns: environment (ranks, job ids), run directories, requeue, pre-submit checks."""

from omegaconf import OmegaConf

from pantheon.cluster.environment import run_id

# Hydra composes `hydra.run.dir` with this resolver, so it must exist before any config is loaded.
if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
