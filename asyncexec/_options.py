"""Per-task options, with executor-wide defaults."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from ._messages import Resources

__all__ = ["TaskOptions", "check_env", "check_workers"]


def check_workers(n_workers: object) -> None:
    """Refuse a worker count that is not a positive integer (0 included: the
    executors take None for their default)."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")


def check_env(env: Mapping[str, str] | None, what: str = "env") -> dict[str, str]:
    """``env`` as a dict, refused unless it maps str to str (a worker or a container
    could not take anything else, and would fail later, far from the mistake)."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"{what} must be a mapping of str to str, got {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{what} must map str to str, got {key!r}: {value!r}")
    return dict(env)


def _check_number(name: str, value: object, *, integer: bool = False) -> None:
    """A number (an ``int`` where ``integer``; never a bool), finite."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be finite, got {value!r}")


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
        logs_at_end: write ``log_stdout`` / ``log_stderr`` when the task ends, and only
            for a stream it wrote to (no empty files), rather than as it writes:
            cheaper for many short tasks (an experiment's runs). Threads write
            from the first write on. Backends whose logs come back with the outcome
            (SSH hosts, containers) write them at the end in any case.
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
    logs_at_end: bool = False
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    resources: Resources = dataclasses.field(default_factory=Resources)
    name: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_limit is not None:
            _check_number("time_limit", self.time_limit)
            if self.time_limit <= 0:
                raise ValueError(
                    f"time_limit must be a positive number of seconds, got {self.time_limit!r}"
                )
        _check_number("retries", self.retries, integer=True)
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")
        for name in ("retry_backoff", "retry_backoff_max"):
            _check_number(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        elif not isinstance(retry_on, (tuple, list)):
            raise TypeError(
                f"retry_on must be an exception class or a tuple of them, got {retry_on!r}"
            )
        for entry in retry_on:
            if not (isinstance(entry, type) and issubclass(entry, BaseException)):
                raise TypeError(f"retry_on must hold exception classes, got {entry!r}")
        object.__setattr__(self, "retry_on", tuple(retry_on))
        check_env(self.env)
        if not isinstance(self.resources, Resources):
            raise TypeError(f"resources must be a Resources, got {self.resources!r}")

    def replace(self, **changes: Any) -> TaskOptions:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)

    def named(
        self, name: str | None, log_stdout: str | None, log_stderr: str | None
    ) -> TaskOptions:
        """A copy with another name and log files: what a runner of many tasks changes
        per task, without checking again what did not change (a tenth of ``replace``)."""
        copy = object.__new__(TaskOptions)
        fields = dict(self.__dict__)
        fields["name"], fields["log_stdout"], fields["log_stderr"] = name, log_stdout, log_stderr
        object.__setattr__(copy, "__dict__", fields)
        return copy

    @property
    def wants_capture(self) -> bool:
        return bool(self.capture_output or self.log_stdout or self.log_stderr)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt + 1``."""
        return float(min(self.retry_backoff * 2 ** max(0, attempt - 1), self.retry_backoff_max))
