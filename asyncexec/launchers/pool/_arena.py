"""Where a local pool's large arguments travel: shared memory, or a memory file.

A worker that can take file descriptors (a local socket pair on Linux, see
``PoolLauncher.fd_payloads``) is sent arguments of :data:`FD_PAYLOAD` bytes or
more outside their task's frame, with no trip through the socket's small
buffers.

A pool makes one memory file (Linux ``memfd_create``) the first time a task's
arguments are large, maps it, and passes it once to each worker that needs it
(:class:`~asyncexec._messages.SharedMemory`). A task's arguments are then
written into a region of it, and its frame says where (``TaskSpec.outside_at``);
the worker copies them out when the frame arrives. The region is freed when the
task has ended, so a task sent again after its worker died finds it intact.

Its pages are allocated once and used again (first fit keeps the regions low),
where a memory file per task pays the kernel for fresh pages every time: that
was most of the cost of a large argument. Arguments too large for it (or
that find it full) go in a memory file of their own (:func:`memory_file`),
passed with the frame.
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Sequence

__all__ = ["FD_PAYLOAD", "SHARED_PART_MAX", "SharedArena", "memory_file"]

#: Regions start at multiples of this (a cache line).
_ALIGN = 64

#: Arguments (and their buffers) of at least this many bytes go to a worker that
#: can take file descriptors outside the frame, not through the socket (see
#: ``PoolLauncher.fd_payloads``): in the pool's shared memory, or when that is
#: full, in a memory file of their own.
FD_PAYLOAD = 1 << 17
#: Arguments larger than this go in a memory file of their own, never in shared
#: memory (which would keep that many bytes allocated as long as the pool lives).
SHARED_PART_MAX = 16 << 20


def memory_file(parts: list[bytes]) -> int:
    """An anonymous memory file holding ``parts`` (Linux ``memfd_create``): its fd."""
    fd = os.memfd_create("asyncexec-args", os.MFD_CLOEXEC)
    try:
        for part in parts:
            with memoryview(part) as view:
                while view:
                    view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


class SharedArena:
    """A memory file of ``size`` bytes, mapped here, handed out in regions.

    Raises:
        OSError: the file cannot be made or mapped (no ``memfd_create``, no fds).
    """

    def __init__(self, size: int) -> None:
        if not hasattr(os, "memfd_create"):
            raise OSError("memory files need Linux (os.memfd_create)")
        self.size = size
        self.fd = os.memfd_create("asyncexec-shared", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)  # sparse: pages are allocated when first written
            self._map: mmap.mmap | None = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self._free: list[tuple[int, int]] = [(0, size)]  # (start, length), by start
        self._used: dict[int, int] = {}  # start -> length

    def __repr__(self) -> str:
        used = sum(self._used.values())
        return f"<SharedArena {used} of {self.size} bytes in {len(self._used)} regions>"

    @property
    def in_use(self) -> int:
        """Bytes handed out and not freed."""
        return sum(self._used.values())

    def put(self, parts: Sequence[bytes]) -> int | None:
        """Write ``parts`` one after the other into a free region: its start.

        None when no free region is large enough (or the arena is closed).
        """
        if self._map is None:
            return None
        total = sum(map(len, parts))
        length = max(_ALIGN, (total + _ALIGN - 1) // _ALIGN * _ALIGN)
        index = next((i for i, (_, free) in enumerate(self._free) if free >= length), None)
        if index is None:
            return None
        start, free = self._free[index]
        if free == length:
            del self._free[index]
        else:
            self._free[index] = (start + length, free - length)
        self._used[start] = length
        at = start
        for part in parts:
            self._map[at : at + len(part)] = part
            at += len(part)
        return start

    def free(self, start: int) -> None:
        """Give a region back (merged with free neighbours). Idempotent."""
        length = self._used.pop(start, None)
        if length is None:
            return
        free = self._free
        index = bisect.bisect_left(free, (start, 0))
        end = start + length
        if index < len(free) and free[index][0] == end:  # the next one is free: merge
            end += free.pop(index)[1]
        if index and free[index - 1][0] + free[index - 1][1] == start:  # so is the previous
            start = free[index - 1][0]
            free[index - 1] = (start, end - start)
        else:
            free.insert(index, (start, end - start))

    def close(self) -> None:
        """Unmap and close (workers keep their own mappings). Idempotent."""
        if self._map is not None:
            self._map.close()
            self._map = None
            self._used.clear()
            os.close(self.fd)
