"""The worker's end of its channel: length-framed msgpack over blocking file descriptors.

A pool worker (:mod:`asyncexec._worker`) reads the driver's messages and
writes its answers here: over one socket (local pools, which may pass file
descriptors with the frames: shared memory and memory files holding a task's
arguments) or over stdin and stdout (SSH channels and attached containers).
"""

from __future__ import annotations

import _socket
import os
import select
import sys
from collections import deque
from typing import Any

from ._codec import take_frames
from ._messages import SharedMemory, TaskSpec

__all__ = ["WorkerChannel", "stdio_channel"]


class WorkerChannel:
    """Frames over a pair of blocking file descriptors (one socket, or stdin and stdout).

    On a socket, the driver may pass file descriptors with the frames, arriving
    no later than their frames: the pool's shared memory (:class:`SharedMemory`),
    and memory files holding a task's arguments (``TaskSpec.outside``). A task's
    arguments are copied out of either when its frame arrives.
    """

    def __init__(self, read_fd: int, write_fd: int, *, is_socket: bool = False) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.buffer = bytearray()
        self.ended = False
        self.drained = False  # the last read took all there was
        self.fds: deque[int] = deque()  # received, not yet claimed by a message
        self.shared: Any = None  # the pool's shared memory, mapped (an mmap.mmap)
        # _socket, not socket: the module's enums would slow every worker's start.
        self.socket = _socket.socket(fileno=os.dup(read_fd)) if is_socket else None
        # Is there input? A poll object asks with one cheap system call (select builds
        # its sets each time; a read that finds nothing raises).
        self.poller = select.poll()
        self.poller.register(read_fd, select.POLLIN)
        self.chunk = memoryview(bytearray(_READ_SIZE))  # reads land here (not a new 1 MiB)

    def _read(self, block: bool) -> int | None:
        """Add what arrived to ``buffer``: how many bytes (0: the input ended); None if
        nothing has and not ``block``.

        Sets ``drained``: whether it took all there was (a short read; but a read
        stops after data that came with file descriptors, whatever follows).
        """
        if not block and not self.poller.poll(0):
            return None
        chunk = self.chunk
        if self.socket is None:
            size = os.readv(self.read_fd, [chunk])
            self.drained = size < _READ_SIZE
            self.buffer += chunk[:size]
            return size
        size, ancillary, flags, _ = self.socket.recvmsg_into([chunk], _ANCILLARY)
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                for start in range(0, usable, 4):
                    fd = int.from_bytes(payload[start : start + 4], sys.byteorder, signed=True)
                    self.fds.append(fd)
        if flags & _socket.MSG_CTRUNC:
            # Tasks would then take each other's memory files: end here instead.
            raise OSError(
                "file descriptors sent with a task were dropped on arrival "
                "(is the worker out of file descriptors?)"
            )
        self.drained = size < _READ_SIZE and not ancillary
        self.buffer += chunk[:size]
        return size

    def take(self, wait: bool) -> list[Any] | None:
        """The messages that have arrived (at least one if ``wait``); None once input ended."""
        messages = self._frames()
        while not self.ended:
            size = self._read(block=wait and not messages)
            if size is None:
                break  # nothing more for now
            if not size:
                self.ended = True
                break
            messages.extend(self._frames())
            if self.drained and messages:
                break  # it read all there was (what comes next is read before the next task)
        if not messages and self.ended:
            return None
        return messages

    def _frames(self) -> list[Any]:
        if not self.buffer:
            return []
        messages = take_frames(self.buffer)
        for message in messages:
            if isinstance(message, TaskSpec) and message.outside is not None:
                self._take_outside(message)
            elif isinstance(message, SharedMemory):
                self._map_shared(message.size)
        return messages

    def _take_outside(self, spec: TaskSpec) -> None:
        """Copy a task's arguments (and buffers) from where the driver put them."""
        sizes = spec.outside
        assert sizes is not None
        if spec.outside_at is None:
            parts = _read_memory_file(self.fds.popleft(), sizes)
        elif self.shared is None:
            raise ValueError("a task points into shared memory that was never sent")
        else:
            parts = []
            start = spec.outside_at
            for size in sizes:
                parts.append(self.shared[start : start + size])
                start += size
        spec.args, spec.buffers = parts[0], tuple(parts[1:])

    def _map_shared(self, size: int) -> None:
        import mmap  # only where a pool sends shared memory

        fd = self.fds.popleft()
        try:
            self.shared = mmap.mmap(fd, size, access=mmap.ACCESS_READ)  # tasks cannot write
        finally:
            os.close(fd)

    def send(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        written = os.write(self.write_fd, data)
        if written < len(data):
            with memoryview(data) as view:
                view = view[written:]
                while view:
                    view = view[os.write(self.write_fd, view) :]


_READ_SIZE = 1 << 20
#: Room for the file descriptors passed with one read (Linux passes at most 253 a message).
_ANCILLARY = _socket.CMSG_SPACE(4 * 256)


def _read_memory_file(fd: int, sizes: list[int]) -> list[bytes]:
    """The parts, of these sizes, of a memory file the driver passed; the fd is closed."""
    try:
        parts = []
        offset = 0
        for size in sizes:
            part = os.pread(fd, size, offset)
            while len(part) < size:  # a read of over 2 GiB stops short
                more = os.pread(fd, size - len(part), offset + len(part))
                if not more:
                    raise EOFError(f"a task's memory file ends at {offset + len(part)} bytes")
                part += more
            parts.append(part)
            offset += size
        return parts
    finally:
        os.close(fd)


def stdio_channel() -> WorkerChannel:
    """Take stdin/stdout for the protocol; the task's prints then go to stderr."""
    sys.stdout.flush()
    reader = os.dup(0)
    writer = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return WorkerChannel(reader, writer)
