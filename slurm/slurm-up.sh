#!/usr/bin/env bash
# Bring up a real two-node SLURM dev cluster on this one machine (Debian 12 packages, slurm 22.05).
#
#   munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd -N n1, slurmd -N n2
#
# Everything (config, keys, state, spool, logs, pid files, the MariaDB datadir) lives in a private run dir,
# $SLURM_DEV_DIR (default: <repo>/.slurm). /etc/slurm/slurm.conf is made a symlink to the generated
# slurm.conf, so plain sbatch/srun/squeue/sacct work for every process on the machine.
#
# Idempotent: daemons already running (per their pid file) are left alone; a second run on an up cluster
# only resumes down/drained nodes and prints that it is up. Stop with slurm/slurm-down.sh.
#
# Knobs (environment):
#   SLURM_DEV_DIR         run dir (default <repo>/.slurm)
#   SLURM_DEV_CPUS        CPUs per node (default 1; 2 when the host has >= 4 cores)
#   SLURM_DEV_MEM_MB      RealMemory per node in MB (default 8000, capped at 90% of host memory)
#   SLURM_DEV_DEF_MEM_MB  DefMemPerCPU in MB (default 2000, capped at SLURM_DEV_MEM_MB / CPUs)
#   SLURM_DEV_ACCOUNTING  1 (default): slurmdbd + MariaDB so sacct works; 0: no accounting
#   SLURM_DEV_WAIT_S      how long to wait for both nodes to become idle (default 60)
#   SLURM_DEV_CTLD_PORT / SLURM_DEV_DBD_PORT   slurmctld / slurmdbd ports (default 6817 / 6819);
#                         the nodes use 17001 and 17002.
set -euo pipefail

T0=$(date +%s.%N)
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in /usr/sbin, not always on a CI job's PATH
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER=pantheon
NODES=(n1 n2)
NODE_PORTS=(17001 17002)

die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
log() { echo "slurm-up: $*"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "must run as root (daemons run as root and /etc/slurm/slurm.conf is written)"

# ---------------------------------------------------------------------------------------------- knobs
HOST_CORES=$(nproc)
HOST_MEM_MB=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
CPUS=${SLURM_DEV_CPUS:-$(( HOST_CORES >= 4 ? 2 : 1 ))}
MEM_MB=${SLURM_DEV_MEM_MB:-$(( HOST_MEM_MB * 9 / 10 < 8000 ? HOST_MEM_MB * 9 / 10 : 8000 ))}
DEF_MEM_MB=${SLURM_DEV_DEF_MEM_MB:-$(( MEM_MB / CPUS < 2000 ? MEM_MB / CPUS : 2000 ))}
ACCOUNTING=${SLURM_DEV_ACCOUNTING:-1}
WAIT_S=${SLURM_DEV_WAIT_S:-60}
CTLD_PORT=${SLURM_DEV_CTLD_PORT:-6817}
DBD_PORT=${SLURM_DEV_DBD_PORT:-6819}
for v in CPUS MEM_MB DEF_MEM_MB WAIT_S CTLD_PORT DBD_PORT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

RUN="${SLURM_DEV_DIR:-$REPO/.slurm}"
mkdir -p "$RUN"
RUN="$(cd "$RUN" && pwd)"     # daemons need an absolute path
HOST="$(hostname)"

MUNGE_DIR="$RUN/munge"        # must be 0755: munged refuses a socket dir that others cannot traverse
MUNGE_SOCK="$MUNGE_DIR/munge.socket.2"
MYSQL_DIR="$RUN/mysql"
MYSQL_SOCK="$MYSQL_DIR/mysqld.sock"
PID_DIR="$RUN/pid"
LOG_DIR="$RUN/log"
CONF="$RUN/slurm.conf"
DBD_CONF="$RUN/slurmdbd.conf" # slurmdbd looks for it next to $SLURM_CONF
(( ${#MUNGE_SOCK} < 100 )) || die "run dir path too long for a unix socket: $MUNGE_SOCK (set SLURM_DEV_DIR)"

# The daemons and every slurm client this script runs read our config, whatever the caller has set.
export SLURM_CONF="$CONF"

# ------------------------------------------------------------------------------------- install packages
PKGS=(slurm-wlm munge)
[[ $ACCOUNTING == 1 ]] && PKGS+=(slurmdbd mariadb-server)
bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/apt-ensure.sh" "${PKGS[@]}" || die "could not install ${PKGS[*]}"

# ------------------------------------------------------------------------------------------- helpers
# alive NAME PIDFILE: the pid file names a live process whose command is NAME (guards against pid reuse).
alive() {
  local pid
  [[ -s $2 ]] || return 1
  pid=$(<"$2")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(<"/proc/$pid/comm") == "$1" ]]
}

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds; nonzero when time runs out.
wait_for() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || return 1
    sleep 0.2
  done
}

fail_with_log() {  # fail_with_log LOGFILE MESSAGE
  echo "slurm-up: ERROR: $2" >&2
  if [[ -f $1 ]]; then echo "---- last lines of $1 ----" >&2; tail -n 25 "$1" >&2; fi
  exit 1
}

STARTED=()  # what this run started (for the summary)

# write_if_changed FILE CONTENT: returns 0 when the file was (re)written.
write_if_changed() {
  if [[ -f $1 ]] && [[ "$(<"$1")" == "$2" ]]; then return 1; fi
  printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"
}

# ---------------------------------------------------------------------------------------- directories
mkdir -p "$MUNGE_DIR" "$MYSQL_DIR" "$PID_DIR" "$LOG_DIR" "$RUN/state"
for n in "${NODES[@]}"; do mkdir -p "$RUN/spool/$n"; done
chmod 755 "$RUN" "$MUNGE_DIR" "$RUN/spool" "$RUN/spool/"*   # job scripts run from the spool dirs

# --------------------------------------------------------------------------------------------- munged
if [[ ! -s $MUNGE_DIR/munge.key ]]; then
  dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$MUNGE_DIR/munge.key"
if ! alive munged "$PID_DIR/munged.pid"; then
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
  munged --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCK" --pid-file="$PID_DIR/munged.pid" \
    --log-file="$LOG_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" --num-threads=2 \
    || fail_with_log "$LOG_DIR/munged.log" "munged did not start"
  wait_for 10 munge -S "$MUNGE_SOCK" -n || fail_with_log "$LOG_DIR/munged.log" "munged does not answer"
  STARTED+=(munged)
fi

# ------------------------------------------------------------------------------------------ slurm.conf
# AuthInfo socket= points every slurm component (daemons and clients) at our munged;
# cred_expire=10 lets a requeued job start again after ~10 s instead of 120 s.
gen_slurm_conf() {  # gen_slurm_conf ACCOUNTING(0|1)
  cat <<EOF
# Generated by slurm/slurm-up.sh -- edits are overwritten. Run dir: $RUN
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_MB
ReturnToService=2
JobRequeue=1
KillWait=5
MailProg=/bin/true
InactiveLimit=0
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=2
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool/%n
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
EOF
  if [[ $1 == 1 ]]; then
    cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
EOF
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeAddr=127.0.0.1 NodeHostname=$HOST Port=${NODE_PORTS[$i]} CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP"
}

CONF_CHANGED=0
write_conf() {
  if write_if_changed "$CONF" "$(gen_slurm_conf "$1")"; then CONF_CHANGED=1; fi
  chmod 644 "$CONF"
}

# Plain `sbatch` etc. read /etc/slurm/slurm.conf (unless SLURM_CONF is set): point it at ours.
link_etc_conf() {
  mkdir -p /etc/slurm
  if [[ -L /etc/slurm/slurm.conf ]]; then
    [[ $(readlink /etc/slurm/slurm.conf) == "$CONF" ]] && return 0
  elif [[ -e /etc/slurm/slurm.conf ]]; then
    mv -f /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-pantheon
    log "moved the existing /etc/slurm/slurm.conf to /etc/slurm/slurm.conf.before-pantheon"
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
}

# ------------------------------------------------------------------------------ accounting (optional)
ACCT_ERR=""
DBD_STARTED=0
acct_fail() { ACCT_ERR="$*"; return 1; }  # record why accounting could not be started

start_mariadb() {
  local datadir="$MYSQL_DIR/data"
  if [[ ! -d $datadir/mysql ]]; then
    rm -rf "$datadir"
    mariadb-install-db --no-defaults --datadir="$datadir" --user=root --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG_DIR/mariadb-install.log" 2>&1 \
      || acct_fail "mariadb-install-db failed, see $LOG_DIR/mariadb-install.log" || return 1
  fi
  rm -f "$MYSQL_SOCK"
  # mariadbd does not daemonize: detach it (setsid, no inherited stdio) so it outlives this script
  # and does not hold the caller's pipes open.
  setsid mariadbd --no-defaults --datadir="$datadir" --socket="$MYSQL_SOCK" --skip-networking --user=root \
    --pid-file="$PID_DIR/mariadbd.pid" --log-error="$LOG_DIR/mariadb.log" \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
    --performance-schema=OFF --skip-log-bin </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
  echo $! >"$PID_DIR/mariadbd.pid"
  wait_for 30 timeout 5 mariadb-admin --no-defaults --socket="$MYSQL_SOCK" ping \
    || acct_fail "mariadbd did not answer within 30 s, see $LOG_DIR/mariadb.log" || return 1
  STARTED+=(mariadbd)
}

start_slurmdbd() {
  # slurmdbd insists on a 0600 slurmdbd.conf owned by SlurmUser.
  write_if_changed "$DBD_CONF" "# Generated by slurm/slurm-up.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$PID_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db" || true
  chmod 600 "$DBD_CONF"
  # Slurm's MySQL plugin passes no socket path; libmariadb then takes it from MYSQL_UNIX_PORT.
  MYSQL_UNIX_PORT="$MYSQL_SOCK" slurmdbd >>"$LOG_DIR/slurmdbd.log" 2>&1 </dev/null \
    || acct_fail "slurmdbd did not start, see $LOG_DIR/slurmdbd.log" || return 1
  DBD_STARTED=1
}

dbd_answers() { timeout 5 sacctmgr -n -P show cluster format=cluster; }

start_accounting() {
  alive mariadbd "$PID_DIR/mariadbd.pid" || start_mariadb || return 1
  alive slurmdbd "$PID_DIR/slurmdbd.pid" || start_slurmdbd || return 1
  # The first start creates the tables (a few seconds). Give up at once if slurmdbd has died
  # (e.g. its port is taken); its pid file can lag its fork by a moment.
  local t0 deadline
  t0=$(date +%s) deadline=$(( $(date +%s) + 60 ))
  until dbd_answers >/dev/null 2>&1; do
    if (( $(date +%s) > t0 + 3 )) && ! alive slurmdbd "$PID_DIR/slurmdbd.pid"; then
      acct_fail "slurmdbd exited, see $LOG_DIR/slurmdbd.log: $(grep -E 'error|fatal' "$LOG_DIR/slurmdbd.log" | tail -n 1)"
      return 1
    fi
    (( $(date +%s) < deadline )) || { acct_fail "slurmdbd does not answer after 60 s, see $LOG_DIR/slurmdbd.log"; return 1; }
    sleep 0.3
  done
  if ! dbd_answers 2>/dev/null | grep -qx "$CLUSTER"; then
    timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || acct_fail "sacctmgr add cluster $CLUSTER failed" || return 1
  fi
  (( DBD_STARTED )) && STARTED+=(slurmdbd)
  return 0
}

ACCT_OK=0
write_conf "$ACCOUNTING"   # slurmdbd and sacctmgr read slurm.conf too
if [[ $ACCOUNTING == 1 ]]; then
  if start_accounting; then
    ACCT_OK=1
  else
    echo "slurm-up: WARNING: accounting disabled, sacct will not work: ${ACCT_ERR:-unknown error}" >&2
  fi
fi
write_conf "$ACCT_OK"
link_etc_conf

# ------------------------------------------------------------------------------- slurmctld and slurmds
if (( CONF_CHANGED )) && alive slurmctld "$PID_DIR/slurmctld.pid"; then
  echo "slurm-up: WARNING: slurm.conf changed while slurmctld runs; apply it with slurm/slurm-down.sh && slurm/slurm-up.sh" >&2
fi

if ! alive slurmctld "$PID_DIR/slurmctld.pid"; then
  slurmctld </dev/null >>"$LOG_DIR/slurmctld.log" 2>&1 \
    || fail_with_log "$LOG_DIR/slurmctld.log" "slurmctld did not start"
  STARTED+=(slurmctld)
fi
for n in "${NODES[@]}"; do
  if ! alive slurmd "$PID_DIR/slurmd-$n.pid"; then
    slurmd -N "$n" </dev/null >>"$LOG_DIR/slurmd-$n.log" 2>&1 \
      || fail_with_log "$LOG_DIR/slurmd-$n.log" "slurmd -N $n did not start"
    STARTED+=("slurmd-$n")
  fi
done

# Daemons fork into the background before their real start-up work: catch the ones that die soon after.
(( ${#STARTED[@]} )) && sleep 0.5
alive slurmctld "$PID_DIR/slurmctld.pid" || fail_with_log "$LOG_DIR/slurmctld.log" "slurmctld exited"
for n in "${NODES[@]}"; do
  alive slurmd "$PID_DIR/slurmd-$n.pid" || fail_with_log "$LOG_DIR/slurmd-$n.log" "slurmd -N $n exited"
done

# --------------------------------------------------------------------------- wait for idle nodes
# States: idle/mixed/allocated/completing are usable. "*" = not responding yet. down/drain (after an unclean
# stop, or a node the controller remembers as down) are resumed once they respond.
node_states() { timeout 5 sinfo -h -N -p debug -o '%N %T' 2>/dev/null | sort -u; }
DEADLINE=$(( $(date +%s) + WAIT_S ))
declare -A RESUMED=()
while :; do
  STATES="$(node_states || true)"
  READY=0
  for n in "${NODES[@]}"; do
    st=$(awk -v n="$n" '$1 == n { print $2 }' <<<"$STATES")
    case "$st" in
      idle|mixed|allocated|completing) READY=$((READY + 1)) ;;
      down|drained|draining|drain|fail|failing)
        if [[ -z ${RESUMED[$n]:-} ]]; then
          timeout 10 scontrol update nodename="$n" state=resume >/dev/null 2>&1 && log "resumed node $n (was $st)"
          RESUMED[$n]=1
        fi ;;
    esac
  done
  (( READY == ${#NODES[@]} )) && break
  if (( $(date +%s) >= DEADLINE )); then
    echo "slurm-up: ERROR: nodes not idle after ${WAIT_S} s; sinfo says: ${STATES//$'\n'/, }" >&2
    REASONS="$(timeout 5 sinfo -h -R -o '%N: %E' 2>/dev/null || true)"
    [[ -n $REASONS ]] && echo "slurm-up: node reasons: ${REASONS//$'\n'/; }" >&2
    for f in slurmctld slurmd-n1 slurmd-n2; do
      echo "---- last lines of $LOG_DIR/$f.log ----" >&2; tail -n 15 "$LOG_DIR/$f.log" >&2 || true
    done
    exit 1
  fi
  sleep 0.5
done

ACCT_WORD=$([[ $ACCT_OK == 1 ]] && echo "sacct on" || echo "accounting OFF")
if (( ${#STARTED[@]} == 0 )); then
  log "cluster '$CLUSTER' already up: ${STATES//$'\n'/, } ($ACCT_WORD, run dir $RUN)"
else
  log "cluster '$CLUSTER' up in $(elapsed) s: ${STATES//$'\n'/, }, $CPUS CPU/${MEM_MB} MB per node, $ACCT_WORD; started ${STARTED[*]}; run dir $RUN"
fi
