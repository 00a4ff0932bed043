"""Experiment: a function over a parameter grid times repeats, on any executor.

Every run goes to the results store of the experiment directory, which also
says which runner runs what (:mod:`._leases`): several runners can share one
experiment, a runner that dies leaves nothing stranded, and a second ``run``
skips what is done.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import anyio
import msgspec

from .. import (
    BaseExecutor,
    ConfiguredExecutor,
    Future,
    FutureState,
    JobRef,
    LaunchError,
    TaskDetached,
    TaskOptions,
)
from ..sweep import HashableDict, slugify, sweep
from ._leases import RunLeases
from ._progress import Progress
from ._store import ResultsStore, RunSpec, future_row

__all__ = ["INDEXED_THRESHOLD", "Experiment", "RunControl", "RunSummary"]

log = logging.getLogger("asyncexec")

#: Runs from which ``Experiment.run(indexed=None)`` sends the experiment as indexed arrays
#: on an executor whose backend offers them (see :mod:`._indexed`).
INDEXED_THRESHOLD = 5000


class RunSummary(msgspec.Struct, kw_only=True):
    """What one ``Experiment.run`` did."""

    experiment: str
    directory: str
    total: int
    done: int  # finished with a value, in all runs so far
    failed: int  # finished with an error, in all runs so far
    ran: int  # tasks this run executed (successes and failures)
    reattached: int = 0  # of those, tasks a crashed runner left running, followed again
    detached: int = 0  # runs left running where they run (``detach=True``), to collect later
    cancelled: bool  # stopped before the end (cancellation, or `asyncexec cancel`)
    elapsed: float

    @property
    def complete(self) -> bool:
        return self.done + self.failed == self.total


class Experiment:
    """A function run over every combination of parameters, ``repeats`` times.

    Args:
        fn: called as ``fn(**params)``; also with ``repeat=<n>`` if it takes a
            ``repeat`` parameter that is not a factor (handy for seeding).
        params: a dict of factor -> levels (expanded with :func:`sweep`, sub-sweeps
            included), or an explicit list of parameter dicts.
        repeats: runs per combination.
        name: the experiment's name (default: the function's name).
        version: part of every run's fingerprint: change it to run everything again.
        options: task options for its runs (default: the executor's).

    A run is identified by its fingerprint: the function's qualified name, its
    parameters, its repeat number and the version.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        params: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        repeats: int = 1,
        name: str | None = None,
        version: str | int = 1,
        options: TaskOptions | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"an experiment runs a function, got {fn!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", "experiment"))
        self.version = str(version)
        self.repeats = repeats
        self.options = options
        if isinstance(params, Mapping):
            combinations = sweep(params, strict=True)
        else:
            combinations = []
            for entry in params:
                if not isinstance(entry, Mapping):
                    raise TypeError(f"each parameter set must be a dict, got {entry!r}")
                combinations.append(HashableDict(entry))
            if not combinations:
                raise ValueError("an experiment needs at least one parameter set")
        #: Whether each run is also given its ``repeat`` number (``fn`` takes one).
        self.passes_repeat = _takes_repeat(fn) and not any("repeat" in c for c in combinations)
        identity = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.runs: list[RunSpec] = []
        for combination in combinations:
            text = _canonical_text(combination)
            params = dict(combination)  # (one dict for every repeat: nothing changes it)
            self.runs.extend(
                RunSpec(_fingerprint_of(identity, text, repeat, self.version), params, repeat)
                for repeat in range(repeats)
            )

    def __repr__(self) -> str:
        return f"<Experiment {self.name!r}: {len(self.runs)} runs>"

    async def run(
        self,
        executor: BaseExecutor,
        directory: str | os.PathLike[str],
        *,
        retry_failed: bool = False,
        progress: bool | None = None,
        progress_interval: float = 10.0,
        lease: float = 60.0,
        detach: bool = False,
        control: RunControl | None = None,
        indexed: bool | None = None,
        runs_per_task: int | None = None,
    ) -> RunSummary:
        """Run what is not done yet on ``executor``, recording every run in ``directory``.

        Runs already ``done`` in the store are skipped; ``failed`` ones too unless
        ``retry_failed``. Several runners (processes, machines sharing the
        directory) may work on one experiment at once: none runs a run twice.
        Returns when every run is finished, by this runner or another.

        Cancellation: (as ``asyncexec cancel DIR``, which then returns a
        summary with ``cancelled=True``) stops dispatching; the runs in flight
        are cancelled, shielded (they are recorded ``cancelled`` and run again
        next time), and the runs taken but not yet submitted are given back;
        the store is left consistent. Calling it again resumes.

        Args:
            executor: an entered executor.
            directory: the experiment directory (made if missing).
            retry_failed: run the runs recorded ``failed`` again.
            progress: a progress bar on a terminal, plain lines elsewhere (None),
                always (True), or never (False).
            progress_interval: seconds between plain progress lines.
            lease: seconds a dead runner's runs stay held before another takes them.
            detach: submit what is not done and return once the backend has taken
                it, without waiting for it (the executor is then closed by
                :meth:`BaseExecutor.detach`, its work left running). Each run's
                JobRef is in the store: ``run`` again (``asyncexec run --continue``)
                follows the runs still running and collects those that finished
                meanwhile. Runs the executor could not hand over at once (more
                than ``n_workers``) are left for that later ``run``. Needs a
                backend whose work outlives its driver (Slurm, Docker one-shot,
                Azure).
            control: a :class:`RunControl` to detach the run while it goes (on
                Ctrl-C, say).
            indexed: send the runs as index-addressed arrays, the function and
                the runs once per array and the outcomes appended to one file per
                array task (:mod:`asyncexec.experiment._indexed`): True, False, or
                None for experiments of ``INDEXED_THRESHOLD`` (5,000) runs or more
                on an executor whose backend offers them (Slurm), and for those
                whose store has runs left running in indexed arrays.
            runs_per_task: with ``indexed``, runs per array task (default: the
                runs spread over 256 array tasks at most, 50 runs each at least).

        Raises:
            LaunchError: ``detach`` on a backend whose work ends with its driver
                (before anything is submitted).
            ValueError: ``indexed=True`` on an executor without indexed arrays.
        """
        if detach and not executor.capabilities.reattachable:
            raise LaunchError(
                f"{type(executor).__name__} cannot detach: its work ends with this "
                "process (detach needs a backend whose work outlives its driver: Slurm, "
                "Docker one-shot, Azure)"
            )
        directory = os.fspath(directory)
        # (An executor of the batch family has imported its launchers: on any other,
        # indexed arrays are not offered, and importing them would cost tens of ms.)
        if indexed or (indexed is None and "asyncexec.launchers.batch" in sys.modules):
            from ._indexed import indexed_launcher, left_running, run_indexed

            if indexed or (
                indexed_launcher(executor) is not None
                and (len(self.runs) >= INDEXED_THRESHOLD or left_running(directory))
            ):
                return await run_indexed(
                    self,
                    executor,
                    directory,
                    retry_failed=retry_failed,
                    progress=progress,
                    progress_interval=progress_interval,
                    lease=lease,
                    runs_per_task=runs_per_task,
                    detach=detach,
                    control=control,
                )
        return await run_in_store(
            self,
            directory,
            lambda store: _Dispatch(self, executor, store, lease, retry_failed, detach),
            control,
            progress,
            progress_interval,
        )


class Detachable(Protocol):
    """What a :class:`RunControl` steers: a runner of an experiment."""

    executor: BaseExecutor

    def detach_now(self) -> None: ...


class Runner(Detachable, Protocol):
    """What runs an experiment's runs from its store (the per-run dispatcher here, the
    indexed arrays' runner): what :func:`run_in_store` needs."""

    leases: RunLeases
    fingerprints: frozenset[str]
    ran: int
    reattached: int
    detached: int

    async def run(self, enabled: bool | None, interval: float) -> bool: ...


async def run_in_store(
    experiment: Experiment,
    directory: str,
    make_runner: Callable[[ResultsStore], Runner],
    control: RunControl | None,
    progress: bool | None,
    progress_interval: float,
) -> RunSummary:
    """Open the experiment's store in ``directory`` and register its runs, have the
    runner ``make_runner`` makes of it run them (steered by ``control``), close it
    (shielded), and sum up."""
    started = time.monotonic()
    store = await anyio.to_thread.run_sync(
        functools.partial(ResultsStore, directory, experiment=experiment.name)
    )
    try:
        with anyio.CancelScope(shield=True):  # (one call to its end)
            await anyio.to_thread.run_sync(_register, store, experiment)
        runner = make_runner(store)
        try:
            if control is not None:
                control.bind(runner)
            cancelled = await runner.run(progress, progress_interval)
        finally:
            with anyio.CancelScope(shield=True):  # its heartbeat thread
                await anyio.to_thread.run_sync(runner.leases.close)
        counts = await anyio.to_thread.run_sync(store.counts, runner.fingerprints)
    finally:
        store.close()
    return RunSummary(
        experiment=experiment.name,
        directory=directory,
        total=len(experiment.runs),
        done=counts["done"],
        failed=counts["failed"],
        ran=runner.ran,
        reattached=runner.reattached,
        detached=runner.detached,
        cancelled=cancelled,
        elapsed=time.monotonic() - started,
    )


def _register(store: ResultsStore, experiment: Experiment) -> None:
    store.register(experiment.runs)
    store.clear_cancel()


class RunControl:
    """Steers an :meth:`Experiment.run` under way, from the same event loop (a signal
    watcher, a UI): pass it as ``control=``.
    """

    def __init__(self) -> None:
        self._dispatch: Detachable | None = None
        self._reattachable: bool | None = None
        self.detach_requested = False

    def bind(self, runner: Detachable) -> None:
        """Steer ``runner``: called by ``Experiment.run`` as it starts (not by users)."""
        self._dispatch = runner
        self._reattachable = runner.executor.capabilities.reattachable
        if self.detach_requested:
            runner.detach_now()

    @property
    def can_detach(self) -> bool:
        """Whether :meth:`detach` can work: the run's backend's work outlives its driver
        (False until the run has started)."""
        return bool(self._reattachable)

    def detach(self) -> None:
        """Take no more runs, let the runs in flight go on running where they run
        (their JobRefs stored), and end the run, as ``detach=True`` does: the next
        ``run`` follows them. Never waits.

        Raises:
            LaunchError: the run's backend's work ends with its driver.
        """
        if self._reattachable is False:
            raise LaunchError("this run's backend cannot detach: its work ends with its driver")
        self.detach_requested = True
        if self._dispatch is not None:
            self._dispatch.detach_now()


class RunnerBase:
    """What every runner of an experiment holds (the per-run dispatcher here, the
    indexed arrays' runner): the experiment, its executor, store and leases, what it
    did, and the checks both make."""

    def __init__(
        self,
        experiment: Experiment,
        executor: BaseExecutor,
        store: ResultsStore,
        lease: float,
        retry_failed: bool,
        detach: bool,
    ) -> None:
        self.experiment = experiment
        self.executor = executor
        self.store = store
        self.retry_failed = retry_failed
        self.detach = detach  # submit, then leave the work running
        self.by_fingerprint = {run.fingerprint: run for run in experiment.runs}
        self.fingerprints = frozenset(self.by_fingerprint)
        self.leases = RunLeases(store, self.fingerprints, lease, retry_failed)
        self.logs = os.path.join(store.directory, "logs")
        self.held: set[str] = set()  # taken, not submitted yet
        self.ran = 0
        self.reattached = 0  # runs whose running work was followed again, not resubmitted
        self.detached = 0
        self.failed_here = 0  # failed runs this runner retried and failed again
        self.requested = False  # `asyncexec cancel DIR`

    async def _all_finished(self) -> bool:
        counts = await anyio.to_thread.run_sync(self.store.counts, self.fingerprints)
        finished = counts["done"] + (0 if self.retry_failed else counts["failed"])
        if self.retry_failed:
            finished += self.failed_here  # failed again here: final for this runner
        return finished >= len(self.by_fingerprint)

    async def _watch_cancel_requests(self, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(1.0)
            if await anyio.to_thread.run_sync(self.store.cancel_requested):
                self.requested = True
                scope.cancel()
                return


class _Dispatch(RunnerBase):
    """One runner's loop: take runs from the store, submit them, record them, in
    batches, one per turn of the loop.

    Each turn makes one trip to a worker thread (:meth:`_turn`): one transaction of
    the store records the runs the last turn started and those that ended since
    (which frees them), and another takes the next runs. The event loop never waits
    on SQLite, and SQLite sees two transactions a turn rather than several a run. Up
    to ``capacity`` runs are in flight: for short runs, as many as the executor keeps
    handed to its backend (``n_workers * (1 + prefetch)``: a process pool's prefetch
    stays full, a cluster gets thousands at once); for long ones, twice its workers
    (the rest stays free, for the other runners of the experiment).

    What a crash loses: a run that ended is recorded by the turn after (a turn
    starts as soon as the last one's trip is back). A runner killed at any moment
    runs again at most the runs in flight then (the window: ``n_workers * (1 +
    prefetch)`` at most), finished or not; a run recorded ``done`` is never run
    again.
    """

    #: Seconds after which a run still running is recorded running (see _running_after).
    RUNNING_AFTER = 1.0

    def __init__(
        self,
        experiment: Experiment,
        executor: BaseExecutor,
        store: ResultsStore,
        lease: float,
        retry_failed: bool,
        detach: bool = False,
    ) -> None:
        super().__init__(experiment, executor, store, lease, retry_failed, detach)
        # The window: at most what the executor keeps handed to its backend (its limit,
        # n_workers * (1 + prefetch)); at least twice its workers; in between, a quarter
        # of a second of runs at the rate they end (short runs fill the prefetch, long
        # ones leave the runs they would wait for to other runners of the experiment).
        self.limit = max(2, executor.stats().limit or 2 * executor.n_workers)
        self.base = min(self.limit, max(2, 2 * executor.n_workers))
        self.capacity = self.base
        self.rate_since = time.monotonic()
        self.ended_since = 0
        self.poll = min(2.0, lease / 3)
        self.follows = executor.capabilities.reattachable  # keep JobRefs to follow after a crash
        self.wake = anyio.Event()
        self.flying: dict[str, Future[Any]] = {}
        self.occupying = 0  # runs in the window (detaching: not handed over yet)
        self.handed: set[str] = set()  # detaching: in flight, JobRef stored, out of the window
        self.ended: list[tuple[str, Future[Any]]] = []  # to record at the next turn
        # Runs submitted, not recorded running yet: where each went, and when (monotonic).
        self.started: dict[str, tuple[JobRef | None, float]] = {}
        self.refs: dict[str, JobRef] = {}  # where runs went since the last turn, to store
        self.stopping = False  # detach now: take no more runs
        self.exhausted = 0.0  # when the store last had fewer free runs for us than asked (0: not)
        self.detaching = False  # executor.detach() was called
        self.reserve: collections.deque[tuple[str, JobRef | None]] = collections.deque()
        self.hopping = False  # a turn's trip to a worker thread is under way
        self.tg: anyio.abc.TaskGroup | None = None
        # Each run's output goes to its log files, made only for what it writes.
        self.options = (experiment.options or executor.options).replace(logs_at_end=True)

    def detach_now(self) -> None:
        """Take no more runs; let those in flight go running (as ``detach=True``)."""
        self.detach = True
        self.stopping = True
        self.wake.set()

    async def run(self, enabled: bool | None, interval: float) -> bool:
        """Dispatch until every run is finished; return whether it was cancelled."""
        os.makedirs(self.logs, mode=0o700, exist_ok=True)
        counts = await anyio.to_thread.run_sync(self.store.counts, self.fingerprints)
        before = counts["done"] + (0 if self.retry_failed else counts["failed"])
        self.progress = Progress(
            self.experiment.name,
            len(self.by_fingerprint),
            before,
            enabled=enabled,
            interval=interval,
        )
        self.progress.start()
        self.requested = False
        completed = False
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                tg.start_soon(self._watch_cancel_requests, tg.cancel_scope)
                tg.start_soon(self.progress.report_periodically)
                await self._dispatch()
                completed = True
                tg.cancel_scope.cancel()  # the watcher, the reporter, the followers
        finally:
            with anyio.CancelScope(shield=True):
                await self._wind_down()
            self.progress.stop()
        return self.requested or not completed

    async def _dispatch(self) -> None:
        """Launch runs while the trips to the worker thread go on beside: the runs of
        the next window are taken while this one's are submitted."""
        assert self.tg is not None
        while True:
            while (
                self.reserve
                and self.occupying < self.capacity
                and not (self.stopping or self.detaching)
            ):
                await self._launch(*self.reserve.popleft())
            now = time.monotonic()
            if self.exhausted and now - self.exhausted > self.poll:
                self.exhausted = 0.0  # (others give runs back, leases expire: ask again)
            if not self.hopping:
                want = 0
                if (
                    not (self.stopping or self.exhausted)
                    and len(self.reserve) <= self.capacity // 2
                ):
                    want = self.capacity - len(self.reserve)
                due = self._running_due(now)
                if want or self.ended or self.refs or (due is not None and due <= 0):
                    self.hopping = True
                    self.tg.start_soon(self._hop_beside, want)
                    continue
                if (
                    self.detach
                    and (self.stopping or (self.exhausted and not self.reserve))
                    and not self.detaching
                ):
                    # Every run in flight goes on where it runs (queued here: cancelled);
                    # the runs taken are all submitted first (else: given back at the end).
                    self.detaching = True
                    refs = await self.executor.detach()
                    log.info(
                        "%s: %d run(s) left running (detached)", self.experiment.name, len(refs)
                    )
                    continue
                if (
                    not self.flying
                    and not self.started
                    and not (self.reserve and not self.stopping)
                    and (self.detach or self.stopping or await self._all_finished())
                ):
                    return
            # Wait for a run to end, a trip to come back, or a while.
            self.wake = anyio.Event()
            if self.ended or self.refs:
                limit: float | None = 0.0 if not self.hopping else None
            elif self.started:
                limit = max(0.0, self._running_due(now) or 0.0)
            elif self.exhausted:
                limit = self.poll
            else:
                limit = None
            with anyio.move_on_after(limit):
                await self.wake.wait()

    def _running_after(self) -> float:
        """Seconds after its submission a run still running is recorded running.

        A run that ends sooner is recorded once, when it ends: short runs cost one
        write each. Where work outlives its runner (``follows``), and when detaching,
        every run is recorded at once, with where it went, for the next runner.
        """
        return 0.05 if self.follows or self.detach else self.RUNNING_AFTER

    def _running_due(self, now: float) -> float | None:
        """Seconds until the first run started is to be recorded running (None: none)."""
        first = next(iter(self.started.values()), None)
        return None if first is None else first[1] + self._running_after() - now

    async def _hop_beside(self, want: int) -> None:
        try:
            taken, offered = await self._hop(want)
            self.reserve.extend(taken)
            if offered < want:
                self.exhausted = time.monotonic()
        finally:
            self.hopping = False
            self.wake.set()

    async def _hop(
        self, want: int, final: bool = False
    ) -> tuple[list[tuple[str, JobRef | None]], int]:
        """One turn's trip to a worker thread (:meth:`_turn`), then its bookkeeping here
        (``final``: every run started is recorded, however recent)."""
        ended, self.ended = self.ended, []
        started, self.started = self.started, {}
        refs, self.refs = self.refs, {}
        until = math.inf if final else time.monotonic() - self._running_after()
        with anyio.CancelScope(shield=True):  # what is taken must be tracked
            taken, offered = await anyio.to_thread.run_sync(
                self._turn, started, until, refs, ended, want
            )
            self.held.update(fingerprint for fingerprint, _ in taken)
        if started:  # (those started too recently to be recorded, first)
            started.update(self.started)
            self.started = started
        if self.detach:  # a run whose JobRef is stored leaves the window: the next may go
            for fingerprint in refs:
                if fingerprint in self.flying and fingerprint not in self.handed:
                    self.handed.add(fingerprint)
                    self.occupying -= 1
        self._adapt(len(ended))
        progress = self.progress
        for fingerprint, future in ended:
            del self.flying[fingerprint]
            if fingerprint in self.handed:
                self.handed.discard(fingerprint)
            else:
                self.occupying -= 1
            progress.running -= 1
            state = future.state
            if state is FutureState.DONE:
                progress.done += 1
                self.ran += 1
            elif state is FutureState.FAILED:
                progress.failed += 1
                self.failed_here += 1
                self.ran += 1
            elif isinstance(future.exception(), TaskDetached):
                self.detached += 1
        if ended:
            progress.changed()
        return taken, offered

    def _adapt(self, ended: int) -> None:
        """Follow the rate runs end at with the window (see ``__init__``)."""
        self.ended_since += ended
        now = time.monotonic()
        elapsed = now - self.rate_since
        # (Every tenth of a second, or as soon as a whole window has ended: short runs
        # fill the pool at once, not after a tenth of a second at twice its workers.)
        if elapsed >= 0.1 or (self.ended_since >= self.capacity and elapsed > 0):
            wanted = int(self.ended_since / elapsed * 0.25)
            self.capacity = max(self.base, min(self.limit, wanted))
            self.rate_since, self.ended_since = now, 0

    def _turn(
        self,
        started: dict[str, tuple[JobRef | None, float]],
        until: float,
        refs: dict[str, JobRef],
        ended: list[tuple[str, Future[Any]]],
        want: int,
    ) -> tuple[list[tuple[str, JobRef | None]], int]:
        """In a worker thread: record what the loop saw (one transaction: a run recorded
        ended is free again), give back what was left running elsewhere, and take up to
        ``want`` runs to do (with the JobRef of those a runner that is gone left
        running); return them, and how many were free.

        Of ``started``, the runs submitted by ``until`` are recorded running, those
        that ended are recorded ended, and both are removed: what is left, the loop
        records later.
        """
        rows = []
        failed: list[str] = []
        back: list[str] = []  # left running where they run: for the next runner to follow
        for fingerprint, future in ended:
            state = future.state
            if state is FutureState.CANCELLED:
                error = future.exception()
                if isinstance(error, TaskDetached):
                    # Left running, recorded running with its JobRef, given back: the
                    # next runner takes it and follows it (re-attach).
                    if error.job_ref is not None:
                        refs[fingerprint] = error.job_ref
                    back.append(fingerprint)
                    continue
            elif state is FutureState.FAILED:  # (retry_failed: not again here)
                failed.append(fingerprint)
            rows.append(future_row(fingerprint, future))
        for row in rows:  # (a run that started and ended since the last turn: recorded)
            started.pop(row[-1], None)
        recorded: dict[str, JobRef | None] = {}
        first = None  # when the first of them was submitted (monotonic)
        for fingerprint in back:  # (recorded running however recent: its JobRef is kept)
            if fingerprint in started:
                ref, since = started.pop(fingerprint)
                recorded[fingerprint] = ref
                first = since if first is None else min(first, since)
        for fingerprint, (ref, since) in started.items():
            if since > until:
                break  # (in the order submitted)
            recorded[fingerprint] = ref
            first = since if first is None else min(first, since)
        for fingerprint in recorded:
            started.pop(fingerprint, None)
        if recorded or refs or rows:
            now = time.time()
            submitted = now if first is None else now - (time.monotonic() - first)
            self.store.commit_turn(running=recorded, submitted=submitted, refs=refs, ended=rows)
        leases = self.leases
        if failed:
            leases.skip(failed)
        if back:
            leases.release(back)
        if want <= 0:
            return [], 0
        taken = leases.take(want)
        return [(fingerprint, ref) for fingerprint, _, ref in taken], len(taken)

    async def _launch(self, fingerprint: str, ref: JobRef | None) -> None:
        """Submit a run taken (or follow the work a crashed runner left running)."""
        executor = self.executor
        run = self.by_fingerprint[fingerprint]
        if ref is not None and executor.can_attach(ref):
            log.info("re-attaching to %s (%s %s)", fingerprint, ref.kind, ref.native_id)
            future = await executor.attach(ref, name=self._name(run))
            self.reattached += 1
        else:
            ref = None
            future = await self._submit(run)
        # No checkpoint from here on: a cancellation cannot come between the task's
        # submission and its callback (the wind-down cancels and records it).
        self.held.discard(fingerprint)
        self.flying[fingerprint] = future
        self.occupying += 1
        self.started[fingerprint] = (ref, time.monotonic())
        self.progress.running += 1
        future.add_done_callback(functools.partial(self._on_end, fingerprint))
        if self.follows and self.tg is not None:
            self.tg.start_soon(self._follow, fingerprint, future)

    def _on_end(self, fingerprint: str, future: Future[Any]) -> None:
        self.ended.append((fingerprint, future))
        if not self.hopping:  # (else the trip's return wakes the loop, which records it)
            self.wake.set()

    async def _follow(self, fingerprint: str, future: Future[Any]) -> None:
        """Keep where the run's work goes, each attempt's in turn (a retry runs in new
        work): a runner resuming after a crash follows it."""
        ref = None
        while True:
            ref = await future.accepted(other_than=ref)
            if ref is None or future.ready():
                return
            if self.executor.can_attach(ref):
                self.refs[fingerprint] = ref
                self.wake.set()

    async def _wind_down(self) -> None:
        """Stopped (done, cancelled, or failed): cancel what still runs, record what
        ended, give back what was taken and not submitted. Shielded by the caller."""
        unfinished = [future for future in self.flying.values() if not future.ready()]
        if unfinished:
            await self.executor.cancel(unfinished)
        while self.ended or self.started or self.refs:
            await self._hop(0, final=True)
        if self.held:  # taken but never submitted
            await anyio.to_thread.run_sync(self.leases.release, list(self.held))
            self.held.clear()
        self.reserve.clear()

    def _name(self, run: RunSpec, slug: str | None = None) -> str:
        """The run's task name (``slug``: its parameters' :func:`slugify`, if made)."""
        slug = slugify(run.params) if slug is None else slug
        return f"{self.experiment.name}[{slug}#{run.repeat}]"

    async def _submit(self, run: RunSpec) -> Future[Any]:
        slug = slugify(run.params)
        stem = os.path.join(self.logs, _log_name(run, slug))
        options = self.options.named(self._name(run, slug), f"{stem}.out", f"{stem}.err")
        kwargs = dict(run.params)
        if self.experiment.passes_repeat:
            kwargs["repeat"] = run.repeat
        return await ConfiguredExecutor(self.executor, options).submit(self.experiment.fn, **kwargs)


def _takes_repeat(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "repeat" in parameters


def _fingerprint_of(identity: str, text: str, repeat: int, version: str) -> str:
    data = msgspec.msgpack.encode([identity, text, repeat, version])
    return hashlib.blake2b(data, digest_size=12).hexdigest()


_SCALARS = frozenset({int, str, float, bool, type(None)})


def _canonical_text(params: Mapping[str, Any]) -> str:
    """``repr(_canonical(dict(params)))``: what a run's fingerprint is made of (quicker
    for parameters that are all plain scalars, which ``_canonical`` leaves as they are)."""
    pairs = []
    for key, value in params.items():
        if type(value) not in _SCALARS:
            return repr(_canonical(dict(params)))
        pairs.append((repr(key), value))
    pairs.sort()
    inner = ", ".join([f"({key!r}, {value!r})" for key, value in pairs])
    return f"('__dict__', ({inner},))" if len(pairs) == 1 else f"('__dict__', ({inner}))"


def _canonical(value: Any) -> Any:
    """``value`` with its dicts and sets in a fixed order: fingerprints must never change."""
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((repr(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, (set, frozenset)):
        return ("__set__", tuple(sorted(repr(_canonical(v)) for v in value)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    return value


def _log_name(run: RunSpec, slug: str | None = None) -> str:
    """The stem of the run's log files in ``DIR/logs`` (``slug``: its parameters'
    :func:`slugify`, if made already)."""
    slug = (slugify(run.params) if slug is None else slug)[:80] or "run"
    return f"{slug}-r{run.repeat}-{run.fingerprint[:8]}"
