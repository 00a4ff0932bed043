"""The Docker engine as the launcher reaches it: one client, its errors, attached streams.

One aiodocker client per launcher (or per :func:`prune_containers` call) talks
HTTP to the engine, over its unix socket (or ``DOCKER_HOST``). Every attached
container holds one of the client's connections for its whole life, so the
client opened here has no cap on them over a unix socket, and refuses a pool
larger than the cap of any other transport. The engine's failures are
translated here, once: :class:`~asyncexec.BackendUnavailable` when it cannot
be reached, :class:`~asyncexec.LaunchError` when it refused.

A container's stdin, stdout and stderr are reached through ``docker attach``
(the worker's framed protocol on stdin and stdout, what the task prints on
stderr, copied to the driver's), and what it wrote to stdout can be read back
from its log.
"""

from __future__ import annotations

import codecs
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..._exceptions import BackendUnavailable, LaunchError

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.containers import DockerContainer
    from aiodocker.stream import Stream

log = logging.getLogger("asyncexec")

NOT_FOUND = 404
AIOHTTP = "aiodocker is built on aiohttp"
CONFLICT = 409
#: Seconds to connect to the engine, and to wait for one API call that cleans up.
CONNECT_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0
#: Times to ask again while the engine says another removal is under way (~1 min).
CONFLICT_RETRIES = 64


def import_aiodocker() -> Any:
    """aiodocker, or the install hint when it or aiohttp (its transport) is missing."""
    try:
        import aiodocker
        import aiohttp  # noqa: F401  (aiodocker imports it too: either missing lands here)
    except ImportError as exc:
        raise ImportError(
            f"the Docker backend needs aiodocker and aiohttp ({exc}): "
            "pip install 'asyncexec[docker]'"
        ) from exc
    return aiodocker


def error_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def maybe_done(exc: BaseException) -> bool:
    """Whether the engine may have done what a call that raised ``exc`` asked.

    Not when it answered (an HTTP status), nor when no connection was made; yes
    when the request may have reached it and its answer did not reach us (a
    timeout, a connection lost midway: aiodocker's status 900 for those too).
    """
    import aiohttp

    status = error_status(exc)
    if status is not None and status < 900:
        return False
    return not isinstance(exc.__context__, aiohttp.ClientConnectorError)


def unreachable(exc: BaseException) -> bool:
    """Whether a Docker error says the engine itself could not be reached."""
    status = error_status(exc)
    return status == 900 or isinstance(exc, OSError)  # aiodocker's code for "cannot connect"


def engine_error(doing: str, exc: BaseException) -> LaunchError:
    """The error to raise when the engine failed us while we were ``doing`` something."""
    if unreachable(exc):
        return BackendUnavailable(f"cannot {doing}: the Docker engine is unreachable: {exc}")
    return LaunchError(f"cannot {doing}: {exc}")


async def open_engine(url: str | None, connections: int = 0) -> aiodocker.Docker:
    """A client for the engine at ``url`` (default: DOCKER_HOST or the local socket).

    Every attached container holds one connection for its whole life, so the
    client must allow ``connections`` of them beside its API calls: aiohttp's
    default cap of 100 would deadlock a pool of 100 containers.
    """
    module = import_aiodocker()  # the install hint when aiodocker or aiohttp is missing
    import aiohttp

    timeout = aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
    where = url or os.environ.get("DOCKER_HOST") or "the local socket"
    try:
        docker: aiodocker.Docker = module.Docker(url=url, timeout=timeout)
        if isinstance(docker.connector, aiohttp.UnixConnector):
            path = docker.connector.path
            await docker.close()
            unlimited = aiohttp.UnixConnector(path, limit=0)
            docker = module.Docker(url="unix://localhost", connector=unlimited, timeout=timeout)
        elif docker.connector.limit and connections + 8 > docker.connector.limit:
            await docker.close()
            raise BackendUnavailable(
                f"{connections} containers need more connections than the client's "
                f"{docker.connector.limit} to {where}: use fewer workers"
            )
    except BackendUnavailable:
        raise
    except Exception as exc:  # aiodocker asserts when no socket exists and DOCKER_HOST is unset
        detail = str(exc) or "no DOCKER_HOST and no Docker socket"
        raise BackendUnavailable(f"no Docker engine to connect to at {where}: {detail}") from exc
    try:
        await docker.version()
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await close_engine(docker)
        if isinstance(exc, Exception):
            raise BackendUnavailable(f"cannot reach the Docker engine at {where}: {exc}") from exc
        raise
    return docker


async def close_engine(docker: aiodocker.Docker) -> None:
    """Close the client and its connections (aiodocker leaves a connector it was given open)."""
    try:
        await docker.close()
    finally:
        await docker.connector.close()


def attach(docker: aiodocker.Docker, container: DockerContainer) -> Stream:
    """A stream attached to the container's stdin, stdout and stderr.

    (aiodocker's ``attach`` first asks the engine whether the container has a
    TTY; ours never has, and that round trip is a tenth of a one-shot task's.)
    """
    from aiodocker.stream import Stream
    from yarl import URL

    query: dict[str, str | int] = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
    query.update(logs=0, detachKeys="")

    async def setup() -> tuple[URL, bytes | None, bool]:
        return URL(f"containers/{container.id}/attach").with_query(query), None, False

    return Stream(docker, setup, None)


class AttachedOutput(anyio.abc.ByteReceiveStream):
    """The container's stdout (the protocol); its stderr is copied to ours."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._pending = b""
        self._stderr = codecs.getincrementaldecoder("utf-8")("replace")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._pending:
            try:
                message = await self._stream.read_out()
            except Exception as exc:  # aiohttp's errors when the engine goes away
                raise anyio.BrokenResourceError from exc
            if message is None:
                raise anyio.EndOfStream
            if message.stream == 2:
                self._copy_stderr(message.data)
            else:
                self._pending = message.data
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    def _copy_stderr(self, data: bytes) -> None:
        text = self._stderr.decode(data)
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, AttributeError, ValueError):  # no stderr, or a closed one
            log.debug("a container's stderr: %s", text.rstrip())

    async def aclose(self) -> None:
        await self._stream.close()


class AttachedInput(anyio.abc.ByteSendStream):
    """The container's stdin."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.write_in(item)
        except Exception as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        await self._stream.close()

    async def send_eof(self) -> None:
        """End the container's stdin, keeping its stdout: the worker, idle, sees the
        end of its input and exits by itself (the engine closes a ``StdinOnce``
        container's stdin when its attached client half-closes)."""
        response = self._stream._resp
        connection = response.connection if response is not None else None
        transport = connection.transport if connection is not None else None
        if transport is None or not transport.can_write_eof():
            raise anyio.BrokenResourceError("the container's input cannot be half-closed")
        transport.write_eof()


async def stdout_of(docker: aiodocker.Docker, name: str) -> bytes:
    """What a container wrote to its stdout, from its log (the engine's multiplexed stream)."""
    async with docker._query(
        f"containers/{name}/logs", params={"stdout": "1", "stderr": "0"}
    ) as response:
        data = await response.read()
    out = bytearray()
    at = 0
    while at + 8 <= len(data):  # frames: stream (1 byte), 3 zero bytes, size (4, big-endian)
        size = int.from_bytes(data[at + 4 : at + 8], "big")
        if data[at] == 1:
            out += data[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)
