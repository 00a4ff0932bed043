"""How every Slurm array task is submitted: :class:`SlurmConfig`, Slurm's time strings."""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Sequence

__all__ = ["SlurmConfig", "parse_time"]

_TIME_PART = re.compile(r"\d+")
_MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


def parse_time(value: str) -> int | None:
    """Seconds in a Slurm time string; None for ``UNLIMITED``/``INFINITE``.

    Slurm's formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.

    Raises:
        ValueError: not one of them.
    """
    text = value.strip()
    if text.upper() in {"UNLIMITED", "INFINITE"}:
        return None
    days = 0
    rest = text
    if "-" in text:
        day_text, rest = text.split("-", 1)
        if not _TIME_PART.fullmatch(day_text):
            raise ValueError(f"not a Slurm time: {value!r}")
        days = int(day_text)
    parts = rest.split(":")
    if not 1 <= len(parts) <= 3 or not all(_TIME_PART.fullmatch(part) for part in parts):
        raise ValueError(f"not a Slurm time: {value!r} (use M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    numbers = [int(part) for part in parts]
    if "-" in text:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = [*numbers, 0, 0][:3]
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:  # M or M:S
        hours, (minutes, seconds) = 0, [*numbers, 0][:2]
    if (minutes >= 60 and (hours or days)) or (seconds >= 60 and len(numbers) > 1):
        raise ValueError(f"not a Slurm time: {value!r} (minutes and seconds are < 60)")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _line(name: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"SlurmConfig.{name} must be one line, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """How every array task is submitted; validated when made.

    Args:
        partition: ``--partition``.
        time: ``--time`` of every array task, a Slurm time string (``"30"``,
            ``"1:00:00"``, ``"2-00"``). Tasks with a time limit get at least
            what their chunk needs, rounded up to whole minutes.
        cpus: ``--cpus-per-task`` (a task's ``Resources(cpus=...)`` replaces it).
        memory: ``--mem``: megabytes, or a string such as ``"4G"``.
        gpus: ``--gres=gpu:N`` (a task's ``Resources(gpus=...)`` replaces it).
        account: ``--account``.
        qos: ``--qos``.
        max_concurrent: array tasks of the executor running at once, across all
            its arrays (each array's ``%N`` is what the others leave, raised as
            they end; a batch waits in the driver while there is no room).
        max_array_size: array tasks per array at most (the cluster's
            ``MaxArraySize`` caps it anyway).
        chunk_size: tasks run one after the other by each array task.
        modules: ``module load`` these first. A module that does not load (or
            no ``module`` command) fails the task with a ``LaunchError``, as does
            any failing line of ``setup`` or activation: the function never runs.
        conda_env: ``conda activate`` this environment.
        venv: ``source <venv>/bin/activate``; its python runs the worker.
        python: the interpreter that runs the one-shot runner (default
            ``python3``, or the venv's): a Python of the driver's minor version.
            asyncexec is not needed; cloudpickle (of the driver's version) only
            for classes and other objects defined in a script, or for functions
            defined there when the driver's cloudpickle is not 3.x.
        setup: shell lines run before the worker (after modules and envs).
            (The executor's ``setup=`` hook is a Python callable, run by the
            worker after these.)
        extra_sbatch: more ``sbatch`` options, each one word (``"--exclusive"``,
            ``"--constraint=haswell"``).
        job_name: ``--job-name``.
        requeue: let Slurm requeue array tasks after a node failure or
            preemption (``--requeue``); else they fail with ``WorkerLost``.
        poll_interval: seconds between polls while tasks finish.
        max_poll_interval: the ceiling the interval grows towards while
            nothing changes.
        scheduler_calls_per_minute: the most ``squeue`` and ``sacct`` calls
            the cluster gets per minute from this process (None: no bound).
            Every launcher of the process that talks to the same cluster
            shares one poller and one budget: the smallest one asked for.
    """

    partition: str | None = None
    time: str | None = None
    cpus: int = 1
    memory: int | str | None = None
    gpus: int | None = None
    account: str | None = None
    qos: str | None = None
    max_concurrent: int | None = None
    max_array_size: int | None = None
    chunk_size: int = 1
    modules: Sequence[str] = ()
    conda_env: str | None = None
    venv: str | None = None
    python: str | None = None
    setup: Sequence[str] = ()
    extra_sbatch: Sequence[str] = ()
    job_name: str = "asyncexec"
    requeue: bool = False
    poll_interval: float = 0.25
    max_poll_interval: float = 10.0
    scheduler_calls_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "cpus",
            "gpus",
            "max_concurrent",
            "max_array_size",
            "chunk_size",
            "scheduler_calls_per_minute",
        ):
            value = getattr(self, name)
            if value is None and name not in {"cpus", "chunk_size"}:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SlurmConfig.{name} must be a positive integer, got {value!r}")
        if self.time is not None:
            parse_time(self.time)
        memory = self.memory
        if memory is not None and (
            isinstance(memory, bool)
            or (isinstance(memory, int) and memory < 1)
            or (isinstance(memory, str) and not _MEMORY.fullmatch(memory))
            or not isinstance(memory, int | str)
        ):
            raise ValueError(
                f"SlurmConfig.memory must be megabytes or a size like '4G', got {memory!r}"
            )
        if self.conda_env is not None and self.venv is not None:
            raise ValueError("SlurmConfig: give conda_env or venv, not both")
        if not 0 < self.poll_interval <= self.max_poll_interval:
            raise ValueError(
                "SlurmConfig: need 0 < poll_interval <= max_poll_interval, got "
                f"{self.poll_interval!r} and {self.max_poll_interval!r}"
            )
        for name in ("modules", "setup", "extra_sbatch"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"SlurmConfig.{name} must be a sequence of strings, not a string")
            object.__setattr__(self, name, tuple(_line(name, str(item)) for item in value))
        for option in self.extra_sbatch:
            if not option.startswith("-") or any(c.isspace() for c in option):
                raise ValueError(
                    f"SlurmConfig.extra_sbatch items are single options such as "
                    f"'--exclusive' or '--constraint=x', got {option!r}"
                )
        for name in ("partition", "account", "qos", "conda_env", "venv", "python", "job_name"):
            value = getattr(self, name)
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise ValueError(f"SlurmConfig.{name} must be one word, got {value!r}")

    def sbatch_options(
        self, *, time_seconds: int | None, cpus: float | None = None, gpus: int | None = None
    ) -> list[str]:
        """The ``#SBATCH`` options of an array task (but --array, --output, --error).

        ``cpus`` and ``gpus`` (a task's ``Resources``) replace ``self.cpus`` and
        ``self.gpus``; ``cpus`` is rounded up to whole CPUs.
        """
        cpus_per_task = self.cpus if cpus is None else math.ceil(cpus)
        gpus = self.gpus if gpus is None else gpus
        options = [f"--job-name={self.job_name}", f"--cpus-per-task={cpus_per_task}"]
        if self.partition:
            options.append(f"--partition={self.partition}")
        minutes = None
        if self.time is not None:
            configured = parse_time(self.time)
            minutes = None if configured is None else math.ceil(configured / 60)
        if time_seconds is not None:
            needed = math.ceil(time_seconds / 60)
            minutes = needed if minutes is None else max(minutes, needed)
        if minutes is not None:
            options.append(f"--time={minutes}")
        elif self.time is not None:
            options.append(f"--time={self.time}")
        if self.memory is not None:
            options.append(f"--mem={self.memory}")
        if gpus is not None:
            options.append(f"--gres=gpu:{gpus}")
        if self.account:
            options.append(f"--account={self.account}")
        if self.qos:
            options.append(f"--qos={self.qos}")
        options.append("--requeue" if self.requeue else "--no-requeue")
        options.extend(self.extra_sbatch)
        return options

    def interpreter(self) -> str:
        if self.python is not None:
            return self.python
        if self.venv is not None:
            return f"{self.venv.rstrip('/')}/bin/python"
        return "python3"

    def prologue(self) -> list[str]:
        """The shell lines that prepare an array task's environment."""
        lines = []
        if self.modules:
            lines.append("module load " + " ".join(shlex.quote(m) for m in self.modules))
        if self.venv is not None:
            lines.append(f"source {shlex.quote(self.venv.rstrip('/') + '/bin/activate')}")
        if self.conda_env is not None:
            lines.append('eval "$(conda shell.bash hook)"')
            lines.append(f"conda activate {shlex.quote(self.conda_env)}")
        lines.extend(self.setup)
        return lines
