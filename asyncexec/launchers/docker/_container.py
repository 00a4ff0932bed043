"""One container running the long-lived worker: a pool worker reached through ``docker attach``.

Warm containers and one-shot containers alike are :class:`ContainerWorker` s
of the pool family (:class:`~asyncexec.launchers.pool.PoolWorker`): the
worker speaks the pool's framed protocol over the container's attached stdin
and stdout. Killing one is a forced removal by its launcher (once); its exit
says whether the kernel killed it at its memory limit, a signal killed it, or
its interpreter could not start.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

from ..._exceptions import describe_exit
from ..pool import PoolWorker
from ._engine import CALL_TIMEOUT, AttachedInput, AttachedOutput, log

if TYPE_CHECKING:
    from aiodocker.containers import DockerContainer
    from aiodocker.stream import Stream

    from ._launcher import DockerLauncher


class ContainerWorker(PoolWorker):
    """One container running the long-lived worker, reached through ``docker attach``."""

    def __init__(
        self,
        launcher: DockerLauncher,
        container: DockerContainer,
        stream: Stream,
        name: str,
    ) -> None:
        self.input = AttachedInput(stream)
        super().__init__(self.input, AttachedOutput(stream))
        self.launcher = launcher
        self.container = container
        self.stream = stream
        self.name = name
        self.oom_killed = False
        self._removal: anyio.Event | None = None  # set once our removal attempt ended
        self.released = False  # let go running: its end is not ours to wait for

    def __repr__(self) -> str:
        return f"<container {self.name}>"

    def kill(self) -> None:
        self.dead = True
        if self._removal is None:
            self.launcher._background(self._remove)

    async def _remove(self) -> None:
        """Kill and remove the container (one call: a forced removal), once.

        If the engine refuses, the attach stream is closed all the same, so the
        reader ends and nobody waits for a container we could not stop; what is
        left is removed by the sweep when the launcher closes.
        """
        if self._removal is not None:
            await self._removal.wait()
            return
        self._removal = anyio.Event()
        try:
            # Shielded: a removal cut short by a cancellation would leave the container.
            with anyio.CancelScope(shield=True):
                if not await self.launcher._containers.remove(self.container, self.name):
                    with contextlib.suppress(Exception):
                        await self.stream.close()
        finally:
            self._removal.set()

    def let_go(self) -> None:
        """Leave the container running its task (``executor.detach()``): only the attach
        stream closes (the worker, ``--finish``, ends its task and writes the outcome
        to its log, where :func:`~._reattach.collect` reads it); nothing removes it."""
        self.dead = True
        self.released = True
        if self._removal is None:
            self._removal = anyio.Event()
            self._removal.set()  # no removal of ours will come
            self.launcher._background(self._close_stream)

    async def _close_stream(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.close()

    async def close_input(self) -> None:
        if self.launcher.hooks.teardown is None:
            self.kill()  # an idle container holds no work: removing it loses nothing
            return
        # Its worker runs the teardown hook, then exits: its reader ends, and the pool
        # removes it (or kills it, should it not exit in time).
        try:
            async with self.send_lock:
                await self.input.send_eof()
        except Exception as exc:
            log.debug("half-closing the input of %s: %s; removing it", self.name, exc)
            self.kill()

    async def wait_exit(self) -> int | None:
        if self.released or (self._removal is not None and not self.jobs):
            return None  # we are removing it, and nobody needs its exit status
        try:
            status = await self.container.wait()
            with anyio.fail_after(CALL_TIMEOUT):
                state = (await self.container.show())["State"]
        except Exception as exc:  # removed already, or the engine is gone
            log.debug("waiting for container %s: %s", self.name, exc)
            return None
        self.oom_killed = bool(state.get("OOMKilled"))
        code = status.get("StatusCode")
        return code if isinstance(code, int) else None

    def describe_exit(self, exit_code: int | None) -> tuple[str, str | None]:
        limit = self.launcher.memory_mb
        if self.oom_killed:
            cap = f" of {limit} MiB" if limit is not None else ""
            return (
                f"container {self.name} ran out of memory: the kernel killed it at its "
                f"memory limit{cap} (OOMKilled)",
                "OOMKilled",
            )
        if exit_code is None:
            return f"container {self.name} vanished (is the Docker engine running?)", None
        if exit_code > 128:  # the shell's convention: 128 + the signal
            _, name = describe_exit(128 - exit_code)
            return f"container {self.name} was killed by {name} (exit {exit_code})", name
        if exit_code in (126, 127):  # its init could not run the worker's interpreter
            python = self.launcher._spec.python
            why = "not found" if exit_code == 127 else "not executable"
            return (
                f"the worker in container {self.name} could not start: {python!r} is "
                f"{why} in the image (exit {exit_code}; see python=)",
                None,
            )
        return f"the worker in container {self.name} exited with status {exit_code}", None

    async def aclose(self) -> None:
        if self.released:
            await self._close_stream()
            return
        try:
            await self.stream.close()
        except Exception as exc:
            log.debug("closing the stream of %s: %s", self.name, exc)
        await self._remove()
