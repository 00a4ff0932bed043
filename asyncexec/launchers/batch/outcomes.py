"""What a polling round makes of the scheduler's answer, for one batch launcher.

The place's :class:`~asyncexec.launchers.batch.Poller` asks the state of every
live array of every launcher in one call, then hands each launcher its part
(:meth:`Outcomes._after_poll`):

* an array task no longer waiting: its tasks' futures leave PENDING
  (``on_running``);
* an array task pending for a reason the adapter calls final, for
  ``NEVER_CONFIRM`` seconds and confirmed: its tasks are refused with a
  ``LaunchError`` quoting the reason, and the array task is killed;
* tasks that left the queue (or were marked cancelled inside a running
  chunk): their outcome files, in one archive; without one, a failed setup
  (the job script's marker), else the scheduler's accounting, else lost once
  ``ACCOUNTING_GRACE`` has passed;
* finished arrays' staging directories are removed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import pickle
import time

import anyio
import msgspec

from ..._exceptions import BackendUnavailable, LaunchError
from ..._messages import ErrorInfo, Outcome
from .._base import BaseLauncher
from .adapter import BatchAdapter, Queued
from .files import read_outcome
from .jobs import Array, BatchJob
from .poller import Poller

__all__ = ["ACCOUNTING_GRACE", "CLOSE_CONFIRM", "NEVER_CONFIRM", "Outcomes"]

log = logging.getLogger("asyncexec")

#: Seconds to wait for the accounting (which lags the queue) before calling a vanished
#: task lost.
ACCOUNTING_GRACE = 60.0
#: Seconds closing waits for the scheduler to confirm that the tasks it killed are gone.
CLOSE_CONFIRM = 60.0
#: Seconds a final-looking reason must last before the task is refused: Slurm first says
#: PartitionConfig for any partition limit and names the right one at its next pass.
NEVER_CONFIRM = 5.0
#: What of a dead array task's stderr to quote.
LOG_TAIL = 2000


class Outcomes(BaseLauncher[BatchJob]):
    """The part of :class:`BatchLauncher` that reads what ended and settles its tasks."""

    adapter: BatchAdapter
    _poller: Poller | None
    _closed: bool
    _keep_staging: bool

    def __init__(self) -> None:
        super().__init__()
        self._arrays: dict[str, Array] = {}  # by array job id, until all its tasks settle
        self._freed = False  # an array task of ours ended: max_concurrent has room again
        self._dir_sizes: dict[str, int] = {}  # tasks in staging dirs found by find_refs
        self._read_in_dir: dict[str, int] = {}  # of those, outcomes read here
        self._adopted_chunks: dict[str, list[BatchJob]] = {}  # by array task, re-attached
        self._adopted_open: collections.Counter[str] = collections.Counter()  # by workdir
        self._to_sweep: dict[str, str] = {}  # re-attached dirs all read here: their array
        self._finished_dirs: list[str] = []
        self._round = anyio.Lock()  # held while a polling round reads our tasks

    def _wake(self) -> None:
        """Have the poller look soon: new work, or a cancel to confirm."""
        if self._poller is not None:
            self._poller.wake()

    async def _rebalance(self) -> None:
        """Give the room of ended array tasks to throttled arrays (the launcher's)."""

    # -- what the poller asks -------------------------------------------------------

    def _needs_poll(self) -> bool:
        """Whether the poller has something to look at for us."""
        if self._closed:
            return False
        if any(not job.finished for job in self._jobs.values()):
            return True
        return bool(self._to_sweep) or any(0 in a.open.values() for a in self._arrays.values())

    def _plan(self) -> tuple[list[BatchJob], list[str]]:
        """Our live tasks, and the arrays to ask about (theirs, and those ending)."""
        live = [job for job in self._jobs.values() if not job.finished]
        ending = [a for a, array in self._arrays.items() if 0 in array.open.values()]
        return live, sorted({job.array_id for job in live} | set(ending), key=int)  # digits

    async def _after_poll(
        self, live: list[BatchJob], queued: dict[str, Queued] | None, asked: float
    ) -> bool:
        """Our part of a polling round (``queued``: None if asking failed): whether
        anything changed. Never raises but cancellation."""
        async with self._round:
            if self._closed:
                return False
            changed = False
            if queued is not None:
                try:
                    changed = await self._poll(live, queued, asked)
                except (BackendUnavailable, OSError, TimeoutError) as exc:
                    log.warning("polling %s failed (%s); trying again", self.adapter.name, exc)
                except Exception:
                    log.exception("polling %s failed; trying again", self.adapter.name)
            if self._freed:
                self._freed = False
                try:
                    await self._rebalance()
                except Exception as exc:
                    log.warning("raising an array's throttle failed (%s); again", exc)
                    self._freed = True
            if self._to_sweep:
                with contextlib.suppress(Exception):
                    await self._sweep()
            if self._finished_dirs:
                with contextlib.suppress(Exception):
                    await self._clean_up()
            return changed

    async def _until_gone(self, ids: list[str], timeout: float) -> None:
        """Wait until the scheduler lists none of ``ids`` (killed tasks end a while)."""
        delay = 0.1
        with anyio.move_on_after(timeout):
            while True:
                if not await self.adapter.states(ids):
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.warning("%s still lists %s after the cancel", self.adapter.name, ",".join(ids))

    async def _sweep(self) -> None:
        """Remove the re-attached directories whose every task (tasks.json) has an outcome
        file and whose array has left the queue; keep looking while it is in the queue."""
        queued = await self.adapter.states(sorted(set(self._to_sweep.values()), key=int))
        in_queue = {native_id.partition("_")[0] for native_id in queued}
        for workdir, array_id in list(self._to_sweep.items()):
            if array_id in in_queue:
                continue  # still ending, or running tasks nobody here follows
            listing, files = await self.adapter.listing(workdir)
            try:
                tasks = json.loads(listing) if listing.strip() else None
            except ValueError:
                tasks = None
            if tasks and all(f"{task_id}.bin" in files for task_id, _ in tasks):
                self._finished_dirs.append(workdir)
            del self._to_sweep[workdir]  # looked at once it left the queue: done

    async def _clean_up(self) -> None:
        """Remove the staging directories whose every outcome was read."""
        if self._finished_dirs and not self._keep_staging:
            dirs = list(self._finished_dirs)
            await self.adapter.remove(dirs)
            # Forgotten only once removed: a removal cut short (closing) is run again.
            self._finished_dirs = [d for d in self._finished_dirs if d not in dirs]

    # -- one round --------------------------------------------------------------------

    async def _poll(self, live: list[BatchJob], queued: dict[str, Queued], asked: float) -> bool:
        """Outcomes (and accounting) for what left the queue, and the room under
        ``max_concurrent`` that array tasks leaving it make."""
        for array_id in [a for a, array in self._arrays.items() if 0 in array.open.values()]:
            array = self._arrays[array_id]  # all its tasks settled: room once it left
            for index in [i for i, n in array.open.items() if n <= 0]:
                if f"{array_id}_{index}" not in queued:
                    del array.open[index]
                    self._freed = True
            if array.remaining <= 0 and not array.open:
                del self._arrays[array_id]
        gone: list[BatchJob] = []
        marked: list[BatchJob] = []  # cancelled inside a running chunk: outcome comes early
        skipped = False  # marked in a chunk that has not started: settled now
        stuck: list[tuple[BatchJob, Queued]] = []  # pending for a reason that may be final
        for job in live:
            if job.finished:
                continue  # settled since the round began (closing, say)
            seen = queued.get(job.native_id)
            if seen is None:
                gone.append(job)
                continue
            job.missing_since = None  # back in the queue (requeued), or accounting lagged
            if not seen.waiting:
                if not job.started:
                    job.mark_started()
            elif not job.cancel_requested and self.adapter.may_never_run(seen):
                now = time.monotonic()
                if job.never_since is None:
                    job.never_since = now
                elif now - job.never_since >= NEVER_CONFIRM:
                    stuck.append((job, seen))
            elif not job.cancel_requested:
                job.never_since = None
            if self.adapter.written(job):
                marked.append(job)  # its outcome is there already: read it now
            elif job.marked:
                if seen.waiting and job.marked_at < asked:
                    # Its marker was written before the scheduler said the chunk still
                    # waits: the runner, once it starts, skips the task without running it.
                    self._settle(job, Outcome(task_id=job.task_id, status="cancelled"))
                    skipped = True
                else:
                    marked.append(job)
        refused = await self._refuse_never_running(stuck) if stuck else False
        refused |= skipped
        if not gone and not marked:
            return refused
        files = await self._fetch(gone + marked, logs={job.native_id: job for job in gone})
        changed = False
        vanished: list[BatchJob] = []
        for job in gone + marked:
            data = files.get(f"{job.workdir}/out/{job.task_id}.bin")
            outcome = None
            if data is not None:
                try:
                    outcome = read_outcome(data)
                except (pickle.UnpicklingError, msgspec.ValidationError, ValueError) as exc:
                    log.warning(
                        "unreadable outcome of task %s in %s: %s", job.task_id, job.workdir, exc
                    )
            if outcome is None and job.native_id not in queued:
                outcome = self._setup_failure(job, files) or self._verdict(job)
            if outcome is not None:
                await self._copy_logs(job, files)
                self._settle(job, outcome)
                changed = True
            elif job.native_id not in queued:
                vanished.append(job)
        if vanished:
            changed |= await self._account(vanished, files)
        return changed

    async def _refuse_never_running(self, stuck: list[tuple[BatchJob, Queued]]) -> bool:
        """Fail and kill the array tasks whose pending reason can never clear."""
        doomed = await self.adapter.hopeless(stuck)
        if not doomed:
            return False
        ids = sorted({job.native_id for job, _ in doomed})
        refused = await self.adapter.cancel(ids)
        if refused is not None:
            raise LaunchError(f"{self.adapter.cancel_name} failed: {refused}")
        await self._until_gone(ids, CLOSE_CONFIRM)
        name = self.adapter.name
        for job, seen in doomed:
            message = (
                f"{name} can never start array task {job.native_id}: it is pending with reason "
                f"{seen.reason} (partition {seen.partition or '?'}), which no other job's end "
                f"clears; ask for what the partition allows. It was cancelled "
                f"({self.adapter.cancel_name})."
            )
            error = ErrorInfo(type_name="LaunchError", message=message, traceback="")
            outcome = Outcome(task_id=job.task_id, status="refused", state="PENDING", error=error)
            self._settle(job, outcome)
        return True

    async def _fetch(self, jobs: list[BatchJob], logs: dict[str, BatchJob]) -> dict[str, bytes]:
        """The outcome files of ``jobs`` (and stderr logs of array tasks), in one archive."""
        names = [f"{job.workdir}/out/{job.task_id}.bin" for job in jobs]
        for job in jobs:
            names += [job.remote_log(n + 1) for n, local in enumerate(job.logs) if local]
        for job in logs.values():
            names += [f"{job.workdir}/log/{job.index}.err", f"{job.workdir}/log/{job.index}.setup"]
        return await self.adapter.fetch(names)

    async def _copy_logs(self, job: BatchJob, files: dict[str, bytes]) -> None:
        """Append what the task wrote to the log files the driver asked for."""
        for stream, local in enumerate(job.logs, start=1):
            data = files.get(job.remote_log(stream))
            if local and data is not None:
                try:
                    async with await anyio.open_file(local, "ab") as file:
                        await file.write(data)
                except OSError as exc:
                    log.warning(
                        "cannot write the log of task %s to %s: %s", job.task_id, local, exc
                    )

    async def _account(self, jobs: list[BatchJob], files: dict[str, bytes]) -> bool:
        """Settle tasks that left the queue without an outcome, from the accounting."""
        now = time.monotonic()
        states: dict[str, tuple[str, str]] = {}
        asking = [job for job in jobs if not job.cancel_requested]
        if asking:
            states = await self.adapter.accounting(sorted({job.native_id for job in asking}))
        changed = False
        for job in jobs:
            if job.cancel_requested:
                # Pending array tasks cancelled one by one never reach the accounting.
                self._settle(job, Outcome(task_id=job.task_id, status="cancelled"))
                changed = True
                continue
            state, exit_text = states.get(job.native_id, ("", ""))
            outcome = self._outcome_from_state(job, state, exit_text, files)
            if outcome is None:
                if job.missing_since is None:
                    job.missing_since = now
                if now - job.missing_since < ACCOUNTING_GRACE:
                    continue  # the accounting lags the queue
                outcome = self._lost(job, state or "UNKNOWN", None, files, "left the queue")
            self._settle(job, outcome)
            changed = True
        return changed

    def _outcome_from_state(
        self, job: BatchJob, state: str, exit_text: str, files: dict[str, bytes]
    ) -> Outcome | None:
        waited = time.monotonic() - (job.missing_since or time.monotonic())
        judged = self.adapter.judge(state, exit_text, waited)
        if judged is None:
            return None  # not known yet, or still live (requeued)
        status, exit_code = judged
        if status == "lost":
            how = "ended without an outcome" if state == "COMPLETED" else "ended"
            return self._lost(job, state, exit_code, files, how)
        return Outcome(task_id=job.task_id, status=status, state=state, exit_code=exit_code)

    def _setup_failure(self, job: BatchJob, files: dict[str, bytes]) -> Outcome | None:
        """A refusal if the job script's setup failed (the runner never started), else None."""
        marker = files.get(f"{job.workdir}/log/{job.index}.setup")
        if marker is None:
            return None
        status, _, command = marker.decode(errors="replace").strip().partition("\t")
        message = (
            f"the setup of {self.adapter.name} array task {job.native_id} failed, "
            "so the task did not run: "
            f"`{command}` exited with status {status}"
        )
        tail = files.get(f"{job.workdir}/log/{job.index}.err", b"")[-LOG_TAIL:]
        if tail.strip():
            message += ": " + tail.decode(errors="replace").strip()
        error = ErrorInfo(type_name="LaunchError", message=message, traceback="")
        exit_code = int(status) if status.isdigit() else None
        return Outcome(
            task_id=job.task_id, status="refused", state="FAILED", exit_code=exit_code, error=error
        )

    def _verdict(self, job: BatchJob) -> Outcome | None:
        """What the adapter saw of the task's array task, as its outcome, or None."""
        seen = self.adapter.verdict(job.native_id)
        if seen is None:
            return None
        error_type = "LaunchError" if seen.status == "refused" else "WorkerLost"
        return Outcome(
            task_id=job.task_id,
            status="refused" if seen.status == "refused" else "lost",
            state=seen.state,
            exit_code=seen.exit_code,
            error=ErrorInfo(type_name=error_type, message=seen.message, traceback=""),
        )

    def _lost(
        self,
        job: BatchJob,
        state: str,
        exit_code: int | None,
        files: dict[str, bytes],
        how: str,
    ) -> Outcome:
        message = f"{self.adapter.name} array task {job.native_id} {how} ({state}"
        message += f", exit code {exit_code})" if exit_code is not None else ")"
        tail = files.get(f"{job.workdir}/log/{job.index}.err", b"")[-LOG_TAIL:]
        if tail.strip():
            message += ": " + tail.decode(errors="replace").strip()
        return Outcome(
            task_id=job.task_id,
            status="lost",
            state=state,
            exit_code=exit_code,
            error=ErrorInfo(type_name="WorkerLost", message=message, traceback=""),
        )

    def _settle(self, job: BatchJob, outcome: Outcome) -> None:
        if job.finished:
            return
        job.on_running = None  # ended: the future leaves PENDING for its final state
        job.settle(outcome)
        workdir = job.workdir
        if job.adopted:
            # Re-attached: the directory goes once every task find_refs saw in it was read.
            read = self._read_in_dir[workdir] = self._read_in_dir.get(workdir, 0) + 1
            self._adopted_open[workdir] -= 1
            if read == self._dir_sizes.get(workdir):
                self._finished_dirs.append(workdir)
            elif workdir not in self._dir_sizes and self._adopted_open[workdir] <= 0:
                # Re-attached without find_refs (by stored JobRefs): the other tasks may
                # have been read by the driver that died. Looked at by _sweep.
                self._to_sweep[workdir] = job.array_id
            return
        array = self._arrays.get(job.array_id)
        if array is not None:
            if job.index in array.open:
                array.open[job.index] -= 1
                if array.open[job.index] <= 0 and array.throttle is None:
                    del array.open[job.index]
            array.remaining -= 1
            if array.remaining == 0:
                self._finished_dirs.append(workdir)
                if not array.open:
                    del self._arrays[job.array_id]
