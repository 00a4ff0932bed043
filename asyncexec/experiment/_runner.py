"""Experiment: a function over a parameter grid times repeats, on any executor.

Every run goes to the results store of the experiment directory; which
process runs what is decided by a :class:`ParamSweeper` in the same
directory, so several runners can share one experiment, a runner that dies
leaves nothing stranded, and a second ``run`` skips what is done.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
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
    LaunchError,
    TaskDetached,
    TaskOptions,
)
from ..sweep import HashableDict, ParamSweeper, slugify, sweep
from ._progress import Progress
from ._store import ResultsStore, RunSpec

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
        self.runs = [
            RunSpec(
                fingerprint=_fingerprint(identity, combination, repeat, self.version),
                params=dict(combination),
                repeat=repeat,
            )
            for combination in combinations
            for repeat in range(repeats)
        ]

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
        if indexed is not False:
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
            lease,
            lambda store, sweeper: _Dispatch(self, executor, store, sweeper, retry_failed, detach),
            control,
            progress,
            progress_interval,
        )


class Detachable(Protocol):
    """What a :class:`RunControl` steers: a runner of an experiment."""

    executor: BaseExecutor

    def detach_now(self) -> None: ...


class Runner(Detachable, Protocol):
    """What runs an experiment's runs between a store and a sweeper (the per-run
    dispatcher here, the indexed arrays' runner): what :func:`run_in_store` needs."""

    fingerprints: frozenset[str]
    ran: int
    reattached: int
    detached: int

    async def run(self, enabled: bool | None, interval: float) -> bool: ...


async def run_in_store(
    experiment: Experiment,
    directory: str,
    lease: float,
    make_runner: Callable[[ResultsStore, ParamSweeper], Runner],
    control: RunControl | None,
    progress: bool | None,
    progress_interval: float,
) -> RunSummary:
    """Open the experiment's store and sweeper in ``directory``, have the runner
    ``make_runner`` makes of them run it (steered by ``control``), close them (shielded),
    and sum up."""
    started = time.monotonic()
    store = await anyio.to_thread.run_sync(
        functools.partial(ResultsStore, directory, experiment=experiment.name)
    )
    try:
        await anyio.to_thread.run_sync(store.register, experiment.runs)
        await anyio.to_thread.run_sync(store.clear_cancel)
        sweeper = await anyio.to_thread.run_sync(
            functools.partial(
                ParamSweeper,
                os.path.join(directory, "sweeper"),
                [run.fingerprint for run in experiment.runs],
                name=experiment.name,
                lease=lease,
            )
        )
        try:
            runner = make_runner(store, sweeper)
            if control is not None:
                control.bind(runner)
            cancelled = await runner.run(progress, progress_interval)
        finally:
            with anyio.CancelScope(shield=True):  # its heartbeat thread, its connection
                await anyio.to_thread.run_sync(sweeper.close)
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
    indexed arrays' runner): the experiment, its executor, store and sweeper, what it
    did, and the checks both make."""

    def __init__(
        self,
        experiment: Experiment,
        executor: BaseExecutor,
        store: ResultsStore,
        sweeper: ParamSweeper,
        retry_failed: bool,
        detach: bool,
    ) -> None:
        self.experiment = experiment
        self.executor = executor
        self.store = store
        self.sweeper = sweeper
        self.retry_failed = retry_failed
        self.detach = detach  # submit, then leave the work running
        self.by_fingerprint = {run.fingerprint: run for run in experiment.runs}
        self.fingerprints = frozenset(self.by_fingerprint)
        self.logs = os.path.join(store.directory, "logs")
        self.held: set[str] = set()  # taken from the sweeper, not recorded yet
        self.ran = 0
        self.reattached = 0  # runs whose running work was followed again, not resubmitted
        self.detached = 0
        self.failed_here = 0  # failed runs this runner retried and failed again
        self.requested = False  # `asyncexec cancel DIR`

    def finished(self, status: str | None) -> bool:
        return status == "done" or (status == "failed" and not self.retry_failed)

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
    """One runner's loop: take runs from the sweeper, submit them, record them."""

    def __init__(
        self,
        experiment: Experiment,
        executor: BaseExecutor,
        store: ResultsStore,
        sweeper: ParamSweeper,
        retry_failed: bool,
        detach: bool = False,
    ) -> None:
        super().__init__(experiment, executor, store, sweeper, retry_failed, detach)
        self.taking = anyio.CancelScope()  # around taking and submitting runs
        # Detaching, a run leaves the window once the backend has taken it: as many go
        # at once as the executor hands over (its n_workers).
        self.window = anyio.Semaphore(max(2, (1 if detach else 2) * executor.n_workers))
        self.poll = min(2.0, sweeper.lease / 3)
        self.recorded = anyio.Event()

    def detach_now(self) -> None:
        """Take no more runs; let those in flight go running (as ``detach=True``)."""
        self.detach = True
        self.taking.cancel()

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
                tg.start_soon(self._watch_cancel_requests, tg.cancel_scope)
                tg.start_soon(self.progress.report_periodically)
                await self._dispatch(tg)
                completed = True
                tg.cancel_scope.cancel()  # the watcher and the reporter
        finally:
            with anyio.CancelScope(shield=True):
                if self.held:  # taken from the sweeper but never submitted
                    await anyio.to_thread.run_sync(self.sweeper.cancel_batch, list(self.held))
            self.progress.stop()
        return self.requested or not completed

    async def _dispatch(self, tg: anyio.abc.TaskGroup) -> None:
        in_flight = 0
        all_collected = anyio.Event()
        all_collected.set()

        async def collect(fingerprint: str, future: Future[Any]) -> None:
            nonlocal in_flight, all_collected
            in_window = True

            def hand_over() -> None:  # its JobRef is stored
                nonlocal in_window
                if self.detach and in_window:  # detaching: the next run may go
                    in_window = False
                    self.window.release()

            try:
                with anyio.CancelScope(shield=True):  # recorded running before its end
                    await anyio.to_thread.run_sync(self.store.mark_running, fingerprint, future)
                ref = None
                while True:  # each attempt's ref in turn (a retry runs in new work)
                    ref = await future.accepted(other_than=ref)
                    if ref is None or future.ready():
                        break
                    if self.executor.can_attach(ref):
                        # The work outlives us: a runner resuming after a crash follows it.
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self.store.set_job_ref, fingerprint, ref)
                        hand_over()
                await future.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._record(fingerprint, future)
                    in_flight -= 1
                    if in_flight == 0:
                        all_collected.set()
                    if in_window:
                        self.window.release()

        with self.taking:  # cancelled: detach now (RunControl.detach)
            while True:
                await self.window.acquire()
                with anyio.CancelScope(shield=True):  # what the sweeper hands out must be tracked
                    fingerprint = await self.sweeper.aget_next()
                    if fingerprint is not None:
                        self.held.add(fingerprint)
                if fingerprint is None:
                    self.window.release()
                    if self.detach or await self._all_finished():
                        break
                    if await anyio.to_thread.run_sync(self._reopen_lost):
                        continue
                    # The rest is held, by us or by others: wait for one of ours to finish,
                    # or a while for the others (or for their leases to expire).
                    self.recorded = anyio.Event()
                    with anyio.move_on_after(self.poll):
                        await self.recorded.wait()
                    continue
                status = await anyio.to_thread.run_sync(self.store.status, fingerprint)
                if self.finished(status):
                    await anyio.to_thread.run_sync(
                        self.sweeper.done if status == "done" else self.sweeper.skip, fingerprint
                    )
                    self.held.discard(fingerprint)
                    self.window.release()
                    continue
                future = await self._follow_or_submit(fingerprint, status)
                # No checkpoint from here to start_soon: a cancellation cannot come between
                # the task's submission and the collector that cancels and records it.
                self.held.discard(fingerprint)
                in_flight += 1
                all_collected = anyio.Event()
                self.progress.running += 1
                self.progress.changed()
                tg.start_soon(collect, fingerprint, future)
        if self.detach:
            # Every run in flight goes on where it runs (queued here: cancelled, to do).
            refs = await self.executor.detach()
            log.info("%s: %d run(s) left running (detached)", self.experiment.name, len(refs))
        await all_collected.wait()

    async def _follow_or_submit(self, fingerprint: str, status: str | None) -> Future[Any]:
        """Re-attach to the task of a run a crashed runner left running, else submit it."""
        run = self.by_fingerprint[fingerprint]
        if status == "running":
            ref = await anyio.to_thread.run_sync(self.store.job_ref, fingerprint)
            if ref is not None and self.executor.can_attach(ref):
                log.info("re-attaching to %s (%s %s)", fingerprint, ref.kind, ref.native_id)
                self.reattached += 1
                return await self.executor.attach(ref, name=self._name(run))
        return await self._submit(run)

    def _name(self, run: RunSpec) -> str:
        return f"{self.experiment.name}[{slugify(run.params)}#{run.repeat}]"

    async def _submit(self, run: RunSpec) -> Future[Any]:
        experiment = self.experiment
        stem = os.path.join(self.logs, _log_name(run))
        options = (experiment.options or self.executor.options).replace(
            name=self._name(run),
            log_stdout=f"{stem}.out",
            log_stderr=f"{stem}.err",
        )
        kwargs = dict(run.params)
        if experiment.passes_repeat:
            kwargs["repeat"] = run.repeat
        return await ConfiguredExecutor(self.executor, options).submit(experiment.fn, **kwargs)

    async def _record(self, fingerprint: str, future: Future[Any]) -> None:
        if not future.ready():
            await self.executor.cancel(future)
        error = future.exception()
        if isinstance(error, TaskDetached):
            # Left running, recorded running with its JobRef: given back to the
            # sweeper, the next runner takes it and follows it (re-attach).
            if error.job_ref is not None:  # (its collector may not have stored it yet)
                await anyio.to_thread.run_sync(self.store.set_job_ref, fingerprint, error.job_ref)
            await anyio.to_thread.run_sync(self.sweeper.cancel, fingerprint)
            self.progress.running -= 1
            self.detached += 1
            self.progress.changed()
            self.recorded.set()
            return
        status = await anyio.to_thread.run_sync(self.store.record, fingerprint, future)
        self.progress.running -= 1
        if future.state is FutureState.DONE:
            await anyio.to_thread.run_sync(self.sweeper.done, fingerprint)
            self.progress.done += 1
            self.ran += 1
        elif future.state is FutureState.FAILED:
            # Not done for the sweeper: a later run looks again (retry_failed).
            await anyio.to_thread.run_sync(self.sweeper.skip, fingerprint)
            self.progress.failed += 1
            self.failed_here += 1
            self.ran += 1
        else:
            await anyio.to_thread.run_sync(self.sweeper.cancel, fingerprint)
        self.progress.changed()
        self.recorded.set()
        assert status in ("done", "failed", "cancelled")

    def _reopen_lost(self) -> int:
        """Runs the sweeper has done but the store has no result for: make them todo again.

        The store is the truth: its results may have been deleted (to start over) or
        lost in a crash, while ``sweeper/`` remains. (A run is recorded in the store
        before the sweeper marks it done, so this never undoes a run in progress.)
        """
        done = self.sweeper.get_done()  # first: what it says done is in the store by now
        statuses = self.store.statuses(self.fingerprints)
        lost = [fingerprint for fingerprint in done if statuses.get(fingerprint) != "done"]
        if not lost:
            return 0
        reopened = self.sweeper.reopen_batch(lost)
        if reopened:
            log.warning(
                "%s: %d run(s) done for %s have no result in %s: running them again",
                self.experiment.name,
                reopened,
                os.path.join(self.store.directory, "sweeper"),
                self.store.path,
            )
        return reopened


def _takes_repeat(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "repeat" in parameters


def _fingerprint(identity: str, params: Mapping[str, Any], repeat: int, version: str) -> str:
    data = msgspec.msgpack.encode([identity, repr(_canonical(dict(params))), repeat, version])
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` with its dicts and sets in a fixed order: fingerprints must never change."""
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((repr(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, (set, frozenset)):
        return ("__set__", tuple(sorted(repr(_canonical(v)) for v in value)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    return value


def _log_name(run: RunSpec) -> str:
    slug = slugify(run.params)[:80] or "run"
    return f"{slug}-r{run.repeat}-{run.fingerprint[:8]}"
