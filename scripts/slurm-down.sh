#!/usr/bin/env bash
# Stop what scripts/slurm-up.sh started, by pid file: SIGTERM, SIGKILL after 10 s.
# Idempotent: what is not running is skipped. Jobs still running are not waited for.
#
#   bash scripts/slurm-down.sh          sshd, slurmd, slurmctld, slurmdbd, mariadbd, munged
#   bash scripts/slurm-down.sh sshd     sshd only (the next slurm-up.sh starts it again)
set -euo pipefail

DIR=${ASYNCEXEC_CLUSTER_DIR:-/var/tmp/asyncexec-cluster}
STARTED=${EPOCHREALTIME//[!0-9]/}

say() { echo "slurm-down: $*"; }
die() { echo "slurm-down: $*" >&2; exit 1; }
since() {
    local us=$((${EPOCHREALTIME//[!0-9]/} - $1))
    printf '%d.%02d s' $((us / 1000000)) $((us / 10000 % 100))
}
# Is process $1 running and named $2? A zombie counts as dead (PID 1 here reaps orphans
# only every ~2 s).
running() {
    local stat comm
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ] || return 1
    { read -r comm <"/proc/$1/comm" && [ "$comm" = "$2" ]; } 2>/dev/null
}
# stop NAME PIDFILE
stop() {
    local name=$1 pid t
    pid=$(cat "$2" 2>/dev/null || true)
    if [ -z "$pid" ] || ! running "$pid" "$name"; then
        say "$name not running (no live pid in $2)"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "$name ($pid) runs: stopping it needs root"
    t=${EPOCHREALTIME//[!0-9]/}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        running "$pid" "$name" || { say "$name ($pid) stopped ($(since "$t"))"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        running "$pid" "$name" || { say "$name ($pid) killed after 10 s"; return 0; }
        sleep 0.1
    done
    die "$name ($pid) survives SIGKILL"
}

if [ "$(id -u)" = 0 ] && [ -d "$DIR" ]; then
    exec 9>"$DIR/.lock"   # not while scripts/slurm-up.sh runs
    flock 9
fi
case ${1:-all} in
sshd)
    stop sshd "$DIR/sshd.pid"
    ;;
all)
    stop sshd "$DIR/sshd.pid"
    stop slurmd /run/slurmd.pid
    stop slurmctld /run/slurmctld.pid
    stop slurmdbd /run/slurmdbd.pid
    stop mariadbd /run/mysqld/mysqld.pid
    stop munged /run/munge/munged.pid
    ;;
*)
    die "usage: slurm-down.sh [sshd]"
    ;;
esac
say "done ($(since "$STARTED"))"
