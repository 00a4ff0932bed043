#!/usr/bin/env bash
# Bring up a single-node Slurm cluster with accounting and an sshd "login node" on
# 127.0.0.1, idempotently, on a Debian 12 machine with no init system (see scripts/README.md).
#
#   bash scripts/slurm-up.sh [PYTHON ...]        (default: python3)
#
# 1. Packages: install what is missing (openssh-server, munge, slurmctld, slurmd,
#    slurm-client, slurmdbd, mariadb-server, python3-venv, patchelf).
# 2. Daemons, in order: munged, mariadbd, slurmdbd, slurmctld, slurmd (one node, CPUs=32),
#    each started by hand only if its pid file names no live process; Slurm daemons are
#    restarted when their generated config changed. Then the cluster user slurmuser and
#    an sshd with its own config, keys and known_hosts on 127.0.0.1:$ASYNCEXEC_SSH_PORT.
# 3. For each PYTHON: a world-readable venv /opt/asyncexec-cluster/venv-X.Y holding
#    asyncexec from this checkout, cloudpickle pinned to PYTHON's, that slurmuser's jobs run;
#    and a bare interpreter of X.Y without asyncexec (what the venv is made from, checked).
# 4. $ASYNCEXEC_CLUSTER_DIR/cluster.json for the tests; if anything was started or changed,
#    a job submitted over ssh must complete and show up in sacct.
# Not root and something is missing (a laptop): say why and exit 0, or 1 when CI=true.
set -euo pipefail
umask 022
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/scripts/slurm-up.sh
DIR=${ASYNCEXEC_CLUSTER_DIR:-/var/tmp/asyncexec-cluster}
SSH_PORT=${ASYNCEXEC_SSH_PORT:-2222}
OPT=/opt/asyncexec-cluster
CLUSTER_USER=slurmuser
CLUSTER=localcluster
PARTITION=debug
# A second partition on the same node, with a one-minute MaxTime: what a job asking for
# more time than its partition allows does (PartitionTimeLimit). Jobs go to $PARTITION.
SHORT_PARTITION=short
NODE_CPUS=32
JOB_PATH=/usr/local/bin:/usr/bin:/bin
PACKAGES=(openssh-server munge slurmctld slurmd slurm-client slurmdbd mariadb-server
    python3-venv patchelf)
# Pid files: the daemons' own (Debian's defaults) and our sshd's.
MUNGED_PID=/run/munge/munged.pid
MARIADBD_PID=/run/mysqld/mysqld.pid
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
SSHD_PID=$DIR/sshd.pid
LOGS=$DIR/log
NODE=$(hostname -s)
T0=${EPOCHREALTIME//[!0-9]/}
CHANGED=0   # something was started, restarted or rebuilt: run the job smoke test

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: $*" >&2; exit 1; }
# A timed line per step: time since the start of the script.
step() {
    local us=$((${EPOCHREALTIME//[!0-9]/} - T0))
    printf 'slurm-up: +%d.%02d s  %s\n' $((us / 1000000)) $((us / 10000 % 100)) "$*"
}
# Is process $1 running (and named $2)? PID 1 here is no init and reaps orphans only every
# ~2 s: a zombie counts as dead.
running() {
    local stat comm
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ] || return 1
    [ -z "${2:-}" ] || { read -r comm <"/proc/$1/comm" && [ "$comm" = "$2" ]; } 2>/dev/null
}
# Does pid file $1 name a live process called $2?
alive() {
    local pid
    { read -r pid <"$1"; } 2>/dev/null && [ -n "$pid" ] && running "$pid" "$2"
}
pid_of() { cat "$1" 2>/dev/null || echo '?'; }
# stop PIDFILE NAME: SIGTERM, SIGKILL after 10 s.
stop() {
    alive "$1" "$2" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do running "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$pid" || return 0; sleep 0.1; done
    die "$2 ($pid) survives SIGKILL"
}
# wait_for SECONDS CMD...: poll every 0.1 s.
wait_for() {
    local n=$(($1 * 10))
    shift
    for _ in $(seq "$n"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# fail NAME LOG...: a daemon did not come up; show the end of its logs.
fail() {
    local name=$1 log
    shift
    for log in "$@"; do
        [ -s "$log" ] && { echo "--- end of $log" >&2; tail -n 20 "$log" >&2; }
    done
    die "$name did not come up"
}
# install_if_changed NEW DEST: move NEW over DEST if they differ; true if it did.
install_if_changed() {
    if cmp -s "$1" "$2"; then
        rm -f "$1"
        return 1
    fi
    mv "$1" "$2"
}
node_ready() {
    [[ "$(sinfo -h -p "$PARTITION" -n "$NODE" -o %T 2>/dev/null)" =~ ^(idle|mixed|allocated|completing)$ ]]
}

# What a PYTHON is: X.Y, X.Y.Z, base prefix, base executable, cloudpickle version (or "").
PYINFO='
import os, sys
try:
    import cloudpickle
    pinned = cloudpickle.__version__
except ImportError:
    pinned = ""
if pinned and int(pinned.split(".")[0]) < 3:
    pinned = ""  # not one asyncexec can use: the lock says which
executable = getattr(sys, "_base_executable", "") or sys.executable
print("%d.%d" % sys.version_info[:2], "%d.%d.%d" % sys.version_info[:3],
      os.path.realpath(sys.base_prefix), os.path.realpath(executable), pinned, sep="\n")
'
SYSTEM_SHORT=$(readlink -f /usr/bin/python3 2>/dev/null || true)
SYSTEM_SHORT=${SYSTEM_SHORT##*/python}
# Hash of what a venv is made of: asyncexec/**/*.py, pyproject.toml and the lock under $1, the pin $2,
# the interpreter $3 the venv is made from, and this script.
source_hash() {
    {
        (cd "$1" && find asyncexec -type f -name '*.py' -print0 | sort -z \
            | xargs -0 sha256sum && sha256sum pyproject.toml locks/test.txt)
        printf 'cloudpickle=%s\ninterpreter=%s\n' "$2" "$3"
        sha256sum <"$SELF"
    } | sha256sum | cut -c1-16
}
# Sets short, full, base_prefix, base_exe, pinned, src (the interpreter the venv is made
# from), copy (the copy of the base installation to make, or "") and venv for PYTHON $1.
inspect_python() {
    local info
    info=$("$1" -c "$PYINFO") || die "$1 does not run"
    pinned=
    {
        read -r short
        read -r full
        read -r base_prefix
        read -r base_exe
        read -r pinned || true   # empty: no cloudpickle
    } <<<"$info"
    venv=$OPT/venv-$short
    copy=
    if [ "$short" = "$SYSTEM_SHORT" ]; then
        src=/usr/bin/python3
    elif [[ "$base_prefix" =~ ^(/usr|/usr/local)$ ]]; then
        src=$base_exe   # a system-wide interpreter: readable by everyone already
    else
        # root's pyenv (/root is 0700): jobs run a world-readable copy of the installation.
        copy=$OPT/python-$full
        case $base_exe in
        "$base_prefix"/*) src=$copy/${base_exe#"$base_prefix"/} ;;
        *) src=$copy/bin/python$short ;;
        esac
    fi
}
venv_current() {
    [ -x "$venv/bin/python" ] \
        && [ "$(cat "$venv/.asyncexec-stamp" 2>/dev/null)" \
            = "$(source_hash "$REPO" "$pinned" "$src")" ]
}

# 0. not root --------------------------------------------------------------------------------
[ $# -gt 0 ] || set -- python3
pythons=("$@")
if [ "$(id -u)" != 0 ]; then
    reason=
    for pair in "munged:$MUNGED_PID" "mariadbd:$MARIADBD_PID" "slurmdbd:$SLURMDBD_PID" \
        "slurmctld:$SLURMCTLD_PID" "slurmd:$SLURMD_PID" "sshd:$SSHD_PID"; do
        # mariadbd's pid file is not world-readable: then any mariadbd will do.
        alive "${pair#*:}" "${pair%%:*}" \
            || { [ ! -r "${pair#*:}" ] && pgrep -x "${pair%%:*}" >/dev/null; } \
            || { reason="${pair%%:*} is not running"; break; }
    done
    if [ -z "$reason" ]; then
        for python in "${pythons[@]}"; do
            inspect_python "$python"
            venv_current || { reason="$venv is missing or out of date"; break; }
        done
    fi
    [ -n "$reason" ] || [ -r "$DIR/cluster.json" ] || reason="$DIR/cluster.json is missing"
    if [ -n "$reason" ]; then
        echo "slurm-up: skipped: $reason and fixing that needs root" >&2
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
    step "cluster up, venvs current (checked only: not root)"
    exit 0
fi

install -d -m 755 "$DIR" "$OPT"
exec 9>"$DIR/.lock"   # one slurm-up.sh at a time; daemons are started with 9>&-
flock 9

# 1. packages --------------------------------------------------------------------------------
installed=" $(dpkg-query -W -f='${Package}=${db:Status-Status} ' "${PACKAGES[@]}" \
    2>/dev/null || true)"
missing=()
for package in "${PACKAGES[@]}"; do
    [[ "$installed" == *" $package=installed "* ]] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    if ! "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1; then
        # DPkg::Lock::Timeout does not cover the lists lock of "apt-get update" (apt 2.6):
        # retry while another apt-get holds it.
        for _ in $(seq 60); do "${apt[@]}" update >>"$DIR/apt.log" 2>&1 && break; sleep 5; done
        "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 \
            || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
    fi
    CHANGED=1
fi
step "packages present"
install -d -m 755 -o slurm -g slurm "$LOGS" "$DIR/slurmctld"
install -d -m 755 "$DIR/slurmd"

# 2. munged ----------------------------------------------------------------------------------
if ! alive "$MUNGED_PID" munged; then
    [ -s /etc/munge/munge.key ] || mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- /usr/sbin/munged </dev/null >"$LOGS/munged.out" 2>&1 9>&- \
        || fail munged "$LOGS/munged.out" /var/log/munge/munged.log
    wait_for 10 sh -c 'munge -n </dev/null | unmunge' \
        || fail munged "$LOGS/munged.out" /var/log/munge/munged.log
    CHANGED=1
fi
step "munged up (pid $(pid_of "$MUNGED_PID"))"

# 3. accounting: mariadbd + slurmdbd ----------------------------------------------------------
if ! alive "$MARIADBD_PID" mariadbd; then
    install -d -o mysql -g root -m 755 /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >"$LOGS/mariadb-install.log"
    setsid nohup /usr/sbin/mariadbd --user=mysql --pid-file="$MARIADBD_PID" \
        </dev/null >"$LOGS/mariadbd.log" 2>&1 9>&- &
    wait_for 60 mariadb-admin ping || fail mariadbd "$LOGS/mariadbd.log"
    CHANGED=1
fi
step "mariadbd up (pid $(pid_of "$MARIADBD_PID"))"

# The database password lives in slurmdbd.conf only (0600, slurm's): made once, kept.
dbpass=$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null || true)
[ -n "$dbpass" ] || dbpass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
cat >/etc/slurm/slurmdbd.conf.new <<EOF
# Written by asyncexec's scripts/slurm-up.sh: edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=$SLURMDBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$dbpass
EOF
chown slurm:slurm /etc/slurm/slurmdbd.conf.new
chmod 600 /etc/slurm/slurmdbd.conf.new
if install_if_changed /etc/slurm/slurmdbd.conf.new /etc/slurm/slurmdbd.conf; then
    stop "$SLURMDBD_PID" slurmdbd
fi
if ! alive "$SLURMDBD_PID" slurmdbd; then
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$dbpass';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$dbpass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    slurmdbd </dev/null >"$LOGS/slurmdbd.out" 2>&1 9>&- \
        || fail slurmdbd "$LOGS/slurmdbd.out" "$LOGS/slurmdbd.log"
    wait_for 30 port_open 6819 || fail slurmdbd "$LOGS/slurmdbd.out" "$LOGS/slurmdbd.log"
    CHANGED=1
fi
step "slurmdbd up (pid $(pid_of "$SLURMDBD_PID"))"

# 4. slurm.conf ------------------------------------------------------------------------------
memory=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
cat >/etc/slurm/slurm.conf.new <<EOF
# Written by asyncexec's scripts/slurm-up.sh: edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# No cgroups here: proctrack/cgroup fails every job.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
# The node advertises CPUs=$NODE_CPUS whatever the machine has.
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/slurmctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ReturnToService=2
MaxArraySize=100001
MaxJobCount=200000
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=$SHORT_PARTITION Nodes=ALL Default=NO MaxTime=1 State=UP
EOF
if install_if_changed /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
    stop "$SLURMD_PID" slurmd
    stop "$SLURMCTLD_PID" slurmctld
    step "slurm.conf written"
fi

# 5. slurmctld + slurmd ----------------------------------------------------------------------
if ! alive "$SLURMCTLD_PID" slurmctld; then
    slurmctld </dev/null >"$LOGS/slurmctld.out" 2>&1 9>&- \
        || fail slurmctld "$LOGS/slurmctld.out" "$LOGS/slurmctld.log"
    wait_for 30 sh -c 'scontrol ping | grep -q UP' \
        || fail slurmctld "$LOGS/slurmctld.out" "$LOGS/slurmctld.log"
    CHANGED=1
fi
step "slurmctld up (pid $(pid_of "$SLURMCTLD_PID"))"
if ! alive "$SLURMD_PID" slurmd; then
    slurmd </dev/null >"$LOGS/slurmd.out" 2>&1 9>&- \
        || fail slurmd "$LOGS/slurmd.out" "$LOGS/slurmd.log"
    CHANGED=1
fi
if ! node_ready; then
    if ! wait_for 30 node_ready; then
        scontrol update nodename="$NODE" state=resume || true
        wait_for 15 node_ready || { sinfo -N -l >&2; fail slurmd "$LOGS/slurmd.log"; }
    fi
fi
step "slurmd up (pid $(pid_of "$SLURMD_PID")), node $NODE $(sinfo -h -p "$PARTITION" -n "$NODE" -o '%T, %c CPUs')"

# 6. cluster user + sshd ---------------------------------------------------------------------
if ! id "$CLUSTER_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$CLUSTER_USER"
    CHANGED=1
fi
# Not '!' (locked): sshd with UsePAM no refuses even a key to a locked account.
[ "$(getent shadow "$CLUSTER_USER" | cut -d: -f2)" = '*' ] || usermod -p '*' "$CLUSTER_USER"
user_home=$(getent passwd "$CLUSTER_USER" | cut -d: -f6)
[ -f "$DIR/ssh_host_ed25519_key" ] \
    || ssh-keygen -q -t ed25519 -N '' -C "asyncexec-cluster host" -f "$DIR/ssh_host_ed25519_key"
[ -f "$DIR/id_ed25519" ] \
    || ssh-keygen -q -t ed25519 -N '' -C "asyncexec-cluster client" -f "$DIR/id_ed25519"
chmod 600 "$DIR/ssh_host_ed25519_key" "$DIR/id_ed25519"
install -d -m 700 -o "$CLUSTER_USER" -g "$CLUSTER_USER" "$user_home/.ssh"
if ! cmp -s "$DIR/id_ed25519.pub" "$user_home/.ssh/authorized_keys"; then
    install -m 600 -o "$CLUSTER_USER" -g "$CLUSTER_USER" "$DIR/id_ed25519.pub" \
        "$user_home/.ssh/authorized_keys"
fi
echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" \
    >"$DIR/known_hosts.new"
install_if_changed "$DIR/known_hosts.new" "$DIR/known_hosts" || true
cat >"$DIR/sshd_config.new" <<EOF
# Written by asyncexec's scripts/slurm-up.sh: edits are overwritten.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers $CLUSTER_USER
Subsystem sftp internal-sftp
# MaxSessions stays at OpenSSH's default (10 channels per connection), as on real login
# nodes: clients must pool connections and cap channels per connection.
MaxStartups 100:30:200
EOF
if install_if_changed "$DIR/sshd_config.new" "$DIR/sshd_config"; then
    stop "$SSHD_PID" sshd
fi
if ! alive "$SSHD_PID" sshd; then
    install -d -m 755 /run/sshd
    /usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd -t rejects $DIR/sshd_config"
    /usr/sbin/sshd -f "$DIR/sshd_config" -E "$LOGS/sshd.log" </dev/null 9>&- \
        || fail sshd "$LOGS/sshd.log"
    wait_for 10 port_open "$SSH_PORT" || fail sshd "$LOGS/sshd.log"
    CHANGED=1
fi
step "sshd up (pid $(pid_of "$SSHD_PID")) on 127.0.0.1:$SSH_PORT"

# 7. venvs for the jobs ----------------------------------------------------------------------
# as_user CMD...: run as the cluster user with a job's environment, outside the checkout.
as_user() {
    (cd / && runuser -u "$CLUSTER_USER" -- env -i PATH="$JOB_PATH" HOME="$user_home" "$@")
}
# A world-readable copy of the base installation at $copy, runnable by the cluster user.
make_copy() {
    [ -f "$copy/.asyncexec-copy" ] && return
    local file rpath origin
    rm -rf "$copy" "$copy.tmp"
    cp -a "$base_prefix" "$copy.tmp"
    # pyenv's shared builds find libpython through a RUNPATH naming the original prefix,
    # which the cluster user cannot read: make such RUNPATHs relative ($ORIGIN).
    while IFS= read -r -d '' file; do
        rpath=$(patchelf --print-rpath "$file" 2>/dev/null) || continue
        [[ "$rpath" == *"$base_prefix"* ]] || continue
        origin='$ORIGIN'/$(realpath -m --relative-to="$(dirname "$file")" "$copy.tmp")
        patchelf --set-rpath "${rpath//"$base_prefix"/"$origin"}" "$file"
    done < <(find "$copy.tmp" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0)
    chmod -R a+rX "$copy.tmp"
    mv "$copy.tmp" "$copy"
    local prefix
    prefix=$(as_user "$src" -c 'import sys, ensurepip, ssl, sqlite3; print(sys.prefix)') \
        || die "$CLUSTER_USER cannot run $src (copied from $base_prefix)"
    [ "$prefix" = "$copy" ] || die "$src thinks its prefix is $prefix, not $copy"
    touch "$copy/.asyncexec-copy"
    step "copied $base_prefix to $copy ($(du -sm "$copy" | cut -f1) MB)"
}
# The version line the worker prints, as the driver run by PYTHON sees it.
check_version() {
    local python=$1 got want errors version
    got=$(as_user "$venv/bin/python" -m asyncexec.worker version) \
        || die "$CLUSTER_USER cannot run the worker in $venv"
    if want=$(PYTHONPATH=$REPO "$python" -m asyncexec.worker version 2>&1); then
        [ "$got" = "$want" ] || die "$venv says '$got', $python '$want'"
    else
        # A bare interpreter without asyncexec's dependencies: compare Python and asyncexec.
        errors=$want
        version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/asyncexec/_version.py")
        say "warning: $python cannot run the worker ($(tail -n 1 <<<"$errors")):" \
            "checking Python and asyncexec versions only" >&2
        [[ "$got" =~ ^python\ "$short"\ cloudpickle\ [^\ ]+\ asyncexec\ "$version"$ ]] \
            || die "$venv says '$got', expected python $short, asyncexec $version"
    fi
    echo "$got"
}
# Sets bare: an interpreter of PYTHON's version the cluster user runs without asyncexec,
# for the tests of what a node needs (nothing but Python): the one the venv is made from
# ($src), or else, if that one finds an asyncexec, an empty venv made from it (a venv sees
# neither the base's site-packages nor the user's).
find_bare() {
    local probe='import importlib.util as u; print(u.find_spec("asyncexec") is None)'
    bare=$src
    [ "$(as_user "$bare" -c "$probe" 2>&1)" != True ] || return 0
    bare=$OPT/bare-$short
    if ! grep -qxF "home = $(dirname "$src")" "$bare/pyvenv.cfg" 2>/dev/null; then
        say "$src finds an asyncexec: making $bare from it"
        rm -rf "$bare"
        "$src" -m venv --without-pip "$bare" && chmod -R a+rX "$bare" \
            || die "$src -m venv --without-pip $bare failed"
    fi
    [ "$(as_user "$bare/bin/python" -c "$probe" 2>&1)" = True ] \
        || die "$bare/bin/python still finds an asyncexec (or does not run)"
    bare=$bare/bin/python
}
entries=()
for python in "${pythons[@]}"; do
    inspect_python "$python"
    if ! venv_current; then
        t=$EPOCHREALTIME
        [ -z "$copy" ] || make_copy
        if [ -x "$venv/bin/python" ] \
            && grep -qxF "home = $(dirname "$src")" "$venv/pyvenv.cfg"; then
            say "updating $venv"
        else
            say "making $venv from $src"
            rm -rf "$venv"
            "$src" -m venv "$venv" || die "$src -m venv $venv failed"
        fi
        rm -f "$venv/.asyncexec-stamp"
        # Install from a snapshot of the checkout: nothing is built in it, and the stamp
        # hashes exactly what was installed.
        snapshot=$(mktemp -d)
        trap 'rm -rf "$snapshot"' EXIT
        (cd "$REPO" && tar -c --exclude=__pycache__ --exclude='*.pyc' asyncexec pyproject.toml \
            README.md locks/test.txt) | tar -x -C "$snapshot"
        pins=()
        [ -z "$pinned" ] || pins=("cloudpickle==$pinned")
        # The lock's versions (those CI passed with), less the pinned cloudpickle's; as
        # PIP_CONSTRAINT they bind the build of the snapshot (setuptools) too.
        if [ -n "$pinned" ]; then
            grep -v '^cloudpickle==' "$snapshot/locks/test.txt" >"$snapshot/constraints.txt"
        else
            cp "$snapshot/locks/test.txt" "$snapshot/constraints.txt"
        fi
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 \
            PIP_CONSTRAINT="$snapshot/constraints.txt" \
            "$venv/bin/python" -m pip install --no-cache-dir "$snapshot" "${pins[@]}" \
            >"$LOGS/pip-$short.log" 2>&1 \
            || { tail -n 20 "$LOGS/pip-$short.log" >&2; die "pip install into $venv failed"; }
        chmod -R a+rX "$venv"
        line=$(check_version "$python")
        source_hash "$snapshot" "$pinned" "$src" >"$venv/.asyncexec-stamp"
        chmod 644 "$venv/.asyncexec-stamp"
        rm -rf "$snapshot"
        trap - EXIT
        step "$venv built for $python: $line ($(awk -v a="$t" -v b="$EPOCHREALTIME" \
            'BEGIN { printf "%.1f s", b - a }'))"
        CHANGED=1
    else
        step "$venv current for $python"
    fi
    find_bare
    entries+=("$short" "$venv/bin/python" "$bare")
done
step "bare interpreters without asyncexec checked"

# 8. cluster.json ----------------------------------------------------------------------------
state=$(/usr/bin/python3 - "$DIR/cluster.json" "$SSH_PORT" "$CLUSTER_USER" "$DIR" "$user_home" \
    "$NODE" "$SSHD_PID" "$PARTITION" "$SHORT_PARTITION" "$NODE_CPUS" "${entries[@]}" <<'EOF'
import json, os, sys

path, port, user, directory, home, node, pid_file, partition, short, cpus, *entries = sys.argv[1:]
try:
    with open(path) as file:
        old_text = file.read()
    old = json.loads(old_text)
    pythons, bare = old.get("pythons", {}), old.get("bare_pythons", {})
except (OSError, ValueError, AttributeError):
    old_text, pythons, bare = None, {}, {}
pythons.update(zip(entries[::3], entries[1::3]))
bare.update(zip(entries[::3], entries[2::3]))
version = lambda item: tuple(int(part) for part in item[0].split("."))
data = {
    "host": "127.0.0.1",
    "port": int(port),
    "user": user,
    "client_key": os.path.join(directory, "id_ed25519"),
    "known_hosts": os.path.join(directory, "known_hosts"),
    "home": home,
    "node": node,
    "partition": partition,
    "short_partition": short,
    "cpus": int(cpus),
    "sshd_pid_file": pid_file,
    "pythons": {
        short: python
        for short, python in sorted(pythons.items(), key=version)
        if os.access(python, os.X_OK)
    },
    "bare_pythons": {
        short: python
        for short, python in sorted(bare.items(), key=version)
        if os.access(python, os.X_OK)
    },
}
text = json.dumps(data, indent=2) + "\n"
if text == old_text:
    print("current")
else:
    with open(path + ".new", "w") as file:
        file.write(text)
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)
    print("written")
EOF
)
step "$DIR/cluster.json $state"

# 9. smoke test: a job submitted over ssh runs and reaches sacct ----------------------------
ssh=(ssh -F /dev/null -i "$DIR/id_ed25519" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$DIR/known_hosts"
    -o GlobalKnownHostsFile=/dev/null "$CLUSTER_USER@127.0.0.1")
if [ "$CHANGED" = 1 ]; then
    job=$("${ssh[@]}" sbatch --parsable -o /dev/null --wrap true) \
        || die "sbatch over ssh failed (sshd log: $LOGS/sshd.log)"
    wait_for 30 sh -c "[ -z \"\$(squeue -h -j $job -o %i 2>/dev/null)\" ]" \
        || die "job $job is still in squeue after 30 s: $(squeue -h -j "$job" -o '%T %R')"
    wait_for 30 sh -c "sacct -n -X -P -j $job -o State | grep -qx COMPLETED" \
        || die "sacct does not show job $job COMPLETED:" \
            "$(sacct -n -X -P -j "$job" -o State,ExitCode)"
    step "smoke test: job $job submitted over ssh, $(sacct -n -X -P -j "$job" -o State,ExitCode)"
fi
say "ssh: ${ssh[*]}"
step "done"
