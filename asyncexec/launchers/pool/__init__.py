"""The pool family: long-lived workers fed tasks over framed channels.

A worker (a local process, a process on an SSH host, a warm container) runs
``python -m asyncexec.worker serve`` and speaks the framed protocol of
:mod:`asyncexec._worker` over a byte channel. A backend of this family
subclasses :class:`PoolLauncher` and :class:`PoolWorker`: it starts a worker
and opens its channel (``PoolLauncher._connect``), and kills and reaps it;
the family does the rest. Where each concept lives:

* ``_launcher.py``: :class:`PoolLauncher`, the launcher seam over the pool:
  jobs handed to workers, cancelled, completed, moved when a worker dies.
* ``_scheduling.py``: :class:`Scheduler`, which worker a task goes to, how
  many tasks a busy worker is sent ahead (learnt from how long tasks run),
  which CPUs a pinned task gets.
* ``_workers.py``: :class:`PoolWorker` (a worker, its channel's writing side,
  the jobs it holds) and :class:`PoolJob` (a task handed to the pool).
* ``_channel.py``: the framed channel's reading side, :class:`FrameReader`,
  and :func:`read_messages`, behind which sits the asyncio fast path.
* ``_startup.py``: a worker's start and handshake.
* ``_arena.py``: :class:`SharedArena`, the shared memory that carries large
  arguments outside frames (or a memory file of their own).
* ``_stats.py``: :class:`PoolStats`, what :meth:`PoolLauncher.stats` returns.
"""

from ._arena import FD_PAYLOAD as FD_PAYLOAD
from ._arena import SHARED_PART_MAX as SHARED_PART_MAX
from ._arena import SharedArena as SharedArena
from ._channel import FrameReader as FrameReader
from ._channel import read_messages as read_messages
from ._launcher import PoolLauncher as PoolLauncher
from ._scheduling import Scheduler as Scheduler
from ._stats import PoolStats as PoolStats
from ._stats import WorkerStats as WorkerStats
from ._workers import PoolJob as PoolJob
from ._workers import PoolWorker as PoolWorker

__all__ = [
    "FD_PAYLOAD",
    "SHARED_PART_MAX",
    "FrameReader",
    "PoolJob",
    "PoolLauncher",
    "PoolStats",
    "PoolWorker",
    "Scheduler",
    "SharedArena",
    "WorkerStats",
    "read_messages",
]
