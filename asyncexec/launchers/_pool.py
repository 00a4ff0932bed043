"""What pools of long-lived workers share, whatever a worker is.

A worker (a local process, a container...) speaks the framed protocol of
:mod:`asyncexec._worker` over some byte channel: it says :class:`Hello`, is
given a :class:`Setup`, answers :class:`Ready`, then runs the
:class:`TaskSpec` s it is sent in order, answering each with an
:class:`Outcome`. :class:`PoolLauncher` keeps each busy worker fed with tasks
waiting behind the running one (so it never waits for a round trip), reads the
answers, replaces the dead and fails exactly the task a dead worker was
running: the oldest it had not answered. The others never started, and go to
another worker. A task still queued is cancelled with a :class:`Cancel`
message; the running one by killing its worker. Subclasses only start, kill
and reap workers.

A task is handed to a worker only once its handshake is over: a new worker
killed before that had no task, and the task it was started for waits for the
next one, still on its first attempt (up to ``STARTS_PER_TASK`` workers).

A task with ``Resources(cpus=...)`` goes to an idle worker only (it starts when
handed over), with the CPUs to pin it to (``TaskSpec.affinity``): of those the
worker may use (its :class:`Hello` says), the ones least taken by the pinned
tasks that other workers of the same place (machine) run now.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream

from .._codec import HEADER, decode_message, dumps, encode_frame, hostname, take_frames, versions
from .._exceptions import LaunchError, describe_exit
from .._messages import (
    Cancel,
    ErrorInfo,
    Hello,
    JobRef,
    Message,
    Outcome,
    Ready,
    Setup,
    SharedMemory,
    TaskSpec,
)
from .._options import check_workers
from .._worker import version_mismatch
from ._base import BaseLauncher, Job
from ._shared import SharedArena

if TYPE_CHECKING:
    import asyncio

try:
    import sniffio
except ImportError:  # optional in recent anyio, which then takes a running asyncio loop as asyncio
    sniffio = None  # type: ignore[assignment]

__all__ = ["FrameReader", "PoolJob", "PoolLauncher", "PoolWorker"]

log = logging.getLogger("asyncexec")

_READ_SIZE = 1 << 20


#: anyio >= 4.7 names them wait_readable and wait_writable (the wait_socket_ names
#: are deprecated there).
_wait_readable: Callable[[socket.socket], Awaitable[None]] = (
    getattr(anyio, "wait_readable", None) or anyio.wait_socket_readable
)
_wait_writable: Callable[[socket.socket], Awaitable[None]] = (
    getattr(anyio, "wait_writable", None) or anyio.wait_socket_writable
)

#: Arguments (and their buffers) of at least this many bytes go to a worker that
#: can take file descriptors outside the frame, not through the socket (see
#: ``PoolLauncher.fd_payloads``): in the pool's shared memory, or when that is
#: full, in a memory file of their own.
FD_PAYLOAD = 1 << 17
#: A busy worker with this many bytes of arguments outside frames sent to it is
#: sent no more (so the shared memory is not filled by a few deep queues).
QUEUED_BYTES = 4 << 20
#: The size of a pool's shared memory (its pages are allocated as they are used).
SHARED_MEMORY = 64 << 20
#: Arguments larger than this go in a memory file of their own, never in shared
#: memory (which would keep that many bytes allocated as long as the pool lives).
SHARED_PART_MAX = 16 << 20


def _memory_file(parts: list[bytes]) -> int:
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


def _rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
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
        """The next message. Raises anyio.EndOfStream when the peer is gone."""
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


class _DiedStarting(LaunchError):
    """A worker was killed before its handshake ended: it had been sent no task."""


class PoolJob(Job):
    """A task handed to a pool: queued at a worker, running there, or between workers."""

    __slots__ = (
        "arena",
        "changed",
        "exclusive",
        "fd",
        "frame",
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
        self.outbox: list[bytes] = []  # frames posted, written together by the pool's writer
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
        """Tell the worker no more tasks come: it exits when idle (or is stopped)."""

    @abc.abstractmethod
    async def wait_exit(self) -> int | None:
        """Wait until the worker has exited; its exit status if known. Cancel-safe."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the channel and whatever is left of the worker. Never raises."""

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
                written = raw.send(frame) if fd is None else raw.sendmsg([frame], _rights([fd]))
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
        """Send ``data`` over ``raw_socket``, passing ``fds`` with its first part."""
        raw = self.raw_socket
        assert raw is not None
        async with self.send_lock:
            while True:
                try:
                    written = raw.sendmsg([data], _rights(fds))
                    break
                except BlockingIOError:
                    await _wait_writable(raw)
            if written < len(data):
                await self.sender.send(data[written:])

    async def send(self, frame: bytes) -> None:
        # trio's send_all ends with a checkpoint, during which the worker may answer,
        # become idle and be handed the next task: writes must take turns.
        async with self.send_lock:
            await self.sender.send(frame)


class PoolLauncher(BaseLauncher[PoolJob]):
    """Runs tasks on up to ``n_workers`` long-lived workers made by :meth:`_connect`.

    Args:
        n_workers: workers at most.
        initializer: a callable each worker runs once at start.
        max_tasks_per_worker: replace a worker after this many tasks.
        eager: start every worker when the pool opens (else on first need).
        startup_timeout: seconds a worker may take to say hello.
        prefetch: at most this many tasks sent ahead to a busy worker, waiting
            behind the one it runs (0: a task goes only to an idle worker). How
            many are sent follows how long tasks take: enough to cover about
            :attr:`QUEUED_WORK` seconds of work, so short tasks never wait for
            a round trip and long ones never wait behind each other. Tasks
            with a time limit always wait for an idle worker: their clock
            starts when they are handed over.
    """

    #: Seconds of work to keep queued at a busy worker (see ``prefetch``).
    QUEUED_WORK = 0.01
    #: Workers started, at most, for a task whose new workers are killed while
    #: starting (before their handshake ends, so before they were sent any task):
    #: then the task fails with :class:`LaunchError`, having never run.
    STARTS_PER_TASK = 3

    #: Whether the workers take file descriptors over ``raw_socket`` (a local
    #: socket pair on Linux): then arguments of FD_PAYLOAD bytes or more travel
    #: in a memory file passed with the task, not in the frame.
    fd_payloads = False
    #: Large ``bytes`` arguments come as buffers, out of the pickle: in the frame,
    #: or outside it where ``fd_payloads`` (no copy of them at submit).
    takes_buffers = True

    #: The ``kind`` of the JobRefs this launcher hands out.
    kind = "pool"
    fast_start = True  # try_start hands a task to a worker with room
    #: The worker pins a task to its CPUs and caps its address space (RLIMIT_AS).
    honours_resources = frozenset({"cpus", "memory_mb"})

    def __init__(
        self,
        n_workers: int,
        *,
        initializer: Callable[[], object] | None = None,
        max_tasks_per_worker: int | None = None,
        eager: bool = True,
        startup_timeout: float = 60.0,
        prefetch: int = 0,
    ) -> None:
        check_workers(n_workers)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError(f"max_tasks_per_worker must be >= 1, got {max_tasks_per_worker!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout!r}")
        super().__init__()
        self._n_workers = n_workers
        self._initializer = dumps(initializer) if initializer is not None else None
        self._max_tasks = max_tasks_per_worker
        self._eager = eager
        self._startup_timeout = startup_timeout
        self.prefetch = prefetch
        self._depth = 0  # tasks queued per busy worker now: follows the tasks' durations
        self._mean_run = 0.0  # seconds a task runs, a moving average
        self._workers: dict[PoolWorker, None] = {}  # in the order they started
        self._spawning = 0
        self._spawns_done: anyio.Event | None = None  # set when no spawn is in progress
        self._capacity: anyio.Event | None = None  # made on entry: Events need a running loop
        self._closed = False
        self._host = hostname()
        self._shared: SharedArena | None = None  # for large arguments (fd_payloads)
        self._shared_failed = False

    # -- what subclasses provide ----------------------------------------------------

    @abc.abstractmethod
    async def _connect(self, task_id: str | None) -> PoolWorker:
        """Start one worker and open its channel (the caller does the handshake).

        ``task_id`` names the one task the worker is started for, if it is.

        Raises:
            LaunchError: it cannot be started.
        """

    @abc.abstractmethod
    def _where(self) -> str:
        """Where workers run, for error messages (``"python3.11"``, ``"image x"``)."""

    def _setup(self) -> Setup:
        """The Setup message every new worker receives."""
        return Setup(initializer=self._initializer)

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        self._capacity = anyio.Event()
        if self._eager:
            async with anyio.create_task_group() as spawners:
                for _ in range(self._n_workers):
                    spawners.start_soon(self._spawn_idle)

    async def aclose(self) -> None:
        """Ask idle workers to exit, kill the rest after a grace period, reap all.

        Cancellation: not shielded here (``__aexit__`` shields it): it may stop
        with workers not yet told to exit, or not yet reaped. The pool takes no
        task any more; calling it again finishes the job.
        """
        self._closed = True
        self._wake()
        while self._spawning:  # a worker being started now is disposed of by _spawn
            if self._spawns_done is None or self._spawns_done.is_set():
                self._spawns_done = anyio.Event()
            await self._spawns_done.wait()
        workers = list(self._workers)
        for worker in workers:
            if worker.jobs:
                worker.kill()
            else:
                await worker.close_input()
        with anyio.move_on_after(5):
            for worker in workers:
                await worker.exited.wait()
        for worker in workers:
            if not worker.exited.is_set():
                worker.kill()
        for worker in workers:
            await worker.exited.wait()
        if self._shared is not None:
            self._shared.close()  # (jobs that end later free nothing: idempotent)

    # -- the seam -------------------------------------------------------------------

    async def start(self, task: TaskSpec) -> JobRef:
        job = self._new_job(task)
        self._jobs[task.task_id] = job
        try:
            await self._dispatch(job)
        except BaseException:
            if job.worker is None:
                self._jobs.pop(task.task_id, None)
                job.release()
            raise
        return JobRef(kind=self.kind, native_id=task.task_id, host=self._host)

    def _new_job(self, task: TaskSpec) -> PoolJob:
        exclusive = task.time_limit is not None or task.cpus is not None
        if task.gpus is not None and "gpus" not in self.honours_resources:
            raise LaunchError(f"{type(self).__name__} cannot give a task GPUs")
        if self.fd_payloads:
            size = len(task.args) + sum(map(len, task.buffers)) if task.buffers else len(task.args)
            if size >= FD_PAYLOAD:  # placed outside the frame when handed to a worker
                job = PoolJob(task.task_id, None, exclusive)
                job.task = task
                job.outside = size
                return job
        if task.cpus is not None:  # its CPUs are chosen when it is handed to a worker
            job = PoolJob(task.task_id, None, exclusive)
            job.task = task
            return job
        return PoolJob(task.task_id, encode_frame(task), exclusive)

    def _make_frame(self, job: PoolJob, worker: PoolWorker) -> None:
        """Make the frame of a job handed to ``worker`` now (see ``PoolJob.task``)."""
        task = job.task
        assert task is not None
        if task.cpus is not None:
            affinity = self._choose_cpus(worker, task.cpus)
            worker.pinned = (job.task_id, affinity or [])
            job.task = task = msgspec.structs.replace(task, affinity=affinity)
        if job.outside:
            self._place(job)
        else:
            job.frame = encode_frame(task)
            job.task = None

    def _choose_cpus(self, worker: PoolWorker, cpus: float) -> list[int] | None:
        """The ``ceil(cpus)`` CPUs of ``worker`` least taken by the pinned tasks running
        on the other workers of its place (lowest first among equals); None where the
        worker cannot pin, or has too few CPUs (it then refuses the task itself)."""
        usable = worker.affinity
        wanted = math.ceil(cpus)
        if not usable or wanted > len(usable):
            return None
        taken: dict[int, int] = {}
        for other in self._workers:
            pinned = other.pinned
            if (
                other is not worker
                and pinned is not None
                and pinned[0] in other.jobs  # (it stops holding them once it ended)
                and other.place == worker.place
            ):
                for cpu in pinned[1]:
                    taken[cpu] = taken.get(cpu, 0) + 1
        return sorted(sorted(usable, key=lambda cpu: (taken.get(cpu, 0), cpu))[:wanted])

    def _place(self, job: PoolJob) -> None:
        """Put a job's large arguments outside its frame, and make the frame.

        The worker copies them from there when the frame arrives, with no trip
        through the socket's small buffers. First choice: the pool's shared memory,
        whose pages are already allocated; else a memory file passed with the frame;
        else (out of file descriptors) the frame after all.
        """
        task = job.task
        assert task is not None
        parts = [task.args, *task.buffers]
        outside = msgspec.structs.replace(
            task, args=b"", buffers=(), outside=[len(part) for part in parts]
        )
        arena = self._arena() if job.outside <= SHARED_PART_MAX else None
        region = arena.put(parts) if arena is not None else None
        if arena is not None and region is not None:
            outside.outside_at = region
            job.arena, job.region = arena, region
        else:
            try:
                job.fd = _memory_file(parts)
            except OSError:
                job.frame = encode_frame(task)
                job.task = None
                job.outside = 0
                return
        try:
            job.frame = encode_frame(outside)
        except BaseException:
            job.release()
            raise
        job.task = None

    def _arena(self) -> SharedArena | None:
        """The pool's shared memory, made on first need; None where it cannot be."""
        if self._shared is None and not self._shared_failed and not self._closed:
            try:
                self._shared = SharedArena(SHARED_MEMORY)
            except OSError as exc:
                self._shared_failed = True
                log.debug("no shared memory for large arguments (%s): memory files then", exc)
        return self._shared

    def try_start(self, task: TaskSpec, on_outcome: Callable[[Outcome], None]) -> JobRef | None:
        if self._closed or not self.fast_start:
            return None
        exclusive = task.time_limit is not None or task.cpus is not None
        worker, spawn = self._pick(exclusive)
        if worker is None or spawn:
            return None  # start() waits for room, or for the worker it starts
        task_id = task.task_id
        job = self._new_job(task)
        jobs = self._jobs

        def settled(outcome: Outcome) -> None:
            jobs.pop(task_id, None)
            on_outcome(outcome)

        job.callback = settled
        jobs[task_id] = job
        self._hand(job, worker)
        return JobRef(kind=self.kind, native_id=task_id, host=self._host)

    async def _dispatch(self, job: PoolJob) -> None:
        """Send a job to a worker (one that is idle, or has room in its queue)."""
        self._hand(job, await self._checkout(job.exclusive))

    def _hand(self, job: PoolJob, worker: PoolWorker) -> None:
        if job.finished:
            # Cancelled while it waited for a worker (after its own died): it never
            # runs, and where its arguments were may already hold another task's.
            return
        if job.frame is None:
            self._make_frame(job, worker)
        job.worker = worker
        worker.jobs[job.task_id] = job
        worker.tasks_sent += 1
        # Should the worker die before it runs the job, _bury gives the job to another.
        # A worker with a task before this one is busy: the writer batches its frames.
        now = len(worker.jobs) == 1
        worker.outside_bytes += job.outside
        arena = job.arena
        if arena is not None and not worker.has_shared:
            worker.has_shared = True  # once per worker, before the first task that needs it
            worker.post(encode_frame(SharedMemory(size=arena.size)), now=now, fd=arena.fd)
        worker.post(job.frame, now=now, fd=job.fd)  # type: ignore[arg-type]

    async def cancel(self, ref: JobRef) -> None:
        """Drop the task if it is queued at its worker, else kill that worker.

        Cancellation: a running task's worker is killed all the same (the kill
        is sent before the first wait). A queued one is dropped by its worker,
        unless the worker started it meanwhile: with nobody left to kill the
        worker, that task then runs to its end. The task is forgotten at once:
        a second ``cancel`` does nothing, and ``wait`` raises ``LaunchError``.
        The executor always calls it shielded.
        """
        job = self._jobs.pop(ref.native_id, None)
        if job is None:
            return
        while not job.finished:
            worker = job.worker
            if worker is None:  # between workers: it never runs
                job.settle(Outcome(task_id=job.task_id, status="cancelled"))
                return
            if not job.running and not worker.dead:
                # Still queued there: the worker drops it, unless it starts it meanwhile.
                job.changed = anyio.Event()
                worker.post(encode_frame(Cancel(task_id=job.task_id)))
                while not job.finished and job.worker is worker and not job.running:
                    await job.changed.wait()
                    job.changed = anyio.Event()
                continue  # dropped, started there, or moved (its worker died): look again
            # Running there (or its worker is dying): the worker goes, and the work with
            # it. A job that had not started is moved by _bury: then it is settled above.
            worker.kill()
            await worker.exited.wait()

    # -- workers --------------------------------------------------------------------

    async def _checkout(self, exclusive: bool) -> PoolWorker:
        """An idle worker; else (unless ``exclusive``) the least loaded with room.

        A worker started for the caller that is killed before its handshake ends
        was never handed a task: another is started in its place, up to
        :attr:`STARTS_PER_TASK` in all, and the last one's death is raised.
        """
        died = 0
        while True:
            if self._closed:
                raise LaunchError(f"the {self.kind} pool is closed")
            best, spawn = self._pick(exclusive)
            if spawn:
                try:
                    return await self._spawn()  # a new worker rather than a queue
                except _DiedStarting as exc:
                    died += 1
                    if died >= self.STARTS_PER_TASK:
                        raise LaunchError(
                            f"{exc} ({died} workers in a row died while starting)"
                        ) from None
                    log.info("%s; starting another", exc)
                    continue
            if best is not None:
                return best
            if self._capacity is None or self._capacity.is_set():
                self._capacity = anyio.Event()
            await self._capacity.wait()

    def _pick(self, exclusive: bool) -> tuple[PoolWorker | None, bool]:
        """The worker to send a task to now (None: none has room), and whether to
        start a new worker instead (when none is idle and the pool is not full)."""
        depth = self._depth
        while True:
            best: PoolWorker | None = None
            for worker in self._workers:
                load = len(worker.jobs)
                if load > depth or (exclusive and load) or not self._open_to(worker):
                    continue
                if load and worker.outside_bytes >= QUEUED_BYTES:
                    continue  # it has enough large arguments to copy for now
                if best is None or load < len(best.jobs):
                    best = worker
                    if not load:
                        break
            if best is not None and not best.jobs and not best.usable:
                # The one system call, for an idle worker only: is it alive? (A task
                # queued behind another at a worker that died is simply moved.)
                continue  # it is marked dead now: look again
            idle = best is not None and not best.jobs
            if not idle and len(self._workers) + self._spawning < self._n_workers:
                return None, True
            return best, False

    def _open_to(self, worker: PoolWorker) -> bool:
        """Whether the worker may be sent another task, as far as we know without asking."""
        if worker.dead or worker.retiring:  # (dead is set before exited)
            return False
        return self._max_tasks is None or worker.tasks_sent < self._max_tasks

    async def _spawn_idle(self) -> None:
        await self._spawn()
        self._wake()

    def _wake(self) -> None:
        capacity = self._capacity
        if capacity is not None:  # someone waits for room: once set, a waiter makes another
            self._capacity = None
            capacity.set()

    async def _spawn(self, task_id: str | None = None) -> PoolWorker:
        assert self._tg is not None
        self._spawning += 1  # until the worker is in the pool, or disposed of: aclose waits
        try:
            worker = await self._start_worker(task_id)
            if self._closed or self._tg is None:
                with anyio.CancelScope(shield=True):
                    worker.kill()
                    await worker.wait_exit()
                    await worker.aclose()
                raise LaunchError(f"the {self.kind} pool is closed")
            self._workers[worker] = None
            self._tg.start_soon(self._read_loop, worker)
            self._tg.start_soon(self._write_loop, worker)
        except BaseException:
            # Tasks that waited for this worker (a replacement) start one of their own.
            self._wake()
            raise
        finally:
            self._spawning -= 1
            if not self._spawning and self._spawns_done is not None:
                self._spawns_done.set()
        return worker

    async def _start_worker(self, task_id: str | None) -> PoolWorker:
        too_slow = f"a worker ({self._where()}) did not start within {self._startup_timeout:g} s"
        deadline = anyio.current_time() + self._startup_timeout
        try:
            with anyio.fail_after(self._startup_timeout):
                worker = await self._connect(task_id)
        except TimeoutError:
            raise LaunchError(too_slow) from None
        try:
            with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                await self._handshake(worker)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                exit_code = None
                if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
                    # It died by itself: its own exit status says why (before we kill it).
                    with anyio.move_on_after(5):
                        exit_code = await worker.wait_exit()
                worker.kill()
                reaped = await worker.wait_exit()
                exit_code = reaped if exit_code is None else exit_code
                await worker.aclose()
            if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
                text, state = worker.describe_exit(exit_code)
                # Killed (a signal, the OOM killer) or gone unseen: another may start.
                # One that exited by itself (a broken interpreter or environment) would
                # again.
                killed = state is not None or exit_code is None
                error = _DiedStarting if killed else LaunchError
                where = self._where()
                raise error(f"a worker died while starting ({where}): {text}") from None
            if isinstance(exc, TimeoutError):
                raise LaunchError(too_slow) from None
            if isinstance(exc, Exception) and not isinstance(exc, LaunchError):
                raise LaunchError(
                    f"a worker's first words ({self._where()}) were not asyncexec's protocol "
                    f"({exc}); does something print to stdout when Python starts?"
                ) from exc
            raise
        return worker

    async def _handshake(self, worker: PoolWorker) -> None:
        hello = await worker.reader.read()
        if not isinstance(hello, Hello):
            raise LaunchError(f"the worker spoke first with {type(hello).__name__}, not Hello")
        worker.pid = hello.pid
        worker.affinity = hello.affinity
        mismatch = version_mismatch(versions(), hello.versions)
        if mismatch is not None:
            raise LaunchError(f"{self._where()} cannot run our tasks: {mismatch}")
        await worker.send(encode_frame(self._setup()))
        ready = await worker.reader.read()
        if not isinstance(ready, Ready):
            raise LaunchError(f"the worker answered Setup with {type(ready).__name__}")
        if ready.error is not None:
            raise LaunchError(
                f"the worker initializer raised {ready.error.type_name}: {ready.error.message}\n"
                f"{ready.error.traceback}"
            )

    async def _read_loop(self, worker: PoolWorker) -> None:
        try:
            loop = _asyncio_loop() if worker.reader.raw_socket is not None else None
            if loop is None or not await self._read_in_callback(worker, loop):
                while True:
                    message = await worker.reader.read()
                    if isinstance(message, Outcome):
                        self._complete(worker, message)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except Exception:
            # A garbled frame: this worker can no longer be trusted. (Never let the
            # error escape: this task group wraps the caller's code.)
            log.exception("worker %s sent an unreadable message; killing it", worker.pid)
            worker.kill()
        finally:
            worker.dead = True  # at once: _bury awaits before the worker leaves the pool
            with anyio.CancelScope(shield=True):
                await self._bury(worker)

    async def _read_in_callback(self, worker: PoolWorker, loop: asyncio.AbstractEventLoop) -> bool:
        """On asyncio, read a worker's messages in the event loop's readiness callback.

        Outcomes are then handled in the turn of the loop that saw them arrive, not
        in a task it wakes (one turn less per round trip), and the socket stays
        registered (no epoll registration per wait). Returns once the channel
        ends (raising what ended it, as ``read`` would); False if the loop cannot
        watch the socket (the caller reads in this task instead).
        """
        reader = worker.reader
        assert reader.raw_socket is not None
        fd = reader.raw_socket.fileno()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                messages, eof = reader.read_available()
                for message in messages:
                    if isinstance(message, Outcome):
                        self._complete(worker, message)
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

    async def _write_loop(self, worker: PoolWorker) -> None:
        """Send what is posted to a worker, all of it in one write, until it is gone."""
        while True:
            await worker.posted.wait()
            worker.posted = anyio.Event()
            if worker.exited.is_set():
                return
            frames, worker.outbox = worker.outbox, []
            fds, worker.outbox_fds = worker.outbox_fds, []
            if not frames:
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            worker.writing = True
            # Shielded: a frame cut in half by a cancellation would garble the channel.
            with anyio.CancelScope(shield=True):
                try:
                    if fds:
                        await worker.send_with_fds(data, fds)
                    else:
                        await worker.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    worker.kill()  # its reader ends; _bury moves the jobs that did not start
                    return
                finally:
                    worker.writing = False

    def _complete(self, worker: PoolWorker, outcome: Outcome) -> None:
        job = worker.jobs.pop(outcome.task_id, None)
        if job is not None and job.outside:
            worker.outside_bytes -= job.outside
        if job is None:
            log.error("worker %s answered for a task it was not given; killing it", worker.pid)
            worker.kill()  # its jobs are then settled as lost, or go to another worker
            return
        job.settle(outcome)
        job.notify()
        if worker.jobs:  # the next one may be running now
            worker.jobs[next(iter(worker.jobs))].notify()
        if self.prefetch and outcome.started is not None and outcome.finished is not None:
            self._adapt(outcome.finished - outcome.started)
        if worker.dead:
            return  # killed after it answered (cancel, time limit): it is going away
        if not worker.jobs and not self._open_to(worker) and not worker.retiring:
            worker.retiring = True  # max_tasks_per_worker reached: replace it
            assert self._tg is not None
            self._tg.start_soon(worker.close_input)
        self._wake()

    def _adapt(self, run: float) -> None:
        """Queue enough tasks at busy workers to cover QUEUED_WORK seconds of their work."""
        mean = self._mean_run = run if not self._mean_run else 0.9 * self._mean_run + 0.1 * run
        self._depth = min(self.prefetch, int(self.QUEUED_WORK / max(mean, 1e-6)))

    async def _bury(self, worker: PoolWorker) -> None:
        """A worker's channel closed: reap it, fail the task it ran, move the queued ones."""
        exit_code: int | None = None
        with anyio.move_on_after(5) as waited:
            exit_code = await worker.wait_exit()
        if waited.cancelled_caught:
            worker.kill()
            exit_code = await worker.wait_exit()
        await worker.aclose()
        self._workers.pop(worker, None)
        jobs = list(worker.jobs.values())
        running = jobs[0] if jobs else None
        worker.jobs = {}
        for job in jobs:
            if job.finished:
                continue
            if job is running:
                text, state = worker.describe_exit(exit_code)
                lost = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
                job.settle(
                    Outcome(
                        task_id=job.task_id,
                        status="lost",
                        error=lost,
                        exit_code=exit_code,
                        state=state,
                        pid=worker.pid,
                        host=self._host,
                    )
                )
            else:  # queued behind the running one: it never started
                job.worker = None
                if self._tg is not None:
                    self._tg.start_soon(self._redispatch, job)
            job.notify()
        worker.exited.set()
        worker.posted.set()  # the writer ends
        self._wake()
        if self._eager and not self._closed and self._tg is not None:
            self._tg.start_soon(self._replace)

    async def _redispatch(self, job: PoolJob) -> None:
        if job.finished:
            return
        try:
            await self._dispatch(job)
        except Exception as exc:  # it never ran
            text = f"the {self.kind} pool could not run it: {exc}"
            if self._closed:  # (as a task that was running when the pool closed)
                lost = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
                job.settle(Outcome(task_id=job.task_id, status="lost", error=lost))
            else:  # no worker could start: as start() would have said
                refused = ErrorInfo(type_name="LaunchError", message=text, traceback="")
                job.settle(Outcome(task_id=job.task_id, status="refused", error=refused))
        job.notify()

    async def _replace(self) -> None:
        """Replace a dead worker; a failure is one line (the traceback at DEBUG).

        While the place is unreachable (an engine down, a host gone) every
        replacement fails the same way: a traceback each time would drown the
        log. Never raises: the next ``start`` tries again and reports it.
        """
        if len(self._workers) + self._spawning >= self._n_workers or self._closed:
            return
        try:
            await self._spawn_idle()
        except Exception as exc:
            if not self._closed:
                log.warning(
                    "could not replace a worker of %s: %s",
                    self._where(),
                    " ".join(str(exc).split()) or type(exc).__name__,
                )
                log.debug("could not replace a worker of %s", self._where(), exc_info=True)
