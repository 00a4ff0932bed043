#!/usr/bin/env bash
# Bring up Azurite's Blob service for the Azure backend's tests, idempotently (see
# scripts/README.md).
#
#   bash scripts/azure-up.sh
#
# 1. Install: the Azurite pinned by scripts/azurite/package-lock.json, with `npm ci`, into
#    $ASYNCEXEC_AZURITE_DIR (default /opt/asyncexec-azurite), outside the checkout, when it
#    is missing or its stamp (a hash of the lock, package.json and `node --version`) differs.
#    Node.js and npm come from Debian's packages when missing (root only).
# 2. Start: `azurite-blob` on 127.0.0.1:$ASYNCEXEC_AZURITE_PORT (10000), data in
#    $ASYNCEXEC_AZURITE_DATA (/var/tmp/asyncexec-azurite), telemetry off, detached (setsid +
#    nohup, no init system), log in /tmp/azurite.log, unless the locked version already
#    answers there; one we started is stopped before a reinstall, and restarted if another
#    version answers. Then wait until it answers (the first reply can take 6-11 s).
# Nothing to do and not allowed to (no npm and not root, a directory we cannot write): say
# why and exit 0, or 1 when CI=true. One azure-up.sh runs at a time (flock).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOURCE=$REPO/scripts/azurite
DIR=${ASYNCEXEC_AZURITE_DIR:-/opt/asyncexec-azurite}
DATA=${ASYNCEXEC_AZURITE_DATA:-/var/tmp/asyncexec-azurite}
PORT=${ASYNCEXEC_AZURITE_PORT:-10000}
LOG=${AZURITE_LOG:-/tmp/azurite.log}
PIDFILE=$DATA/azurite.pid
HOST=127.0.0.1
STARTED=$EPOCHREALTIME

say() { echo "azure-up: $*"; }
die() { echo "azure-up: $*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
skip() {
    echo "azure-up: skipped: $*" >&2
    [ "${CI:-}" = true ] && exit 1
    exit 0
}

# The Server header of whatever answers HTTP on $HOST:$PORT (e.g. "Azurite-Blob/3.37.0"),
# "?" for a server that sends none; status 1 when nothing answers within 2 s. Node is what
# Azurite needs anyway: no curl on a fresh machine.
server() {
    node -e '
        const request = require("http").get(
            {host: process.argv[1], port: Number(process.argv[2]), path: "/", timeout: 2000},
            (response) => { console.log(response.headers["server"] || "?"); process.exit(0); });
        request.on("timeout", () => request.destroy(new Error("timeout")));
        request.on("error", () => process.exit(1));
    ' "$HOST" "$PORT" 2>/dev/null
}

# The pid in $PIDFILE if that process is alive and is an azurite-blob.
our_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q azurite-blob \
        && echo "$pid"
    return 0
}

# 1. install -------------------------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "Node.js and npm are missing and installing them needs root"
    t=$EPOCHREALTIME
    export DEBIAN_FRONTEND=noninteractive
    apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    if ! "${apt[@]}" install -y --no-install-recommends nodejs npm; then
        "${apt[@]}" update
        "${apt[@]}" install -y --no-install-recommends nodejs npm
    fi
    say "nodejs and npm installed ($(since "$t"))"
fi
locked=$(node -p 'require(process.argv[1]).packages["node_modules/azurite"].version' \
    "$SOURCE/package-lock.json")
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || say "warning: Node.js $(node --version) is older than the 20 Azurite" \
    "$locked is known to run on here (it asks for 22; 20 works, with an engine warning)"

mkdir -p "$DIR" "$DATA" 2>/dev/null || skip "cannot create $DIR and $DATA (not root?)"
[ -w "$DIR" ] && [ -w "$DATA" ] || skip "cannot write to $DIR and $DATA (not root?)"
exec 9>"$DIR/.lock"
flock 9

stamp=$(cat "$SOURCE/package.json" "$SOURCE/package-lock.json" <(node --version) | sha256sum | cut -d' ' -f1)
installed=no
if [ "$(cat "$DIR/.stamp" 2>/dev/null || true)" != "$stamp" ] \
    || [ ! -x "$DIR/node_modules/.bin/azurite-blob" ]; then
    # npm ci replaces node_modules: stop the Azurite that runs from it first.
    [ -z "$(our_pid)" ] || bash "$REPO/scripts/azure-down.sh"
    t=$EPOCHREALTIME
    cp "$SOURCE/package.json" "$SOURCE/package-lock.json" "$DIR/"
    rm -f "$DIR/.stamp"
    # npm ci removes node_modules first: exactly the lock, nothing left from an older one.
    (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error >"$DIR/npm.log" 2>&1) \
        || { tail -n 30 "$DIR/npm.log" >&2; die "npm ci failed in $DIR (log: $DIR/npm.log)"; }
    echo "$stamp" >"$DIR/.stamp"
    installed=yes
    say "azurite $locked installed in $DIR ($(since "$t"))"
else
    say "azurite $locked already installed in $DIR"
fi

# 2. start ---------------------------------------------------------------------------------
want="Azurite-Blob/$locked"
pid=$(our_pid)
if answer=$(server); then
    if [ "$answer" = "$want" ]; then
        say "$want already answers on $HOST:$PORT (pid ${pid:-not ours}); done in $(since "$STARTED")"
        exit 0
    fi
    [ -n "$pid" ] || die "$HOST:$PORT is taken by something we did not start ('$answer'," \
        "want $want): stop it, or set ASYNCEXEC_AZURITE_PORT (the tests read it too)"
    say "restarting azurite-blob $pid ('$answer' answers, installed $want)"
    bash "$REPO/scripts/azure-down.sh"
    pid=
fi
t=$EPOCHREALTIME
if [ -n "$pid" ]; then
    say "azurite-blob $pid is running but not answering yet: waiting for it"
else
    # setsid + nohup: it outlives this script and the session that ran it; 9>&-: it must
    # not hold the lock.
    setsid nohup "$DIR/node_modules/.bin/azurite-blob" --blobHost "$HOST" --blobPort "$PORT" \
        --location "$DATA" --disableTelemetry >"$LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    say "started azurite-blob (pid $pid, data in $DATA, log in $LOG)"
fi
for _ in $(seq 120); do
    answer=$(server) && break
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "azurite-blob $pid exited; end of $LOG above"; }
    sleep 0.5
done
if [ -z "${answer:-}" ]; then
    tail -n 30 "$LOG" >&2 || true
    die "azurite-blob $pid did not answer on $HOST:$PORT within 60 s; end of $LOG above"
fi
[ "$answer" = "$want" ] || die "$HOST:$PORT answers '$answer', want $want"
say "$want answers on http://$HOST:$PORT/devstoreaccount1 ($(since "$t")); done in $(since "$STARTED")"
