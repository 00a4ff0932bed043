"""LocalShell: the Shell seam on this machine, with anyio subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc
from anyio.abc import Process

from .._arguments import remembers_arguments
from ..abc import Completed, Shell, SpawnedProcess

__all__ = ["LocalShell"]


class _LocalProcess(SpawnedProcess):
    def __init__(self, process: Process) -> None:
        assert process.stdin and process.stdout and process.stderr
        self._process = process
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr

    @property
    def pid(self) -> int:
        return self._process.pid

    async def wait(self) -> int:
        return await self._process.wait()

    async def kill(self) -> None:
        # Spawned in a session of its own: kill what it started as well.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._process.returncode is None:
                await self.kill()
            await self._process.aclose()


class LocalShell(Shell):
    """Run commands on this machine, with anyio (nothing blocks the event loop).

    Args:
        env: extra environment variables for every command.
        cwd: working directory for every command.
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(self, *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        self._env = {**os.environ, **env} if env else None
        self._cwd = cwd

    def __repr__(self) -> str:
        return "LocalShell()"

    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> Completed:
        """Run ``argv`` to completion and collect its output.

        Cancellation: the command's process group is killed (SIGKILL) and
        reaped, shielded, before the cancellation propagates.
        """
        process = await anyio.open_process(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
        )
        async with _Reaper(process):
            stdout = bytearray()
            stderr = bytearray()

            async def drain(stream: anyio.abc.ByteReceiveStream, into: bytearray) -> None:
                async for chunk in stream:
                    into += chunk

            async with anyio.create_task_group() as tg:
                assert process.stdout and process.stderr
                tg.start_soon(drain, process.stdout, stdout)
                tg.start_soon(drain, process.stderr, stderr)
                if input is not None and process.stdin is not None:
                    async with process.stdin:
                        await process.stdin.send(input)
            returncode = await process.wait()
        return Completed(
            argv=list(argv), returncode=returncode, stdout=bytes(stdout), stderr=bytes(stderr)
        )

    async def spawn(self, argv: Sequence[str]) -> SpawnedProcess:
        """Start ``argv`` in a session of its own, with piped streams.

        Cancellation: on asyncio, a process being started is killed and reaped
        (by asyncio's subprocess transport). On trio, starting it cannot be
        interrupted: the process is handed back (to close), and the caller sees
        the cancellation at its next await.
        """
        process = await anyio.open_process(
            list(argv), env=self._env, cwd=self._cwd, start_new_session=True
        )
        return _LocalProcess(process)


class _Reaper:
    """Kill (on error or cancellation) and reap a process when the block ends."""

    def __init__(self, process: Process) -> None:
        self._process = process

    async def __aenter__(self) -> Process:
        return self._process

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            if self._process.returncode is None and exc_info[0] is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.aclose()
