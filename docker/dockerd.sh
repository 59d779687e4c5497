#!/usr/bin/env bash
# Start or stop the Docker daemon that pantheon's image builds use (the one copy of this: the Makefile's docker
# targets and .ci/run call it).
#
#   docker/dockerd.sh up        start dockerd unless one already answers (idempotent; installs docker.io when
#                               missing and we are root)
#   docker/dockerd.sh down      stop the daemon this script started (pid file); a daemon it did not start is
#                               left alone
#   docker/dockerd.sh running   exit 0 when a daemon answers, 1 when none does (prints nothing)
#
# Why these flags: the machines here have no bridge networking or iptables, and the default ulimits in a
# container are too low for PyTorch's DataLoader; builds and runs use --network host.
#
# Knobs (environment):
#   PANTHEON_DOCKER_ROOT   data root, outside the clone so the layer cache survives fresh clones
#                          (default /var/cache/pantheon/docker)
#   PANTHEON_DOCKERD_WAIT_S  how long to wait for the daemon to answer (default 60)
set -euo pipefail

ROOT=${PANTHEON_DOCKER_ROOT:-/var/cache/pantheon/docker}
STATE=${ROOT%/}.run                  # pid file and log, beside the data root
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
WAIT_S=${PANTHEON_DOCKERD_WAIT_S:-60}
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "error: $*" >&2; exit 1; }

# The Debian client (/usr/bin/docker) talks to Debian's daemon; another client on PATH may be newer or older.
DOCKER=docker; [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
docker_cli() { "$DOCKER" "$@"; }

answers() { timeout 10 "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ours() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

up() {
  if answers; then
    echo "dockerd: a daemon already answers ($(docker_cli version --format '{{.Server.Version}}' 2>/dev/null))"
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    die "no Docker daemon answers and starting one needs root: run \`sudo docker/dockerd.sh up\`, or start your own (systemctl start docker) and add yourself to the docker group"
  fi
  command -v dockerd >/dev/null || bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/apt-ensure.sh" docker.io ||
    die "dockerd is not installed and could not be installed (apt-get install docker.io)"
  mkdir -p "$ROOT" "$STATE"
  # setsid: the daemon must outlive the shell that started it (make, a CI phase).
  setsid dockerd --data-root "$ROOT" --pidfile "$PIDFILE" --exec-root "$STATE/exec" \
    --bridge=none --iptables=false \
    --default-ulimit nofile=20000:20000 --default-ulimit nproc=32768:32768 \
    >"$LOG" 2>&1 </dev/null &
  local waited=0
  until answers; do
    if ! kill -0 $! 2>/dev/null; then
      die "dockerd exited at start; the end of $LOG: $(tail -n 3 "$LOG" | tr '\n' ' ')"
    fi
    (( waited++ < WAIT_S )) || die "dockerd did not answer within ${WAIT_S} s (see $LOG)"
    sleep 1
  done
  echo "dockerd: started (pid $(cat "$PIDFILE"), data root $ROOT, log $LOG)"
}

down() {
  if ! ours; then
    echo "dockerd: no daemon started by this script is running; nothing to stop"
    return 0
  fi
  local pid waited=0
  pid=$(cat "$PIDFILE")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    (( waited++ < 30 )) || { kill -9 "$pid"; break; }
    sleep 1
  done
  rm -f "$PIDFILE"
  echo "dockerd: stopped (pid $pid)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  running) answers ;;
  *) die "usage: docker/dockerd.sh up|down|running" ;;
esac
