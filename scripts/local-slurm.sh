#!/usr/bin/env bash
# A one-node Slurm on this machine, for trying `engine.slurm` and for tests/test_slurm.py.
# Usage: bash scripts/local-slurm.sh start|stop|status
#   start   write slurm.conf and a munge key under $WINNOW_SLURM_DIR (default /tmp/winnow-slurm), start
#           munged, slurmctld and slurmd in the background (no systemd) and wait until the node is idle;
#           does nothing when they already run. Needs root and Debian's slurm-wlm and munge packages
#           (`bash scripts/setup.sh --dev` installs them where apt-get can).
#   stop    cancel the jobs still in this Slurm, then end exactly the daemons `start` started (pid files)
#   status  which daemons run, and the node's state
# Slurm's commands find this cluster through SLURM_CONF: `export SLURM_CONF=$WINNOW_SLURM_DIR/slurm.conf`
# (start prints it). Everything lives in the state dir, so the machine's own /etc/slurm and munged are
# left alone.
set -euo pipefail
STATE=${WINNOW_SLURM_DIR:-/tmp/winnow-slurm}
CONF=$STATE/slurm.conf
DAEMONS=(munged slurmctld slurmd)   # start order; stop goes in reverse
export SLURM_CONF=$CONF

die() { echo "local-slurm.sh: $*" >&2; exit 1; }

running() {  # pid file of daemon $1 names a live process
  local pid
  [ -f "$STATE/$1.pid" ] && pid=$(cat "$STATE/$1.pid") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc --all)
  # Slurm refuses a node that reports less memory than configured: leave 5% to the system
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
  chmod 700 "$STATE/munge"
  cat > "$CONF" <<EOF
# written by scripts/local-slurm.sh: one node, processes tracked without cgroups (containers have none)
ClusterName=winnow-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${WINNOW_SLURMCTLD_PORT:-6817}
SlurmdPort=${WINNOW_SLURMD_PORT:-6818}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # munge's key: made once, readable by root only (munged refuses anything looser)
  if [ ! -s "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$STATE/munge/munge.key"
}

launch() {  # daemon name, argv...: in the background, in the foreground mode of each, pid recorded
  local name=$1
  shift
  nohup "$@" > "$STATE/$name.out" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (slurmd runs jobs as their users)"
  for cmd in munged slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || die "$cmd not found: apt-get install slurm-wlm munge (or bash scripts/setup.sh --dev)"
  done
  local all=1
  for d in "${DAEMONS[@]}"; do running "$d" || all=0; done
  if [ "$all" = 1 ]; then
    echo "local-slurm.sh: already running (export SLURM_CONF=$CONF)"
    return 0
  fi
  stop_daemons quiet  # a partial start left by a crash: begin again from nothing
  write_conf
  launch munged munged --foreground --force --socket="$STATE/munge/munge.socket" \
    --key-file="$STATE/munge/munge.key" --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
  for _ in $(seq 50); do [ -S "$STATE/munge/munge.socket" ] && break; sleep 0.1; done
  [ -S "$STATE/munge/munge.socket" ] || die "munged did not start: $(tail -3 "$STATE/munged.out" "$STATE/munge/munged.log" 2>/dev/null)"
  # -i: ignore saved state, so a fresh start never waits for jobs of an earlier one
  launch slurmctld slurmctld -D -i -f "$CONF"
  launch slurmd slurmd -D -f "$CONF"
  local state=""
  for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    case "$state" in idle|mixed|allocated) break ;; esac
    for d in "${DAEMONS[@]}"; do
      running "$d" || die "$d exited: $(tail -5 "$STATE/$d.out" "$STATE/$d.log" 2>/dev/null)"
    done
    sleep 0.2
  done
  case "$state" in
    idle|mixed|allocated) ;;
    *) die "the node is '${state:-unknown}' after 30 s: see $STATE/slurmctld.log and $STATE/slurmd.log" ;;
  esac
  echo "local-slurm.sh: node $(hostname -s) $state; export SLURM_CONF=$CONF"
}

stop_daemons() {
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    local d=${DAEMONS[$i]} pid
    running "$d" || { rm -f "$STATE/$d.pid"; continue; }
    pid=$(cat "$STATE/$d.pid")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$STATE/$d.pid"
    [ "${1:-}" = quiet ] || echo "local-slurm.sh: stopped $d ($pid)"
  done
}

stop() {
  if running slurmctld; then
    # jobs first: their steps are slurmd's children, and a worker job left running would outlive stop
    scancel --full --quiet --state=RUNNING,PENDING 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  stop_daemons
}

status() {
  local rc=0
  for d in "${DAEMONS[@]}"; do
    if running "$d"; then echo "$d: running ($(cat "$STATE/$d.pid"))"; else echo "$d: stopped"; rc=3; fi
  done
  [ "$rc" = 0 ] && sinfo -N -o "%N %T cpus=%c memory=%mMB"
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: bash scripts/local-slurm.sh start|stop|status" >&2; exit 2 ;;
esac
