"""hydra-submitit-launcher's launchers with what pantheon needs before anything is queued.

`python -m pantheon.train -m hydra/launcher=submitit_slurm slurm=local experiment=... [sweep]` turns every
job of the sweep into one task of a SLURM job array. Before submitit sees any of them, in this (the
submitting) process, each job's own config is composed and checked (pantheon.cluster.preflight): the
allocation must match the trainer, the config must pass the same checks a run does, and the batch sizes
are printed. A failed check is one line on stderr, exit code 2, and nothing in squeue.

Launch also adds what the plugin's 1.2.0 release lacks: every task starts through slurm/task.sh, the sbatch
templates' wrapper (rendezvous address, and with slurm.container the container around the task and the requeue
from outside it: charliecloud, Apptainer/Singularity as the python command, pyxis as srun arguments).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import DictConfig, OmegaConf

from pantheon.cluster.preflight import batch_size_summary, check_local_allocation, check_slurm_allocation
from pantheon.utils.errors import USER_ERROR_EXIT_CODE, UserError

log = logging.getLogger(__name__)

CONTAINER_RUNTIMES = ("charliecloud", "apptainer", "singularity", "pyxis")
# Every task of a submitit job starts through the same wrapper as the sbatch templates' (rendezvous address,
# container, requeue from outside the container): the one copy of that logic, in bash, outside any container.
TASK_SCRIPT = Path(__file__).resolve().parents[3] / "slurm" / "task.sh"


def container_command(container: DictConfig | dict | None, workdir: str) -> tuple[str, list[str]]:
    """(submitit's python command, extra srun arguments) for the tasks: slurm/task.sh around this python, or
    around the image's `python` inside `container.image` (runtime, binds: slurm/task.sh reads them from the
    environment set here). The wrapper's own check runs now, so that a missing image or runtime is refused
    before submission, in one line."""
    container = container or {}
    image = container.get("image")
    if not image:
        return f"bash {shlex.quote(str(TASK_SCRIPT))} {shlex.quote(sys.executable)}", []
    runtime = container.get("runtime") or ""
    if runtime and runtime not in CONTAINER_RUNTIMES:
        raise UserError(f"slurm.container.runtime={runtime!r} is not one of {'|'.join(CONTAINER_RUNTIMES)}")
    env = {
        "PANTHEON_CONTAINER": str(image),
        "PANTHEON_CONTAINER_RUNTIME": runtime,
        "PANTHEON_CONTAINER_BINDS": ":".join(str(p) for p in container.get("binds") or []),
    }
    try:
        probe = subprocess.run(
            ["bash", str(TASK_SCRIPT), "--srun-args"],
            cwd=workdir,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"could not run {TASK_SCRIPT} --srun-args: {err}") from err
    if probe.returncode != 0:
        message = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        raise UserError(message.removeprefix("error: "))
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    python = f"env {assignments} bash {shlex.quote(str(TASK_SCRIPT))} python"
    return python, probe.stdout.split()


class _CheckedLauncher(submitit_launcher.BaseSubmititLauncher):
    """The plugin's launcher, plus per-job checks before submission and container support."""

    def check_allocation(self, cfg: DictConfig, nodes: int, tasks_per_node: int) -> None:
        raise NotImplementedError

    def checked_job_configs(self, job_overrides: Sequence[Sequence[str]]) -> list[DictConfig]:
        """Compose every job of the sweep as it will run and check it; exit 2 with one line on failure."""
        from pantheon.utils.config_checks import check_config  # late: config_checks imports this package

        assert self.hydra_context is not None and self.config is not None
        configs = []
        try:
            for overrides in job_overrides:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                check_config(cfg, in_job=False)
                self.check_allocation(cfg, int(self.params["nodes"]), int(self.params["tasks_per_node"]))
                configs.append(cfg)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT_CODE)
        return configs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        configs = self.checked_job_configs(job_overrides)
        for idx, (overrides, cfg) in enumerate(zip(job_overrides, configs, strict=True)):
            log.info(
                f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}  [{batch_size_summary(cfg)}]"
            )

        params = dict(self.params)
        init: dict[str, Any] = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        setup = OmegaConf.select(self.config, "slurm.setup", default=None)
        if setup:
            params["setup"] = [*setup, *(params.get("setup") or [])]
        if self._EXECUTOR == "slurm":  # the local executor's tasks are plain processes here
            container = OmegaConf.select(self.config, "slurm.container", default=None)
            try:
                python, srun_args = container_command(container, os.getcwd())
            except UserError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                sys.exit(USER_ERROR_EXIT_CODE)
            init["slurm_python"] = python
            if srun_args:
                params["srun_args"] = [*(params.get("srun_args") or []), *srun_args]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base_keys = set(OmegaConf.structured(submitit_launcher.BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base_keys else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        )

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"submitit '{self._EXECUTOR}' sweep output dir: {sweep_dir}")
        job_params = [
            (
                list(overrides),
                "hydra.sweep.dir",
                initial_job_idx + idx,
                f"job_id_for_{initial_job_idx + idx}",
                Singleton.get_state(),
            )
            for idx, overrides in enumerate(job_overrides)
        ]
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        log.info(f"submitted {len(jobs)} job(s): {' '.join(job.job_id for job in jobs)}")
        return [job.results()[0] for job in jobs]


class SlurmLauncher(_CheckedLauncher):
    """`hydra/launcher=submitit_slurm`: one SLURM job (array task) per sweep point, srun starting one task per
    device; nodes and tasks per node must equal trainer.num_nodes and trainer.devices."""

    _EXECUTOR = "slurm"

    def check_allocation(self, cfg: DictConfig, nodes: int, tasks_per_node: int) -> None:
        check_slurm_allocation(cfg, nodes, tasks_per_node)


class LocalLauncher(_CheckedLauncher):
    """`hydra/launcher=submitit_local`: each sweep point as one single-device process on this machine (no
    SLURM), e.g. to run a sweep's points side by side as SLURM would."""

    _EXECUTOR = "local"

    def check_allocation(self, cfg: DictConfig, nodes: int, tasks_per_node: int) -> None:
        check_local_allocation(cfg, nodes, tasks_per_node)
