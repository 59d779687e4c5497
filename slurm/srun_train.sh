#!/usr/bin/env bash
# The body of the sbatch templates (multi_node.sbatch, single_node.sbatch): runs `python -m pantheon.train "$@"`
# as one srun task per device on every node of the allocation. Lightning reads each task's rank from SLURM.
#
# Environment (all optional):
#   PANTHEON_CONTAINER          image to run the tasks in; unset: the host's python
#   PANTHEON_CONTAINER_RUNTIME  apptainer | singularity (`exec --nv IMAGE python`) | pyxis (`srun --container-image`)
#                               default: apptainer, or singularity when only that is installed
#   PANTHEON_PYTHON             python outside a container (default: .venv/bin/python when present, else python)
set -euo pipefail
cd "$SLURM_SUBMIT_DIR"   # the repository: configs/ and the default logs/ live here

# Rank 0 runs on the first node; every rank must reach it there. Names DNS does not know (the local dev
# cluster's n1, n2) are reached at SLURM's NodeAddr for them.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
if ! getent hosts "$MASTER_ADDR" >/dev/null; then
  MASTER_ADDR=$(scontrol show node "$MASTER_ADDR" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
fi
export MASTER_ADDR   # MASTER_PORT: Lightning derives it from the job id

SRUN=(srun --kill-on-bad-exit=1)   # one failed rank ends the step instead of leaving the others in a collective
if [[ -n ${PANTHEON_CONTAINER:-} ]]; then
  RUNTIME=${PANTHEON_CONTAINER_RUNTIME:-apptainer}
  if [[ -z ${PANTHEON_CONTAINER_RUNTIME:-} ]] && ! command -v apptainer >/dev/null && command -v singularity >/dev/null; then
    RUNTIME=singularity
  fi
  case "$RUNTIME" in
    apptainer|singularity)
      # --nv maps the host's NVIDIA driver in; the repository is bound at the same path.
      PYTHON=("$RUNTIME" exec --nv --bind "$PWD" --pwd "$PWD" "$PANTHEON_CONTAINER" python) ;;
    pyxis)
      SRUN+=(--container-image="$PANTHEON_CONTAINER" --container-mounts="$PWD:$PWD" --container-workdir="$PWD")
      PYTHON=(python) ;;
    *) echo "srun_train.sh: PANTHEON_CONTAINER_RUNTIME=$RUNTIME is not apptainer|singularity|pyxis" >&2; exit 2 ;;
  esac
else
  DEFAULT_PYTHON=python
  [[ -x .venv/bin/python ]] && DEFAULT_PYTHON=.venv/bin/python
  PYTHON=("${PANTHEON_PYTHON:-$DEFAULT_PYTHON}")
fi

echo "pantheon: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}:" \
  "${SLURM_NTASKS} tasks (${SLURM_TASKS_PER_NODE} per node), MASTER_ADDR=${MASTER_ADDR}"
"${SRUN[@]}" "${PYTHON[@]}" -m pantheon.train "$@"
