#!/usr/bin/env bash
# The body of the sbatch templates (multi_node.sbatch, single_node.sbatch): runs `python -m pantheon.train "$@"`
# as one srun task per device on every node of the allocation, each through slurm/task.sh (the one wrapper the
# submitit launcher uses too: rendezvous address, container, requeue from outside a container). Lightning reads
# each task's rank from SLURM.
#
# Environment (all optional):
#   PANTHEON_CONTAINER          image to run the tasks in (e.g. pantheon.sqfs from `make image-sqfs`); unset:
#                               the host's python
#   PANTHEON_CONTAINER_RUNTIME  charliecloud | apptainer | singularity | pyxis (see slurm/task.sh)
#   PANTHEON_CONTAINER_BINDS    more host paths bound at the same path in the container (colon-separated)
#   PANTHEON_PYTHON             python outside a container (default: .venv/bin/python when present, else python)
set -euo pipefail
cd "$SLURM_SUBMIT_DIR"   # the repository: configs/ and the default logs/ live here

bash slurm/task.sh --check   # a missing image or runtime: one line, before any task starts
mapfile -t CONTAINER_SRUN < <(bash slurm/task.sh --srun-args)

if [[ -n ${PANTHEON_CONTAINER:-} ]]; then
  PYTHON=python   # the image's
else
  PYTHON=python
  [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
  PYTHON=${PANTHEON_PYTHON:-$PYTHON}
fi

echo "pantheon: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}:" \
  "${SLURM_NTASKS} tasks (${SLURM_TASKS_PER_NODE} per node)${PANTHEON_CONTAINER:+, container $PANTHEON_CONTAINER}"
# --kill-on-bad-exit: one failed rank ends the step instead of leaving the others in a collective.
srun --kill-on-bad-exit=1 "${CONTAINER_SRUN[@]}" bash slurm/task.sh "$PYTHON" -m pantheon.train "$@"
