"""Threads in this process: :class:`ThreadLauncher` and :class:`ThreadExecutor`.

Threads share the process, so a crash takes the driver with it, ``env`` and
``Resources`` (cpus, memory_mb, gpus) cannot be per task (they are refused:
``Resources`` at ``submit``), and stopping a running
task is best effort: an exception is raised inside its thread (with stopit's
``async_raise``), which interrupts Python code at its next bytecode but not a
call blocked in C (``time.sleep(60)`` ends first). The future is settled at
once either way.

The threads share one process, so the executor's ``setup`` hook runs once,
when the executor opens, and its ``teardown`` hook once, when it closes (see
:class:`ThreadExecutor`). ``log_stdout`` / ``log_stderr`` get what the task's
thread writes to ``sys.stdout`` / ``sys.stderr`` as it writes it (not what
C code or child processes write to the file descriptors).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

import anyio

from .. import BaseExecutor
from .._arguments import remembers_arguments
from .._codec import describe_exception, loads
from .._exceptions import LaunchError, SetupFailed
from .._hooks import Hook, Hooks, make_hooks
from .._messages import JobRef, Outcome, TaskSpec
from .._options import TaskOptions, check_workers
from .._runtime import TAIL_BYTES
from .._stopit import async_raise
from .._worker import execute
from ..abc import Launcher
from ._base import BaseLauncher, Job

__all__ = ["ThreadExecutor", "ThreadLauncher", "run_in_this_thread"]

log = logging.getLogger("asyncexec")


class _ThreadStopped(BaseException):
    """Raised inside a thread whose task was cancelled or timed out."""


class _Job(Job):
    __slots__ = ("cancelled", "lock", "running", "scope", "spec", "thread_id")

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec.task_id)
        self.spec = spec
        self.lock = threading.Lock()
        self.running = False
        self.cancelled = False  # set before the thread got to it: it must not run at all
        self.thread_id: int | None = None
        self.scope: anyio.CancelScope | None = None


class ThreadLauncher(BaseLauncher[_Job]):
    """Runs tasks in up to ``n_workers`` threads of this process.

    Args:
        n_workers: threads at once.
        setup: a callable run once in a worker thread when the launcher opens
            (see :class:`ThreadExecutor`).
        teardown: a callable run once in a worker thread when it closes.
    """

    can_kill = True  # Python code only; see the module docstring
    isolates_crashes = False
    #: None: threads share their process's CPUs, address space and devices.
    honours_resources: frozenset[str] = frozenset()

    def __init__(
        self, n_workers: int, *, setup: Hook | None = None, teardown: Hook | None = None
    ) -> None:
        check_workers(n_workers)
        super().__init__()
        self._n_workers = n_workers
        self._limiter: anyio.CapacityLimiter | None = None  # made on entry, in the event loop
        # Pickled as tasks are, so that what works here works on the other backends.
        self.hooks = make_hooks(setup, teardown)
        self._teardown: Hooks | None = None  # once setup ran: the teardown is due

    async def _open(self) -> None:
        self._limiter = anyio.CapacityLimiter(self._n_workers)
        if self.hooks.setup is not None or self.hooks.teardown is not None:
            await anyio.to_thread.run_sync(_set_up, self.hooks)
            self._teardown = self.hooks

    async def start(self, task: TaskSpec) -> JobRef:
        if task.env:
            raise LaunchError("threads share one environment: use ProcessExecutor for per-task env")
        if task.memory_mb is not None:
            raise LaunchError(
                "threads share one address space: use ProcessExecutor for memory limits"
            )
        if task.cpus is not None or task.gpus is not None:
            raise LaunchError(
                "threads share their process's CPUs and devices: use ProcessExecutor for "
                "cpus, DockerExecutor or SlurmExecutor for gpus"
            )
        if self._tg is None:
            raise LaunchError("ThreadLauncher is not open")
        job = _Job(task)
        self._jobs[task.task_id] = job
        self._tg.start_soon(self._drive, job)
        return JobRef(kind="thread", native_id=task.task_id)

    async def _drive(self, job: _Job) -> None:
        with anyio.CancelScope() as scope:
            job.scope = scope
            try:
                outcome = await anyio.to_thread.run_sync(
                    _call, job, abandon_on_cancel=True, limiter=self._limiter
                )
            except Exception as exc:  # never escape: this task group wraps the caller's code
                error = describe_exception(exc)
                outcome = Outcome(task_id=job.task_id, status="raised", error=error)
            job.settle(outcome)
        job.settle(Outcome(task_id=job.task_id, status="cancelled"))

    async def cancel(self, ref: JobRef) -> None:
        """Stop the task's thread (an exception raised in it), and stop waiting for it.

        A thread cannot be killed: one blocked in C code (``time.sleep``, a
        system call) runs on until it returns to Python; the outcome is
        ``cancelled`` without waiting for it all the same.

        Cancellation: never waits, so never interrupted.
        """
        job = self._jobs.pop(ref.native_id, None)
        if job is None:
            return
        with job.lock:
            job.cancelled = True
            if job.running and job.thread_id is not None:
                async_raise(job.thread_id, _ThreadStopped)
                job.running = False
        if job.scope is not None:
            job.scope.cancel()

    async def aclose(self) -> None:
        """Cancel every task still here (see :meth:`cancel`), then run the teardown
        hook in a worker thread (once, if setup ran).

        Cancellation: the executor calls it shielded; cut short while the teardown
        hook runs, it stops waiting for it (the hook runs on in its thread).
        """
        # The task group wraps the caller's code until __aexit__: cancel the jobs, not it.
        for native_id in list(self._jobs):
            await self.cancel(JobRef(kind="thread", native_id=native_id))
        hooks, self._teardown = self._teardown, None
        if hooks is not None and hooks.teardown is not None:
            await anyio.to_thread.run_sync(_tear_down, hooks.teardown, abandon_on_cancel=True)


def _set_up(hooks: Hooks) -> None:
    """Load both hooks and run the setup hook (in a worker thread).

    Raises:
        SetupFailed: it raised, or a hook could not be unpickled.
    """
    doing = "cannot unpickle the teardown hook"
    try:
        if hooks.teardown is not None:
            loads(hooks.teardown)
        if hooks.setup is not None:
            doing = "cannot unpickle the setup hook"
            setup = loads(hooks.setup)
            doing = "setup raised"
            setup()
    except Exception as exc:
        error = describe_exception(exc)
        raise SetupFailed(
            f"the ThreadExecutor could not be set up: {doing} {error.type_name}: {error.message}",
            remote_traceback=error.traceback,
        ) from exc


def _tear_down(teardown: bytes) -> None:
    """Run the teardown hook (in a worker thread); what it raises is logged."""
    try:
        loads(teardown)()
    except Exception:
        log.exception("the ThreadExecutor's teardown hook raised")


def _call(job: _Job) -> Outcome:
    with job.lock:
        if job.cancelled:
            return Outcome(task_id=job.task_id, status="cancelled")
        job.thread_id = threading.get_ident()
        job.running = True
    try:
        return run_in_this_thread(job.spec)
    finally:
        with job.lock:
            job.running = False


class ThreadExecutor(BaseExecutor):
    """Run tasks in threads of this process (no isolation; see the module docs).

    Useful for I/O-bound functions and for code that releases the GIL. Tasks
    are still pickled, so what works here works on every other backend.

    ``Resources`` (cpus, memory_mb, gpus) are refused: ``submit`` raises
    :class:`~asyncexec.LaunchError` (threads share one process), as ``env``
    makes the task fail with one.

    ``log_stdout`` / ``log_stderr`` (``TaskOptions``) get what the task's
    thread writes to ``sys.stdout`` / ``sys.stderr``, as it writes it (other
    threads print as before; what C code or child processes write to the file
    descriptors is not caught: use ProcessExecutor for that). A file that
    cannot be opened fails the task with that ``OSError``.

    Args:
        n_workers: threads at once (default: ``min(32, cpu_count + 4)``).
        setup: a callable of no argument run once, in a worker thread, when
            the executor opens (``async with``), before any task: the threads
            share the process, so what it sets up is there for every task. If
            it raises, entering the executor raises
            :class:`~asyncexec.SetupFailed` (naming its exception), and no
            task runs. It is pickled and unpickled, as tasks are.
        teardown: a callable of no argument run once, in a worker thread, when
            the executor closes, after its tasks (a task that could not be
            stopped may still run; see the module's documentation). Not when
            setup raised; what it raises is logged (logger ``asyncexec``).
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        n_workers: int | None = None,
        *,
        setup: Hook | None = None,
        teardown: Hook | None = None,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        if n_workers is None:
            n_workers = min(32, (os.cpu_count() or 1) + 4)
        super().__init__(n_workers, options=options, max_pending=max_pending)
        make_hooks(setup, teardown)  # checked now rather than on entering the executor
        self._hooks = (setup, teardown)

    def _create_launcher(self) -> Launcher:
        setup, teardown = self._hooks
        return ThreadLauncher(self.n_workers, setup=setup, teardown=teardown)


# -- output capture per thread -----------------------------------------------------


class _Sink:
    """Keeps the last TAIL_BYTES characters written, and appends to a log file (with
    ``lazily``, opened at the first write, its directory checked now)."""

    def __init__(self, path: str | None, lazily: bool = False) -> None:
        self._parts: deque[str] = deque()
        self._size = 0
        self._file: IO[str] | None = None
        self._path = path
        if path and lazily:
            if not os.path.isdir(os.path.dirname(path) or "."):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        elif path:
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, text: str) -> None:
        if self._file is None and self._path and text:
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        if self._file is not None:
            self._file.write(text)
        self._parts.append(text)
        self._size += len(text)
        while self._size - len(self._parts[0]) >= TAIL_BYTES:
            self._size -= len(self._parts.popleft())

    def tail(self) -> str:
        return "".join(self._parts)[-TAIL_BYTES:]

    def close(self) -> None:
        self._path = None
        if self._file is not None:
            self._file.close()
            self._file = None


class _Router(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr, sending each thread's writes to its sink."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.sinks: dict[int, _Sink] = {}

    def write(self, text: str) -> int:
        sink = self.sinks.get(threading.get_ident())
        if sink is None:
            return int(self.original.write(text))
        sink.write(text)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return bool(self.original.isatty())

    def fileno(self) -> int:
        return int(self.original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.original, "encoding", "utf-8"))


_router_lock = threading.Lock()


def _router(name: str) -> _Router:
    current = getattr(sys, name)
    if isinstance(current, _Router):
        return current
    router = _Router(current)
    setattr(sys, name, router)
    return router


def _restore(name: str, router: _Router) -> None:
    if getattr(sys, name) is router and not router.sinks:
        setattr(sys, name, router.original)


def run_in_this_thread(spec: TaskSpec) -> Outcome:
    """Run ``spec`` in the calling thread and answer its outcome, as a
    :class:`ThreadLauncher`'s threads do: what the task prints is captured for
    it alone (other threads print as before), then restored.

    Blocks the thread until the task ends: nothing stops it (in the event
    loop's thread, nothing else runs meanwhile: the task is the loop's).
    """
    return execute(spec, capture=_thread_capture)


@contextlib.contextmanager
def _thread_capture(spec: TaskSpec) -> Iterator[Callable[[], tuple[str, str]]]:
    out = _Sink(spec.stdout_path, spec.logs_at_end)
    try:
        err = _Sink(spec.stderr_path, spec.logs_at_end)
    except BaseException:
        out.close()
        raise
    ident = threading.get_ident()
    with _router_lock:
        routers = (_router("stdout"), _router("stderr"))
        routers[0].sinks[ident] = out
        routers[1].sinks[ident] = err
    try:
        yield lambda: (out.tail(), err.tail())
    finally:
        with _router_lock:
            for name, router in zip(("stdout", "stderr"), routers, strict=True):
                router.sinks.pop(ident, None)
                _restore(name, router)
        out.close()
        err.close()
