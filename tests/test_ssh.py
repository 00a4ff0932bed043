"""SSHShell and SSHExecutor, against a real OpenSSH sshd (MaxSessions 10) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from asyncexec import (
    BackendUnavailable,
    LaunchError,
    Resources,
    SSHExecutor,
    SSHShell,
    TaskBackendUnavailable,
    TaskFailed,
    TaskTimeout,
    WorkerLost,
)
from asyncexec.launchers.ssh import SSHLauncher
from asyncexec.testing import (
    add,
    assert_heartbeat_stopped,
    check_launcher,
    conformance_cases,
    heartbeat,
)

from .cluster import Cluster, bring_up, make_key, stop_sshd

pytestmark = [pytest.mark.anyio, pytest.mark.ssh]


@pytest.fixture
def anyio_backend() -> str:
    """asyncssh runs on asyncio only (test_trio_is_refused_clearly checks trio)."""
    return "asyncio"


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_importing_the_ssh_backend_prints_no_warning_a_user_cannot_act_on() -> None:
    """cryptography 48+ warns that DSA is deprecated whenever asyncssh is imported;
    asyncexec hides exactly that warning, at import, and nothing more."""
    probe = (
        "import warnings\n"
        "from asyncexec.shells._asyncssh import import_asyncssh\n"
        "before = list(warnings.filters)\n"
        "import_asyncssh()\n"
        "assert warnings.filters == before, 'the filter leaked'\n"
        "from cryptography.utils import CryptographyDeprecationWarning as W\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    warnings.warn('DSA is deprecated, from a key in use', W)\n"
        "assert len(seen) == 1, seen\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", probe], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    if int(importlib.metadata.version("cryptography").split(".")[0]) >= 48:
        # Not vacuous: asyncssh imported bare does warn with this cryptography.
        bare = subprocess.run(
            [sys.executable, "-W", "error", "-c", "import asyncssh"], capture_output=True, text=True
        )
        assert bare.returncode != 0 and "DSA is deprecated" in bare.stderr


# -- SSHShell ---------------------------------------------------------------------


async def test_run_and_spawn(cluster: Cluster) -> None:
    async with cluster.shell(env={"AE_SHELL": "yes"}) as shell:
        done = await shell.run(["sh", "-c", 'echo "$AE_SHELL $(id -un)"; exit 4'])
        assert done.returncode == 4 and done.stdout == f"yes {cluster.user}\n".encode()
        echoed = await shell.run(["cat"], input=b"x" * 3_000_000)
        assert (echoed.returncode, echoed.stdout) == (0, b"x" * 3_000_000)
        process = await shell.spawn(
            ["python3", "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"]
        )
        try:
            await process.stdin.send(b"shout")
            await process.stdin.aclose()
            received = b""
            async for chunk in process.stdout:
                received += chunk
            assert received == b"SHOUT"
            assert await process.wait() == 0
            assert shell.host == cluster.host and isinstance(process.pid, int)
        finally:
            await process.aclose()


async def test_cancelled_run_kills_the_remote_command_and_its_children(
    cluster: Cluster, scratch: str
) -> None:
    pid_file = f"{scratch}/pids"
    script = f"sleep 60 & echo $! > {pid_file}; echo $$ >> {pid_file}; wait"
    async with cluster.shell() as shell:
        with anyio.move_on_after(1.5):
            await shell.run(["sh", "-c", script])
        pids = [int(line) for line in Path(pid_file).read_text().split()]
        with anyio.fail_after(10):
            while any(_pid_alive(pid) for pid in pids):
                await anyio.sleep(0.05)


async def test_channels_are_pooled_below_max_sessions(cluster: Cluster) -> None:
    """50 commands at once: never more than 6 channels on a connection, none refused."""
    async with cluster.shell(max_connections=3) as shell:
        peak = 0

        async def one(i: int) -> None:
            nonlocal peak
            done = await shell.run(["sh", "-c", f"sleep 0.3; echo {i}"])
            assert (done.returncode, done.stdout) == (0, f"{i}\n".encode())
            peak = max((peak, *shell.stats().channels))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        assert shell.stats().connections <= 3
        assert peak <= 6


async def test_a_refused_channel_is_retried_and_the_cap_learned(cluster: Cluster) -> None:
    """Asking for 30 channels on one connection: sshd's MaxSessions refuses some."""
    async with cluster.shell(max_connections=1, channels_per_connection=30) as shell:
        results = []

        async def one(i: int) -> None:
            done = await shell.run(["sh", "-c", f"sleep 0.5; echo {i}"])
            assert done.returncode == 0
            results.append(done.stdout)

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        assert sorted(results) == sorted(f"{i}\n".encode() for i in range(30))
        assert shell.stats().channel_limits[0] <= 10


async def test_unknown_host_key_is_refused_with_advice(cluster: Cluster, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    shell = cluster.shell(connect_options={"known_hosts": str(empty)})
    with pytest.raises(BackendUnavailable, match=r"host key.*ssh-keyscan"):
        await shell.run(["true"])
    # verify_host_key=False, and only that, skips the check: no known_hosts needed.
    skipping = SSHShell(
        cluster.host,
        port=cluster.port,
        username=cluster.user,
        verify_host_key=False,
        connect_options={"client_keys": [cluster.client_key]},
    )
    async with skipping:
        assert (await skipping.run(["true"])).returncode == 0


async def test_changed_host_key_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    key = make_key(other)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{cluster.host}]:{cluster.port} {key}\n")
    shell = cluster.shell(connect_options={"known_hosts": str(known)})
    with pytest.raises(BackendUnavailable, match="unknown or has changed"):
        await shell.run(["true"])


async def test_wrong_key_is_backend_unavailable(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "id_other"
    make_key(other)
    shell = cluster.shell(connect_options={"client_keys": [str(other)]})
    with pytest.raises(BackendUnavailable, match=r"authentication .* refused"):
        await shell.run(["true"])


async def test_nothing_listening_is_backend_unavailable(cluster: Cluster) -> None:
    shell = SSHShell("127.0.0.1", port=1, connect_options={"known_hosts": cluster.known_hosts})
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await shell.run(["true"])
    # Through a future, it is a TaskFailed too (the host is reached on need).
    async with SSHExecutor([shell]) as ex:
        future = await ex.submit(os.getpid)
        with pytest.raises(TaskFailed, match="cannot connect") as failed:
            await future
        assert isinstance(failed.value, BackendUnavailable)
        assert isinstance(failed.value, TaskBackendUnavailable)


def test_skipping_host_key_checks_is_explicit_and_secrets_stay_hidden() -> None:
    with pytest.raises(ValueError, match="verify_host_key=False"):
        SSHShell("h", connect_options={"known_hosts": None})
    shell = SSHShell("h", username="u", connect_options={"passphrase": "hunter2"})
    assert "hunter2" not in repr(shell) and repr(shell) == "SSHShell('u@h:22')"
    with pytest.raises(ValueError, match="channels_per_connection"):
        SSHShell("h", channels_per_connection=0)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_clearly() -> None:
    with pytest.raises(RuntimeError, match="asyncio only"):
        await SSHShell("h").run(["true"])


@pytest.mark.alone
async def test_reconnects_after_sshd_restarts(cluster: Cluster) -> None:
    async with cluster.shell() as shell:
        assert (await shell.run(["true"])).returncode == 0
        stop_sshd()
        with pytest.raises(BackendUnavailable):
            await shell.run(["true"])
        bring_up()
        assert (await shell.run(["echo", "back"])).stdout == b"back\n"


# -- SSHExecutor --------------------------------------------------------------------


@pytest.mark.parametrize("case", conformance_cases(SSHLauncher))
async def test_conformance(cluster: Cluster, scratch: str, case: str) -> None:
    def make() -> SSHLauncher:
        return SSHLauncher([cluster.shell(), cluster.shell()], slots=2, python=cluster.python)

    await check_launcher(make, only=[case], tmp_root=scratch, workdir_mode=0o777)


async def test_slots_per_host(cluster: Cluster) -> None:
    shells = [cluster.shell(), cluster.shell()]
    async with SSHExecutor(shells, slots=3, python=cluster.python) as ex:
        assert ex.n_workers == 6
        # Tasks that last long enough for all six workers to be busy at once.
        await ex.wait([await ex.submit(time.sleep, 0.3) for _ in range(12)])
        pids = await ex.wait([await ex.submit(os.getpid) for _ in range(60)])
        assert len(set(pids)) == 6
        assert [shell.stats().connections for shell in shells] == [1, 1]


async def test_cpus_pin_the_hosts_worker_and_gpus_are_refused_at_submit(cluster: Cluster) -> None:
    def affinity(seconds: float) -> list[int]:  # (by value: the host cannot import the tests)
        time.sleep(seconds)
        return sorted(os.sched_getaffinity(0))

    async with SSHExecutor([cluster.shell()], slots=2, python=cluster.python) as ex:
        usable = await ex.run(affinity, 0)
        one = ex.with_options(resources=Resources(cpus=1))
        together = await ex.wait([await one.submit(affinity, 1.0) for _ in range(2)])
        after = await ex.wait([await ex.submit(affinity, 0.3) for _ in range(2)])
        with pytest.raises(LaunchError, match=r"SSHExecutor .*Resources\.gpus"):
            await ex.with_options(resources=Resources(gpus=1)).submit(affinity, 0)
        # The host's CPUs are known where the worker runs: refused there, not at submit.
        too_many = await ex.with_options(resources=Resources(cpus=len(usable) + 1)).submit(
            affinity, 0
        )
        with pytest.raises(LaunchError, match=f"may use {len(usable)}"):
            await too_many
    assert [len(cpus) for cpus in together] == [1, 1], together
    if len(usable) > 1:
        assert together[0] != together[1], together  # apart, while both ran
    assert after == [usable, usable]  # both workers got all of them back


@pytest.mark.alone
@pytest.mark.infra
async def test_a_dropped_connection_fails_only_its_tasks(cluster: Cluster, scratch: str) -> None:
    """sshd killed with every session: the running task is lost, later ones reconnect."""
    beat = f"{scratch}/beat"
    async with SSHExecutor([cluster.shell()], slots=2, python=cluster.python) as ex:
        running = await ex.submit(heartbeat, beat)
        with anyio.fail_after(30):
            while not os.path.exists(beat):
                await anyio.sleep(0.05)
        stop_sshd()
        with pytest.raises(WorkerLost):
            await running
        # The worker goes with its SSH session (it checks twice a second): nothing
        # keeps running on the host.
        await anyio.sleep(1.0)
        await assert_heartbeat_stopped(beat)
        bring_up()
        assert await (await ex.submit(os.getpid)) > 0
        with pytest.raises(TaskTimeout):
            await (await ex.with_options(time_limit=0.5).submit(time.sleep, 30))


async def test_a_key_that_cannot_be_read_is_backend_unavailable(
    cluster: Cluster, tmp_path: Path
) -> None:
    garbage = tmp_path / "id_garbage"
    garbage.write_text("not a key\n")
    shell = cluster.shell(connect_options={"client_keys": [str(garbage)]})
    with pytest.raises(BackendUnavailable, match="client key"):
        await shell.run(["true"])


def test_slots_must_leave_a_channel_to_kill_with() -> None:
    shell = SSHShell("h", max_connections=2, channels_per_connection=3)
    assert shell.channel_capacity == 6
    with pytest.raises(ValueError, match="max_connections"):
        SSHExecutor([shell], slots=6)
    SSHExecutor([shell], slots=5)


# -- a killed driver takes every process its tasks started (issue 17, item 6) -----------

SSH_TREE_DRIVER = """
import json, subprocess, sys, time, asyncio
from asyncexec import SSHExecutor, SSHShell

def start_child(marker, then_sleep):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    if then_sleep:  # the worker stays busy; else it is idle, its task's child running
        time.sleep(600)
    return child.pid

async def main():
    c = json.loads(sys.argv[2])
    shell = SSHShell(
        c["host"], port=c["port"], username=c["user"],
        connect_options={"client_keys": [c["client_key"]], "known_hosts": c["known_hosts"]},
    )
    async with SSHExecutor([shell], slots=2, python=c["python"]) as ex:
        print(await ex.run(start_child, sys.argv[1], False), flush=True)
        busy = await ex.submit(start_child, sys.argv[1], True)
        print("busy", flush=True)
        await busy

asyncio.run(main())
"""


def _marked(marker: str) -> list[int]:
    import psutil

    return [
        process.pid
        for process in psutil.process_iter(["cmdline", "status"])
        if (process.info["cmdline"] or [])[-1:] == [marker]
        and process.info["status"] != psutil.STATUS_ZOMBIE
    ]


def test_a_killed_driver_takes_the_processes_its_tasks_started_on_the_host(
    cluster: Cluster,
) -> None:
    import dataclasses
    import json
    import signal
    import uuid

    marker = f"asyncexec-ssh-tree-{uuid.uuid4().hex}"
    described = json.dumps(dataclasses.asdict(cluster))
    driver = subprocess.Popen(
        [sys.executable, "-c", SSH_TREE_DRIVER, marker, described],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            assert driver.stdout is not None
            assert driver.stdout.readline().strip().isdigit()  # the idle worker's child
            assert driver.stdout.readline().strip() == "busy"
            deadline = time.monotonic() + 60
            while len(_marked(marker)) < 2:
                assert time.monotonic() < deadline, "the tasks never started their children"
                assert driver.poll() is None, "the driver ended early"
                time.sleep(0.05)
        finally:
            driver.kill()  # SIGKILL: no cleanup code of the driver's runs
            driver.communicate()
        deadline = time.monotonic() + 30  # generous: sshd notices the lost connection
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _marked(marker), "processes started by tasks on the host outlived the driver"
    finally:
        for pid in _marked(marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_an_executor_takes_a_configured_launcher_or_its_arguments_not_both() -> None:
    launcher = SSHLauncher([SSHShell("a"), SSHShell("b")], slots=3, python="python3.11")
    assert SSHExecutor(launcher=launcher).n_workers == 6
    assert SSHExecutor([SSHShell("a")], slots=2).n_workers == 2
    with pytest.raises(TypeError, match="SSHLauncher given as launcher="):
        SSHExecutor(launcher=launcher, slots=2)
    with pytest.raises(TypeError, match="SSHLauncher given as launcher="):
        SSHExecutor([SSHShell("a")], launcher=launcher)
    with pytest.raises(TypeError, match="needs shells, or a configured launcher="):
        SSHExecutor()
    with pytest.raises(TypeError, match="must be an SSHLauncher"):
        SSHExecutor(launcher=object())  # type: ignore[arg-type]


async def test_a_configured_launcher_runs_the_executors_tasks(cluster: Cluster) -> None:
    launcher = SSHLauncher([cluster.shell()], slots=2, python=cluster.python)
    async with SSHExecutor(launcher=launcher) as ex:
        assert ex.ssh is launcher
        assert await ex.run(add, 2, 3) == 5
