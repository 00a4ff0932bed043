#!/usr/bin/env bash
# The venv benchmarks/slurm.py runs submitit from (the peer it is compared with),
# idempotently: /opt/asyncexec-cluster/bench-venv, made by the cluster's own
# /usr/bin/python3 (what the nodes run), holding submitit at the version of
# locks/bench.txt and its dependencies at theirs, readable by the cluster user.
#
#   bash scripts/submitit-up.sh
#
# Run by `nox -s bench` and the Slurm benchmark's smoke test, after slurm-up.sh.
# A stamp holds the lock's lines it was made from: when they match, nothing is done.
# Not root (a laptop): say why and exit 0, or 1 when CI=true.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK=$REPO/locks/bench.txt
VENV=${ASYNCEXEC_SUBMITIT_VENV:-/opt/asyncexec-cluster/bench-venv}
PYTHON=/usr/bin/python3

say() { echo "submitit-up: $*"; }
if [ "$(id -u)" != 0 ]; then
    say "not root: cannot make $VENV; the submitit rows of benchmarks/slurm.py are not run"
    [ "${CI:-}" = true ] && exit 1
    exit 0
fi

# The pinned lines of the lock (name==version), which pip takes as constraints.
pins=$(grep -E '^[A-Za-z0-9_.-]+==' "$LOCK")
want=$(printf '%s\n' "$pins" "$PYTHON $("$PYTHON" -c 'import sys; print(sys.version)')" | sha256sum)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.asyncexec-stamp" 2>/dev/null)" = "$want" ]; then
    say "$VENV current"
    exit 0
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "$pins" >"$constraints"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$constraints" submitit
"$VENV/bin/python" -c 'import submitit; print("submitit-up: submitit", submitit.__version__)'
echo "$want" >"$VENV/.asyncexec-stamp"
chmod -R a+rX "$VENV"
say "$VENV made"
