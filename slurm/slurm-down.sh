#!/usr/bin/env bash
# Stop the dev cluster started by slurm/slurm-up.sh: exactly the daemons named by its pid files
# (slurmd n1/n2, slurmctld, slurmdbd, mariadbd, munged), each waited for (bounded), then SIGKILLed.
# Job steps (slurmstepd) still running are not touched: scancel your jobs first if that matters.
# State, database, config and logs stay in the run dir, so the next slurm-up.sh is a fast warm start.
#
#   slurm/slurm-down.sh           stop the daemons
#   slurm/slurm-down.sh --purge   stop them, then delete the run dir (state, database, logs) and the
#                                 /etc/slurm/slurm.conf symlink if it points into the run dir
#
# Knobs: SLURM_DEV_DIR (run dir, default <repo>/.slurm), SLURM_DEV_STOP_WAIT_S (per daemon, default 30).
# Idempotent: exits 0 when nothing is running.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${SLURM_DEV_DIR:-$REPO/.slurm}"
PID_DIR="$RUN/pid"
STOP_WAIT_S=${SLURM_DEV_STOP_WAIT_S:-30}
PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { echo "slurm-down: $*"; }

# pid_of NAME PIDFILE: print the pid if the file names a live process whose command is NAME.
# (The comm check keeps a stale pid file from killing an unrelated process that reused the pid.)
pid_of() {
  local pid
  [[ -s $2 ]] || return 1
  pid=$(<"$2")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(<"/proc/$pid/comm") == "$1" ]] || return 1
  echo "$pid"
}

STOPPED=()
# stop_group NAME:PIDFILE...: SIGTERM them all, wait up to STOP_WAIT_S for all to exit, then SIGKILL.
# (Each daemon takes ~2 s to exit; stopping independent ones together keeps slurm-down short.)
stop_group() {
  local entry name file pid deadline=$(( $(date +%s) + STOP_WAIT_S ))
  local -a pids=()
  for entry in "$@"; do
    name=${entry%%:*} file=${entry#*:}
    if pid=$(pid_of "$name" "$file"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      STOPPED+=("$(basename "$file" .pid)")
    fi
  done
  for pid in "${pids[@]}"; do
    while [[ -d /proc/$pid ]] && (( $(date +%s) < deadline )); do sleep 0.1; done
    if [[ -d /proc/$pid ]]; then
      log "WARNING: pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) still running after ${STOP_WAIT_S} s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  done
  for entry in "$@"; do rm -f "${entry#*:}"; done
}

if [[ -d $PID_DIR ]]; then
  # The slurmds and the controller first (it saves its state and flushes accounting to slurmdbd), then
  # slurmdbd, then MariaDB together with munged: all the slurm daemons authenticate through munged while
  # they shut down, so it goes last.
  stop_group "slurmd:$PID_DIR/slurmd-n1.pid" "slurmd:$PID_DIR/slurmd-n2.pid" "slurmctld:$PID_DIR/slurmctld.pid"
  stop_group "slurmdbd:$PID_DIR/slurmdbd.pid"
  stop_group "mariadbd:$PID_DIR/mariadbd.pid" "munged:$PID_DIR/munged.pid"
fi

if (( ${#STOPPED[@]} )); then
  log "stopped ${STOPPED[*]}"
else
  log "nothing was running (run dir $RUN)"
fi

if (( PURGE )) && [[ -d $RUN ]]; then
  RUN_ABS="$(cd "$RUN" && pwd)"
  if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$RUN_ABS/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
  fi
  rm -rf "$RUN_ABS"
  log "purged $RUN_ABS"
fi
