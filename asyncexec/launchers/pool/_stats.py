"""What a pool tells of itself: :class:`PoolStats`, from ``PoolLauncher.stats()``.

A snapshot, for tests, benchmarks and a curious user: how many workers run and
what each holds, how many tasks a busy worker is sent ahead (learnt from how
long tasks run), and how much shared memory large arguments take.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStats", "WorkerStats"]


@dataclass(frozen=True)
class WorkerStats:
    """One worker of a pool, when the snapshot was taken."""

    #: Its process id where it runs (None until its handshake says it).
    pid: int | None
    #: The tasks sent to it and not answered, oldest first: the first may be running,
    #: the others wait behind it (sent ahead).
    tasks: tuple[str, ...]
    #: Tasks it was sent since it started (``max_tasks_per_worker`` counts these).
    tasks_sent: int


@dataclass(frozen=True)
class PoolStats:
    """A pool's workers and what it has learnt, when the snapshot was taken."""

    #: Its workers (those started, in the order they started; not those starting).
    workers: tuple[WorkerStats, ...]
    #: Tasks it holds: handed to it, and their outcome not yet taken.
    tasks: int
    #: Tasks sent ahead to a busy worker now, at most: follows how long tasks run
    #: (``prefetch`` caps it; 0 until tasks have run).
    depth: int
    #: Seconds a task runs, a moving average (0.0 until tasks have run).
    mean_run: float
    #: Bytes of shared memory the pool made for large arguments (0: none made).
    shared_memory: int
    #: Bytes of it that hold the arguments of tasks not yet ended.
    shared_memory_in_use: int
    #: Arguments sent in memory files of their own (too large for the shared
    #: memory, or finding it full), since the pool opened.
    memory_files: int
