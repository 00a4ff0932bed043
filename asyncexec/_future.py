"""Future, its state, the AsyncResult / AsyncException pair, and Completion (futures as
they finish)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import sys
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import anyio

from ._exceptions import RemoteError, TaskCancelled
from ._messages import JobRef

if TYPE_CHECKING:
    from ._executor import BaseExecutor

__all__ = [
    "AsyncException",
    "AsyncResult",
    "Completion",
    "Future",
    "FutureState",
    "InvalidStateError",
    "TaskInfo",
]

T = TypeVar("T")

log = logging.getLogger("asyncexec")


class InvalidStateError(
    asyncio.InvalidStateError, concurrent.futures.InvalidStateError, ValueError
):
    """A finished task's value or error was asked for before it finished.

    Also asyncio's and ``concurrent.futures``' ``InvalidStateError`` (what their
    futures raise), and a ``ValueError`` (what ``exception()`` and
    ``successful()`` raised before).
    """


class FutureState(enum.Enum):
    """Where a task is in its life. The last three are final."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclasses.dataclass(slots=True)
class TaskInfo:
    """What is known about where and how a task ran. Filled in as it runs.

    Times are ``time.time()`` seconds. ``stdout``/``stderr`` hold the captured
    tails (when output capture was asked for). ``job_ref`` names the current
    attempt's work (None while a retry waits to be accepted): the one to store
    for a re-attach. ``job_refs`` holds every attempt's, oldest first.
    """

    name: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    job_ref: JobRef | None = None
    job_refs: list[JobRef] = dataclasses.field(default_factory=list)

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@final
class Future(Generic[T]):
    """The handle of one submitted task. Made only by executors.

    Await it for the value (``value = await fut``); a failure raises a
    :class:`TaskFailed` (for user exceptions, a :class:`RemoteError` that is also
    an instance of the original class).
    """

    __slots__ = (
        "__weakref__",
        "_accepted",
        "_callbacks",
        "_cancel_requested",
        "_error",
        "_error_tb",
        "_event",
        "_executor",
        "_info",
        "_loop",
        "_ready",
        "_state",
        "_task_id",
        "_value",
    )

    def __init__(
        self, executor: BaseExecutor, task_id: str, info: TaskInfo, loop: object = None
    ) -> None:
        self._executor = executor
        self._loop = loop  # the event loop its executor runs in (see running_loop())
        self._task_id = task_id
        self._state = FutureState.PENDING
        self._ready = False  # the state is final (a flag: hashing an enum member is slow)
        self._value: Any = None
        self._error: BaseException | None = None
        self._error_tb: TracebackType | None = None
        self._callbacks: list[Callable[[Future[T]], object]] | None = None
        self._event: anyio.Event | None = None
        self._accepted: anyio.Event | None = None  # set when running, or finished
        self._info = info
        self._cancel_requested = False

    def __repr__(self) -> str:
        return f"<Future {self._task_id} {self._state.name}>"

    @property
    def task_id(self) -> str:
        return self._task_id

    @property
    def state(self) -> FutureState:
        return self._state

    @property
    def info(self) -> TaskInfo:
        return self._info

    def ready(self) -> bool:
        """True once the task is finished, whatever the result."""
        return self._ready

    def successful(self) -> bool:
        """True if the task produced a value. Raises InvalidStateError if not ready."""
        self._check_ready()
        return self._state is FutureState.DONE

    def result(self) -> T:
        """The task's value, without waiting (as asyncio's ``Future.result``).

        For done callbacks and code that knows the task is finished.

        Raises:
            InvalidStateError: the task is not finished.
            TaskFailed: the error the task ended with (``TaskCancelled`` if cancelled).
        """
        self._check_ready()
        if self._state is FutureState.DONE:
            return self._value  # type: ignore[no-any-return]
        assert self._error is not None
        raise self._error.with_traceback(self._error_tb)

    def exception(self) -> BaseException | None:
        """The error the task ended with, or None (as asyncio's ``Future.exception``,
        but a cancelled task's is its ``TaskCancelled``, returned, not raised).

        Raises InvalidStateError if the task is not finished.
        """
        self._check_ready()
        return self._error

    def _check_ready(self) -> None:
        if not self._ready:
            raise InvalidStateError(f"task {self._task_id} is not finished")

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the task is finished or ``timeout`` seconds pass.

        Returns:
            Whether the task is finished.

        Cancellation: stops the waiting only; the task goes on.
        """
        if self._ready:
            return True
        if self._loop is not None and running_loop() is not self._loop:
            raise RuntimeError(
                f"task {self._task_id} belongs to an executor running in another event loop "
                "(another thread's, or another library's): wait for it there, or hand the "
                "waiting over to that loop (asyncio.run_coroutine_threadsafe, anyio.from_thread)"
            )
        if self._event is None:
            self._event = anyio.Event()
        if timeout is None:
            await self._event.wait()
        else:
            with anyio.move_on_after(timeout):
                await self._event.wait()
        return self._ready

    async def get(self, timeout: float | None = None) -> T:
        """The task's value, waiting up to ``timeout`` seconds (None: no limit).

        Raises:
            TimeoutError: (the builtin) the task was not finished in time; it goes on.
            TaskFailed: the task failed, was cancelled or timed out.

        Cancellation: stops the waiting only; the task goes on. Use
        ``executor.run`` or ``await fut.cancel()`` to stop the work too.
        """
        if not self.ready() and not await self.wait(timeout):
            raise TimeoutError(f"task {self._task_id} did not finish within {timeout} s")
        # (Re-raised with the traceback it settled with: awaiting again must not grow it.)
        return self.result()

    def __await__(self) -> Generator[Any, None, T]:
        return self.get().__await__()

    async def cancel(self) -> bool:
        """Cancel the task: a pending one never starts, a running one is killed.

        Returns once the work is stopped. Returns False if the task had already
        finished.

        Cancellation: stops the waiting only; the cancellation already asked
        for goes on (the task ends ``CANCELLED`` unless it finished first),
        and calling it again waits for it.
        """
        if self.ready():
            return False
        await self._executor.cancel(self)
        return self._state is FutureState.CANCELLED

    async def accepted(self, other_than: JobRef | None = None) -> JobRef | None:
        """Wait until the backend has accepted the task, or it ended; return its JobRef.

        The JobRef (``info.job_ref``) names the work where it runs: a driver
        that keeps it can follow the work after a crash (``executor.attach``).
        A task may wait in the backend's queue after this (a Slurm job): the
        future is RUNNING only once it runs. None if the task ended before a
        backend took it (cancelled while queued, refused). With ``other_than``
        (the JobRef of an attempt seen before), wait for another attempt's: a
        retry runs in new work (every attempt's is in ``info.job_refs``).

        Cancellation: cancelling the caller stops the waiting only; the task
        goes on.
        """
        while not self.ready():
            ref = self._info.job_ref
            if ref is not None and ref != other_than:
                return ref
            if self._accepted is None or self._accepted.is_set():
                self._accepted = anyio.Event()
            await self._accepted.wait()
        return self._info.job_ref

    def add_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        """Call ``callback(future)`` once finished (at once if it already is)."""
        if self.ready():
            callback(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def remove_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        if self._callbacks is not None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

    # -- called by the executor --------------------------------------------------

    def _set_running(self) -> None:
        if self._state is FutureState.PENDING:
            self._state = FutureState.RUNNING
            if self._accepted is not None:
                self._accepted.set()

    def _set_accepted(self) -> None:
        """The backend accepted the task (``info.job_ref`` is set); it may still wait there."""
        if self._accepted is not None:
            self._accepted.set()

    def _set_pending(self) -> None:
        if not self.ready():
            self._state = FutureState.PENDING

    def _settle(
        self, state: FutureState, value: Any = None, error: BaseException | None = None
    ) -> None:
        if self._ready:
            return
        self._state = state
        self._ready = state is not FutureState.PENDING and state is not FutureState.RUNNING
        self._value = value
        self._error = error
        if error is not None:
            self._error_tb = error.__traceback__
        if self._event is not None:
            self._event.set()
        if self._accepted is not None:
            self._accepted.set()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                # A broken callback must not take the executor down, nor skip the others.
                log.exception("done callback %r of %r raised", callback, self)

    def _result_pair(self) -> AsyncResult[T] | AsyncException[T]:
        if self._state is FutureState.DONE:
            return AsyncResult(self, self._value)
        assert self._error is not None
        return AsyncException(self, self._error, _traceback_text(self._error))


def running_loop() -> object:
    """The event loop running in this thread: asyncio's loop, trio's token, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
    return None


def _traceback_text(error: BaseException) -> str:
    if isinstance(error, RemoteError):
        return error.remote_traceback
    if isinstance(error, TaskCancelled):
        return ""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@final
class AsyncResult(Generic[T]):
    """A finished task's value, as returned by ``async_get``."""

    __slots__ = ("future", "value")

    def __init__(self, future: Future[T], value: T) -> None:
        self.future = future
        self.value = value

    def __repr__(self) -> str:
        return f"AsyncResult({self.future.task_id}, {self.value!r})"


@final
class AsyncException(Generic[T]):
    """A failed task's error and traceback text, as returned by ``async_get``.

    Reading ``.value`` raises the error.
    """

    __slots__ = ("exception", "future", "traceback")

    def __init__(self, future: Future[T], exception: BaseException, traceback: str) -> None:
        self.future = future
        self.exception = exception
        self.traceback = traceback

    @property
    def value(self) -> T:
        raise self.exception

    def __repr__(self) -> str:
        return f"AsyncException({self.future.task_id}, {self.exception!r})"


class Completion:
    """Collects futures as they finish, for async_get, as_completed and map."""

    def __init__(self, futures: Iterable[Future[Any]] = ()) -> None:
        self._done: deque[Future[Any]] = deque()
        self._watched: set[Future[Any]] = set()  # only the unfinished: map() may run long
        self._event = anyio.Event()
        for future in futures:
            self.add(future)

    def add(self, future: Future[Any]) -> None:
        if not future.ready():
            self._watched.add(future)
        future.add_done_callback(self._on_done)

    def _on_done(self, future: Future[Any]) -> None:
        self._watched.discard(future)
        self._done.append(future)
        self._event.set()

    async def next(self) -> Future[Any]:
        """The next future to finish (in the order they finished).

        Cancellation: stops the waiting only; a future that finished meanwhile
        is kept for the next call.
        """
        while not self._done:
            if self._event.is_set():
                self._event = anyio.Event()
            await self._event.wait()
        return self._done.popleft()

    def close(self) -> None:
        for future in self._watched:
            future.remove_done_callback(self._on_done)
        self._watched.clear()
