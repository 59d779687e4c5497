#!/usr/bin/env bash
# One SLURM task of a pantheon job: what srun starts on every node, for the sbatch templates (srun_train.sh) and
# the submitit launcher (its `python` command) alike. The one copy of: the rendezvous address, entering the
# container, and requeueing a job whose container cannot.
#
#   srun [--container-image=... (pyxis)] bash slurm/task.sh CMD [ARG...]   run CMD as this task (in the container)
#   bash slurm/task.sh --check                          is the container setting usable here? (one error line)
#   bash slurm/task.sh --srun-args                      srun arguments the runtime needs (pyxis), one per line
#
# Environment:
#   PANTHEON_CONTAINER          image; unset or empty: run CMD on the host
#   PANTHEON_CONTAINER_RUNTIME  charliecloud (ch-run, a SquashFS file or directory image) | apptainer |
#                               singularity (exec --nv, a .sif) | pyxis (srun --container-image, enroot)
#                               default: charliecloud for *.sqfs and directories, else apptainer
#   PANTHEON_CONTAINER_BINDS    more host paths to bind at the same path (colon-separated), e.g. a data dir;
#                               the working directory (the repository) is always bound
#
# Preemption inside a container: pantheon's checkpoint-then-`scontrol requeue` cannot requeue from in there (no
# scontrol, no munge socket). Its Python side then exits 128 + the warning signal (USR1 138, USR2 140) with the
# checkpoint saved. This script, outside the container, sees that exit code and requeues the job itself; the
# requeued job resumes from the checkpoint. (pyxis runs this script inside the container: bind scontrol and the
# munge socket there, see docs/containers.md.)
#
# Crashes: a task that died from a signal (exit 128 + N: 137 SIGKILL from the OOM killer or a lost node, 134
# SIGABRT, 139 SIGSEGV, ...) requeues the job while it has restarts left: SLURM_RESTART_COUNT (every requeue of the
# job so far, preemptions included) below PANTHEON_MAX_RESTARTS (default 3; 0 turns this off). The requeued job
# resumes from the newest checkpoint (last.ckpt: the periodic ModelCheckpoint's, or a preemption's). Never
# requeued: a Python exception (exit 1), a user error (2), and a stop asked for (130 SIGINT, 143 SIGTERM: scancel,
# the time limit, and srun --kill-on-bad-exit ending the other ranks). This shell survives SIGTERM until its task
# has exited, so the rank that crashed still requeues when another rank's failure makes srun end the step (SLURM
# sends SIGKILL KillWait seconds later); a second `scontrol requeue` of a job already requeued is refused by SLURM
# ("Job is pending execution") and only reported.
set -uo pipefail

IMAGE=${PANTHEON_CONTAINER:-}
RUNTIME=${PANTHEON_CONTAINER_RUNTIME:-}
if [[ -n $IMAGE && -z $RUNTIME ]]; then
  if [[ $IMAGE == *.sqfs || -d $IMAGE ]]; then RUNTIME=charliecloud; else RUNTIME=apptainer; fi
fi
REQUEUE_CODES=" 138 140 "   # 128 + SIGUSR1, 128 + SIGUSR2: saved, please requeue
STOP_CODES=" 130 143 "      # 128 + SIGINT, 128 + SIGTERM: stopped on purpose, never requeued
MAX_RESTARTS=${PANTHEON_MAX_RESTARTS:-3}

die() { echo "error: $*" >&2; exit 2; }

check() {
  [[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "PANTHEON_MAX_RESTARTS=$MAX_RESTARTS is not a number of restarts (e.g. 3; 0: none)"
  [[ -z $IMAGE ]] && return 0
  case "$RUNTIME" in
    charliecloud)
      command -v ch-run >/dev/null ||
        die "PANTHEON_CONTAINER_RUNTIME=charliecloud but ch-run is not installed: apt-get install charliecloud squashfuse"
      [[ -e $IMAGE ]] || die "container image $IMAGE does not exist: build it with \`make image-sqfs\`" ;;
    apptainer|singularity)
      command -v "$RUNTIME" >/dev/null ||
        die "PANTHEON_CONTAINER_RUNTIME=$RUNTIME but $RUNTIME is not installed (or not on PATH: module load $RUNTIME?)"
      [[ $IMAGE == *://* || -e $IMAGE ]] ||
        die "container image $IMAGE does not exist: \`apptainer build $IMAGE docker-daemon://pantheon:latest\`" ;;
    pyxis) ;;  # srun checks the image; the plugin is only visible to srun
    *) die "PANTHEON_CONTAINER_RUNTIME=$RUNTIME is not one of charliecloud|apptainer|singularity|pyxis" ;;
  esac
}

case "${1:-}" in
  --check) check; exit 0 ;;
  --srun-args)
    check
    if [[ -n $IMAGE && $RUNTIME == pyxis ]]; then
      printf '%s\n' "--container-image=$IMAGE" "--container-mounts=$PWD:$PWD" "--container-workdir=$PWD"
    fi
    exit 0 ;;
  "") die "usage: slurm/task.sh CMD [ARG...] | --check | --srun-args" ;;
esac

# Rank 0 runs on the step's first node; every rank must reach it there. Lightning takes MASTER_ADDR from the
# environment (MASTER_PORT it derives from the job id). Names DNS does not know (the local dev cluster's n1,
# n2) are reached at SLURM's NodeAddr for them. Computed here, outside any container: scontrol is here.
if [[ -z ${MASTER_ADDR:-} ]] && command -v scontrol >/dev/null; then
  nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
  if [[ -n $nodes ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$nodes" | head -n 1)
    if ! getent hosts "$MASTER_ADDR" >/dev/null; then
      MASTER_ADDR=$(scontrol show node "$MASTER_ADDR" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
    fi
    export MASTER_ADDR
    [[ ${SLURM_PROCID:-0} == 0 ]] && echo "pantheon: rank 0 on ${SLURMD_NODENAME:-$(hostname)}, MASTER_ADDR=$MASTER_ADDR"
  fi
fi

check
command=()   # on the host, or already inside pyxis' container: nothing to wrap
if [[ -n $IMAGE && $RUNTIME != pyxis ]]; then
  binds=("$PWD")
  IFS=: read -r -a extra <<<"${PANTHEON_CONTAINER_BINDS:-}"
  for path in "${extra[@]}"; do [[ -n $path ]] && binds+=("$path"); done
  case "$RUNTIME" in
    charliecloud)
      # Bind targets must exist in the read-only SquashFS: docker/image-sqfs.sh makes them (the repository's
      # path, PANTHEON_CONTAINER_BINDS); /tmp is the host's. --set-env: the image's /ch/environment (PATH to its
      # venv): the host's PATH, and a host virtualenv on it, must not leak in.
      export USER=${USER:-$(id -un)}   # ch-run refuses to start without it (batch environments may lack it)
      command=(ch-run --set-env --unset-env=VIRTUAL_ENV --unset-env=PYTHONHOME -c "$PWD")
      for path in "${binds[@]}"; do command+=(-b "$path"); done
      command+=("$IMAGE" --) ;;
    apptainer|singularity)
      command=("$RUNTIME" exec --nv --pwd "$PWD")
      for path in "${binds[@]}"; do command+=(--bind "$path"); done
      command+=("$IMAGE") ;;
  esac
fi

# The warning signal reaches every process of the step. This shell only has to survive it: a trap, which the
# task does not inherit. ch-run with a SquashFS image stays the parent of the task, serving its FUSE mount, and
# USR1's default action would kill it and the task's filesystem with it: there the signals are ignored instead,
# which the task inherits until Python installs pantheon's handler at the top of train() (a warning that comes
# before that is lost; the job then ends at its time limit as it would without the warning). SIGTERM: see Crashes.
if [[ $RUNTIME == charliecloud ]]; then trap '' USR1 USR2; else trap ':' USR1 USR2; fi
trap ':' TERM
"${command[@]}" "$@"
rc=$?
[[ -z ${SLURM_JOB_ID:-} ]] && exit "$rc"
job=${SLURM_JOB_ID}
[[ -n ${SLURM_ARRAY_JOB_ID:-} && -n ${SLURM_ARRAY_TASK_ID:-} ]] && job=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
task="task ${SLURM_PROCID:-0} on ${SLURMD_NODENAME:-$(hostname)}"
signal=""
((rc > 128)) && signal=$(kill -l $((rc - 128)) 2>/dev/null)

requeue() {  # $1: why. Immune to the step's SIGTERM while it talks to slurmctld.
  local out
  if out=$( (trap '' TERM; exec scontrol requeue "$job") 2>&1); then
    echo "pantheon: $1: requeued SLURM job $job${command[*]:+ from outside the container}"
    exit 0
  fi
  echo "pantheon: $1: scontrol requeue $job failed: ${out//$'\n'/ } (requeued already by another task, or resubmit the job to resume from its checkpoint)" >&2
}

if [[ $REQUEUE_CODES == *" $rc "* ]]; then
  requeue "$task saved its checkpoint and exited $rc"
elif [[ -n $signal && $STOP_CODES != *" $rc "* ]]; then
  restarts=${SLURM_RESTART_COUNT:-0}
  if ((restarts < MAX_RESTARTS)); then
    requeue "$task died from SIG$signal (exit $rc), restart $((restarts + 1)) of PANTHEON_MAX_RESTARTS=$MAX_RESTARTS"
  else
    echo "pantheon: $task died from SIG$signal (exit $rc); not requeued: job $job has had its $restarts restarts (PANTHEON_MAX_RESTARTS=$MAX_RESTARTS)" >&2
  fi
fi
exit "$rc"
