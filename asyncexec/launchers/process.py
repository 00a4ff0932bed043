"""A pool of worker processes: :class:`ProcessLauncher` and :class:`ProcessExecutor`.

Each worker is a fresh interpreter running ``python -m asyncexec.worker serve``
(never a fork of the event loop's process), in a session of its own, talking
length-framed msgpack over a private socket pair, so the task's stdout and
stderr stay the driver's own. A worker that dies fails only the task it
held; killing a task kills its worker's whole process group, and a new worker
takes its place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal

import anyio
from anyio.abc import (
    ByteReceiveStream,
    ByteSendStream,
    Process,
    UNIXSocketStream,
)

import asyncexec

from .._codec import HEADER, decode_message, dumps, encode_frame, hostname, versions
from .._exceptions import LaunchError, describe_exit
from .._executor import BaseExecutor
from .._messages import ErrorInfo, Hello, JobRef, Message, Outcome, Ready, Setup, TaskSpec
from .._options import TaskOptions
from .._worker import version_mismatch
from ..abc import Launcher
from ._local import LocalJob, LocalLauncher

__all__ = ["ProcessExecutor", "ProcessLauncher"]

log = logging.getLogger("asyncexec")

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(asyncexec.__file__)))
_READ_SIZE = 1 << 20


class _FrameReader:
    """Reads whole frames from a byte stream; safe to cancel between frames."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

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
            buffer += await self._stream.receive(max(65536, min(wanted, _READ_SIZE)))


class _Job(LocalJob):
    __slots__ = ("worker",)

    def __init__(self, task_id: str, worker: _Worker) -> None:
        super().__init__(task_id)
        self.worker = worker


class _Worker:
    """One worker process and its channel: a socket, or its stdin and stdout."""

    __slots__ = (
        "dead",
        "exited",
        "job",
        "pid",
        "process",
        "reader",
        "retiring",
        "send_lock",
        "sender",
        "socket",
        "tasks_run",
    )

    def __init__(self, process: Process, socket_stream: UNIXSocketStream | None) -> None:
        self.process = process
        self.pid = process.pid
        self.socket = socket_stream
        if socket_stream is not None:
            self.sender: ByteSendStream = socket_stream
            self.reader = _FrameReader(socket_stream)
        else:
            assert process.stdin is not None and process.stdout is not None
            self.sender = process.stdin
            self.reader = _FrameReader(process.stdout)
        self.job: _Job | None = None
        self.tasks_run = 0
        self.retiring = False
        self.dead = False  # killed or silent: never hand it a task again
        self.send_lock = anyio.Lock()
        self.exited = anyio.Event()

    def kill(self) -> None:
        self.dead = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    @property
    def usable(self) -> bool:
        if self.dead or self.retiring or self.exited.is_set():
            return False
        if _has_exited(self.pid):
            # Died while idle, and its reader has not run yet: asyncio's buffered
            # send would not even fail. Never hand it a task.
            self.dead = True
            return False
        return True

    async def send(self, frame: bytes) -> None:
        # trio's send_all ends with a checkpoint, during which the worker may answer,
        # become idle and be handed the next task: writes must take turns.
        async with self.send_lock:
            await self.sender.send(frame)

    async def close_input(self) -> None:
        """Tell the worker no more tasks come: it exits when idle."""
        with contextlib.suppress(Exception):
            async with self.send_lock:
                if self.socket is not None:
                    await self.socket.send_eof()
                else:
                    await self.sender.aclose()

    async def aclose(self) -> None:
        """Close the channel and reap the process (which must be exiting)."""
        if self.socket is not None:
            await self.socket.aclose()
        await self.process.aclose()


def _has_exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (the event loop does)."""
    if not hasattr(os, "waitid"):
        return False
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, pid, flags) is not None
    except ChildProcessError:
        return True  # already reaped


class ProcessLauncher(LocalLauncher[_Job]):
    """Runs tasks in a pool of ``n_workers`` worker processes.

    Args:
        n_workers: worker processes at most.
        python: the interpreter the workers run.
        env: environment variables added to the driver's for the workers.
        initializer: a callable each worker runs once at start.
        max_tasks_per_worker: replace a worker after this many tasks.
        eager: start every worker when the pool opens (else on first need).
        startup_timeout: seconds a worker may take to say hello.
        transport: ``"socket"`` (a private socket pair; the task's stdout and
            stderr are the driver's) or ``"stdio"`` (the worker's stdin and
            stdout, as over SSH; the task's stdout goes to stderr).
    """

    def __init__(
        self,
        n_workers: int,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        initializer: Callable[[], object] | None = None,
        max_tasks_per_worker: int | None = None,
        eager: bool = True,
        startup_timeout: float = 60.0,
        transport: Literal["socket", "stdio"] = "socket",
    ) -> None:
        if transport not in ("socket", "stdio"):
            raise ValueError(f"transport must be 'socket' or 'stdio', got {transport!r}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError(f"max_tasks_per_worker must be >= 1, got {max_tasks_per_worker!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        super().__init__()
        self._n_workers = n_workers
        self._python = python
        self._env = dict(env or {})
        self._initializer = dumps(initializer) if initializer is not None else None
        self._max_tasks = max_tasks_per_worker
        self._eager = eager
        self._startup_timeout = startup_timeout
        self._transport = transport
        self._workers: set[_Worker] = set()
        self._idle: deque[_Worker] = deque()
        self._spawning = 0
        self._capacity: anyio.Event | None = None  # made on entry: Events need a running loop
        self._closed = False
        self._host = hostname()

    def __repr__(self) -> str:
        return f"<ProcessLauncher {len(self._workers)}/{self._n_workers} workers>"

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        self._capacity = anyio.Event()
        if self._eager:
            async with anyio.create_task_group() as spawners:
                for _ in range(self._n_workers):
                    spawners.start_soon(self._spawn_idle)

    async def aclose(self) -> None:
        """Ask idle workers to exit, kill the rest after a grace period, reap all."""
        self._closed = True
        self._wake()
        workers = list(self._workers)
        for worker in workers:
            if worker.job is not None:
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

    # -- the seam -------------------------------------------------------------------

    async def start(self, task: TaskSpec) -> JobRef:
        frame = encode_frame(task)
        while True:
            worker = await self._checkout()
            job = _Job(task.task_id, worker)
            worker.job = job
            self._jobs[task.task_id] = job
            # Shielded: a frame cut in half by a cancellation would garble the channel.
            # A cancellation is seen at the caller's next await, which then kills the job.
            with anyio.CancelScope(shield=True):
                try:
                    await worker.send(frame)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    # It died while idle: the task never reached it. Another worker takes it.
                    worker.dead = True
                    worker.job = None
                    self._jobs.pop(task.task_id, None)
                    continue
            return JobRef(kind="process", native_id=task.task_id, host=self._host)

    async def cancel(self, ref: JobRef) -> None:
        job = self._jobs.pop(ref.native_id, None)
        if job is None or job.done.is_set():
            return
        job.worker.kill()
        await job.worker.exited.wait()

    # -- workers --------------------------------------------------------------------

    async def _checkout(self) -> _Worker:
        while True:
            if self._closed:
                raise LaunchError("the process pool is closed")
            while self._idle:
                worker = self._idle.popleft()
                if worker.usable:
                    return worker
            if len(self._workers) + self._spawning < self._n_workers:
                return await self._spawn()
            if self._capacity is None or self._capacity.is_set():
                self._capacity = anyio.Event()
            await self._capacity.wait()

    async def _spawn_idle(self) -> None:
        self._make_idle(await self._spawn())

    def _make_idle(self, worker: _Worker) -> None:
        self._idle.append(worker)
        self._wake()

    def _wake(self) -> None:
        if self._capacity is not None:
            self._capacity.set()

    async def _spawn(self) -> _Worker:
        assert self._tg is not None
        self._spawning += 1
        try:
            worker = await self._start_worker()
        finally:
            self._spawning -= 1
        if self._closed or self._tg is None:
            with anyio.CancelScope(shield=True):
                worker.kill()
                await worker.aclose()
            raise LaunchError("the process pool is closed")
        self._workers.add(worker)
        self._tg.start_soon(self._read_loop, worker)
        return worker

    async def _start_worker(self) -> _Worker:
        command = [self._python, "-m", "asyncexec.worker", "serve"]
        try:
            if self._transport == "stdio":
                process = await anyio.open_process(
                    [*command, "--stdio"],
                    stderr=None,
                    start_new_session=True,
                    env=self._worker_env(),
                )
                worker = _Worker(process, None)
            else:
                parent, child = socket.socketpair()
                try:
                    process = await anyio.open_process(
                        [*command, "--fd", str(child.fileno())],
                        stdin=subprocess.DEVNULL,
                        stdout=None,
                        stderr=None,
                        pass_fds=(child.fileno(),),
                        start_new_session=True,
                        env=self._worker_env(),
                    )
                except BaseException:
                    parent.close()
                    raise
                finally:
                    child.close()
                worker = _Worker(process, await UNIXSocketStream.from_socket(parent))
        except OSError as exc:
            raise LaunchError(f"cannot start a worker with {self._python}: {exc}") from exc
        try:
            with anyio.fail_after(self._startup_timeout):
                await self._handshake(worker)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                worker.kill()
                returncode = await worker.process.wait()
                await worker.aclose()
            if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
                text, _ = describe_exit(returncode)
                raise LaunchError(f"a worker died while starting: {text}") from None
            if isinstance(exc, TimeoutError):
                raise LaunchError(
                    f"a worker did not start within {self._startup_timeout:g} s"
                ) from None
            if isinstance(exc, Exception) and not isinstance(exc, LaunchError):
                raise LaunchError(
                    f"a worker's first words were not asyncexec's protocol ({exc}); "
                    "does something print to stdout when Python starts?"
                ) from exc
            raise
        return worker

    async def _handshake(self, worker: _Worker) -> None:
        hello = await worker.reader.read()
        if not isinstance(hello, Hello):
            raise LaunchError(f"the worker spoke first with {type(hello).__name__}, not Hello")
        mismatch = version_mismatch(versions(), hello.versions)
        if mismatch is not None:
            raise LaunchError(f"{self._python} cannot run our tasks: {mismatch}")
        setup = Setup(
            sys_path=[entry for entry in sys.path if entry], initializer=self._initializer
        )
        await worker.send(encode_frame(setup))
        ready = await worker.reader.read()
        if not isinstance(ready, Ready):
            raise LaunchError(f"the worker answered Setup with {type(ready).__name__}")
        if ready.error is not None:
            raise LaunchError(
                f"the worker initializer raised {ready.error.type_name}: {ready.error.message}\n"
                f"{ready.error.traceback}"
            )

    def _worker_env(self) -> dict[str, str]:
        env = {**os.environ, **self._env}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
        env["ASYNCEXEC_PARENT_PID"] = str(os.getpid())
        return env

    async def _read_loop(self, worker: _Worker) -> None:
        try:
            while True:
                message = await worker.reader.read()
                if isinstance(message, Outcome):
                    self._complete(worker, message)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except Exception:
            # A garbled frame: this worker can no longer be trusted. (Never let the
            # error escape: this task group wraps the caller's code.)
            log.exception("worker %d sent an unreadable message; killing it", worker.pid)
            worker.kill()
        finally:
            worker.dead = True  # at once: _bury awaits before the worker leaves the pool
            with anyio.CancelScope(shield=True):
                await self._bury(worker)

    def _complete(self, worker: _Worker, outcome: Outcome) -> None:
        if worker.job is None or worker.job.task_id != outcome.task_id:
            log.error("worker %d answered for a task it was not given; killing it", worker.pid)
            worker.kill()  # its job, if any, is then settled as lost
            return
        job, worker.job = worker.job, None
        job.settle(outcome)
        if worker.dead:
            return  # killed after it answered (cancel, time limit): it is going away
        worker.tasks_run += 1
        if self._max_tasks is not None and worker.tasks_run >= self._max_tasks:
            worker.retiring = True
            assert self._tg is not None
            self._tg.start_soon(self._retire, worker)
        else:
            self._make_idle(worker)

    async def _retire(self, worker: _Worker) -> None:
        await worker.close_input()

    async def _bury(self, worker: _Worker) -> None:
        """A worker's socket closed: reap it and fail the task it held."""
        with anyio.move_on_after(5):
            await worker.process.wait()
        if worker.process.returncode is None:
            worker.kill()
        returncode = await worker.process.wait()
        await worker.aclose()
        self._workers.discard(worker)
        job, worker.job = worker.job, None
        if job is not None and not job.done.is_set():
            text, state = describe_exit(returncode)
            lost = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
            job.settle(
                Outcome(
                    task_id=job.task_id,
                    status="lost",
                    error=lost,
                    exit_code=returncode,
                    state=state,
                    pid=worker.pid,
                    host=self._host,
                )
            )
        worker.exited.set()
        self._wake()
        if self._eager and not self._closed and self._tg is not None:
            self._tg.start_soon(self._replace)

    async def _replace(self) -> None:
        if len(self._workers) + self._spawning >= self._n_workers or self._closed:
            return
        try:
            await self._spawn_idle()
        except Exception:  # never escape: the next start() tries again and reports it
            if not self._closed:
                log.warning("could not replace a worker", exc_info=True)


class ProcessExecutor(BaseExecutor):
    """Run tasks in a pool of worker processes on this machine.

    Args:
        n_workers: worker processes (default: ``os.cpu_count()``).
        max_tasks_per_worker: replace each worker after this many tasks.
        initializer: a callable each worker runs once when it starts; if it
            raises, starting the pool fails with :class:`LaunchError`.
        python: the interpreter the workers run (same minor version and
            cloudpickle as the driver, or the handshake refuses it).
        env: environment variables added to the driver's for the workers.
        eager: start all workers on entering ``async with`` (default) or on need.
        options: default :class:`TaskOptions`.
        max_pending: queued tasks at most before ``submit`` waits.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        max_tasks_per_worker: int | None = None,
        initializer: Callable[[], object] | None = None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        eager: bool = True,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        super().__init__(n_workers or os.cpu_count() or 1, options=options, max_pending=max_pending)
        # Made (and so validated) now rather than on entering the pool.
        self._process_launcher = ProcessLauncher(
            self.n_workers,
            python=python,
            env=env,
            initializer=initializer,
            max_tasks_per_worker=max_tasks_per_worker,
            eager=eager,
        )

    def _create_launcher(self) -> Launcher:
        return self._process_launcher
