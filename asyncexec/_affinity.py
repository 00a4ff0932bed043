"""CPU affinity: a task pinned to the CPUs it asks for (``Resources(cpus=...)``).

A pool worker runs a task that asks for CPUs on ``ceil(cpus)`` of those it may
use (its :class:`Hello` says which: :func:`usable_cpus`), preferring those the
pool picked apart from the other workers' pinned tasks (``TaskSpec.affinity``),
and refuses a task that asks for more than it may use. Standard library only
(Linux's ``sched_setaffinity``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator

__all__ = ["cpus_refusal", "pinned", "usable_cpus"]

_HOST = os.uname().nodename


def usable_cpus() -> list[int] | None:
    """The CPUs this worker may use, where it can pin tasks to some of them."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


def cpus_refusal(cpus: float) -> str | None:
    """Why this worker cannot pin a task to ``cpus`` CPUs; None if it can."""
    if not hasattr(os, "sched_setaffinity"):
        return (
            f"the task asks for Resources(cpus={cpus!r}), but the worker on {_HOST} cannot pin "
            f"a task to CPUs on {sys.platform} (no os.sched_setaffinity)"
        )
    usable = os.sched_getaffinity(0)
    if math.ceil(cpus) > len(usable):
        return (
            f"the task asks for Resources(cpus={cpus!r}) ({math.ceil(cpus)} whole CPUs), but "
            f"the worker on {_HOST} may use {len(usable)}: {_cpu_list(usable)}"
        )
    return None


@contextlib.contextmanager
def pinned(cpus: float, chosen: list[int] | None) -> Iterator[None]:
    """Run the worker on ``ceil(cpus)`` of the CPUs it may use while the task runs.

    ``chosen`` are those the pool picked (apart from the other workers' tasks);
    without them, or where they are not the worker's, the first ones it may use.
    Every thread of the worker is pinned (a library's thread pool made by an
    earlier task too), and each given back what it had before once the task
    ends (a thread started meanwhile, what the worker had). :func:`cpus_refusal`
    said yes first.
    """
    before = _affinities()
    usable = os.sched_getaffinity(0)
    wanted = math.ceil(cpus)
    cpu_set = {cpu for cpu in chosen or () if cpu in usable}
    for cpu in sorted(usable):
        if len(cpu_set) >= wanted:
            break
        cpu_set.add(cpu)
    while len(cpu_set) > wanted:
        cpu_set.remove(max(cpu_set))
    os.sched_setaffinity(0, cpu_set)  # (the calling thread first)
    for thread in before:
        with contextlib.suppress(OSError):  # it ended meanwhile
            os.sched_setaffinity(thread, cpu_set)
    try:
        yield
    finally:
        # Each thread gets back what it had (one started meanwhile, the worker's);
        # one that cannot be (its cgroup shrank) must not fail the task's outcome.
        for thread in before.keys() | _threads():
            try:
                os.sched_setaffinity(thread, before.get(thread, usable))
            except OSError:
                continue


def _threads() -> list[int]:
    """The ids of this process's threads (none where /proc cannot tell)."""
    try:
        return [int(thread) for thread in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _affinities() -> dict[int, set[int]]:
    """Each thread of this process and the CPUs it may use now."""
    found: dict[int, set[int]] = {}
    for thread in _threads():
        with contextlib.suppress(OSError):  # it ended meanwhile
            found[thread] = os.sched_getaffinity(thread)
    return found


def _cpu_list(cpus: set[int]) -> str:
    return "CPU " + ", ".join(map(str, sorted(cpus)))
