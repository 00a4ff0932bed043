"""The Shell seam: LocalShell on this machine; SSHShell's pool against a real sshd.

The SSH commands themselves (run, spawn, kill, host keys) are tested with the
SSH executor in test_ssh.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from asyncexec import LocalShell
from asyncexec.shells import SSHShellStats

from .cluster import Cluster

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


async def test_run_collects_output_and_status() -> None:
    shell = LocalShell(env={"AE_SHELL": "yes"})
    done = await shell.run(
        [sys.executable, "-c", "import os,sys; print(os.environ['AE_SHELL']); sys.exit(4)"]
    )
    assert done.returncode == 4 and done.stdout == b"yes\n"
    echoed = await shell.run(["cat"], input=b"through stdin")
    assert (echoed.returncode, echoed.stdout) == (0, b"through stdin")


async def test_cancelled_run_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os,time; open({str(pid_file)!r},'w').write(str(os.getpid())); time.sleep(60)"
    with anyio.move_on_after(1.0):
        await LocalShell().run([sys.executable, "-c", script])
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_spawn_streams() -> None:
    process = await LocalShell().spawn(
        [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"]
    )
    try:
        await process.stdin.send(b"shout")
        await process.stdin.aclose()
        received = b""
        async for chunk in process.stdout:
            received += chunk
        assert received == b"SHOUT"
        assert await process.wait() == 0
    finally:
        await process.aclose()


async def test_host_and_pid_are_on_the_seam() -> None:
    """A local shell's host is None, its capacity unlimited; a spawned process knows its pid."""
    shell = LocalShell()
    assert shell.host is None and shell.channel_capacity is None
    process = await shell.spawn([sys.executable, "-c", "import os; print(os.getpid())"])
    try:
        received = b""
        async for chunk in process.stdout:
            received += chunk
        assert process.pid == int(received)
        assert await process.wait() == 0
    finally:
        await process.aclose()


@pytest.mark.ssh
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncssh is built on asyncio
async def test_ssh_stats_show_channels_filling_connections_in_turn(cluster: Cluster) -> None:
    """A connection carries channels up to its limit before the next one opens;
    closed processes give their channels back, and closing the shell its connections."""
    async with cluster.shell(max_connections=2, channels_per_connection=2) as shell:
        assert shell.channel_capacity == 4
        assert shell.stats() == SSHShellStats(connections=0, channels=(), channel_limits=())
        processes = [await shell.spawn(["cat"]) for _ in range(3)]
        try:
            assert shell.stats() == SSHShellStats(
                connections=2, channels=(2, 1), channel_limits=(2, 2)
            )
        finally:
            for process in processes:
                await process.aclose()
        assert shell.stats() == SSHShellStats(connections=2, channels=(0, 0), channel_limits=(2, 2))
        done = await shell.run(["echo", "again"])
        assert done.stdout == b"again\n" and shell.stats().channels == (0, 0)
    assert shell.stats().connections == 0
