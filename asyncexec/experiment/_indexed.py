"""An experiment as index-addressed arrays (:mod:`asyncexec.launchers.batch.indexed`).

:meth:`Experiment.run` takes this path on an executor whose backend offers
indexed arrays (Slurm) when the experiment has ``INDEXED_THRESHOLD`` (5,000)
runs or more, or when asked (``indexed=True``): the function and the runs travel once
per array, each array task works out its runs from its index and appends their
outcomes to one file; the runner reads those files in one command per round and
records the results in the store in one transaction per round.

As on the ordinary path, the store is the truth and says who runs what: the
runner takes every free run (held under its lease, :mod:`._leases`), submits
them in one array (two past the place's ``MaxArraySize``), and
keeps each run's :class:`~asyncexec.JobRef` (see
:mod:`asyncexec.launchers.batch.indexed` for its shape) in the store. A runner
that finds runs ``running`` with such refs (its predecessor was killed) follows
their arrays instead of submitting them again: what finished while nobody
watched is read from the files, what was lost runs again, nothing runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from .. import BaseExecutor
from ..launchers.batch import BatchLauncher
from ..launchers.batch.indexed import (
    REF_PREFIX,
    IndexedBatch,
    IndexedSweep,
    is_indexed_ref,
    offers_indexed,
)
from ._progress import Progress
from ._runner import RunnerBase, run_in_store
from ._store import ResultsStore, RunResult

if TYPE_CHECKING:
    from ._runner import Experiment, RunControl, RunSummary

__all__ = ["indexed_launcher", "left_running", "run_indexed"]

log = logging.getLogger("asyncexec")


def indexed_launcher(executor: BaseExecutor) -> BatchLauncher | None:
    """The open batch launcher of ``executor`` if its system offers indexed arrays.

    An executor of the batch family holds its launcher as a public attribute
    (``SlurmExecutor.slurm``).
    """
    for name, value in vars(executor).items():
        if name.startswith("_") or not isinstance(value, BatchLauncher):
            continue
        if value.poller is None:
            return None  # not open (the executor is not entered, or closed)
        return value if offers_indexed(value.adapter) else None
    return None


def left_running(directory: str) -> bool:
    """Whether ``directory``'s store has runs left running in indexed arrays (by a
    runner killed or detached): the next run must follow them as indexed arrays, what
    the experiment's size or ``indexed`` says otherwise (the ordinary path would wait
    for an outcome file of their own, which they never write)."""
    import sqlite3

    path = os.path.join(directory, "results.sqlite")
    if not os.path.exists(path):
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT 1 FROM runs WHERE status = 'running' AND job_ref LIKE ? LIMIT 1",
                (f'%"task_id":"{REF_PREFIX}%',),
            ).fetchone()
    except sqlite3.Error:
        return False  # the store says what is wrong when the run opens it
    return row is not None


async def run_indexed(
    experiment: Experiment,
    executor: BaseExecutor,
    directory: str,
    *,
    retry_failed: bool,
    progress: bool | None,
    progress_interval: float,
    lease: float,
    runs_per_task: int | None,
    detach: bool = False,
    control: RunControl | None = None,
) -> RunSummary:
    """:meth:`Experiment.run` as indexed arrays (same arguments, same summary).

    With ``detach`` (or ``control.detach()`` while it follows the arrays), returns
    once every run not finished is submitted (or its array, left by a killed
    runner, found), and closes the executor with :meth:`BaseExecutor.detach`: the
    runs stay ``running`` in the store with their refs, the arrays run on (they
    are no task of the executor's: closing it never kills them), and a later
    ``run`` follows them and collects what finished meanwhile.
    """

    launcher = indexed_launcher(executor)
    if launcher is None:
        raise ValueError(
            f"{type(executor).__name__} cannot run an experiment as indexed arrays: only an "
            "entered executor of a batch system that offers them can (SlurmExecutor)"
        )
    options = experiment.options or executor.options

    def make_runner(store: ResultsStore) -> _IndexedRunner:
        sweep = IndexedSweep(launcher, options=options, runs_per_task=runs_per_task)
        return _IndexedRunner(experiment, executor, store, lease, sweep, retry_failed, detach)

    return await run_in_store(
        experiment, directory, make_runner, control, progress, progress_interval
    )


class _IndexedRunner(RunnerBase):
    """One runner of an experiment as indexed arrays: take, submit or follow, record."""

    def __init__(
        self,
        experiment: Experiment,
        executor: BaseExecutor,
        store: ResultsStore,
        lease: float,
        sweep: IndexedSweep,
        retry_failed: bool,
        detach: bool,
    ) -> None:
        super().__init__(experiment, executor, store, lease, retry_failed, detach)
        self.sweep = sweep
        self.following = anyio.CancelScope()

    def detach_now(self) -> None:
        """Stop following the arrays once submitted; leave them running (``detach``)."""
        self.detach = True
        self.following.cancel()

    async def run(self, enabled: bool | None, interval: float) -> bool:
        """Run until every run is finished; return whether it was cancelled."""
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
        completed = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_cancel_requests, tg.cancel_scope)
                tg.start_soon(self.progress.report_periodically)
                await self._follow_all()
                completed = True
                tg.cancel_scope.cancel()
            if not self.detach:
                await self.sweep.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                if not completed:
                    try:
                        await self._record(await self.sweep.cancel())
                    except Exception:
                        log.exception("cancelling the indexed arrays of %s", self.experiment.name)
                if self.held:
                    await anyio.to_thread.run_sync(self.leases.release, list(self.held))
                    self.held.clear()
            self.progress.stop()
        return self.requested or not completed

    async def _follow_all(self) -> None:
        while True:
            taken = await self._take()
            if taken:
                await self._start(taken)  # (never cut short by detach_now: refs first)
            self.following = anyio.CancelScope()
            if not self.detach:
                with self.following:
                    while not self.sweep.done:
                        await self._record(await self.sweep.next_batch())
            if self.detach:
                await self._let_go()
                return
            if await self._all_finished():
                return
            if not taken:  # the rest is held by other runners: look again in a while
                await anyio.sleep(min(2.0, self.leases.lease / 3))

    async def _let_go(self) -> None:
        """Leave the arrays running: the store keeps the runs' refs, they are given back
        (``run``'s end) for the next runner to follow, the executor closes without
        killing anything."""
        self.detached = self.sweep.pending
        self.sweep.release()
        await self.executor.detach()
        log.info("%s: %d run(s) left running (detached)", self.experiment.name, self.detached)

    async def _take(self) -> list[str]:
        """Every free run (not finished, held by no other runner), held by us now."""
        taken = await anyio.to_thread.run_sync(self.leases.take, len(self.by_fingerprint))
        fingerprints = [fingerprint for fingerprint, _, _ in taken]
        self.held.update(fingerprints)
        return fingerprints

    async def _start(self, taken: list[str]) -> None:
        """Follow the arrays of the runs a killed runner left running; submit the rest."""
        refs = await anyio.to_thread.run_sync(self.store.job_refs, frozenset(taken))
        followed = {fp: ref for fp, ref in refs.items() if is_indexed_ref(ref)}
        refused = set(self.sweep.follow(followed))
        self.reattached += len(followed) - len(refused)
        if followed:
            log.info(
                "%s: following %d run(s) a previous runner left on the cluster",
                self.experiment.name,
                len(followed) - len(refused),
            )
        fresh = [fp for fp in taken if fp not in followed or fp in refused]
        if fresh:
            runs = []
            pass_repeat = self.experiment.passes_repeat
            for fingerprint in fresh:
                run = self.by_fingerprint[fingerprint]
                kwargs = dict(run.params)
                if pass_repeat:
                    kwargs["repeat"] = run.repeat
                runs.append((fingerprint, (), kwargs))
            submitted = time.time()
            new_refs = await self.sweep.start(self.experiment.fn, runs)
            await anyio.to_thread.run_sync(self.store.mark_running_batch, new_refs, submitted)
        self.progress.running = self.sweep.pending
        self.progress.changed()

    async def _record(self, batch: IndexedBatch) -> None:
        if batch.refs:
            await anyio.to_thread.run_sync(self.store.set_job_refs, batch.refs)
        if not batch.results:
            return
        rows = [
            RunResult(
                fingerprint=result.key,
                status=result.status,
                value=result.value,
                error=result.error,
                started=result.started,
                finished=result.finished,
                host=result.host,
                worker=result.worker,
                attempts=result.attempts,
                job_ref=result.ref,
                stdout=result.stdout,
                stderr=result.stderr,
            )
            for result in batch.results
        ]
        await anyio.to_thread.run_sync(self._write, rows)  # (which frees them)
        done = [row.fingerprint for row in rows if row.status == "done"]
        failed = [row.fingerprint for row in rows if row.status == "failed"]
        self.leases.skip(failed)  # (retry_failed: not again here)
        self.held.difference_update(row.fingerprint for row in rows)
        self.ran += len(done) + len(failed)
        self.failed_here += len(failed)
        self.progress.done += len(done)
        self.progress.failed += len(failed)
        self.progress.running = self.sweep.pending
        self.progress.changed()

    def _write(self, rows: Sequence[RunResult]) -> None:
        """Record the rows; write the output of the runs that printed to their logs."""
        self.store.record_results(rows)
        from ._runner import _log_name

        for row in rows:
            for text, suffix in ((row.stdout, ".out"), (row.stderr, ".err")):
                if not text:
                    continue
                os.makedirs(self.logs, mode=0o700, exist_ok=True)
                path = os.path.join(self.logs, _log_name(self.by_fingerprint[row.fingerprint]))
                with open(path + suffix, "a", encoding="utf-8") as file:
                    file.write(text)
