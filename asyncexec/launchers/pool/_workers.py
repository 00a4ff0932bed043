"""A pool's workers and the tasks they hold: :class:`PoolWorker`, :class:`PoolJob`.

A :class:`PoolWorker` is one long-lived worker as the pool sees it: its
channel (frames are posted to it, and written at once or by its writer,
:meth:`PoolWorker.write_posted`, in order), the jobs it was sent and has not answered (oldest first:
the first may be running), and how to kill and reap it, which each kind of
worker (a local process, a remote one, a container) says. A :class:`PoolJob`
is a task handed to the pool, with its frame, kept until it ends so that
another worker can take it should its own die before starting it; its large
arguments may travel outside the frame (:meth:`PoolJob.put_outside`).
"""

from __future__ import annotations

import abc
import os
import socket

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream

from ..._codec import encode_frame
from ..._exceptions import describe_exit
from ..._messages import Outcome, TaskSpec
from .._base import Job
from ._arena import SharedArena, memory_file
from ._channel import FrameReader, rights, wait_writable

__all__ = ["PoolJob", "PoolWorker"]


class PoolJob(Job):
    """A task handed to a pool: queued at a worker, running there, or between workers."""

    __slots__ = (
        "arena",
        "changed",
        "exclusive",
        "fd",
        "frame",
        "logs",
        "outside",
        "region",
        "request",
        "task",
        "worker",
    )

    def __init__(self, task_id: str, frame: bytes | None, exclusive: bool) -> None:
        super().__init__(task_id)
        self.frame = frame  # kept: should its worker die first, another worker takes it
        #: Or the task, its frame made when it is first handed over: with large
        #: arguments (then outside the frame, as many bytes as ``outside``), or
        #: pinned to CPUs (chosen for the worker it goes to).
        self.task: TaskSpec | None = None
        self.outside = 0
        self.fd: int | None = None  # in a memory file sent with the frame (and kept too)...
        self.arena: SharedArena | None = None  # ...or in the pool's shared memory,
        self.region: int | None = None  # there (kept until it ends, for the same reason)
        self.exclusive = exclusive  # never queued behind another task (time limit, cpus)
        #: The CPUs and GPUs a launcher gives the task's worker itself (a one-shot container).
        self.request: tuple[float | None, int | None] | None = None
        self.worker: PoolWorker | None = None
        self.changed: anyio.Event | None = None  # set when it ends or may have started
        #: Its log_stdout and log_stderr, written here (a worker that cannot see them).
        self.logs: tuple[str | None, str | None] | None = None

    def settle(self, outcome: Outcome) -> None:
        self.release()
        super().settle(outcome)

    def release(self) -> None:
        """Free where its arguments are kept outside the frame: no worker needs them now."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.arena is not None and self.region is not None:
            self.arena.free(self.region)
            self.region = None

    def put_outside(self, arena: SharedArena | None) -> bool:
        """Put its large arguments outside its frame, and make the frame.

        The worker copies them from there when the frame arrives, with no trip
        through the socket's small buffers. First choice: ``arena``, the pool's
        shared memory, whose pages are already allocated; else a memory file
        passed with the frame; else (out of file descriptors) the frame after
        all. Whether they went in a memory file of their own.
        """
        task = self.task
        assert task is not None
        parts = [task.args, *task.buffers]
        outside = msgspec.structs.replace(
            task, args=b"", buffers=(), outside=[len(part) for part in parts]
        )
        region = arena.put(parts) if arena is not None else None
        if arena is not None and region is not None:
            outside.outside_at = region
            self.arena, self.region = arena, region
        else:
            try:
                self.fd = memory_file(parts)
            except OSError:
                self.frame = encode_frame(task)
                self.task = None
                self.outside = 0
                return False
        try:
            self.frame = encode_frame(outside)
        except BaseException:
            self.release()
            raise
        self.task = None
        return self.fd is not None

    @property
    def running(self) -> bool:
        """Whether it may have started: it is the oldest its worker has not answered."""
        worker = self.worker
        return worker is not None and next(iter(worker.jobs), None) == self.task_id

    def notify(self) -> None:
        if self.changed is not None:
            self.changed.set()


class PoolWorker(abc.ABC):
    """One long-lived worker and its channel, as a :class:`PoolLauncher` sees it."""

    #: The worker's process id where it runs, for the outcome of a lost task.
    pid: int | None = None
    #: The channel's non-blocking socket, when there is one: frames are written to it
    #: at once when nothing else is being written (no event-loop turn in between).
    raw_socket: socket.socket | None = None
    #: The CPUs the worker may use (its Hello says), where it can pin tasks to some.
    affinity: list[int] | None = None
    #: The machine it runs on, as far as the pool tells places apart: workers of one
    #: place share its CPUs.
    place: object = None
    #: The task pinned to CPUs it was last handed, and those CPUs (while the task is
    #: among its jobs, it holds them).
    pinned: tuple[str, list[int]] | None = None

    def __init__(self, sender: ByteSendStream, receiver: ByteReceiveStream) -> None:
        self.sender = sender
        self.reader = FrameReader(receiver)
        self.jobs: dict[str, PoolJob] = {}  # sent to it and not answered, oldest first
        self.tasks_sent = 0
        self.retiring = False
        self.dead = False  # killed or silent: never hand it a task again
        self.send_lock = anyio.Lock()
        self.exited = anyio.Event()
        self.outbox: list[bytes] = []  # frames posted, written together by the writer
        self.outbox_fds: list[int] = []  # file descriptors to send with them (fd_payloads)
        self.writing = False  # the writer holds frames it has not finished writing
        self.has_shared = False  # the pool's shared memory was sent to it
        self.outside_bytes = 0  # bytes of arguments its jobs have outside their frames
        self.posted = anyio.Event()

    @abc.abstractmethod
    def kill(self) -> None:
        """Start killing the worker and all it runs; must not block. Sets ``dead``."""

    @abc.abstractmethod
    async def close_input(self) -> None:
        """Tell the worker no more tasks come: it exits when idle (or is stopped).

        Cancellation: the input may be left open; the pool kills a worker that
        has not exited a few seconds after it closes.
        """

    @abc.abstractmethod
    async def wait_exit(self) -> int | None:
        """Wait until the worker has exited; its exit status if known.

        Cancellation: stops the waiting only; the worker goes on, and
        ``wait_exit`` may be called again.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the channel and whatever is left of the worker. Never raises.

        Cancellation: the pool always calls it shielded, after the worker has
        exited (or been killed): it runs to its end.
        """

    def describe_exit(self, exit_code: int | None) -> tuple[str, str | None]:
        """What to tell the user about a worker that died so: a text and a state."""
        return describe_exit(exit_code)

    def has_exited(self) -> bool:
        """A cheap check that the worker is gone, before its reader has noticed."""
        return False

    @property
    def usable(self) -> bool:
        if self.dead or self.retiring or self.exited.is_set():
            return False
        if self.has_exited():
            # Died while idle, and its reader has not run yet: a buffered send
            # would not even fail. Never hand it a task.
            self.dead = True
            return False
        return True

    def post(self, frame: bytes, *, now: bool = True, fd: int | None = None) -> None:
        """Send a frame: at once if the socket takes it, else by the writer, in order.

        ``now=False`` leaves it to the writer even then, for a worker that is busy
        anyway: it sends all that was posted in this turn of the event loop in one
        write (one system call for a burst of tasks, not one each). ``fd`` is
        passed with the frame (over ``raw_socket``: only where ``fd_payloads``).
        """
        # Frames must leave in the order they are posted: only when nothing waits or
        # is being written may one skip the writer. (File descriptors may arrive
        # before their frame, never after: the worker queues them, in order.)
        idle = not self.outbox and not self.writing and not self.send_lock.locked()
        raw = self.raw_socket
        if now and raw is not None and idle:
            try:
                written = raw.send(frame) if fd is None else raw.sendmsg([frame], rights([fd]))
            except OSError:  # full, or a dead peer: the writer's send fails too and handles it
                written = 0
            if written == len(frame):
                return
            if written:
                fd = None  # it went with the first part
            frame = frame[written:]
        self.outbox.append(frame)
        if fd is not None:
            self.outbox_fds.append(fd)
        if len(self.outbox) == 1:  # (with more, the writer was woken for the first)
            self.posted.set()

    async def send_with_fds(self, data: bytes, fds: list[int]) -> None:
        """Send ``data`` over ``raw_socket``, passing ``fds`` with its first part.

        Cancellation: may cut ``data`` short, which garbles the channel: the
        writer (:meth:`write_posted`) calls it shielded.
        """
        raw = self.raw_socket
        assert raw is not None
        async with self.send_lock:
            while True:
                try:
                    written = raw.sendmsg([data], rights(fds))
                    break
                except BlockingIOError:
                    await wait_writable(raw)
            if written < len(data):
                await self.sender.send(data[written:])

    async def write_posted(self) -> None:
        """Send what is posted, all of it in one write each time, until the worker is gone.

        The pool runs it in a task of its own for each worker (the writer).

        Cancellation: a write in progress finishes first (shielded: a frame cut
        in half would garble the channel); what is posted afterwards is not sent.
        """
        while True:
            await self.posted.wait()
            self.posted = anyio.Event()
            if self.exited.is_set():
                return
            frames, self.outbox = self.outbox, []
            fds, self.outbox_fds = self.outbox_fds, []
            if not frames:
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self.writing = True
            # Shielded: a frame cut in half by a cancellation would garble the channel.
            with anyio.CancelScope(shield=True):
                try:
                    if fds:
                        await self.send_with_fds(data, fds)
                    else:
                        await self.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self.kill()  # its reader ends; the pool moves the jobs that did not start
                    return
                finally:
                    self.writing = False

    async def send(self, frame: bytes) -> None:
        """Send a frame now, after any write in progress.

        Cancellation: may cut the frame short, which garbles the channel: the
        writer (:meth:`write_posted`) calls it shielded, and a handshake cut
        short kills the worker.
        """
        # trio's send_all ends with a checkpoint, during which the worker may answer,
        # become idle and be handed the next task: writes must take turns.
        async with self.send_lock:
            await self.sender.send(frame)
