"""Tasks, attempts, retries, deadlines: the one path from a future to a launcher.

:class:`Dispatcher` keeps an executor's live tasks. They wait in one queue; at
most ``limit`` of them (``n_workers * (1 + launcher.prefetch)``) are in the
launcher's hands at once, handed over in order. Each attempt of a task goes
through the same steps, whoever drives them:

1. :meth:`Dispatcher._pump`: the task leaves the queue for the launcher;
2. :meth:`Dispatcher._started`: the launcher accepted it (``future.accepted()``
   returns its JobRef);
3. :meth:`Dispatcher._ended`: its outcome (or error) settles the future, or
   schedules a retry; then its place in the launcher goes to the next task.

A coroutine of the task's own (``_attempt``) drives them when something must
be awaited: ``start`` and ``wait``, a time limit kept here, work started
earlier (``attach``). Cancelling that coroutine cancels the attempt. Where the
launcher can take the task at once (``Launcher.try_start``) and no deadline is
kept here, there is no coroutine at all, as an optimisation of the same steps:
the launcher calls back with the outcome (step 3), and cancelling starts a
coroutine that kills the work. This is the process pool's everyday path, and
what makes it fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ._codec import loads, type_name
from ._exceptions import (
    LaunchError,
    SerializationError,
    TaskCancelled,
    TaskDetached,
    TaskLaunchError,
    TaskSerializationError,
    TaskTimeout,
    as_task_failure,
    outcome_error,
)
from ._future import Future, FutureState, TaskInfo
from ._messages import JobRef, Outcome, TaskSpec
from ._options import TaskOptions
from .abc import Launcher

if TYPE_CHECKING:
    from ._executor import BaseExecutor

__all__ = ["Call", "Dispatcher", "ExecutorStats"]

log = logging.getLogger("asyncexec")

#: A call pickled for a task: the function's bytes, the arguments', their out-of-band buffers.
Call = tuple[bytes, bytes, tuple[bytes, ...]]


@dataclasses.dataclass(frozen=True)
class ExecutorStats:
    """A snapshot of an executor's tasks (``BaseExecutor.stats()``).

    Attributes:
        accepted: tasks accepted since the executor opened (submitted or
            attached), finished or not.
        live: accepted tasks not finished yet (queued, in the launcher's hands,
            or waiting for a retry).
        queued: tasks waiting for room in the launcher.
        active: tasks in the launcher's hands (or being handed over); at most
            ``limit``.
        limit: how many tasks the launcher is given at once
            (``n_workers * (1 + launcher.prefetch)``; 0 before the executor opens).
    """

    accepted: int = 0
    live: int = 0
    queued: int = 0
    active: int = 0
    limit: int = 0


class _Task:
    """The dispatcher's record of one live task."""

    __slots__ = (
        "attached",
        "attempt",
        "detaching",
        "future",
        "holds_slot",
        "killing",
        "options",
        "queued",
        "ref",
        "retry_scheduled",
        "scope",
        "spec",
    )

    def __init__(self, future: Future[Any], spec: TaskSpec, options: TaskOptions) -> None:
        self.future = future
        self.spec = spec
        self.attached: JobRef | None = None  # started earlier: wait for it, never start it
        self.options = options
        self.attempt = 0
        self.queued = False
        self.holds_slot = False
        self.retry_scheduled = False
        self.scope: anyio.CancelScope | None = None  # of its coroutine, while it has one
        self.ref: JobRef | None = None  # started with try_start, until its outcome is taken
        self.killing = False  # a coroutine is cancelling the work it was started with
        self.detaching = False  # let go: its coroutine stops following, kills nothing


class Dispatcher:
    """An executor's tasks on their way to its launcher (see the module docstring).

    Made with the executor; :meth:`open` gives it the launcher and the task
    group its coroutines run in. The executor checks and pickles calls; the
    dispatcher makes their tasks and futures and sees each one to its end.

    Args:
        owner: the executor whose futures these are (``Future.cancel`` goes there).
        max_pending: how many tasks may wait for the launcher before
            :meth:`wait_for_room` waits. None: no limit.
    """

    def __init__(self, owner: BaseExecutor, max_pending: int | None) -> None:
        self._owner = owner
        self._max_pending = max_pending
        self._tasks: dict[str, _Task] = {}
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._accepted = 0
        self._pending_slots: anyio.Semaphore | None = None
        #: Whether calls wait for room (``max_pending``, once open) before :meth:`accept`.
        self.bounded = False
        self._queue: deque[_Task] = deque()  # waiting for the launcher (cancelled ones skipped)
        self._active = 0  # tasks in the launcher's hands (or being handed over)
        self._limit = 0  # ... at most: set by open()
        self._launcher: Launcher | None = None
        self._try_start = False  # the launcher can take a task without a coroutine
        self._enforces_time_limit = False  # ... stops a task at its time limit itself
        self._blocked: _Task | None = None  # the launcher was full: nothing passes this one
        self._tg: TaskGroup | None = None
        self._loop: object = None  # the event loop it runs in: its futures are waited there

    def open(self, launcher: Launcher, n_workers: int, tg: TaskGroup, loop: object) -> None:
        """Start handing tasks to ``launcher`` (open), running coroutines in ``tg``."""
        capabilities = launcher.capabilities
        self._launcher = launcher
        self._limit = n_workers * (1 + launcher.prefetch)
        self._try_start = capabilities.fast_start
        self._enforces_time_limit = capabilities.enforces_time_limit
        if self._max_pending is not None:
            self._pending_slots = anyio.Semaphore(self._max_pending)
            self.bounded = True
        self._tg = tg
        self._loop = loop

    def stats(self) -> ExecutorStats:
        """How many tasks are where, now."""
        return ExecutorStats(
            accepted=self._accepted,
            live=len(self._tasks),
            queued=sum(1 for task in self._queue if task.queued),
            active=self._active,
            limit=self._limit,
        )

    def follows(self, task_id: str) -> bool:
        """Whether the task ``task_id`` is live here."""
        return task_id in self._tasks

    def live(self) -> list[Future[Any]]:
        """The futures of the live tasks, oldest first."""
        return [task.future for task in self._tasks.values()]

    async def drain(self) -> None:
        """Wait until no task is live (those accepted meanwhile too).

        Cancellation: stops the waiting only; the tasks go on.
        """
        while self._tasks:
            await next(iter(self._tasks.values())).future.wait()

    # -- taking tasks ---------------------------------------------------------------

    async def wait_for_room(self) -> None:
        """Wait until fewer than ``max_pending`` tasks wait; take one place for the next call.

        The place is the next :meth:`accept`'s (pass ``holds_slot=True``), or
        :meth:`give_room_back`'s.

        Cancellation: no place is taken.
        """
        assert self._pending_slots is not None
        await self._pending_slots.acquire()

    def give_room_back(self) -> None:
        """Give back a place :meth:`wait_for_room` took, for a call not accepted after all."""
        assert self._pending_slots is not None
        self._pending_slots.release()

    def accept(self, call: Call, options: TaskOptions, holds_slot: bool) -> Future[Any]:
        """Take a pickled call as a task: its future, the task queued (or handed over)."""
        task_id = f"{self._prefix}-{next(self._ids)}"
        fn_bytes, args_bytes, buffers = call
        resources = options.resources
        spec = TaskSpec(
            task_id=task_id,
            fn=fn_bytes,
            args=args_bytes,
            buffers=buffers,
            time_limit=options.time_limit,
            capture_output=options.wants_capture,
            stdout_path=str(options.log_stdout) if options.log_stdout else None,
            stderr_path=str(options.log_stderr) if options.log_stderr else None,
            env=dict(options.env) if options.env else _NO_ENV,
            memory_mb=resources.memory_mb,
            name=options.name,
            logs_at_end=options.logs_at_end,
        )
        if resources.cpus is not None or resources.gpus is not None:  # (rare: no keywords)
            spec.cpus = resources.cpus
            spec.gpus = resources.gpus
        tags = dict(options.tags) if options.tags else {}
        info = TaskInfo(name=options.name, tags=tags, submitted=time.time())
        future: Future[Any] = Future(self._owner, task_id, info, self._loop)
        task = _Task(future, spec, options)
        task.holds_slot = holds_slot
        self._tasks[task_id] = task
        self._accepted += 1
        self._enqueue(task)
        return future

    def attach(
        self, ref: JobRef, task_id: str, name: str | None, options: TaskOptions
    ) -> Future[Any]:
        """A task for work started earlier: its future, settled by that work's outcome."""
        spec = TaskSpec(task_id=task_id, fn=b"", args=b"", name=name)
        info = TaskInfo(name=name, tags={}, submitted=time.time())
        future: Future[Any] = Future(self._owner, task_id, info, self._loop)
        task = _Task(future, spec, options.replace(retries=0))
        task.attached = ref
        self._tasks[task_id] = task
        self._accepted += 1
        self._enqueue(task)
        return future

    def _enqueue(self, task: _Task) -> None:
        task.queued = True
        task.future._set_pending()
        self._queue.append(task)
        self._pump()

    def _pump(self) -> None:
        """Hand queued tasks to the launcher while it has room, in order (step 1)."""
        queue = self._queue
        while queue and self._active < self._limit and self._blocked is None:
            task = queue.popleft()
            if not task.queued:
                continue  # cancelled while queued
            task.queued = False
            self._release_slot(task)
            self._active += 1
            # Step 1: hand the task over, at once if the launcher can take it (no
            # coroutine), else by a coroutine of its own.
            if self._try_start and self._needs_no_coroutine(task):
                if self._start_now(task):
                    continue
                # The launcher has no room now: this task's coroutine waits for it in
                # start(), and the ones behind wait for that (first in, first out).
                self._blocked = task
            assert self._tg is not None
            self._tg.start_soon(self._attempt, task)

    def _unblock(self, task: _Task) -> None:
        if self._blocked is task:
            self._blocked = None
            self._pump()

    def _release(self) -> None:
        """A task has left the launcher's hands: another may take its place."""
        self._active -= 1
        self._pump()

    def _release_slot(self, task: _Task) -> None:
        if task.holds_slot:
            task.holds_slot = False
            assert self._pending_slots is not None
            self._pending_slots.release()

    # -- cancelling -----------------------------------------------------------------

    def cancel(self, future: Future[Any]) -> None:
        """Ask for the task of ``future`` to be cancelled (if it is live here); never waits.

        A queued task ends CANCELLED at once; an attempt under way is stopped
        (its work killed), then the task ends CANCELLED.
        """
        task = self._tasks.get(future.task_id)
        if task is None or future.ready():
            return
        future._cancel_requested = True
        if task.queued:
            task.queued = False
            self._release_slot(task)
            self._finish(task, FutureState.CANCELLED, error=_cancelled(task))
        elif task.scope is not None:
            task.scope.cancel()
        elif task.ref is not None and not task.killing:
            task.killing = True
            assert self._tg is not None
            self._tg.start_soon(self._cancel_started, task)

    async def detach(self) -> None:
        """Let every live task go, its work left running; see :meth:`BaseExecutor.detach`.

        A task still queued here (or waiting to be retried) never reached the
        place: it is cancelled. One being handed over is waited for until the
        place has accepted it (or refused it). Every other one ends with
        :class:`TaskDetached` naming its JobRef, and nothing is killed.

        Cancellation: stops the waiting; the tasks not yet let go stay live.
        """
        for task in list(self._tasks.values()):
            if task.queued or task.retry_scheduled:
                self.cancel(task.future)
        for task in list(self._tasks.values()):
            await task.future.accepted()  # (None once it has ended)
            if task.future.ready() or task.killing or task.detaching:
                continue
            task.detaching = True
            if task.scope is not None:
                task.scope.cancel()  # its coroutine stops waiting, and kills nothing
            elif task.ref is not None:  # started with try_start: no coroutine follows it
                task.ref = None
                self._finish(task, FutureState.CANCELLED, error=_detached(task))
                self._release()
        await self.drain()

    # -- one attempt ----------------------------------------------------------------

    def _begin_attempt(self, task: _Task) -> None:
        task.attempt += 1
        task.spec.attempt = task.attempt
        info = task.future._info
        info.attempts = task.attempt
        if task.attempt == 1:
            return  # nothing to clear
        # What an earlier attempt left must not mix with this one.
        info.started = info.finished = info.pid = info.exit_code = info.job_ref = None
        info.worker = info.host = None
        info.stdout = info.stderr = ""

    def _started(self, task: _Task, ref: JobRef, runs: bool) -> None:
        """Step 2: the launcher accepted the attempt as ``ref``; it ``runs`` at once or
        waits there (see :meth:`_on_running`)."""
        future = task.future
        info = future._info
        info.job_ref = ref
        info.job_refs.append(ref)
        if runs:
            info.started = time.time()
            future._set_running()  # (which wakes accepted() too)
        else:
            future._set_accepted()

    def _on_running(self, task: _Task, attempt: int) -> None:
        """The launcher says the task runs (not while it waits in a queue). Never raises."""
        future = task.future
        if task.attempt == attempt and not future.ready() and not task.retry_scheduled:
            future._info.started = time.time()
            future._set_running()

    def _ended(
        self,
        task: _Task,
        outcome: Outcome | None,
        error: BaseException | None,
        timed_out: bool = False,
        cancelled: bool = False,
    ) -> None:
        """Step 3: the attempt is over: settle the task from its outcome, or retry it.

        The caller then gives the attempt's place in the launcher on
        (:meth:`_leave`; :meth:`_release` where the attempt had no coroutine,
        so never held the queue up).
        """
        if task.detaching and outcome is None and error is None:
            self._finish(task, FutureState.CANCELLED, error=_detached(task))
        elif cancelled:
            self._finish(task, FutureState.CANCELLED, error=_cancelled(task))
        else:
            self._conclude(task, outcome, error, timed_out)

    def _leave(self, task: _Task) -> None:
        """The attempt has left the launcher's hands: the tasks behind it may go."""
        self._unblock(task)
        self._release()

    # ... driven by a coroutine of the task's own

    async def _attempt(self, task: _Task) -> None:
        """Run one attempt of a task in this coroutine: start, wait (with its deadline), kill."""
        try:
            await self._drive(task)
        finally:
            self._leave(task)

    async def _drive(self, task: _Task) -> None:
        launcher = self._launcher
        assert launcher is not None
        future = task.future
        self._begin_attempt(task)
        outcome: Outcome | None = None
        error: BaseException | None = None
        timed_out = False
        try:
            with anyio.CancelScope() as scope:
                task.scope = scope
                if future._cancel_requested:
                    scope.cancel()
                try:
                    ref = task.attached or await launcher.start(task.spec)
                except (LaunchError, SerializationError) as exc:
                    error = exc
                except Exception as exc:
                    error = _launch_error(launcher, "start", exc)
                else:
                    self._started(task, ref, runs=False)
                    # RUNNING once the task runs: a batch system's queue comes first.
                    running = functools.partial(self._on_running, task, task.attempt)
                    launcher.on_running(ref, running)
                    self._unblock(task)
                    try:
                        if task.spec.time_limit is None or self._enforces_time_limit:
                            outcome = await launcher.wait(ref)
                        else:
                            with anyio.move_on_after(task.spec.time_limit) as deadline:
                                outcome = await launcher.wait(ref)
                            timed_out = deadline.cancelled_caught
                    except LaunchError as exc:
                        error = exc
                    except Exception as exc:
                        error = _launch_error(launcher, "wait", exc)
                    finally:
                        if outcome is None and not task.detaching:
                            with anyio.CancelScope(shield=True):
                                await _kill(launcher, ref)
            task.scope = None
            cancelled = scope.cancelled_caught or future._cancel_requested
            self._ended(task, outcome, error, timed_out, cancelled)
        finally:
            task.scope = None
            if not future.ready() and not task.retry_scheduled:
                self._finish(task, FutureState.CANCELLED, error=_cancelled(task))

    # ... or, as an optimisation, by the launcher's callback (no coroutine)

    def _needs_no_coroutine(self, task: _Task) -> bool:
        """Whether the task can run with no coroutine: nothing to wait for but its outcome."""
        if task.attached is not None:
            return False
        return task.spec.time_limit is None or self._enforces_time_limit

    def _start_now(self, task: _Task) -> bool:
        """Hand the task over with ``try_start``: whether the launcher took it."""
        launcher = self._launcher
        assert launcher is not None
        task.spec.attempt = task.attempt + 1
        try:
            ref = launcher.try_start(task.spec, functools.partial(self._on_outcome, task))
        except Exception:
            # The coroutine's start() then reports what is wrong, as for any launcher.
            log.debug("%r.try_start failed; starting %s the slow way", launcher, task.spec.task_id)
            return False
        if ref is None:
            return False
        self._begin_attempt(task)
        task.ref = ref
        self._started(task, ref, True)  # a task try_start takes runs at once
        return True

    def _on_outcome(self, task: _Task, outcome: Outcome) -> None:
        """The outcome of a task started with ``try_start``, from the launcher. Never raises."""
        if task.ref is None or task.killing:
            return  # the coroutine that cancels it settles it, once the work is gone
        task.ref = None
        try:
            self._conclude(task, outcome, None)  # step 3 (never cancelled: see above)
        except Exception as exc:  # a bug: fail the task, not the launcher that called
            log.exception("could not settle task %s", task.future.task_id)
            if not task.future.ready():
                error = TaskLaunchError(f"asyncexec could not settle the task: {exc}")
                self._finish(task, FutureState.FAILED, error=error)
        finally:
            self._release()  # (never the blocked task: that one has a coroutine)

    async def _cancel_started(self, task: _Task) -> None:
        """Cancel a task started with ``try_start``: kill its work, then end the attempt."""
        launcher = self._launcher
        assert launcher is not None and task.ref is not None
        try:
            with anyio.CancelScope(shield=True):
                await _kill(launcher, task.ref)
        finally:
            task.ref = None
            self._ended(task, None, None, cancelled=True)
            self._release()

    # -- settling -------------------------------------------------------------------

    def _conclude(
        self,
        task: _Task,
        outcome: Outcome | None,
        error: BaseException | None,
        timed_out: bool = False,
    ) -> None:
        """Settle a task from its attempt's outcome (or error), or schedule a retry."""
        future = task.future
        if timed_out:
            error = TaskTimeout(
                f"task {future.task_id} ran past its time limit of "
                f"{task.spec.time_limit:g} s and was killed"
            )
        elif outcome is not None:
            value, error = _read_outcome(outcome, future._info)
            if error is None:
                self._finish(task, FutureState.DONE, value=value)
                return
        assert error is not None
        error = as_task_failure(error)  # what retry_on is matched against, as awaited
        if self._should_retry(task, error):
            delay = task.options.backoff(task.attempt)
            log.info(
                "task %s failed (%s); retry %d in %.2g s",
                future.task_id,
                error,
                task.attempt,
                delay,
            )
            future._set_pending()
            task.retry_scheduled = True
            assert self._tg is not None
            self._tg.start_soon(self._retry_later, task, delay)
            return
        self._finish(task, FutureState.FAILED, error=error)

    async def _retry_later(self, task: _Task, delay: float) -> None:
        future = task.future
        requeued = False
        try:
            with anyio.CancelScope() as scope:
                task.scope = scope
                if future._cancel_requested:
                    scope.cancel()
                await anyio.sleep(delay)
            task.scope = None
            if not future.ready() and not future._cancel_requested:
                task.retry_scheduled = False
                requeued = True
                self._enqueue(task)  # which may hand it over at once
        finally:
            task.scope = None
            task.retry_scheduled = False
            if not future.ready() and not requeued:
                self._finish(task, FutureState.CANCELLED, error=_cancelled(task))

    def _should_retry(self, task: _Task, error: BaseException) -> bool:
        return (
            task.attempt <= task.options.retries
            and isinstance(error, task.options.retry_on)
            and not isinstance(error, TaskCancelled)
        )

    def _finish(
        self,
        task: _Task,
        state: FutureState,
        value: Any = None,
        error: BaseException | None = None,
    ) -> None:
        future = task.future
        self._tasks.pop(future._task_id, None)
        info = future._info
        info.finished = info.finished or time.time()
        if error is not None:
            error = as_task_failure(error)  # every failed future raises a TaskFailed
        future._settle(state, value, error)


#: The ``env`` of the TaskSpecs whose options set none: one dict, never changed (one
#: per pending task would cost 64 bytes each).
_NO_ENV: dict[str, str] = {}


def _read_outcome(outcome: Outcome, info: TaskInfo) -> tuple[Any, BaseException | None]:
    """Fill ``info`` from an Outcome; return its value, or the error ``await future`` raises."""
    info.pid = outcome.pid if outcome.pid is not None else info.pid
    info.host = outcome.host or info.host
    if outcome.pid is not None:
        info.worker = f"{info.host or 'localhost'}:{outcome.pid}"
    if outcome.started is not None:
        info.started = outcome.started
    if outcome.finished is not None:
        info.finished = outcome.finished
    info.exit_code = outcome.exit_code
    info.stdout = outcome.stdout
    info.stderr = outcome.stderr
    if outcome.status == "ok":
        try:
            return loads(outcome.value or b""), None
        except SerializationError as exc:
            return None, TaskSerializationError(f"cannot unpickle the task's result: {exc}")
    detail = outcome.error
    original: BaseException | None = None
    if outcome.status == "raised" and detail is not None and detail.pickled is not None:
        with contextlib.suppress(Exception):
            candidate = loads(detail.pickled)
            if isinstance(candidate, BaseException):
                original = candidate
    return None, outcome_error(outcome, original)


async def _kill(launcher: Launcher, ref: JobRef) -> None:
    try:
        await launcher.cancel(ref)
    except Exception:
        log.warning("could not cancel %s", ref, exc_info=True)


def _cancelled(task: _Task) -> TaskCancelled:
    return TaskCancelled(f"task {task.future.task_id} was cancelled")


def _detached(task: _Task) -> TaskDetached:
    ref = task.future._info.job_ref
    where = f"{ref.kind} {ref.native_id}" if ref is not None else "its place"
    return TaskDetached(
        f"task {task.future.task_id} was let go (detached): its work goes on in {where}; "
        "attach its job_ref to follow it",
        ref,
    )


def _launch_error(launcher: Launcher, method: str, exc: Exception) -> TaskLaunchError:
    error = TaskLaunchError(f"{type(launcher).__name__}.{method} failed: {type_name(exc)}: {exc}")
    error.__cause__ = exc
    return error
