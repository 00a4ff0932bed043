"""The bookkeeping of a batch launcher: its tasks, its arrays, its submissions under way."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ..._messages import JobRef, TaskSpec
from .._base import Job

__all__ = ["Array", "BatchJob", "Pending"]


class BatchJob(Job):
    """A task of an array task (its chunk), from submission until its outcome is read."""

    __slots__ = (
        "adopted",
        "array_id",
        "cancel_requested",
        "chunk",
        "index",
        "logs",
        "marked",
        "marked_at",
        "missing_since",
        "never_since",
        "on_running",
        "started",
        "workdir",
    )

    def __init__(self, task_id: str, array_id: str, index: int, workdir: str) -> None:
        super().__init__(task_id)
        self.array_id = array_id
        self.index = index
        self.workdir = workdir
        self.chunk: list[BatchJob] = [self]  # the tasks its array task runs
        self.cancel_requested = False
        self.adopted = False  # re-attached: started by another launcher
        self.marked = False  # its cancel marker is written: the worker skips or stops it
        self.marked_at = 0.0  # time.monotonic() once the marker is written
        self.missing_since: float | None = None  # left the queue; no outcome, no sacct yet
        self.logs: tuple[str | None, str | None] = (None, None)  # log_stdout, log_stderr here
        self.started = False  # squeue saw it run (or it ended)
        self.never_since: float | None = None  # pending for a reason that looks final
        self.on_running: Callable[[], None] | None = None  # the executor's, until it runs

    def mark_started(self) -> None:
        """It runs: tell the executor, once."""
        self.started = True
        callback, self.on_running = self.on_running, None
        if callback is not None:
            callback()

    def remote_log(self, stream: int) -> str:
        """Where the worker writes the task's whole stdout (1) or stderr (2)."""
        return f"{self.workdir}/out/{self.task_id}.std{'out' if stream == 1 else 'err'}"

    @property
    def native_id(self) -> str:
        return f"{self.array_id}_{self.index}"


class Array:
    """An array job submitted here: its staging directory and its unsettled tasks."""

    __slots__ = ("open", "remaining", "throttle", "workdir")

    def __init__(self, workdir: str, throttle: int | None = None) -> None:
        self.workdir = workdir
        self.remaining = 0
        # Unsettled tasks by array task (chunk) index; with a throttle, 0 until squeue no
        # longer lists it (an array task still ending counts against max_concurrent).
        self.open: dict[int, int] = {}
        self.throttle = throttle  # its %N: array tasks running at once at most

    def may_run(self) -> int:
        """How many of its array tasks may run at once now."""
        return len(self.open) if self.throttle is None else min(self.throttle, len(self.open))


class Pending:
    """A ``start`` call waiting for its task's array to be submitted."""

    __slots__ = ("abandoned", "done", "error", "ref", "task")

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.done = anyio.Event()
        self.ref: JobRef | None = None
        self.error: BaseException | None = None
        self.abandoned = False
