#!/usr/bin/env bash
# Stop the azurite-blob that scripts/azure-up.sh started (pid file in its data directory):
# SIGTERM, SIGKILL after 10 s. Idempotent: with none running it says so and exits 0. The
# data (blobs) stay in $ASYNCEXEC_AZURITE_DATA; the install stays in $ASYNCEXEC_AZURITE_DIR.
#
#   bash scripts/azure-down.sh
set -euo pipefail

DATA=${ASYNCEXEC_AZURITE_DATA:-/var/tmp/asyncexec-azurite}
PIDFILE=$DATA/azurite.pid
STARTED=$EPOCHREALTIME

say() { echo "azure-down: $*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q azurite-blob; }

# Wait up to $2 tenths of a second for process $1 to exit.
wait_gone() {
    for _ in $(seq "$2"); do
        ours "$1" || return 0
        sleep 0.1
    done
    ! ours "$1"
}

pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [ -z "$pid" ] || ! ours "$pid"; then
    say "no azurite-blob running (no live pid in $PIDFILE)"
    rm -f "$PIDFILE"
    exit 0
fi
kill -TERM "$pid"
if ! wait_gone "$pid" 100; then
    say "azurite-blob $pid still runs 10 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 50 || { echo "azure-down: azurite-blob $pid survives SIGKILL" >&2; exit 1; }
fi
rm -f "$PIDFILE"
say "azurite-blob $pid stopped ($(since "$STARTED"))"
