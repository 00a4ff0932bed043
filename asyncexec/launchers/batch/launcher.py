"""The chunk-and-poll launcher, generic over a :class:`BatchAdapter`.

* **Submission.** ``start`` calls made within ``batch_window`` seconds of
  each other become one array (several when there are more array tasks than
  the place allows per array); each array task runs ``chunk_size`` tasks
  with the one-shot runner. An array's archive (job script, runner, tasks)
  travels in the one round trip that submits it (:mod:`.submission`).
* **Polling** is the place's :class:`Poller`, shared by every launcher of
  this process that talks to the same place (:mod:`.outcomes` reads what it
  finds).
* **Cancellation** kills exactly the array task (all cancels made together
  share one call); when the array task runs other live tasks of its chunk, a
  marker file tells the runner to skip or interrupt only that one.
* **max_concurrent** bounds the array tasks running at once across all the
  launcher's arrays: each array's throttle is what the others leave, raised
  as they end (:mod:`.submission`).
* **Re-attach.** A :class:`~asyncexec.JobRef` names the array task, the task
  and its staging directory: a launcher on the same place can ``wait`` for it,
  and :meth:`BatchLauncher.find_refs` lists what a killed driver left.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import msgspec

from ..._exceptions import LaunchError
from ..._messages import JobRef, Outcome, TaskSpec
from ...abc import Completed
from .adapter import COMMAND_TIMEOUT, SUBMIT_TIMEOUT, BatchAdapter
from .jobs import BatchJob, Pending
from .outcomes import ACCOUNTING_GRACE, CLOSE_CONFIRM
from .poller import Poller
from .submission import Submission

__all__ = ["BatchLauncher"]

log = logging.getLogger("asyncexec")


class BatchLauncher(Submission):
    """Runs tasks as array tasks of a batch system, through ``adapter``.

    Args:
        adapter: the batch system (see :class:`BatchAdapter`).
        chunk_size: tasks run one after the other by each array task.
        max_concurrent: array tasks running at once, across all arrays.
        max_array_size: array tasks per array at most (the place caps it anyway).
        poll_interval: seconds between polls while tasks finish.
        max_poll_interval: the ceiling the interval grows towards while
            nothing changes.
        scheduler_calls_per_minute: the budget of the place's scheduler
            (shared by every launcher polling it: the smallest wins).
        staging_dir: a directory every node sees, for the tasks, their
            outcomes and logs (default ``$HOME/.asyncexec/<kind>`` there).
        batch_window: seconds ``start`` calls are gathered into one array.
        keep_staging: keep the subdirectories of finished arrays.
    """

    enforces_time_limit = True
    reattachable = True

    def __init__(
        self,
        adapter: BatchAdapter,
        *,
        chunk_size: int = 1,
        max_concurrent: int | None = None,
        max_array_size: int | None = None,
        poll_interval: float = 0.25,
        max_poll_interval: float = 10.0,
        scheduler_calls_per_minute: int | None = None,
        staging_dir: str | None = None,
        batch_window: float = 0.05,
        keep_staging: bool = False,
    ) -> None:
        super().__init__()
        if batch_window < 0:
            raise ValueError(f"batch_window must be >= 0, got {batch_window!r}")
        if staging_dir is not None and not staging_dir.startswith("/"):
            raise ValueError(f"staging_dir must be an absolute path, got {staging_dir!r}")
        self.adapter = adapter
        self.kind = adapter.kind
        self.chunk_size = chunk_size
        self.isolates_crashes = chunk_size == 1
        self.max_concurrent = max_concurrent
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.scheduler_calls_per_minute = scheduler_calls_per_minute
        self.staging_dir = staging_dir.rstrip("/") if staging_dir else None
        self._max_array_size = max_array_size
        self._batch_window = batch_window
        self._keep_staging = keep_staging
        self.max_array_size = 0  # the place's, read on opening
        #: How many times each command ran (sbatch, squeue, sacct, scancel, ...).
        self.calls: collections.Counter[str] = collections.Counter()
        self._poller: Poller | None = None
        self._to_cancel: list[BatchJob] = []
        self._cancel_wanted = anyio.Event()
        self._background: list[tuple[anyio.CancelScope, anyio.Event]] = []
        self._closed = False

    @property
    def poller(self) -> Poller | None:
        """The poller of this launcher's place, shared with the other launchers of this
        process that talk to it (None until opened, and once closed)."""
        return self._poller

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        opened = await self.adapter.open()
        self.max_array_size = opened.max_array_size
        if self.staging_dir is None:
            if not opened.home.startswith("/"):
                raise LaunchError(f"cannot find the home directory through {self.adapter!r}")
            self.staging_dir = f"{opened.home}/.asyncexec/{self.kind}"
        self._poller = Poller.join(opened.place, self)
        for loop in (self._submitter, self._canceller, self._serve, self.adapter.serve):
            self._start_background(loop)

    async def _serve(self) -> None:
        assert self._poller is not None
        await self._poller.serve(self)

    def _start_background(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` in the task group until :meth:`aclose` stops it."""
        scope = anyio.CancelScope()
        stopped = anyio.Event()
        self._background.append((scope, stopped))

        async def run() -> None:
            try:
                with scope:
                    await loop()
            finally:
                stopped.set()

        assert self._tg is not None
        self._tg.start_soon(run)

    async def aclose(self) -> None:
        """Cancel what nobody waits for any more, stop the background tasks, clean up.

        The place's poller goes on for the other launchers that share it.

        Cancellation: shielded, and every step is bounded in time (ten minutes
        for a submission under way, then the kill, the staging clean-up and
        closing the connection): it finishes before the cancellation
        propagates. A second call returns at once.
        """
        await self._close(detach=False)

    async def release(self) -> None:
        """Close as :meth:`aclose` does, but leave the work of every live task running,
        and its array's staging directory (its outcomes go there), for a later
        driver to attach to (``executor.detach()``).

        Cancellation: as :meth:`aclose`.
        """
        await self._close(detach=True)

    async def _close(self, detach: bool) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(SUBMIT_TIMEOUT):
                while self._submitting:  # what they submit is swept below
                    await self._submitted.wait()
            if detach:  # (the adapter's background work may be needed to hand them over)
                kept = sorted({job.native_id for job in self._jobs.values() if not job.finished})
                with anyio.move_on_after(SUBMIT_TIMEOUT):
                    await self.adapter.release(kept)
            # No command of theirs may run once the shell is closed (it would reconnect).
            for scope, _ in self._background:
                scope.cancel()
            for _, stopped in self._background:
                await stopped.wait()
            async with self._round:
                pass  # a round of the place's poller reading our tasks is over
            live = [job for job in self._jobs.values() if not job.finished]
            if detach:
                live = []  # their work goes on; their arrays' directories stay (find_refs)
            if live:
                ids = sorted({job.native_id for job in live})
                with contextlib.suppress(Exception), anyio.move_on_after(COMMAND_TIMEOUT):
                    await self.adapter.cancel(ids)
                    await self._until_gone(ids, CLOSE_CONFIRM)
            for job in live:
                job.settle(Outcome(task_id=job.task_id, status="cancelled"))
                # Its array is over: its directory goes with the others' (a re-attached
                # task's may hold tasks followed by nobody: it stays, for find_refs).
                if not job.adopted and self._arrays.pop(job.array_id, None) is not None:
                    self._finished_dirs.append(job.workdir)
            for pending in self._pending:
                pending.error = LaunchError(f"the {self.adapter.name} launcher closed")
                pending.done.set()
            self._pending = []
            with contextlib.suppress(Exception), anyio.move_on_after(COMMAND_TIMEOUT):
                if self._to_sweep:  # array tasks that wrote their outcomes are ending
                    await self._until_gone(sorted(set(self._to_sweep.values())), 10.0)
                    await self._sweep()
                await self._clean_up()
            self._submit_wanted.set()
            self._cancel_wanted.set()
            if self._poller is not None:  # the others' polling goes on without us
                self._poller.leave(self)
                self._poller = None
            with contextlib.suppress(Exception), anyio.move_on_after(10):
                await self.adapter.aclose()

    # -- the seam -------------------------------------------------------------------

    async def start(self, task: TaskSpec) -> JobRef:
        if self._closed or self._tg is None:
            raise LaunchError(f"the {self.adapter.name} launcher is not open")
        # The outcome carries what the task printed: info.stdout / info.stderr.
        pending = Pending(msgspec.structs.replace(task, capture_output=True))
        self._pending.append(pending)
        self._submit_wanted.set()
        try:
            await pending.done.wait()
        except BaseException:
            if pending in self._pending:
                self._pending.remove(pending)  # never submitted
            else:
                pending.abandoned = True  # being submitted: cancelled once it is
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.ref is not None
        return pending.ref

    async def wait(self, ref: JobRef) -> Outcome:
        task_id = ref.task_id or ref.native_id
        job = self._jobs.get(task_id)
        if job is None:
            job = self._adopt(ref)
        await job.wait_finished()
        self._jobs.pop(task_id, None)
        assert job.outcome is not None
        return job.outcome

    def on_running(self, ref: JobRef, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the scheduler shows the task's array task running
        (or ended)."""
        job = self._jobs.get(ref.task_id or ref.native_id)
        if job is None:
            try:
                job = self._adopt(ref)
            except LaunchError:
                callback()  # wait() says what is wrong with the ref
                return
        if job.started:
            callback()
        else:
            job.on_running = callback

    async def cancel(self, ref: JobRef) -> None:
        """Have the background canceller kill the task's array task (or mark the task
        in its chunk), then wait until the scheduler confirms its end, for at most
        ``max_poll_interval`` plus a minute of accounting grace.

        Cancellation: stops the waiting only: the cancel is asked for before
        the first wait and goes on in the background; calling it again waits
        for it again.
        """
        job = self._jobs.get(ref.task_id or ref.native_id)
        if job is None or job.finished:
            return
        if not job.cancel_requested:
            job.cancel_requested = True
            self._to_cancel.append(job)
            self._cancel_wanted.set()
        with anyio.move_on_after(self.max_poll_interval + ACCOUNTING_GRACE):
            await job.wait_finished()
        if not job.finished:
            log.warning(
                "%s has not confirmed the end of %s after the cancel",
                self.adapter.name,
                job.native_id,
            )

    def _adopt(self, ref: JobRef) -> BatchJob:
        """Watch a task another launcher started (re-attach), from its JobRef."""
        if ref.kind != self.kind or ref.workdir is None or "_" not in ref.native_id:
            raise LaunchError(f"not a {self.adapter.name} task of asyncexec: {ref!r}")
        array_id, _, index = ref.native_id.rpartition("_")
        if not array_id.isdigit() or not index.isdigit():
            raise LaunchError(f"not a {self.adapter.name} array task: {ref.native_id!r}")
        job = BatchJob(ref.task_id or ref.native_id, array_id, int(index), ref.workdir)
        # Which tasks share its array task is known only for those re-attached here:
        # cancelling it writes a marker rather than killing tasks we do not follow.
        siblings = self._adopted_chunks.setdefault(job.native_id, [])
        siblings.append(job)
        job.chunk = siblings
        job.adopted = True
        self._adopted_open[job.workdir] += 1
        self._jobs[job.task_id] = job
        self.adapter.adopt(job)
        self._wake()
        return job

    async def states(self, refs: Sequence[JobRef]) -> list[str]:
        """Where each task is: one query of the scheduler for all of them (array tasks
        no longer in its queue are ``"ended"``: a follower reads their outcomes;
        ``"unknown"`` where the adapter cannot tell without following the task).

        Raises:
            LaunchError: the scheduler could not be asked.

        Cancellation: the query is stopped; it only reads.
        """
        ours = [
            ref for ref in refs if self._of_this_place(ref) and self.adapter.knows(ref.native_id)
        ]
        try:
            queued = await self.adapter.states(sorted({ref.native_id for ref in ours}))
        except LaunchError:
            raise
        except Exception as exc:
            raise LaunchError(f"could not ask {self.adapter.name} for its queue: {exc}") from exc
        found = []
        for ref in refs:
            if not self._of_this_place(ref) or not self.adapter.knows(ref.native_id):
                found.append("unknown")
                continue
            seen = queued.get(ref.native_id)
            found.append("ended" if seen is None else "queued" if seen.waiting else "running")
        return found

    async def kill(self, refs: Sequence[JobRef]) -> list[str]:
        """Kill the work of ``refs`` (tasks any driver started here, followed or not) and
        wait until the scheduler lists none of it (:data:`CLOSE_CONFIRM` at most); then
        remove their staging directories. Returns the array tasks still listed.

        Raises:
            LaunchError: the scheduler refused the cancel, or could not be asked.

        Cancellation: some may be killed, some not; it is safe to call again.
        """
        ours = [ref for ref in refs if self._of_this_place(ref)]
        ids = sorted({ref.native_id for ref in ours})
        if not ids:
            return []
        refused = await self.adapter.cancel(ids)
        if refused is not None:
            raise LaunchError(f"{self.adapter.name} refused to cancel: {refused}")
        await self._until_gone(ids, CLOSE_CONFIRM)
        left = sorted(await self.adapter.states(ids))
        if not left:
            workdirs = sorted({ref.workdir for ref in ours if ref.workdir})
            if workdirs and not self._keep_staging:
                await self.adapter.remove(workdirs)
        return left

    def _of_this_place(self, ref: JobRef) -> bool:
        return ref.kind == self.kind and ref.host == self.adapter.host

    def can_follow(self, ref: JobRef) -> bool:
        """Whether ``ref`` is a task of this place (re-attach); not a run of an indexed
        sweep, whose outcome is a record among others (the experiment runner follows
        those)."""
        return (
            super().can_follow(ref)
            and ref.host == self.adapter.host
            and not (ref.task_id or "").startswith("indexed:")
        )

    async def find_refs(self) -> list[JobRef]:
        """JobRefs of every task whose array is still in the staging directory.

        What a driver killed before it read all outcomes leaves there: pass
        them to ``executor.attach`` to collect their outcomes (or to wait for
        those still running).

        Cancellation: the ``find`` command is killed and nothing is returned;
        it only reads, so nothing changes and it is safe to call again.
        """
        if self.staging_dir is None:
            raise LaunchError(f"the {self.adapter.name} launcher is not open")
        refs = []
        for name, job_id, tasks_json in await self.adapter.find(self.staging_dir):
            try:
                array_id = job_id.strip().split(";")[0]
                tasks = json.loads(tasks_json)
            except ValueError:
                log.warning("skipping an unreadable staging directory entry: %r", name)
                continue
            if not array_id.isdigit():
                continue
            workdir = f"{self.staging_dir}/{name}"
            self._dir_sizes[workdir] = len(tasks)
            for task_id, index in tasks:
                refs.append(self._ref(array_id, index, task_id, workdir))
        return refs

    # -- commands ---------------------------------------------------------------------

    async def _run(
        self,
        name: str,
        argv: list[str],
        *,
        input: bytes | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Any:
        """Run one of the adapter's commands, counted; a scheduler command
        waits for the place's budget; a hung link fails after ``timeout``."""
        if name in self.adapter.scheduler_commands and self._poller is not None:
            await self._poller.spend()
        self.calls[name] += 1
        with anyio.fail_after(timeout):
            return await self.adapter.execute(argv, input=input)

    async def _command(
        self,
        name: str,
        argv: list[str],
        *,
        input: bytes | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Completed:
        """How the adapter runs its commands: :meth:`_run`, looked up at each call."""
        done: Completed = await self._run(name, argv, input=input, timeout=timeout)
        return done

    # -- cancellation ---------------------------------------------------------------

    async def _canceller(self) -> None:
        while not self._closed:
            await self._cancel_wanted.wait()
            self._cancel_wanted = anyio.Event()
            await anyio.sleep(self._batch_window)  # cancels made together: one call
            jobs, self._to_cancel = self._to_cancel, []
            jobs = [job for job in jobs if not job.finished]
            if jobs and not self._closed:
                try:
                    await self._cancel_now(jobs)
                except Exception as exc:
                    # Still to kill: try again shortly (aclose sweeps what is left).
                    log.warning(
                        "could not cancel %d %s task(s) (%s); again",
                        len(jobs),
                        self.adapter.name,
                        exc,
                    )
                    self._to_cancel.extend(jobs)
                    await anyio.sleep(1.0)
                    self._cancel_wanted.set()
                self._wake()

    async def _cancel_now(self, jobs: list[BatchJob]) -> None:
        whole: set[str] = set()  # array tasks to kill
        markers: list[str] = []  # tasks to skip or interrupt inside a running chunk
        for job in jobs:
            others = [s for s in job.chunk if s is not job and not s.finished]
            alone = not job.adopted or self.chunk_size == 1
            if alone and all(other.cancel_requested for other in others):
                whole.add(job.native_id)
            else:
                markers.append(f"{job.workdir}/cancel/{job.task_id}")
        if markers:
            await self.adapter.mark(markers)
            written = time.monotonic()
            for job in jobs:
                job.marked = job.native_id not in whole
                job.marked_at = written
        if whole:
            refused = await self.adapter.cancel(sorted(whole))
            if refused is not None:
                log.warning("cancel: %s", refused)
