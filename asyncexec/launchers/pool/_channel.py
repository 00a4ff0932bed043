"""The framed channel between a pool and a worker: reading whole frames, fast.

A frame is a length header and a msgpack message (:mod:`asyncexec._codec`).
:class:`FrameReader` reads them from any byte stream; where the stream has a
non-blocking socket, straight from it. :func:`read_messages` hands every
message that arrives to a callback until the channel ends, and on asyncio does
so in the event loop's readiness callback (the fast path: one turn of the loop
less per round trip). Writing is the worker's (:class:`~.PoolWorker.post`);
:func:`rights` and :data:`wait_writable` are what it needs to pass file
descriptors with a frame.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ByteReceiveStream

from ..._codec import HEADER, decode_message, take_frames
from ..._messages import Message

if TYPE_CHECKING:
    import asyncio

try:
    import sniffio
except ImportError:  # optional in recent anyio, which then takes a running asyncio loop as asyncio
    sniffio = None  # type: ignore[assignment]

__all__ = ["FrameReader", "read_messages", "rights", "wait_writable"]

_READ_SIZE = 1 << 20


#: anyio >= 4.7 names them wait_readable and wait_writable (the wait_socket_ names
#: are deprecated there).
_wait_readable: Callable[[socket.socket], Awaitable[None]] = (
    getattr(anyio, "wait_readable", None) or anyio.wait_socket_readable
)
wait_writable: Callable[[socket.socket], Awaitable[None]] = (
    getattr(anyio, "wait_writable", None) or anyio.wait_socket_writable
)


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that passes ``fds`` over a Unix socket."""
    data = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, data)]


class FrameReader:
    """Reads whole frames from a byte stream; safe to cancel between frames."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        #: The stream's non-blocking socket, when it has one: read from it directly,
        #: waiting only when it has nothing (a stream's receive also yields to the
        #: event loop every time, an extra turn per message).
        self.raw_socket: socket.socket | None = None

    async def read(self) -> Message:
        """The next message. Raises anyio.EndOfStream when the peer is gone.

        Cancellation: nothing read is lost: the part of a frame read so far
        stays in the buffer, and the next ``read`` goes on from there.
        """
        buffer = self._buffer
        while True:
            if len(buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(buffer)
                end = HEADER.size + size
                if len(buffer) >= end:
                    with memoryview(buffer) as view:
                        message = decode_message(view[HEADER.size : end])
                    del buffer[:end]
                    return message
                wanted = end - len(buffer)
            else:
                wanted = HEADER.size
            size = max(65536, min(wanted, _READ_SIZE))
            raw = self.raw_socket
            if raw is None:
                buffer += await self._stream.receive(size)
                continue
            try:
                data = raw.recv(size)
            except BlockingIOError:
                await _wait_readable(raw)
                continue
            if not data:
                raise anyio.EndOfStream
            buffer += data

    def read_available(self) -> tuple[list[Message], bool]:
        """The whole messages that arrived, read without waiting (from ``raw_socket``),
        and whether the peer is gone (after them)."""
        raw = self.raw_socket
        assert raw is not None
        buffer = self._buffer
        ended = False
        while True:
            try:
                data = raw.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                ended = True
                break
            buffer += data
            if len(data) < _READ_SIZE:
                break
        return take_frames(buffer), ended


async def read_messages(reader: FrameReader, received: Callable[[Message], None]) -> None:
    """Call ``received`` with every message read, in order, until the channel ends.

    On asyncio (or uvloop), with a raw socket to read from, messages are read
    in the event loop's readiness callback (see :func:`_read_in_callback`);
    elsewhere in this task, one :meth:`FrameReader.read` at a time.

    Returns only by raising what ended the channel: ``anyio.EndOfStream``
    when the peer is gone, else a broken stream, an unreadable frame, or what
    ``received`` raised.

    Cancellation: stops reading between messages (none is lost: what was read
    of the next stays in the reader's buffer), and the socket is no longer
    watched.
    """
    loop = _asyncio_loop() if reader.raw_socket is not None else None
    if loop is None or not await _read_in_callback(reader, received, loop):
        while True:
            received(await reader.read())


async def _read_in_callback(
    reader: FrameReader, received: Callable[[Message], None], loop: asyncio.AbstractEventLoop
) -> bool:
    """On asyncio, read the messages in the event loop's readiness callback.

    Messages are then handled in the turn of the loop that saw them arrive, not
    in a task it wakes (one turn less per round trip), and the socket stays
    registered (no epoll registration per wait). Returns once the channel
    ends (raising what ended it, as ``read`` would); False if the loop cannot
    watch the socket (the caller reads in this task instead).
    """
    assert reader.raw_socket is not None
    fd = reader.raw_socket.fileno()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            messages, eof = reader.read_available()
            for message in messages:
                received(message)
            if eof:
                raise anyio.EndOfStream
        except BaseException as exc:
            loop.remove_reader(fd)
            if not ended.done():
                ended.set_exception(exc)

    # The callback runs in the context it was registered in, outside any task:
    # tell anyio there (the executor's callbacks start tasks, make events) which
    # library runs it, as it cannot sniff it without a current task.
    token = sniffio.current_async_library_cvar.set("asyncio") if sniffio else None
    try:
        loop.add_reader(fd, readable)
    except NotImplementedError:  # a loop without add_reader (Windows' proactor)
        return False
    finally:
        if token is not None:
            sniffio.current_async_library_cvar.reset(token)
    try:
        readable()  # what arrived before the callback was registered
        await ended
    finally:
        loop.remove_reader(fd)
    return True


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio event loop, if anyio runs on asyncio (or uvloop)."""
    if "asyncio" not in sys.modules:  # not imported: not running (spares trio the import)
        return None
    import asyncio

    if sniffio is not None:
        try:
            if sniffio.current_async_library() != "asyncio":
                return None
        except sniffio.AsyncLibraryNotFoundError:
            return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
