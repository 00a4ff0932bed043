#!/usr/bin/env bash
# Bring up a Docker engine and the asyncexec test images, idempotently (see scripts/README.md).
#
#   bash scripts/docker-up.sh [PYTHON ...]        (default: python3)
#
# 1. Engine: install Debian's docker.io if dockerd is missing, start dockerd by hand if the
#    engine does not answer (no init system here); never a second one. Not root and no engine
#    (a laptop): say why and exit 0, or 1 when CI=true.
# 2. For each PYTHON: build or refresh asyncexec-test:pyX.Y with scripts/docker_image.py
#    (no registry needed; a no-op when up to date).
# 3. Smoke test each image: the worker's version line in a container must equal the one
#    `PYTHONPATH=<repo> PYTHON -m asyncexec.worker version` prints, a non-root user on a
#    read-only root must be able to import asyncexec and its dependencies, and the engine
#    must run a container under its init (`--init`: docker-init, which Debian's docker.io
#    takes from the tini package it depends on), as asyncexec runs every worker.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
PIDFILE=/var/run/docker.pid
STARTED=$EPOCHREALTIME

say() { echo "docker-up: $*"; }
die() { echo "docker-up: $*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
engine_up() { timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The pid of a running dockerd: the pid file's if alive, else any process named dockerd.
dockerd_pid() {
    local pid comm
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
        echo "$pid"
        return
    fi
    for comm in /proc/[0-9]*/comm; do
        if [ "$(cat "$comm" 2>/dev/null)" = dockerd ]; then
            pid=${comm#/proc/}
            echo "${pid%/comm}"
            return
        fi
    done
}

# 1. engine --------------------------------------------------------------------------------
if ! command -v docker >/dev/null || ! engine_up; then
    if [ "$(id -u)" != 0 ]; then
        reason="no Docker engine answers and starting one needs root"
        command -v docker >/dev/null || reason="docker is not installed and installing it needs root"
        echo "docker-up: skipped: $reason" >&2
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        t=$EPOCHREALTIME
        export DEBIAN_FRONTEND=noninteractive
        apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
        if ! "${apt[@]}" install -y --no-install-recommends docker.io; then
            "${apt[@]}" update
            "${apt[@]}" install -y --no-install-recommends docker.io
        fi
        say "docker.io installed ($(since "$t"))"
    fi
fi
if ! engine_up; then
    t=$EPOCHREALTIME
    pid=$(dockerd_pid)
    if [ -n "$pid" ]; then
        say "dockerd $pid is running but not answering yet: waiting for it"
    else
        # No init system: dockerd starts its own containerd. setsid + nohup: it outlives us.
        setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 300); do
        engine_up && break
        sleep 0.1
    done
    if ! engine_up; then
        echo "docker-up: the Docker engine did not answer within 30 s; end of $LOG:" >&2
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
    say "engine started ($(since "$t"))"
fi
pid=$(dockerd_pid)
say "engine $(docker version --format '{{.Server.Version}}') up" \
    "(dockerd pid ${pid:-not local}, storage $(docker info --format '{{.Driver}}'))"

# 2. images --------------------------------------------------------------------------------
[ $# -gt 0 ] || set -- python3
pythons=("$@")
tags=()
for python in "${pythons[@]}"; do
    t=$EPOCHREALTIME
    tag=$("$python" "$REPO/scripts/docker_image.py" --print-tag)
    "$python" "$REPO/scripts/docker_image.py"
    tags+=("$tag")
    say "$tag for $python ready ($(since "$t"))"
done

# 3. smoke tests ---------------------------------------------------------------------------
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
for index in "${!tags[@]}"; do
    python=${pythons[index]}
    tag=${tags[index]}
    t=$EPOCHREALTIME
    got=$(docker run --rm --network none "$tag" python3 -m asyncexec.worker version)
    if want=$(PYTHONPATH="$REPO" "$python" -m asyncexec.worker version 2>"$errors"); then
        [ "$got" = "$want" ] || die "$tag: the container says '$got', the host '$want'"
    else
        # A bare interpreter without asyncexec's dependencies: no driver can run on it, so
        # there is no cloudpickle to match; check the Python and asyncexec versions only.
        say "warning: $python cannot run the worker on the host" \
            "($(tail -n 1 "$errors")): checking Python and asyncexec versions only"
        short=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        version=$("$python" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["__version__"])' \
            "$REPO/asyncexec/_version.py")
        [[ "$got" =~ ^python\ "$short"\ cloudpickle\ [^\ ]+\ asyncexec\ "$version"$ ]] \
            || die "$tag: the container says '$got', expected python $short, asyncexec $version"
    fi
    docker run --rm --network none --user 65534:65534 --read-only "$tag" \
        python3 -c 'import asyncexec, cloudpickle, msgspec' \
        || die "$tag: user 65534 on a read-only root cannot import asyncexec"
    init_pid=$(docker run --rm --init --network none "$tag" python3 -c 'import os; print(os.getpid())') \
        || die "$tag: the engine cannot run a container under its init (--init, docker-init;" \
            "on Debian: apt-get install tini); asyncexec's workers need it"
    [ "$init_pid" != 1 ] || die "$tag: under --init the worker is still PID 1"
    say "$tag OK: $got ($(since "$t"))"
done
say "done in $(since "$STARTED")"
