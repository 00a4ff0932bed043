"""Which worker a pool's next task goes to: :class:`Scheduler`.

A pool keeps each busy worker fed with tasks waiting behind the one it runs,
so that it never waits for a round trip; how many (the depth) follows how long
tasks take: enough to cover :attr:`Scheduler.QUEUED_WORK` seconds of work, at
most ``prefetch``. A task goes to an idle worker first, else to the least
loaded with room; where none is idle and the pool is not full, a new worker
is started rather than a queue lengthened. Tasks with a time limit or pinned
to CPUs (``exclusive``) wait for an idle worker.

A task pinned to CPUs is given, of those its worker may use (its
:class:`~asyncexec._messages.Hello` says), the ones least taken by the pinned
tasks that other workers of the same place (machine) run now.
"""

from __future__ import annotations

import math

import anyio

from ._workers import PoolWorker

__all__ = ["QUEUED_BYTES", "Scheduler"]

#: A busy worker with this many bytes of arguments outside frames sent to it is
#: sent no more (so the shared memory is not filled by a few deep queues).
QUEUED_BYTES = 4 << 20


class Scheduler:
    """A pool's workers, and the choice of the one each task goes to.

    Args:
        n_workers: workers at most.
        max_tasks: tasks sent to a worker at most before it is replaced.
        prefetch: tasks sent ahead to a busy worker at most.
    """

    #: Seconds of work to keep queued at a busy worker (see ``prefetch``).
    QUEUED_WORK = 0.01

    def __init__(self, n_workers: int, max_tasks: int | None, prefetch: int) -> None:
        self.n_workers = n_workers
        self.max_tasks = max_tasks
        self.prefetch = prefetch
        self.depth = 0  # tasks queued per busy worker now: follows the tasks' durations
        self.mean_run = 0.0  # seconds a task runs, a moving average
        self.workers: dict[PoolWorker, None] = {}  # in the order they started
        self.spawning = 0  # workers being started (each counts towards n_workers)
        self._room: anyio.Event | None = None  # made by a task that waits for room

    def pick(self, exclusive: bool) -> tuple[PoolWorker | None, bool]:
        """The worker to send a task to now (None: none has room), and whether to
        start a new worker instead (when none is idle and the pool is not full)."""
        depth = self.depth
        while True:
            best: PoolWorker | None = None
            for worker in self.workers:
                load = len(worker.jobs)
                if load > depth or (exclusive and load) or not self.open_to(worker):
                    continue
                if load and worker.outside_bytes >= QUEUED_BYTES:
                    continue  # it has enough large arguments to copy for now
                if best is None or load < len(best.jobs):
                    best = worker
                    if not load:
                        break
            if best is not None and not best.jobs and not best.usable:
                # The one system call, for an idle worker only: is it alive? (A task
                # queued behind another at a worker that died is simply moved.)
                continue  # it is marked dead now: look again
            idle = best is not None and not best.jobs
            if not idle and len(self.workers) + self.spawning < self.n_workers:
                return None, True
            return best, False

    def open_to(self, worker: PoolWorker) -> bool:
        """Whether the worker may be sent another task, as far as we know without asking."""
        if worker.dead or worker.retiring:  # (dead is set before exited)
            return False
        return self.max_tasks is None or worker.tasks_sent < self.max_tasks

    def choose_cpus(self, worker: PoolWorker, cpus: float) -> list[int] | None:
        """The ``ceil(cpus)`` CPUs of ``worker`` least taken by the pinned tasks running
        on the other workers of its place (lowest first among equals); None where the
        worker cannot pin, or has too few CPUs (it then refuses the task itself)."""
        usable = worker.affinity
        wanted = math.ceil(cpus)
        if not usable or wanted > len(usable):
            return None
        taken: dict[int, int] = {}
        for other in self.workers:
            pinned = other.pinned
            if (
                other is not worker
                and pinned is not None
                and pinned[0] in other.jobs  # (it stops holding them once it ended)
                and other.place == worker.place
            ):
                for cpu in pinned[1]:
                    taken[cpu] = taken.get(cpu, 0) + 1
        return sorted(sorted(usable, key=lambda cpu: (taken.get(cpu, 0), cpu))[:wanted])

    def ran(self, run: float) -> None:
        """A task ran ``run`` seconds: queue enough tasks at busy workers to cover
        QUEUED_WORK seconds of their work."""
        mean = self.mean_run = run if not self.mean_run else 0.9 * self.mean_run + 0.1 * run
        self.depth = min(self.prefetch, int(self.QUEUED_WORK / max(mean, 1e-6)))

    async def wait_for_room(self) -> None:
        """Wait until :meth:`wake` is called (a worker may have room now).

        Cancellation: stops the waiting only.
        """
        if self._room is None or self._room.is_set():
            self._room = anyio.Event()
        await self._room.wait()

    def wake(self) -> None:
        """Wake the tasks waiting for room, if any."""
        room = self._room
        if room is not None:  # someone waits for room: once set, a waiter makes another
            self._room = None
            room.set()
