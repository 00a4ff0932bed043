"""Per-task options, with executor-wide defaults."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from ._messages import Resources

__all__ = ["TaskOptions", "check_workers"]


def check_workers(n_workers: object) -> None:
    """Refuse a worker count that is not a positive integer (0 included: the
    executors take None for their default)."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """How a task runs. Executors take defaults; ``ex.with_options(...)`` overrides them.

    Attributes:
        time_limit: seconds a task may run; then its work is killed and its
            future fails with :class:`TaskTimeout`. ``None``: no limit.
        retries: how many more times a failed task is tried.
        retry_on: the failures worth a retry (matched with ``isinstance`` against
            the error ``await fut`` would raise, so a remote ``ConnectionError``
            matches ``ConnectionError``). Cancellation is never retried.
        retry_backoff: seconds before the first retry; doubled for each next one.
        retry_backoff_max: the longest wait between two attempts.
        capture_output: capture the task's stdout and stderr; their tails land in
            ``future.info.stdout`` / ``.stderr``.
        log_stdout: a file the task's whole stdout is appended to (implies capture).
        log_stderr: a file the task's whole stderr is appended to (implies capture).
        env: environment variables set while the task runs.
        resources: what the task may use: :class:`~asyncexec.Resources` (cpus,
            memory_mb, gpus). Each backend honours what it can (its executor's
            docstring says how) and ``submit`` raises :class:`LaunchError` for
            the rest; a request is never dropped. ``cpus``: pinned to whole CPUs
            (process pool, SSH hosts, warm containers), a one-shot container's
            exact CPU quota, Slurm's ``--cpus-per-task``. ``memory_mb``: what
            the task may add to its worker's address space (RLIMIT_AS),
            everywhere but threads. ``gpus``: one-shot containers and Slurm only.
        name: a human name for the task, shown in ``info`` and logs.
        tags: free-form labels kept in ``info``.
    """

    time_limit: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_backoff: float = 0.1
    retry_backoff_max: float = 30.0
    capture_output: bool = False
    log_stdout: str | os.PathLike[str] | None = None
    log_stderr: str | os.PathLike[str] | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    resources: Resources = dataclasses.field(default_factory=Resources)
    name: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_limit is not None and not (
            self.time_limit > 0 and math.isfinite(self.time_limit)
        ):
            raise ValueError(
                f"time_limit must be a positive number of seconds, got {self.time_limit!r}"
            )
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")
        if self.retry_backoff < 0 or self.retry_backoff_max < 0:
            raise ValueError("retry_backoff and retry_backoff_max must be >= 0")
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))
        for entry in self.retry_on:
            if not (isinstance(entry, type) and issubclass(entry, BaseException)):
                raise TypeError(f"retry_on must hold exception classes, got {entry!r}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"env must map str to str, got {key!r}: {value!r}")

    def replace(self, **changes: Any) -> TaskOptions:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)

    @property
    def wants_capture(self) -> bool:
        return bool(self.capture_output or self.log_stdout or self.log_stderr)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt + 1``."""
        return float(min(self.retry_backoff * 2 ** max(0, attempt - 1), self.retry_backoff_max))
