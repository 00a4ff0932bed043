"""BaseExecutor and its configured views: the public API.

The executor knows no backend: it opens a :class:`~asyncexec.abc.Launcher`,
checks and pickles each call, and hands it to its
:class:`~asyncexec._dispatch.Dispatcher`, which sees the task to its end (the
queue, attempts, retries, time limits, cancellation). Futures are collected
here (``async_get``, ``wait``, ``as_completed``, ``map``).

``submit``, ``run`` and ``map`` are written once (:class:`_TaskMethods`), for an
executor with its own options and for a view of it with others
(:class:`ConfiguredExecutor`, made by ``with_options``): what they need from the
executor is one seam, :meth:`BaseExecutor._submit` (``submit`` takes its
never-waiting half inline where there is no ``max_pending``: no coroutine, nor
call, more per task).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio

from ._codec import dumps_call, type_name
from ._dispatch import Call, Dispatcher, ExecutorStats
from ._exceptions import ExecutorClosed, LaunchError, TaskDetached
from ._future import AsyncException, AsyncResult, Completion, Future, FutureState, running_loop
from ._messages import JobRef, Resources
from ._options import TaskOptions, check_workers
from ._runtime import run_chunk
from .abc import Capabilities, Launcher

__all__ = ["BaseExecutor", "ConfiguredExecutor", "ExecutorStats"]

T = TypeVar("T")
_E = TypeVar("_E", bound="BaseExecutor")


class _TaskMethods:
    """``submit``, ``run`` and ``map`` with some task options, on an executor.

    Written once for :class:`BaseExecutor` (its own ``options``) and
    :class:`ConfiguredExecutor` (other ones); the executor's part is its
    seam, :meth:`BaseExecutor._submit` (and its dispatcher's ``accept``).
    """

    options: TaskOptions
    #: The executor that runs the tasks (an attribute, not a property: read per task).
    _executor: BaseExecutor

    async def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Submit ``fn(*args, **kwargs)``; return its future once the task is accepted.

        Raises:
            TypeError: ``fn`` is not callable.
            SerializationError: ``fn`` or an argument cannot be pickled (the
                message names its type); or, where the tasks run without this
                machine's files, they need a module of yours that cannot travel
                with them (the message names it: see :mod:`asyncexec._travel`).
            LaunchError: the backend cannot honour the task's ``resources``
                (see :class:`~asyncexec.Resources`).
            ExecutorClosed: the executor is closed.

        Cancellation: while waiting for room (``max_pending``), nothing is submitted.
        """
        executor, options = self._executor, self.options
        dispatch = executor._dispatch
        if not dispatch.bounded:  # no room to wait for: no coroutine (nor call) more per task
            return dispatch.accept(executor._prepare(fn, args, kwargs, options), options, False)
        return await executor._submit(fn, args, kwargs, options)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Submit ``fn(*args, **kwargs)`` and return its value.

        Cancellation: cancelling the caller cancels the task and kills its work
        before the cancellation propagates. This is what a web handler wants.
        """
        executor = self._executor
        future = await executor._submit(fn, args, kwargs, self.options)
        try:
            return await future
        except BaseException:
            if not future.ready():
                with anyio.CancelScope(shield=True):
                    await executor.cancel(future)
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
        return self._map(fn, iterables, ordered, chunksize)

    async def _map(
        self,
        fn: Callable[..., T],
        iterables: Sequence[Iterable[Any]],
        ordered: bool,
        chunksize: int,
    ) -> AsyncIterator[T]:
        executor, options = self._executor, self.options
        window = max(2 * executor.n_workers, 2)
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
        completion = Completion()
        try:
            for call, args in itertools.islice(calls, window):
                future = await executor._submit(call, args, {}, options)
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
                    following = await executor._submit(call, args, {}, options)
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
                    await executor.cancel(unfinished)


class BaseExecutor(_TaskMethods):
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
        self._dispatch = Dispatcher(self, max_pending)
        self._takes_buffers = False  # the launcher moves out-of-band buffers (set on entry)
        # The launcher's name where tasks run without this machine's files (set on
        # entry): the user's own modules travel by value (asyncexec._travel).
        self._travel_to: str | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._resources_checked: Resources | None = None  # the launcher honours these
        self._executor = self

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
            self._takes_buffers = launcher.capabilities.takes_buffers
            if not launcher.capabilities.shares_files:
                self._travel_to = type(launcher).__name__
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._dispatch.open(launcher, self.n_workers, tg, running_loop())
            self._stack = stack.pop_all()
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
            await self.cancel(self._dispatch.live())
        await self._dispatch.drain()
        if self._launcher is not None:
            await self._launcher.aclose()
        self._state = "closed"

    async def job_states(self, refs: Sequence[JobRef]) -> list[str]:
        """Where the work of each of ``refs`` (tasks started earlier, by any driver) is
        now, asked of the backend in one query: ``"queued"``, ``"running"``,
        ``"ended"`` (its outcome waits for :meth:`attach`, or it was lost) or
        ``"unknown"`` (not this backend's work). ``asyncexec status`` shows it.

        Raises:
            LaunchError: the backend could not be asked.

        Cancellation: the query is stopped; it only reads.
        """
        self._check_open()
        assert self._launcher is not None
        return await self._launcher.states(list(refs))

    async def kill(self, refs: Sequence[JobRef]) -> list[str]:
        """Kill the work of ``refs`` (tasks started earlier, by any driver) without
        following it, and wait until the backend confirms that none of it is left
        (``asyncexec cancel``). Returns the native ids the backend still lists.

        Raises:
            LaunchError: the backend refused, or cannot kill work it does not follow.

        Cancellation: some may be killed, some not; it is safe to call again.
        """
        self._check_open()
        assert self._launcher is not None
        return await self._launcher.kill(list(refs))

    @property
    def capabilities(self) -> Capabilities:
        """What this executor's backend can do (:class:`~asyncexec.abc.Capabilities`:
        ``reattachable``, ``can_kill``...), once it is open.

        Raises:
            RuntimeError: the executor is not open.
        """
        if self._launcher is None:
            raise RuntimeError(f"{type(self).__name__} is not open: its backend is not known yet")
        return self._launcher.capabilities

    async def detach(self) -> list[JobRef]:
        """Close, letting the work of every live task go on where it runs.

        For backends whose work outlives the driver (Slurm, Docker one-shot,
        Azure: ``launcher.capabilities.reattachable``), so that a driver may exit
        while its tasks run: each live future ends with :class:`TaskDetached`
        (a :class:`TaskCancelled`) naming its ``job_ref``, and nothing is killed.
        Keep the refs: :meth:`attach` (of this or another executor on the same
        place, in this process or a later one) follows the work again and
        collects its outcome. A task still queued in this executor, that no
        place had taken, is cancelled instead; one being handed over is waited
        for. Then the executor is closed, as :meth:`aclose` closes it.

        Returns:
            the JobRefs of the tasks let go.

        Raises:
            LaunchError: the backend's work ends with its driver (nothing is
                let go, and the executor stays open).

        Cancellation: the tasks not yet let go stay live and the executor
        open; leaving ``async with`` then cancels them as usual.
        """
        launcher = self._launcher
        if self._state != "open" or launcher is None:
            self._check_open()
            raise ExecutorClosed(f"{type(self).__name__} is closing: nothing to detach")
        if not launcher.capabilities.reattachable:
            raise LaunchError(
                f"{type(self).__name__} cannot detach: its work ends with this process "
                "(detach needs a backend whose work outlives its driver: Slurm, Docker "
                "one-shot, Azure)"
            )
        live = self._dispatch.live()
        await self._dispatch.detach()
        self._state = "closing"
        refs = [
            error.job_ref
            for future in live
            if isinstance(error := future.exception(), TaskDetached) and error.job_ref is not None
        ]
        await launcher.release()
        self._state = "closed"
        return refs

    def _check_open(self) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            name = type(self).__name__
            raise RuntimeError(f"{name} is not started: use `async with {name}(...) as ex:`")
        raise ExecutorClosed(f"{type(self).__name__} is closed and accepts no more tasks")

    def with_options(self, **changes: Any) -> ConfiguredExecutor:
        """A view of this executor whose tasks use other options.

        ``await ex.with_options(time_limit=5, retries=2).submit(f, x)``
        """
        return ConfiguredExecutor(self, self.options.replace(**changes))

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
        if self._dispatch.follows(task_id):
            raise ValueError(f"task {task_id} is already followed by this executor")
        return self._dispatch.attach(ref, task_id, name, self.options)

    # -- the seam of submit, run and map (for this executor and its configured views)

    async def _submit(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: TaskOptions,
    ) -> Future[T]:
        """Take ``fn(*args, **kwargs)`` as a task with ``options``; raise as :meth:`submit`.

        Cancellation: while waiting for room (``max_pending``), nothing is submitted.
        """
        call = self._prepare(fn, args, kwargs, options)
        dispatch = self._dispatch
        holds_slot = False
        if dispatch.bounded:
            await dispatch.wait_for_room()
            holds_slot = True
            if self._state != "open":
                dispatch.give_room_back()
                self._check_open()
        return dispatch.accept(call, options, holds_slot)

    def _prepare(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: TaskOptions,
    ) -> Call:
        """Check and pickle a call (before waiting for room: a bad one fails at once).

        Where the launcher does not share this machine's files, the user's own
        modules travel by value, and one that cannot raises SerializationError here.
        """
        if self._state != "open":
            self._check_open()
        if options.resources is not self._resources_checked:  # once per Resources, not per task
            self._check_resources(options)
        _check_function(fn)
        return dumps_call(
            fn, args, kwargs, out_of_band=self._takes_buffers, travel_to=self._travel_to
        )

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
        self._resources_checked = resources

    def to_dict(self) -> dict[str, Any]:
        """This executor's configuration (:func:`asyncexec.config.to_dict`): the
        arguments it was made with, as JSON and TOML values; secrets only as
        references to where they come from.

        Raises:
            ConfigError: it holds what a configuration cannot (a secret given in
                Python, a lambda...).
        """
        from .config import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseExecutor:
        """A new executor (not entered) from a configuration
        (:func:`asyncexec.config.from_dict`); ``data["backend"]`` says which class,
        which must be this one (or a subclass of it) when called on a subclass.

        Raises:
            ConfigError: a wrong key or value, named.
            TypeError: the configuration is another class's executor.
        """
        from .config import from_dict

        executor = from_dict(data)
        if not isinstance(executor, cls):
            raise TypeError(
                f"{cls.__name__}.from_dict: the configuration makes a "
                f"{type(executor).__name__} (backend {data.get('backend')!r})"
            )
        return executor

    def stats(self) -> ExecutorStats:
        """A snapshot of this executor's tasks: how many were accepted, are live,
        wait for the launcher, are in its hands (see :class:`ExecutorStats`)."""
        return self._dispatch.stats()

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
            completion = Completion(futures)
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
        completion = Completion(unique)
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
            self._dispatch.cancel(future)
        for future in targets:
            await future.wait()


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


class ConfiguredExecutor(_TaskMethods):
    """An executor seen through other task options; made by ``with_options``.

    ``submit``, ``run`` and ``map`` behave as the executor's, with these options.
    """

    def __init__(self, executor: BaseExecutor, options: TaskOptions) -> None:
        self.executor = self._executor = executor
        self.options = options

    def __repr__(self) -> str:
        return f"<ConfiguredExecutor of {self.executor!r}>"

    def with_options(self, **changes: Any) -> ConfiguredExecutor:
        """A view of the same executor whose tasks use these options, changed."""
        return ConfiguredExecutor(self.executor, self.options.replace(**changes))
