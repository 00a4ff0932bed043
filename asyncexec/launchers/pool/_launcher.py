"""The base of every pool of long-lived workers: :class:`PoolLauncher`.

A worker (a local process, a container...) speaks the framed protocol of
:mod:`asyncexec._worker` over some byte channel: it says :class:`Hello`, is
given a :class:`Setup`, answers :class:`Ready`, then runs the
:class:`TaskSpec` s it is sent in order, answering each with an
:class:`Outcome`. :class:`PoolLauncher` keeps each busy worker fed with tasks
waiting behind the running one (so it never waits for a round trip), reads the
answers, replaces the dead and fails exactly the task a dead worker was
running: the oldest it had not answered. The others never started, and go to
another worker. A task still queued is cancelled with a :class:`Cancel`
message; the running one by killing its worker. Subclasses only start, kill
and reap workers.

A task is handed to a worker only once its handshake is over: a new worker
killed before that had no task, and the task it was started for waits for the
next one, still on its first attempt (up to ``STARTS_PER_TASK`` workers).

Each worker runs the pool's ``setup`` hook during its handshake (a hook that
raises fails the start with :class:`~asyncexec.SetupFailed`) and its
``teardown`` hook once its input ends while it is idle (:mod:`asyncexec._worker`):
the pool closes the input of idle workers when it closes, and of a worker
retiring after ``max_tasks_per_worker`` tasks, and gives them
:attr:`PoolLauncher.CLOSE_GRACE` seconds to exit.

Where the workers do not see the driver's files (``sees_driver_files``
False: SSH hosts, containers), a task's ``log_stdout`` / ``log_stderr`` files
are the driver's: the worker sends all the task wrote back with its outcome
(``TaskSpec.whole_output``), and :meth:`PoolLauncher.wait` appends it to them.

A task with ``Resources(cpus=...)`` goes to an idle worker only (it starts when
handed over), with the CPUs to pin it to (``TaskSpec.affinity``), chosen by the
pool's :class:`~._scheduling.Scheduler`. :meth:`PoolLauncher.stats` tells what
the pool holds and has learnt.
"""

from __future__ import annotations

import abc
import errno
import functools
import logging
import os
from collections.abc import Callable

import anyio
import msgspec

from ..._codec import describe_exception, encode_frame, hostname
from ..._exceptions import LaunchError
from ..._hooks import Hook, make_hooks
from ..._messages import (
    Cancel,
    ErrorInfo,
    JobRef,
    Message,
    Outcome,
    Setup,
    SharedMemory,
    TaskSpec,
)
from ..._options import check_workers
from ..._runtime import TAIL_BYTES
from .._base import BaseLauncher
from ._arena import FD_PAYLOAD, SHARED_PART_MAX, SharedArena
from ._channel import read_messages
from ._scheduling import Scheduler
from ._startup import DiedStarting, start_worker
from ._stats import PoolStats, WorkerStats
from ._workers import PoolJob, PoolWorker

__all__ = ["PoolLauncher"]

log = logging.getLogger("asyncexec")


class PoolLauncher(BaseLauncher[PoolJob]):
    """Runs tasks on up to ``n_workers`` long-lived workers made by :meth:`_connect`.

    Args:
        n_workers: workers at most.
        setup: a callable each worker runs once at start, before its first
            task; if it raises, the worker is killed and the start fails with
            :class:`~asyncexec.SetupFailed`.
        teardown: a callable each worker runs once when the pool lets it go
            idle (closing, retiring); not when it is killed.
        initializer: ``setup``'s former name (give one or the other).
        max_tasks_per_worker: replace a worker after this many tasks.
        eager: start every worker when the pool opens (else on first need).
        startup_timeout: seconds a worker may take to say hello.
        prefetch: at most this many tasks sent ahead to a busy worker, waiting
            behind the one it runs (0: a task goes only to an idle worker). How
            many are sent follows how long tasks take: enough to cover about
            :attr:`Scheduler.QUEUED_WORK` seconds of work, so short tasks
            never wait for a round trip and long ones never wait behind each
            other. Tasks with a time limit always wait for an idle worker:
            their clock starts when they are handed over.
    """

    #: Workers started, at most, for a task whose new workers are killed while
    #: starting (before their handshake ends, so before they were sent any task):
    #: then the task fails with :class:`LaunchError`, having never run.
    STARTS_PER_TASK = 3

    #: The size of a pool's shared memory (its pages are allocated as they are used).
    SHARED_MEMORY = 64 << 20

    #: Whether the workers take file descriptors over ``raw_socket`` (a local
    #: socket pair on Linux): then arguments of FD_PAYLOAD bytes or more travel
    #: in a memory file passed with the task, not in the frame.
    fd_payloads = False
    #: Large ``bytes`` arguments come as buffers, out of the pickle: in the frame,
    #: or outside it where ``fd_payloads`` (no copy of them at submit).
    takes_buffers = True

    #: Seconds closing waits for idle workers to exit (running their teardown hook)
    #: once told no more tasks come, before it kills them.
    CLOSE_GRACE = 5.0

    #: Whether the workers see the driver's files (local processes): else a task's
    #: log files are written here, from the whole output the worker sends back.
    sees_driver_files = False

    #: The ``kind`` of the JobRefs this launcher hands out.
    kind = "pool"
    fast_start = True  # try_start hands a task to a worker with room
    #: The worker pins a task to its CPUs and caps its address space (RLIMIT_AS).
    honours_resources = frozenset({"cpus", "memory_mb"})

    def __init__(
        self,
        n_workers: int,
        *,
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
        max_tasks_per_worker: int | None = None,
        eager: bool = True,
        startup_timeout: float = 60.0,
        prefetch: int = 0,
    ) -> None:
        check_workers(n_workers)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError(f"max_tasks_per_worker must be >= 1, got {max_tasks_per_worker!r}")
        travel_to = None if self.shares_files else type(self).__name__  # (set before this)
        hooks = make_hooks(setup, teardown, initializer=initializer, travel_to=travel_to)
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout!r}")
        super().__init__()
        self._n_workers = n_workers
        self.hooks = hooks
        self._eager = eager
        self._startup_timeout = startup_timeout
        self.prefetch = prefetch
        self._scheduler = Scheduler(n_workers, max_tasks_per_worker, prefetch)
        self._workers = self._scheduler.workers  # (the same table, for subclasses)
        self._spawns_done: anyio.Event | None = None  # set when no spawn is in progress
        self._closed = False
        self._host = hostname()
        self._shared: SharedArena | None = None  # for large arguments (fd_payloads)
        self._shared_failed = False
        self._memory_files = 0  # arguments sent in memory files of their own

    # -- what subclasses provide ----------------------------------------------------

    @abc.abstractmethod
    async def _connect(self, task_id: str | None) -> PoolWorker:
        """Start one worker and open its channel (the caller does the handshake).

        ``task_id`` names the one task the worker is started for, if it is.

        Raises:
            LaunchError: it cannot be started.

        Cancellation: the pool cancels it after ``startup_timeout`` seconds (and
        when it closes): an implementation leaves no worker running then.
        """

    @abc.abstractmethod
    def _where(self) -> str:
        """Where workers run, for error messages (``"python3.11"``, ``"image x"``)."""

    def _setup(self) -> Setup:
        """The Setup message every new worker receives."""
        return Setup(initializer=self.hooks.setup, teardown=self.hooks.teardown)

    def stats(self) -> PoolStats:
        """A snapshot of the pool: its workers, what they hold, what it has learnt."""
        shared = self._shared
        return PoolStats(
            workers=tuple(
                WorkerStats(pid=worker.pid, tasks=tuple(worker.jobs), tasks_sent=worker.tasks_sent)
                for worker in self._workers
            ),
            tasks=len(self._jobs),
            depth=self._scheduler.depth,
            mean_run=self._scheduler.mean_run,
            shared_memory=0 if shared is None else shared.size,
            shared_memory_in_use=0 if shared is None else shared.in_use,
            memory_files=self._memory_files,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        if not self._eager:
            return
        # The first worker that cannot start fails the opening, alone (the others
        # usually fail the same way at the same time: not an exception group of them).
        errors: list[Exception] = []
        async with anyio.create_task_group() as spawners:

            async def spawn() -> None:
                try:
                    await self._spawn_idle()
                except Exception as exc:
                    errors.append(exc)
                    spawners.cancel_scope.cancel()  # those starting are killed and reaped

            for _ in range(self._n_workers):
                spawners.start_soon(spawn)
        if errors:
            raise errors[0]

    async def aclose(self) -> None:
        """Ask idle workers to exit (running their teardown hook), kill the rest and
        those that have not exited after :attr:`CLOSE_GRACE` seconds, reap all.

        Cancellation: not shielded here (``__aexit__`` shields it): it may stop
        with workers not yet told to exit, or not yet reaped. The pool takes no
        task any more; calling it again finishes the job.
        """
        self._closed = True
        self._scheduler.wake()
        while self._scheduler.spawning:  # a worker being started now is disposed of by _spawn
            if self._spawns_done is None or self._spawns_done.is_set():
                self._spawns_done = anyio.Event()
            await self._spawns_done.wait()
        workers = list(self._workers)
        for worker in workers:
            if worker.jobs:
                worker.kill()
            else:
                await worker.close_input()
        with anyio.move_on_after(self.CLOSE_GRACE):
            for worker in workers:
                await worker.exited.wait()
        for worker in workers:
            if not worker.exited.is_set():
                worker.kill()
        for worker in workers:
            await worker.exited.wait()
        if self._shared is not None:
            self._shared.close()  # (jobs that end later free nothing: idempotent)

    # -- the seam -------------------------------------------------------------------

    async def start(self, task: TaskSpec) -> JobRef:
        job = self._new_job(task)
        self._jobs[task.task_id] = job
        try:
            if job.logs is not None and not await _open_logs(job, task.logs_at_end):
                # As a worker that sees them would fail it: the task never runs.
                return JobRef(kind=self.kind, native_id=task.task_id, host=self._host)
            await self._dispatch(job)
        except BaseException:
            if job.worker is None:
                self._jobs.pop(task.task_id, None)
                job.release()
            raise
        return JobRef(kind=self.kind, native_id=task.task_id, host=self._host)

    def _new_job(self, task: TaskSpec) -> PoolJob:
        logs = None
        if not self.sees_driver_files and (task.stdout_path or task.stderr_path):
            # The log files are the driver's: the worker sends the whole output back.
            logs = (task.stdout_path, task.stderr_path)
            task = msgspec.structs.replace(
                task, stdout_path=None, stderr_path=None, capture_output=True, whole_output=True
            )
        job = self._job_for(task)
        job.logs = logs
        return job

    def _job_for(self, task: TaskSpec) -> PoolJob:
        exclusive = task.time_limit is not None or task.cpus is not None
        if task.gpus is not None and "gpus" not in self.honours_resources:
            raise LaunchError(f"{type(self).__name__} cannot give a task GPUs")
        if self.fd_payloads:
            size = len(task.args) + sum(map(len, task.buffers)) if task.buffers else len(task.args)
            if size >= FD_PAYLOAD:  # placed outside the frame when handed to a worker
                job = PoolJob(task.task_id, None, exclusive)
                job.task = task
                job.outside = size
                return job
        if task.cpus is not None:  # its CPUs are chosen when it is handed to a worker
            job = PoolJob(task.task_id, None, exclusive)
            job.task = task
            return job
        return PoolJob(task.task_id, encode_frame(task), exclusive)

    def _make_frame(self, job: PoolJob, worker: PoolWorker) -> None:
        """Make the frame of a job handed to ``worker`` now (see ``PoolJob.task``)."""
        task = job.task
        assert task is not None
        if task.cpus is not None:
            affinity = self._scheduler.choose_cpus(worker, task.cpus)
            worker.pinned = (job.task_id, affinity or [])
            job.task = task = msgspec.structs.replace(task, affinity=affinity)
        if job.outside:
            arena = self._arena() if job.outside <= SHARED_PART_MAX else None
            if job.put_outside(arena):
                self._memory_files += 1
        else:
            job.frame = encode_frame(task)
            job.task = None

    def _arena(self) -> SharedArena | None:
        """The pool's shared memory, made on first need; None where it cannot be."""
        if self._shared is None and not self._shared_failed and not self._closed:
            try:
                self._shared = SharedArena(self.SHARED_MEMORY)
            except OSError as exc:
                self._shared_failed = True
                log.debug("no shared memory for large arguments (%s): memory files then", exc)
        return self._shared

    def try_start(self, task: TaskSpec, on_outcome: Callable[[Outcome], None]) -> JobRef | None:
        if self._closed or not self.fast_start:
            return None
        if not self.sees_driver_files and (task.stdout_path or task.stderr_path):
            return None  # start() and wait() write its log files here
        exclusive = task.time_limit is not None or task.cpus is not None
        worker, spawn = self._scheduler.pick(exclusive)
        if worker is None or spawn:
            return None  # start() waits for room, or for the worker it starts
        task_id = task.task_id
        job = self._new_job(task)
        jobs = self._jobs

        def settled(outcome: Outcome) -> None:
            jobs.pop(task_id, None)
            on_outcome(outcome)

        job.callback = settled
        jobs[task_id] = job
        self._hand(job, worker)
        return JobRef(kind=self.kind, native_id=task_id, host=self._host)

    async def _dispatch(self, job: PoolJob) -> None:
        """Send a job to a worker (one that is idle, or has room in its queue)."""
        self._hand(job, await self._checkout(job.exclusive))

    def _hand(self, job: PoolJob, worker: PoolWorker) -> None:
        if job.finished:
            # Cancelled while it waited for a worker (after its own died): it never
            # runs, and where its arguments were may already hold another task's.
            return
        if job.frame is None:
            self._make_frame(job, worker)
        job.worker = worker
        worker.jobs[job.task_id] = job
        worker.tasks_sent += 1
        # Should the worker die before it runs the job, _bury gives the job to another.
        # A worker with a task before this one is busy: the writer batches its frames.
        now = len(worker.jobs) == 1
        worker.outside_bytes += job.outside
        arena = job.arena
        if arena is not None and not worker.has_shared:
            worker.has_shared = True  # once per worker, before the first task that needs it
            worker.post(encode_frame(SharedMemory(size=arena.size)), now=now, fd=arena.fd)
        worker.post(job.frame, now=now, fd=job.fd)  # type: ignore[arg-type]

    async def wait(self, ref: JobRef) -> Outcome:
        """The task's outcome; its log files (``log_stdout`` / ``log_stderr``), where
        the workers do not see them, get the whole output first.

        Cancellation: stops the waiting only (once the outcome is in, the files
        are written all the same, shielded).
        """
        job = self._jobs.get(ref.native_id)
        outcome = await super().wait(ref)
        if job is not None and job.logs is not None:
            with anyio.CancelScope(shield=True):
                outcome = await _write_logs(job.logs, outcome)
        return outcome

    async def cancel(self, ref: JobRef) -> None:
        """Drop the task if it is queued at its worker, else kill that worker.

        Cancellation: a running task's worker is killed all the same (the kill
        is sent before the first wait). A queued one is dropped by its worker,
        unless the worker started it meanwhile: with nobody left to kill the
        worker, that task then runs to its end. The task is forgotten at once:
        a second ``cancel`` does nothing, and ``wait`` raises ``LaunchError``.
        The executor always calls it shielded.
        """
        job = self._jobs.pop(ref.native_id, None)
        if job is None:
            return
        while not job.finished:
            worker = job.worker
            if worker is None:  # between workers: it never runs
                job.settle(Outcome(task_id=job.task_id, status="cancelled"))
                return
            if not job.running and not worker.dead:
                # Still queued there: the worker drops it, unless it starts it meanwhile.
                job.changed = anyio.Event()
                worker.post(encode_frame(Cancel(task_id=job.task_id)))
                while not job.finished and job.worker is worker and not job.running:
                    await job.changed.wait()
                    job.changed = anyio.Event()
                continue  # dropped, started there, or moved (its worker died): look again
            # Running there (or its worker is dying): the worker goes, and the work with
            # it. A job that had not started is moved by _bury: then it is settled above.
            worker.kill()
            await worker.exited.wait()

    # -- workers --------------------------------------------------------------------

    async def _checkout(self, exclusive: bool) -> PoolWorker:
        """An idle worker; else (unless ``exclusive``) the least loaded with room.

        A worker started for the caller that is killed before its handshake ends
        was never handed a task: another is started in its place, up to
        :attr:`STARTS_PER_TASK` in all, and the last one's death is raised.
        """
        died = 0
        while True:
            if self._closed:
                raise LaunchError(f"the {self.kind} pool is closed")
            best, spawn = self._scheduler.pick(exclusive)
            if spawn:
                try:
                    return await self._spawn()  # a new worker rather than a queue
                except DiedStarting as exc:
                    died += 1
                    if died >= self.STARTS_PER_TASK:
                        raise LaunchError(
                            f"{exc} ({died} workers in a row died while starting)"
                        ) from None
                    log.info("%s; starting another", exc)
                    continue
            if best is not None:
                return best
            await self._scheduler.wait_for_room()

    async def _spawn_idle(self) -> None:
        await self._spawn()
        self._scheduler.wake()

    async def _spawn(self, task_id: str | None = None) -> PoolWorker:
        assert self._tg is not None
        self._scheduler.spawning += 1  # until it is in the pool, or disposed of: aclose waits
        try:
            worker = await start_worker(
                lambda: self._connect(task_id), self._setup, self._where(), self._startup_timeout
            )
            if self._closed or self._tg is None:
                await self._dismiss(worker)
                raise LaunchError(f"the {self.kind} pool is closed")
            self._workers[worker] = None
            self._tg.start_soon(self._read_loop, worker)
            self._tg.start_soon(worker.write_posted)
        except BaseException:
            # Tasks that waited for this worker (a replacement) start one of their own.
            self._scheduler.wake()
            raise
        finally:
            self._scheduler.spawning -= 1
            if not self._scheduler.spawning and self._spawns_done is not None:
                self._spawns_done.set()
        return worker

    async def _dismiss(self, worker: PoolWorker) -> None:
        """Let go of a worker that started as the pool closed: told no task comes (it
        runs its teardown hook and exits), killed if it has not exited after
        :attr:`CLOSE_GRACE` seconds (at once, with no teardown hook); reaped.

        Cancellation: shielded: the worker is gone when it returns.
        """
        with anyio.CancelScope(shield=True):
            exited = False
            if self.hooks.teardown is not None:
                await worker.close_input()
                with anyio.move_on_after(self.CLOSE_GRACE):
                    await worker.wait_exit()
                    exited = True
            if not exited:
                worker.kill()
                await worker.wait_exit()
            await worker.aclose()

    async def _read_loop(self, worker: PoolWorker) -> None:
        try:
            # A partial, not a closure: no Python frame more per message than the
            # handler's own (the hot path of every task).
            await read_messages(worker.reader, functools.partial(self._received, worker))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except Exception:
            # A garbled frame: this worker can no longer be trusted. (Never let the
            # error escape: this task group wraps the caller's code.)
            log.exception("worker %s sent an unreadable message; killing it", worker.pid)
            worker.kill()
        finally:
            worker.dead = True  # at once: _bury awaits before the worker leaves the pool
            with anyio.CancelScope(shield=True):
                await self._bury(worker)

    def _received(self, worker: PoolWorker, message: Message) -> None:
        """A message from ``worker``: an Outcome settles its job (nothing else comes
        once it runs tasks)."""
        if not isinstance(message, Outcome):
            return
        outcome = message
        job = worker.jobs.pop(outcome.task_id, None)
        if job is not None and job.outside:
            worker.outside_bytes -= job.outside
        if job is None:
            log.error("worker %s answered for a task it was not given; killing it", worker.pid)
            worker.kill()  # its jobs are then settled as lost, or go to another worker
            return
        job.settle(outcome)
        job.notify()
        if worker.jobs:  # the next one may be running now
            worker.jobs[next(iter(worker.jobs))].notify()
        if self.prefetch and outcome.started is not None and outcome.finished is not None:
            self._scheduler.ran(outcome.finished - outcome.started)
        if worker.dead:
            return  # killed after it answered (cancel, time limit): it is going away
        if not worker.jobs and not self._scheduler.open_to(worker) and not worker.retiring:
            worker.retiring = True  # max_tasks_per_worker reached: replace it
            assert self._tg is not None
            self._tg.start_soon(worker.close_input)
        self._scheduler.wake()

    async def _bury(self, worker: PoolWorker) -> None:
        """A worker's channel closed: reap it, fail the task it ran, move the queued ones."""
        exit_code: int | None = None
        with anyio.move_on_after(5) as waited:
            exit_code = await worker.wait_exit()
        if waited.cancelled_caught:
            worker.kill()
            exit_code = await worker.wait_exit()
        await worker.aclose()
        self._workers.pop(worker, None)
        jobs = list(worker.jobs.values())
        running = jobs[0] if jobs else None
        worker.jobs = {}
        for job in jobs:
            if job.finished:
                continue
            if job is running:
                text, state = worker.describe_exit(exit_code)
                lost = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
                job.settle(
                    Outcome(
                        task_id=job.task_id,
                        status="lost",
                        error=lost,
                        exit_code=exit_code,
                        state=state,
                        pid=worker.pid,
                        host=self._host,
                    )
                )
            else:  # queued behind the running one: it never started
                job.worker = None
                if self._tg is not None:
                    self._tg.start_soon(self._redispatch, job)
            job.notify()
        worker.exited.set()
        worker.posted.set()  # the writer ends
        self._scheduler.wake()
        if self._eager and not self._closed and self._tg is not None:
            self._tg.start_soon(self._replace)

    async def _redispatch(self, job: PoolJob) -> None:
        if job.finished:
            return
        try:
            await self._dispatch(job)
        except Exception as exc:  # it never ran
            text = f"the {self.kind} pool could not run it: {exc}"
            if self._closed:  # (as a task that was running when the pool closed)
                lost = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
                job.settle(Outcome(task_id=job.task_id, status="lost", error=lost))
            else:  # no worker could start: as start() would have said
                refused = ErrorInfo(type_name="LaunchError", message=text, traceback="")
                job.settle(Outcome(task_id=job.task_id, status="refused", error=refused))
        job.notify()

    async def _replace(self) -> None:
        """Replace a dead worker; a failure is one line (the traceback at DEBUG).

        While the place is unreachable (an engine down, a host gone) every
        replacement fails the same way: a traceback each time would drown the
        log. Never raises: the next ``start`` tries again and reports it.
        """
        if len(self._workers) + self._scheduler.spawning >= self._n_workers or self._closed:
            return
        try:
            await self._spawn_idle()
        except Exception as exc:
            if not self._closed:
                log.warning(
                    "could not replace a worker of %s: %s",
                    self._where(),
                    " ".join(str(exc).split()) or type(exc).__name__,
                )
                log.debug("could not replace a worker of %s", self._where(), exc_info=True)


async def _open_logs(job: PoolJob, at_end: bool) -> bool:
    """Create the job's log files here, as a worker that sees them does when the task
    starts (``at_end``: check their directory only): False if one cannot be opened
    (the job is then settled with that error)."""
    assert job.logs is not None
    for path in job.logs:
        if path is None:
            continue
        try:
            if at_end:
                if not await anyio.Path(os.path.dirname(path) or ".").is_dir():
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
                continue
            async with await anyio.open_file(path, "ab"):
                pass
        except OSError as exc:
            job.settle(Outcome(task_id=job.task_id, status="raised", error=describe_exception(exc)))
            return False
    return True


async def _write_logs(logs: tuple[str | None, str | None], outcome: Outcome) -> Outcome:
    """Append the task's whole output to its log files; the outcome, with the tails."""
    for path, text in zip(logs, (outcome.stdout, outcome.stderr), strict=True):
        if path is None or not text:
            continue
        try:
            async with await anyio.open_file(path, "ab") as file:
                await file.write(text.encode())
        except OSError as exc:
            log.warning("cannot write the log of task %s to %s: %s", outcome.task_id, path, exc)
    return tails(outcome)


def tails(outcome: Outcome) -> Outcome:
    """The outcome with the tails of its output only (a worker may have sent it all)."""
    if len(outcome.stdout) > TAIL_BYTES or len(outcome.stderr) > TAIL_BYTES:
        outcome = msgspec.structs.replace(
            outcome, stdout=outcome.stdout[-TAIL_BYTES:], stderr=outcome.stderr[-TAIL_BYTES:]
        )
    return outcome
