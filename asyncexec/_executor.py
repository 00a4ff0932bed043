"""BaseExecutor: futures, concurrency, backpressure, retries, time limits, shutdown.

The executor knows no backend: it drives a :class:`~asyncexec.abc.Launcher`
through ``start`` / ``wait`` / ``cancel`` and keeps every other concern here.
Tasks wait in one queue; at most ``n_workers * (1 + launcher.prefetch)`` of them
are in the launcher's hands at once. A task is handed over in one of two ways:

* by a coroutine of its own (``_run_task``) that awaits ``start`` and ``wait``,
  owns the task's time limit and is cancelled to cancel it;
* or, where the launcher can take a task at once (``Launcher.try_start``) and
  the task needs no deadline kept here, with no coroutine at all: the launcher
  calls back with the outcome, and cancelling starts a coroutine that kills the
  work. This is the process pool's everyday path, and what makes it fast.

Both paths end in :meth:`BaseExecutor._conclude` (value, error or retry), so
they cannot disagree on what an outcome means.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import time
import types
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._codec import dumps_call, loads, type_name
from ._exceptions import (
    ExecutorClosed,
    LaunchError,
    RemoteError,
    SerializationError,
    TaskCancelled,
    TaskLaunchError,
    TaskSerializationError,
    TaskTimeout,
    WorkerLost,
    as_task_failure,
)
from ._future import AsyncException, AsyncResult, Future, FutureState, TaskInfo, running_loop
from ._messages import JobRef, Outcome, TaskSpec
from ._options import TaskOptions, check_workers
from ._runtime import run_chunk
from .abc import Launcher

__all__ = ["BaseExecutor", "ConfiguredExecutor"]

log = logging.getLogger("asyncexec")

T = TypeVar("T")
_E = TypeVar("_E", bound="BaseExecutor")


class _Task:
    """The executor's record of one live task."""

    __slots__ = (
        "attached",
        "attempt",
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


class BaseExecutor:
    """Runs functions elsewhere and hands back futures. Use it with ``async with``.

    Args:
        n_workers: how many tasks run at once.
        options: default :class:`TaskOptions` for every task.
        max_pending: how many tasks may wait for a worker; ``submit`` waits
            (backpressure) while that many are queued. None: no limit.
        launcher: the backend; subclasses make their own when it is None.
    """

    def __init__(
        self,
        n_workers: int,
        *,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        check_workers(n_workers)
        if max_pending is not None and (not isinstance(max_pending, int) or max_pending < 1):
            raise ValueError(f"max_pending must be a positive integer or None, got {max_pending!r}")
        self.n_workers = n_workers
        self.options = options if options is not None else TaskOptions()
        self.max_pending = max_pending
        self._given_launcher = launcher
        self._launcher: Launcher | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self._tasks: dict[str, _Task] = {}
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._pending_slots: anyio.Semaphore | None = None
        self._queue: deque[_Task] = deque()  # waiting for the launcher (cancelled ones skipped)
        self._active = 0  # tasks in the launcher's hands (or being handed over)
        self._limit = 0  # ... at most: set on entry
        self._try_start = False  # the launcher can take a task without a coroutine
        self._takes_buffers = False  # ... moves out-of-band buffers (set on entry)
        self._enforces_time_limit = False  # ... stops a task at its time limit itself
        self._blocked: _Task | None = None  # the launcher was full: nothing passes this one
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._loop: object = None  # the event loop it runs in: its futures are waited there
        self._resources_checked: TaskOptions | None = None  # the launcher honours its resources

    def __repr__(self) -> str:
        return f"<{type(self).__name__} n_workers={self.n_workers} {self._state}>"

    def _create_launcher(self) -> Launcher:
        """Make this executor's launcher. Subclasses override it."""
        raise TypeError(
            f"{type(self).__name__} has no backend: pass launcher=..., or use "
            "ThreadExecutor, ProcessExecutor or another executor class"
        )

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self: _E) -> _E:
        """Open the launcher (workers, connections) and start accepting tasks.

        Cancellation: the launcher releases what it had acquired before the
        cancellation propagates, and the executor stays unopened: entering it
        again makes a new launcher (one given as ``launcher=`` has closed
        itself, and a pool's does not reopen).
        """
        if self._state != "new":
            raise RuntimeError(f"{type(self).__name__} can be entered only once")
        async with contextlib.AsyncExitStack() as stack:
            launcher = self._given_launcher or self._create_launcher()
            self._launcher = await stack.enter_async_context(launcher)
            capabilities = launcher.capabilities
            self._limit = self.n_workers * (1 + launcher.prefetch)
            self._try_start = capabilities.fast_start
            self._takes_buffers = capabilities.takes_buffers
            self._enforces_time_limit = capabilities.enforces_time_limit
            if self.max_pending is not None:
                self._pending_slots = anyio.Semaphore(self.max_pending)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack.pop_all()
        self._loop = running_loop()
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Let the tasks finish (cancel them if the block raised), release the backend.

        Cancellation: (of the block, or of the wait for its tasks) the tasks
        still queued or running are cancelled, shielded (their work killed, as
        :meth:`cancel` does), and the launcher closed before the cancellation
        propagates; nothing is left.
        """
        try:
            if exc_type is None:
                try:
                    await self.aclose()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self.aclose(cancel_pending=True)
                    raise
            else:
                with anyio.CancelScope(shield=True):
                    await self.aclose(cancel_pending=True)
        finally:
            stack, self._stack = self._stack, None
            if stack is not None:
                # Every task is finished, so are their coroutines. The caller's own error
                # is not theirs: it must propagate as it is, not inside an ExceptionGroup.
                await stack.__aexit__(None, None, None)

    async def aclose(self, cancel_pending: bool = False) -> None:
        """Stop accepting tasks, finish (or cancel) the live ones, release the backend.

        Args:
            cancel_pending: cancel queued and running tasks instead of letting
                them finish.

        Cancellation: the tasks are left as they are; leaving the ``async with``
        block then cancels them. Calling it again is harmless.
        """
        if self._state == "new":
            self._state = "closed"
            return
        if self._state == "open":
            self._state = "closing"
        if cancel_pending:
            await self.cancel([task.future for task in list(self._tasks.values())])
        while self._tasks:
            await next(iter(self._tasks.values())).future.wait()
        if self._launcher is not None:
            await self._launcher.aclose()
        self._state = "closed"

    def _check_open(self) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            name = type(self).__name__
            raise RuntimeError(f"{name} is not started: use `async with {name}(...) as ex:`")
        raise ExecutorClosed(f"{type(self).__name__} is closed and accepts no more tasks")

    # -- submitting -----------------------------------------------------------------

    def with_options(self, **changes: Any) -> ConfiguredExecutor:
        """A view of this executor whose tasks use other options.

        ``await ex.with_options(time_limit=5, retries=2).submit(f, x)``
        """
        return ConfiguredExecutor(self, self.options.replace(**changes))

    async def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Submit ``fn(*args, **kwargs)``; return its future once the task is accepted.

        Raises:
            TypeError: ``fn`` is not callable.
            SerializationError: ``fn`` or an argument cannot be pickled (the
                message names its type).
            LaunchError: the backend cannot honour the task's ``resources``
                (see :class:`~asyncexec.Resources`).
            ExecutorClosed: the executor is closed.

        Cancellation: while waiting for room (``max_pending``), nothing is submitted.
        """
        if self._pending_slots is None:  # nothing to wait for: no coroutine more per task
            return self._accept(self._prepare(fn, args, kwargs, self.options), self.options, False)
        return await self._submit(fn, args, kwargs, self.options)

    def can_attach(self, ref: JobRef) -> bool:
        """Whether :meth:`attach` can follow ``ref`` (this open executor's kind of work,
        on a backend where work outlives its driver)."""
        launcher = self._launcher
        return launcher is not None and launcher.can_follow(ref) and self._state == "open"

    async def attach(self, ref: JobRef, *, name: str | None = None) -> Future[Any]:
        """A future for a task started earlier, by this executor or another one.

        ``ref`` is a task's ``future.info.job_ref``, kept by a driver that may
        have died since (or found by the launcher, such as
        ``SlurmLauncher.find_refs``): the future settles with the task's
        outcome, which may be there already. Cancelling it kills the task.
        Retries do not apply: the task's function is not known here.

        Raises:
            ExecutorClosed: the executor is closed.
            LaunchError: this executor's backend cannot follow ``ref``
                (see :meth:`can_attach`).

        Cancellation: never waits, so never interrupted: the future is made
        (and followed) whatever the caller's state.
        """
        self._check_open()
        if not self.can_attach(ref):
            raise LaunchError(f"this executor cannot re-attach to {ref.kind} work: {ref!r}")
        task_id = ref.task_id or ref.native_id
        if task_id in self._tasks:
            raise ValueError(f"task {task_id} is already followed by this executor")
        spec = TaskSpec(task_id=task_id, fn=b"", args=b"", name=name)
        info = TaskInfo(name=name, tags={}, submitted=time.time())
        future: Future[Any] = Future(self, task_id, info, self._loop)
        task = _Task(future, spec, self.options.replace(retries=0))
        task.attached = ref
        self._tasks[task_id] = task
        self._enqueue(task)
        return future

    async def _submit(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: TaskOptions,
    ) -> Future[T]:
        call = self._prepare(fn, args, kwargs, options)
        holds_slot = False
        if self._pending_slots is not None:
            await self._pending_slots.acquire()
            holds_slot = True
            if self._state != "open":
                self._pending_slots.release()
                self._check_open()
        return self._accept(call, options, holds_slot)

    def _prepare(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: TaskOptions,
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Check and pickle a call (before waiting for room: a bad one fails at once)."""
        if self._state != "open":
            self._check_open()
        if options is not self._resources_checked:  # once per options object, not per task
            self._check_resources(options)
        _check_function(fn)
        return dumps_call(fn, args, kwargs, out_of_band=self._takes_buffers)

    def _check_resources(self, options: TaskOptions) -> None:
        """Refuse resources the launcher cannot honour, rather than drop them."""
        launcher = self._launcher
        assert launcher is not None
        resources = options.resources
        problem = launcher.check_resources(resources)
        if problem is not None:
            asked = ", ".join(
                f"{name}={getattr(resources, name)!r}"
                for name in resources.__struct_fields__
                if getattr(resources, name) is not None
            )
            raise LaunchError(
                f"{type(self).__name__} cannot run a task with Resources({asked}): {problem}"
            )
        self._resources_checked = options

    def _accept(
        self, call: tuple[bytes, bytes, tuple[bytes, ...]], options: TaskOptions, holds_slot: bool
    ) -> Future[Any]:
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
        )
        if resources.cpus is not None or resources.gpus is not None:  # (rare: no keywords)
            spec.cpus = resources.cpus
            spec.gpus = resources.gpus
        tags = dict(options.tags) if options.tags else {}
        info = TaskInfo(name=options.name, tags=tags, submitted=time.time())
        future: Future[Any] = Future(self, task_id, info, self._loop)
        task = _Task(future, spec, options)
        task.holds_slot = holds_slot
        self._tasks[task_id] = task
        self._enqueue(task)
        return future

    def _enqueue(self, task: _Task) -> None:
        task.queued = True
        task.future._set_pending()
        self._queue.append(task)
        self._pump()

    def _pump(self) -> None:
        """Hand queued tasks to the launcher while it has room, in order."""
        queue = self._queue
        while queue and self._active < self._limit and self._blocked is None:
            task = queue.popleft()
            if not task.queued:
                continue  # cancelled while queued
            task.queued = False
            self._release_slot(task)
            self._active += 1
            if self._try_start and self._needs_no_coroutine(task):
                if self._start_now(task):
                    continue
                # The launcher has no room now: this task's coroutine waits for it in
                # start(), and the ones behind wait for that (first in, first out).
                self._blocked = task
            assert self._tg is not None
            self._tg.start_soon(self._run_task, task)

    def _unblock(self, task: _Task) -> None:
        if self._blocked is task:
            self._blocked = None
            self._pump()

    def _release(self) -> None:
        """A task has left the launcher's hands: another may take its place."""
        self._active -= 1
        self._pump()

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
        info = task.future._info
        info.job_ref = ref
        info.job_refs.append(ref)
        info.started = time.time()
        task.future._set_running()
        return True

    def _on_outcome(self, task: _Task, outcome: Outcome) -> None:
        """The outcome of a task started with ``try_start``, from the launcher. Never raises."""
        if task.ref is None or task.killing:
            return  # the coroutine that cancels it settles it, once the work is gone
        task.ref = None
        try:
            self._conclude(task, outcome, None)
        except Exception as exc:  # a bug: fail the task, not the launcher that called
            log.exception("could not settle task %s", task.future.task_id)
            if not task.future.ready():
                error = TaskLaunchError(f"asyncexec could not settle the task: {exc}")
                self._finish(task, FutureState.FAILED, error=error)
        finally:
            self._release()

    async def _cancel_started(self, task: _Task) -> None:
        """Cancel a task started with ``try_start``: kill its work, then settle it."""
        launcher = self._launcher
        assert launcher is not None and task.ref is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._kill(launcher, task.ref)
        finally:
            task.ref = None
            self._finish(task, FutureState.CANCELLED, error=_cancelled(task))
            self._release()

    def _release_slot(self, task: _Task) -> None:
        if task.holds_slot:
            task.holds_slot = False
            assert self._pending_slots is not None
            self._pending_slots.release()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Submit ``fn(*args, **kwargs)`` and return its value.

        Cancellation: cancelling the caller cancels the task and kills its work
        before the cancellation propagates. This is what a web handler wants.
        """
        return await self._run_call(fn, args, kwargs, self.options)

    async def _run_call(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: TaskOptions,
    ) -> T:
        future = await self._submit(fn, args, kwargs, options)
        try:
            return await future
        except BaseException:
            if not future.ready():
                with anyio.CancelScope(shield=True):
                    await self.cancel(future)
            raise

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int = 1,
    ) -> AsyncIterator[T]:
        """Apply ``fn`` to the items of ``iterables`` (zipped), yielding values.

        Submits lazily, keeping about ``2 * n_workers`` tasks in flight. With
        ``ordered=False`` values come as tasks finish. The first failure is
        raised (the tasks still in flight are cancelled); so is leaving the loop
        early or cancelling it.

        ``chunksize`` > 1 sends the items in chunks of that many, one task each
        (as ``ProcessPoolExecutor.map`` does): far fewer round trips for short
        calls. A chunk is then the unit of everything else too: it fails as a
        whole at its first failure (the values of the items before it in that
        chunk are not yielded), its time limit and retries cover the whole
        chunk, and a chunk's values come together.
        """
        _check_function(fn)
        _check_chunksize(chunksize)
        return self._map(fn, iterables, ordered, self.options, chunksize)

    async def _map(
        self,
        fn: Callable[..., T],
        iterables: Sequence[Iterable[Any]],
        ordered: bool,
        options: TaskOptions,
        chunksize: int = 1,
    ) -> AsyncIterator[T]:
        window = max(2 * self.n_workers, 2)
        items = zip(*iterables, strict=False)  # like the builtin map: stop at the shortest
        calls: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]]
        if chunksize == 1:
            calls = ((fn, args) for args in items)
        elif len(iterables) == 1:
            only = iter(iterables[0])
            chunks = iter(lambda: list(itertools.islice(only, chunksize)), [])
            calls = ((run_chunk, (fn, chunk)) for chunk in chunks)
        else:  # one column per iterable
            rows = iter(lambda: list(itertools.islice(items, chunksize)), [])
            calls = ((run_chunk, (fn, *zip(*chunk, strict=True))) for chunk in rows)
        in_flight: deque[Future[Any]] = deque()
        completion = _Completion()
        try:
            for call, args in itertools.islice(calls, window):
                future = await self._submit(call, args, {}, options)
                in_flight.append(future)
                if not ordered:
                    completion.add(future)
            while in_flight:
                if ordered:
                    future = in_flight.popleft()
                    await future.wait()
                else:
                    future = await completion.next()
                    in_flight.remove(future)
                # Nothing here keeps a value once yielded: the caller's to keep or drop.
                values = [await future] if chunksize == 1 else (await future)[::-1]
                del future
                for call, args in itertools.islice(calls, 1):
                    following = await self._submit(call, args, {}, options)
                    in_flight.append(following)
                    if not ordered:
                        completion.add(following)
                    del following
                while values:  # (in reverse order)
                    yield values.pop()
        finally:
            completion.close()
            unfinished = [future for future in in_flight if not future.ready()]
            if unfinished:
                with anyio.CancelScope(shield=True):
                    await self.cancel(unfinished)

    # -- collecting -----------------------------------------------------------------

    async def async_get(
        self, futures: list[Future[Any]], timeout: float | None = None
    ) -> list[AsyncResult[Any] | AsyncException[Any]]:
        """Collect the finished futures, removing them from ``futures`` in place.

        If none is finished, waits up to ``timeout`` seconds (None: until one
        is). Returns ``[]`` when nothing finished in time, and at once for ``[]``.

        Cancellation: stops the waiting; ``futures`` is left untouched.
        """
        if not futures:
            return []
        if not any(future.ready() for future in futures):
            completion = _Completion(futures)
            try:
                with anyio.move_on_after(timeout):
                    await completion.next()
            finally:
                completion.close()
        finished: list[Future[Any]] = []
        remaining: list[Future[Any]] = []
        for future in futures:
            (finished if future.ready() else remaining).append(future)
        futures[:] = remaining
        return [future._result_pair() for future in finished]

    async def wait(self, futures: Iterable[Future[T]]) -> list[T]:
        """Wait for all ``futures``; return their values in order.

        Raises:
            TaskFailed: the error of the first failed future (in list order),
                once all of them have finished.

        Cancellation: stops the waiting; the tasks go on.
        """
        pending = list(futures)
        for future in pending:
            await future.wait()
        for future in pending:
            if future.state is not FutureState.DONE:
                error = future.exception()
                assert error is not None
                raise error
        return [future._value for future in pending]

    async def as_completed(self, futures: Iterable[Future[T]]) -> AsyncIterator[Future[T]]:
        """Yield each of ``futures`` as it finishes (an async iterator).

        A future given more than once is yielded once, and a yielded future is
        not kept: once the caller drops it, it can be collected while the loop
        goes on (as ``concurrent.futures.as_completed`` does).

        Cancellation: stops the waiting; the tasks go on. Leaving the loop (or
        closing the iterator) stops watching the futures not yet yielded.
        """
        unique = dict.fromkeys(futures)
        del futures  # (a list made for this call would keep every future alive)
        remaining = len(unique)
        completion = _Completion(unique)
        del unique
        try:
            while remaining:
                remaining -= 1
                yield await completion.next()
        finally:
            completion.close()

    # -- cancelling -----------------------------------------------------------------

    async def cancel(self, futures: Future[Any] | Iterable[Future[Any]]) -> None:
        """Cancel tasks: queued ones never start, running ones are killed where they run.

        Returns once every one of them is finished; each ends ``CANCELLED``
        unless it had finished before. Cancellation: stops the waiting only;
        the cancellations already asked for go on.
        """
        targets = [futures] if isinstance(futures, Future) else list(futures)
        for future in targets:
            if future._executor is not self:
                raise ValueError(f"{future!r} belongs to another executor")
            task = self._tasks.get(future.task_id)
            if task is None or future.ready():
                continue
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
        for future in targets:
            await future.wait()

    # -- running --------------------------------------------------------------------

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

    async def _run_task(self, task: _Task) -> None:
        """Run one attempt of a task in this coroutine: start, wait (with its deadline), kill."""
        try:
            await self._run_attempt(task)
        finally:
            self._unblock(task)
            self._release()

    async def _run_attempt(self, task: _Task) -> None:
        assert self._launcher is not None
        launcher = self._launcher
        future = task.future
        info = future.info
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
                    info.job_ref = ref
                    info.job_refs.append(ref)
                    future._set_accepted()
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
                        if outcome is None:
                            with anyio.CancelScope(shield=True):
                                await self._kill(launcher, ref)
            task.scope = None
            if scope.cancelled_caught or future._cancel_requested:
                self._finish(task, FutureState.CANCELLED, error=_cancelled(task))
                return
            self._conclude(task, outcome, error, timed_out)
        finally:
            task.scope = None
            if not future.ready() and not task.retry_scheduled:
                self._finish(task, FutureState.CANCELLED, error=_cancelled(task))

    def _on_running(self, task: _Task, attempt: int) -> None:
        """The launcher says the task runs (not while it waits in a queue). Never raises."""
        future = task.future
        if task.attempt == attempt and not future.ready() and not task.retry_scheduled:
            future._info.started = time.time()
            future._set_running()

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
            value, error = self._interpret(outcome, future._info)
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

    async def _kill(self, launcher: Launcher, ref: JobRef) -> None:
        try:
            await launcher.cancel(ref)
        except Exception:
            log.warning("could not cancel %s", ref, exc_info=True)

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

    def _interpret(self, outcome: Outcome, info: TaskInfo) -> tuple[Any, BaseException | None]:
        """Turn an Outcome into a value or the error ``await future`` raises."""
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
        detail = outcome.error
        status = outcome.status
        if status == "ok":
            try:
                return loads(outcome.value or b""), None
            except SerializationError as exc:
                return None, TaskSerializationError(f"cannot unpickle the task's result: {exc}")
        if status == "raised" and detail is not None:
            original: BaseException | None = None
            if detail.pickled is not None:
                with contextlib.suppress(Exception):
                    candidate = loads(detail.pickled)
                    if isinstance(candidate, BaseException):
                        original = candidate
            return None, RemoteError.build(
                detail.type_name, detail.message, detail.traceback, original
            )
        if status == "unpicklable":
            message = detail.message if detail else "serialization failed"
            return None, TaskSerializationError(message)
        if status == "timeout":
            return None, TaskTimeout(f"task {outcome.task_id} was stopped at its time limit")
        if status == "cancelled":
            return None, TaskCancelled(f"task {outcome.task_id} was cancelled where it ran")
        if status == "refused":
            return None, TaskLaunchError(
                detail.message if detail else "the worker refused the task"
            )
        message = detail.message if detail else "the worker died without reporting an outcome"
        return None, WorkerLost(
            f"task {outcome.task_id}: {message}", exit_code=outcome.exit_code, state=outcome.state
        )


#: The ``env`` of the TaskSpecs whose options set none: one dict, never changed (one
#: per pending task would cost 64 bytes each).
_NO_ENV: dict[str, str] = {}


def _check_function(fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"cannot submit a {type_name(fn)}: it is not callable")
    if _is_coroutine_function(fn):
        raise TypeError(
            f"cannot submit {fn!r}: it is a coroutine function; workers run plain functions "
            "(wrap it: lambda: asyncio.run(fn()))"
        )


def _check_chunksize(chunksize: int) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an integer >= 1, got {chunksize!r}")


def _is_coroutine_function(fn: object) -> bool:
    # A plain function (the common case) without inspect's unwrapping; one marked
    # with inspect.markcoroutinefunction (3.12+) is left to inspect.
    if type(fn) is types.FunctionType and not hasattr(fn, "_is_coroutine_marker"):
        return bool(fn.__code__.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


def _cancelled(task: _Task) -> TaskCancelled:
    return TaskCancelled(f"task {task.future.task_id} was cancelled")


def _launch_error(launcher: Launcher, method: str, exc: Exception) -> TaskLaunchError:
    error = TaskLaunchError(f"{type(launcher).__name__}.{method} failed: {type_name(exc)}: {exc}")
    error.__cause__ = exc
    return error


class _Completion:
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
        while not self._done:
            if self._event.is_set():
                self._event = anyio.Event()
            await self._event.wait()
        return self._done.popleft()

    def close(self) -> None:
        for future in self._watched:
            future.remove_done_callback(self._on_done)
        self._watched.clear()


class ConfiguredExecutor:
    """An executor seen through other task options; made by ``with_options``."""

    def __init__(self, executor: BaseExecutor, options: TaskOptions) -> None:
        self.executor = executor
        self.options = options

    def __repr__(self) -> str:
        return f"<ConfiguredExecutor of {self.executor!r}>"

    def with_options(self, **changes: Any) -> ConfiguredExecutor:
        return ConfiguredExecutor(self.executor, self.options.replace(**changes))

    async def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """As :meth:`BaseExecutor.submit`, with these options."""
        return await self.executor._submit(fn, args, kwargs, self.options)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """As :meth:`BaseExecutor.run`, with these options.

        Cancellation: as ``run``: cancelling the caller cancels the task and
        kills its work before the cancellation propagates.
        """
        return await self.executor._run_call(fn, args, kwargs, self.options)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int = 1,
    ) -> AsyncIterator[T]:
        """As :meth:`BaseExecutor.map`, with these options."""
        _check_function(fn)
        _check_chunksize(chunksize)
        return self.executor._map(fn, iterables, ordered, self.options, chunksize)
