"""The life of a launcher's containers on the engine: made, started attached, removed.

:class:`Containers` creates a container and starts it with its streams
attached (so no output is missed), and removes it: a forced removal, asked
again while another removal is under way, remembered when it failed. A
create call that lost its answer may still have made its container, or make
it later: that container is found by its name, removed at once, or watched
for until the engine could no longer be making it. At close, a sweep by label
removes what removal missed (the engine was away). Whatever cuts them short,
these calls never leave a container of ours behind unremembered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..._exceptions import LaunchError
from ._engine import (
    CALL_TIMEOUT,
    CONFLICT,
    CONFLICT_RETRIES,
    NOT_FOUND,
    attach,
    engine_error,
    error_status,
    log,
    maybe_done,
    unreachable,
)
from ._spec import EXECUTOR_LABEL

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.containers import DockerContainer
    from aiodocker.stream import Stream


class Containers:
    """The containers of executor ``executor_id`` on the engine ``docker`` reaches.

    ``background`` runs a coroutine function in the launcher's task group
    (the watch for a container a lost create may make); ``docker`` is set
    while the launcher is open, None once it is closed.
    """

    def __init__(
        self, executor_id: str, background: Callable[[Callable[[], Awaitable[Any]]], None]
    ) -> None:
        self.executor_id = executor_id
        self.docker: aiodocker.Docker | None = None
        self._background = background
        self._leftovers: dict[str, str] = {}  # container id -> name, not yet removed
        #: Names of containers whose create call lost its answer -> until when the
        #: engine may still make them (watched, and removed if it does).
        self._unsure: dict[str, float] = {}
        self._unsure_done: anyio.Event | None = None  # set when none is watched
        #: Containers let go running (``executor.detach()``): a later driver's to remove.
        self.kept: set[str] = set()

    async def create(self, name: str, config: dict[str, Any]) -> tuple[DockerContainer, Stream]:
        """Create container ``name`` from ``config``, attach to it, start it.

        Raises:
            LaunchError: the engine refused (no such image, no such GPUs...),
                or :class:`~asyncexec.BackendUnavailable` when unreachable.

        Cancellation: no container made here is left: one created is removed
        (shielded) before the cancellation propagates; one whose create lost
        its answer is watched and removed should the engine make it later.
        """
        if self.docker is None:
            raise LaunchError("the Docker launcher is not open")
        image = config["Image"]
        try:
            # Shielded: a request cancelled midway may still create the container, and
            # we would not know its id. A cancellation is seen at the next await below.
            with anyio.CancelScope(shield=True), anyio.fail_after(CALL_TIMEOUT):
                container = await self.docker.containers.create(config, name=name)
        except Exception as exc:
            if error_status(exc) == NOT_FOUND:
                raise LaunchError(f"the Docker engine has no image {image!r}") from exc
            if maybe_done(exc):
                # No answer (a timeout, a connection lost after the request was sent):
                # the engine may have made it all the same, or make it later still.
                # Its name finds it: removed now, and watched for a while.
                with anyio.CancelScope(shield=True):
                    if not await self._remove_made(name):
                        self._unsure[name] = anyio.current_time() + CALL_TIMEOUT
                        self._background(lambda: self._watch(name))
            raise engine_error(f"create a container from {image!r}", exc) from exc
        try:
            stream = attach(self.docker, container)
            await stream.__aenter__()  # attached before it starts: no output is missed
            try:
                await container.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.close()
                raise
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.remove(container, name)
            if isinstance(exc, Exception) and not isinstance(exc, LaunchError):
                doing = f"start container {name}"
                if "DeviceRequests" in config["HostConfig"]:  # the likeliest reason, where none
                    gpus = config["HostConfig"]["DeviceRequests"][0]["Count"]
                    doing += f" with the {gpus} GPU(s) its task asks for (Resources(gpus={gpus}))"
                raise engine_error(doing, exc) from exc
            raise
        return container, stream

    async def _remove_made(self, name: str) -> bool:
        """Remove the container named ``name``: True if the engine had made it."""
        assert self.docker is not None
        container = self.docker.containers.container(name)
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                await container.delete(force=True, v=True)
        except Exception as exc:
            if error_status(exc) == NOT_FOUND:
                return False  # not made, or not yet
            await self.remove(container, name)  # (retried, or left to the closing sweep)
        return True

    async def _watch(self, name: str) -> None:
        """Remove the container named ``name`` should the engine make it after its
        create call lost its answer, until the engine could still be making it."""
        try:
            while anyio.current_time() < self._unsure[name] and self.docker is not None:
                await anyio.sleep(0.5)
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        await self.docker.containers.container(name).show()
                except Exception as exc:
                    log.debug("watching for container %s: %s", name, exc)
                    continue  # not made (yet), or the engine is away: look again
                with anyio.CancelScope(shield=True):
                    await self.remove(self.docker.containers.container(name), name)
                return
        finally:
            del self._unsure[name]
            if not self._unsure and self._unsure_done is not None:
                self._unsure_done.set()

    async def remove(self, container: DockerContainer, name: str) -> bool:
        """Kill and remove a container (a forced removal). False when that failed.

        What could not be removed is remembered for the sweep at close.

        Cancellation: stops asking: the container may stay (and is not
        remembered for the sweep, which finds it by its label). Callers that
        must not strand one shield this call.
        """
        failures = 0
        conflicts = 0
        while True:
            try:
                with anyio.fail_after(CALL_TIMEOUT):
                    await container.delete(force=True, v=True)
            except Exception as exc:
                status = error_status(exc)
                if status == NOT_FOUND:  # gone
                    break
                log.debug("could not remove container %s: %s", name, exc)
                if status == CONFLICT and conflicts < CONFLICT_RETRIES:
                    # Another removal is under way (ours, from elsewhere): it may fail,
                    # so "gone" is only what the engine says once it is over.
                    conflicts += 1
                    await anyio.sleep(min(0.05 * 2**conflicts, 1.0))
                    continue
                failures += 1
                if unreachable(exc) or failures == 3 or status == CONFLICT:
                    self._leftovers[container.id] = name
                    return False
                await anyio.sleep(0.5 * failures)
            else:
                break
        self._leftovers.pop(container.id, None)
        return True

    async def close(self) -> None:
        """Wait for the watches (a minute at most), then sweep: the last removals.

        Cancellation: the launcher's close shields it.
        """
        while self._unsure and self.docker is not None:  # (for a minute at most)
            if self._unsure_done is None or self._unsure_done.is_set():
                self._unsure_done = anyio.Event()
            await self._unsure_done.wait()
        if self.docker is not None:
            await self._sweep()

    async def _sweep(self) -> None:
        """Remove what removal missed (the engine was away): ours by label only."""
        assert self.docker is not None
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                found = await self.docker.containers.list(
                    all=True, filters={"label": [f"{EXECUTOR_LABEL}={self.executor_id}"]}
                )
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
        else:
            for container in found:
                names = {str(name).lstrip("/") for name in container["Names"] or ()}
                if not names & self.kept:
                    await self.remove(container, container.id[:12])
            # Named, never seen (a create whose answer was lost): gone now, or removed now.
            for key, name in list(self._leftovers.items()):
                if key == name:
                    await self.remove(self.docker.containers.container(name), name)
            problem = "the engine refused"
        if self._leftovers:
            log.warning(
                "could not remove %d container(s) of executor %s (%s); run "
                "`asyncexec docker prune --executor %s` once the engine is back",
                len(self._leftovers),
                self.executor_id,
                problem,
                self.executor_id,
            )
