"""Shells: how launchers reach a machine. :class:`LocalShell` runs on this one."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

import anyio
from anyio.abc import Process

from ._files import write_atomically
from .abc import Completed, Shell, SpawnedProcess

__all__ = ["LocalShell"]


class _LocalProcess(SpawnedProcess):
    def __init__(self, process: Process) -> None:
        assert process.stdin and process.stdout and process.stderr
        self._process = process
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr

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

    def __init__(self, *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        self._env = {**os.environ, **env} if env else None
        self._cwd = cwd

    def __repr__(self) -> str:
        return "LocalShell()"

    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> Completed:
        """Run ``argv``; cancellation kills it (and its process group)."""
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
        process = await anyio.open_process(
            list(argv), env=self._env, cwd=self._cwd, start_new_session=True
        )
        return _LocalProcess(process)

    async def read_bytes(self, path: str) -> bytes:
        return await anyio.Path(path).read_bytes()

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        await anyio.to_thread.run_sync(functools.partial(write_atomically, path, data, mode=mode))


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
