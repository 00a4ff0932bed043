#!/usr/bin/env bash
# Stop the dockerd that scripts/docker-up.sh started by hand and wait until it is gone.
# Idempotent: with no dockerd running it says so and exits 0. A dockerd that systemd runs
# is left alone (use `systemctl stop docker`).
#
#   bash scripts/docker-down.sh
set -euo pipefail

PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid
STARTED=$EPOCHREALTIME

say() { echo "docker-down: $*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
alive() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }

# Wait up to $3 tenths of a second for process $1 (named $2) to exit.
wait_gone() {
    for _ in $(seq "$3"); do
        alive "$1" "$2" || return 0
        sleep 0.1
    done
    ! alive "$1" "$2"
}

pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [ -z "$pid" ] || ! alive "$pid" dockerd; then
    say "no dockerd running (no live pid in $PIDFILE)"
    exit 0
fi
if grep -q 'docker\.service' "/proc/$pid/cgroup" 2>/dev/null; then
    echo "docker-down: dockerd $pid is systemd's docker.service: use systemctl stop docker" >&2
    exit 1
fi
containerd=$(cat "$CONTAINERD_PIDFILE" 2>/dev/null || true)
running=$(timeout 10 docker ps --quiet 2>/dev/null | wc -l || true)
[ "${running:-0}" -eq 0 ] || say "dockerd stops the $running running container(s) first"

kill -TERM "$pid"
if ! wait_gone "$pid" dockerd 600; then
    echo "docker-down: dockerd $pid still runs after 60 s (kill -KILL $pid if it must go)" >&2
    exit 1
fi
# dockerd stops the containerd it started; wait for that too, so a restart finds it gone.
if [ -n "$containerd" ] && ! wait_gone "$containerd" containerd 100; then
    echo "docker-down: containerd $containerd still runs 10 s after dockerd exited" >&2
    exit 1
fi
say "dockerd $pid stopped ($(since "$STARTED"))"
