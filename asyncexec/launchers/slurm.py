"""Run tasks on a Slurm cluster: :class:`SlurmExecutor`, its launcher and its config.

The launcher reaches the cluster through a :class:`~asyncexec.abc.Shell`:
:class:`~asyncexec.shells.LocalShell` on a login node, or
:class:`~asyncexec.shells.SSHShell` from anywhere else. It treats the
scheduler gently:

* **Submission.** ``start`` calls made within ``batch_window`` seconds of
  each other become one ``sbatch --array`` job (several when there are more
  than the cluster's ``MaxArraySize`` array tasks). Each array task runs
  ``chunk_size`` tasks with the project's one-shot runner
  (:mod:`asyncexec._runtime`, a standard-library-only file that travels with
  the array). The tasks, the runner and the job script reach the cluster as
  one archive on the standard input of the one command that unpacks them and
  calls ``sbatch``: one round trip per array, whatever its size. Staging
  directories are 0700 and files 0600.
* **Polling.** One poller per launcher calls ``squeue`` once per interval for
  every live job, ``sacct --parsable2`` only for array tasks that left the
  queue without an outcome, and fetches the outcomes of finished tasks in one
  archive. The interval starts at ``poll_interval`` and grows towards
  ``max_poll_interval`` while nothing changes. A task's future is PENDING until
  ``squeue`` shows its array task running (:meth:`SlurmLauncher.on_running`).
* **Never-running jobs.** The same ``squeue`` call reads why pending tasks
  wait; a reason that no other job's end clears (:func:`never_runs`:
  ``PartitionConfig``, ``PartitionTimeLimit``, per-job limits...), lasting
  5 s, fails the task with a ``LaunchError`` quoting it, and the array task is
  cancelled (``scancel``): nothing waits for ever, nothing is left in the queue.
* **Setup.** ``modules``, ``venv``, ``conda_env`` and ``setup`` run under a
  bash ``ERR`` trap: a line that fails ends the array task before the runner
  starts, and its tasks fail with a ``LaunchError`` quoting the line, its
  status and the end of the array task's stderr.
* **Time limits** become ``--time`` (Slurm counts in whole minutes) and the
  worker's own limit, which stops the task on time and reports it: an
  exception in the task at its limit, and for code that does not stop (stuck
  in C with the GIL, ignoring signals) a SIGKILL from the runner's parent
  process a second later (:func:`asyncexec._runtime.supervise`). Either way
  the task fails with ``TaskTimeout``.
* **Resources.** A task's ``Resources(cpus=...)`` becomes its array's
  ``--cpus-per-task`` (rounded up) and ``gpus`` its ``--gres=gpu:N``, over
  :class:`SlurmConfig`'s; tasks asking for different ones never share an
  array. ``memory_mb`` is the runner's (``RLIMIT_AS`` on what the task adds to
  its process), not ``--mem``, which stays ``SlurmConfig.memory``.
* **Cancellation** is ``scancel`` of exactly the array task (all cancels
  made together share one call); when the array task runs other live tasks
  of its chunk, a marker file tells the worker to skip or interrupt only
  that one. ``cancel`` returns once the poller has seen the task end.
* **Re-attach.** A :class:`~asyncexec.JobRef` names the array task, the task
  and its staging directory: a new launcher on the same cluster can ``wait``
  for it (``executor.attach(ref)``), and :meth:`SlurmLauncher.find_refs`
  lists what a killed driver left in a staging directory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.resources
import io
import json
import logging
import math
import pickle
import re
import shlex
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import anyio
import msgspec

from .. import BaseExecutor, _runtime
from .._codec import versions
from .._exceptions import BackendUnavailable, LaunchError
from .._messages import ErrorInfo, JobRef, Outcome, OutcomeStatus, TaskSpec
from .._options import TaskOptions
from ..abc import Launcher, Shell
from ..shells import LocalShell
from ._base import BaseLauncher, Job

__all__ = ["SlurmConfig", "SlurmExecutor", "SlurmLauncher", "parse_time"]

log = logging.getLogger("asyncexec")

# -- configuration ------------------------------------------------------------------

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
        extra_sbatch: more ``sbatch`` options, each one word (``"--exclusive"``,
            ``"--constraint=haswell"``).
        job_name: ``--job-name``.
        requeue: let Slurm requeue array tasks after a node failure or
            preemption (``--requeue``); else they fail with ``WorkerLost``.
        poll_interval: seconds between polls while tasks finish.
        max_poll_interval: the ceiling the interval grows towards while
            nothing changes.
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

    def __post_init__(self) -> None:
        for name in ("cpus", "gpus", "max_concurrent", "max_array_size", "chunk_size"):
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


# -- Slurm's words ------------------------------------------------------------------

#: Array task states that mean the work is over and lost.
_LOST_STATES = {"OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "FAILED"}
#: Seconds to wait for sacct (which lags squeue) before calling a vanished task lost.
_ACCOUNTING_GRACE = 60.0
#: Seconds to wait for the exit code of a task sacct calls FAILED with "0:0". slurmdbd
#: can show the row of a task that ended before its start was recorded with the final
#: state but not yet the exit code (seen here: a script failing 14 ms after it started).
_EXIT_CODE_GRACE = 5.0
#: What of a dead array task's stderr to quote.
_LOG_TAIL = 2000

# The one command of a submission: unpack the archive (the job script, the
# tasks), submit, and keep the job id beside them. umask 077 keeps everything,
# the Slurm logs included (sbatch passes the umask on), private to the user.
# Idempotent: run again after a dropped connection, it answers the job id it gave.
# Refused (sbatch, or the unpacking before it), it removes what it staged and exits
# with that status: a refusal leaves nothing behind (no job ran from it).
_SUBMIT = (
    'umask 077 && mkdir -p "$1" && cd "$1" && '
    "if [ -s job_id ]; then cat >/dev/null; cat job_id; exit 0; fi && "
    "if tar -x -f - && mkdir -p out cancel log && sbatch --parsable job.sh > job_id.tmp; "
    'then mv job_id.tmp job_id && cat job_id; else rc=$?; cd / && rm -rf -- "$1"; exit $rc; fi'
)
#: Seconds closing waits for Slurm to confirm that the tasks it scancelled are gone.
_CLOSE_CONFIRM = 60.0
#: Seconds a scheduler command may take before it counts as failed (a dead link).
_COMMAND_TIMEOUT = 120.0
#: Seconds submitting one array may take (its archive travels with it).
_SUBMIT_TIMEOUT = 600.0
# Outcomes (and logs) named on stdin, one archive on stdout; missing files are skipped.
_FETCH = "tar -c -f - -P --ignore-failed-read -T - 2>/dev/null; true"
# A re-attached array's directory: its tasks.json, then the outcome files there.
_LIST = 'cd "$1" 2>/dev/null || exit 0; cat tasks.json; echo; ls out; true'
# What a killed driver left: one line per array, "<dir>\t<job id>\t<tasks.json>".
_FIND = (
    'cd "$1" 2>/dev/null || exit 0; for d in */; do d=${d%/}; '
    '[ -f "$d/job_id" ] && [ -f "$d/tasks.json" ] && '
    'printf "%s\\t%s\\t%s\\n" "$d" "$(cat "$d/job_id")" "$(cat "$d/tasks.json")"; done; true'
)


def judge_accounting(
    state: str, exit_text: str, waited: float
) -> tuple[OutcomeStatus, int | None] | None:
    """What sacct's ``State`` and ``ExitCode`` of a task that left the queue without an
    outcome file say: ``(status, exit code)``, or None while they say nothing final yet.

    ``waited`` is how long the task has been gone from the queue.
    """
    code, _, signal = exit_text.partition(":")
    exit_code = int(code) if code.isdigit() else None
    if state == "TIMEOUT":
        return "timeout", exit_code
    if state == "CANCELLED":
        return "cancelled", exit_code
    if state in _LOST_STATES:
        unrecorded = state == "FAILED" and code in ("", "0") and signal in ("", "0")
        if unrecorded and waited < _EXIT_CODE_GRACE:
            return None  # the exit code may not be recorded yet
        return "lost", exit_code
    if state == "COMPLETED" and waited > 10:  # the file system had time to show the outcome
        return "lost", exit_code
    return None


#: States of an array task that has not started yet (the future stays PENDING).
_WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
#: Pending reasons that no other job's end can clear: only an administrator changing the
#: cluster, or a different request. (Limits on what a user or an account runs at once,
#: ``Resources``, ``Priority``, ``ReqNodeNotAvail`` for a node that is down or busy, held
#: jobs... clear by themselves or by a release, and are waited out.)
_NEVER_REASONS = {
    "PartitionConfig",  # more CPUs, memory... than the partition has
    "PartitionTimeLimit",  # more time than the partition's MaxTime
    "BadConstraints",  # features no node has
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",  # the partition's AllowAccounts/DenyAccounts
    "QOSNotAllowed",  # the partition's AllowQos/DenyQos
    "DependencyNeverSatisfied",
}
#: A QOS's or an association's limit on one job (or on one job's share of a node): the
#: job exceeds it, or asks for less than a QOS's minimum, whatever else runs.
_NEVER_LIMIT = re.compile(r"(QOS|Assoc)Max\w*Per(Job|Node)\w*|QOSMin\w*")
#: Seconds the partitions' node counts are kept (PartitionNodeLimit is doubtful without).
_PARTITIONS_TTL = 60.0
#: Seconds a final-looking reason must last before the task is refused: Slurm first says
#: PartitionConfig for any partition limit and names the right one at its next pass.
_NEVER_CONFIRM = 5.0


def never_runs(reason: str, nodes: int | None = None, partition_nodes: int | None = None) -> bool:
    """Whether a pending array task with squeue's ``reason`` can never start by itself.

    ``PartitionNodeLimit`` also shows while the partition's nodes are down: it is
    final only when the task asks for more ``nodes`` than the partition can ever
    give (``partition_nodes``: the lesser of its ``MaxNodes`` and ``TotalNodes``).
    """
    if reason == "PartitionNodeLimit":
        return nodes is not None and partition_nodes is not None and nodes > partition_nodes
    return reason in _NEVER_REASONS or _NEVER_LIMIT.fullmatch(reason) is not None


class _Queued(NamedTuple):
    """What squeue says of an array task still in the queue."""

    state: str
    reason: str
    nodes: int | None
    partition: str


# -- what the one-shot runner reads and writes ---------------------------------------

#: The runner's source, shipped with every array (read once).
_RUNNER_SOURCE = importlib.resources.files("asyncexec").joinpath("_runtime.py").read_bytes()


def batch_file(tasks: Sequence[TaskSpec]) -> bytes:
    """An array task's input for the one-shot runner: builtins only, pickled."""
    current = versions()
    batch = {
        "format": _runtime.FORMAT,
        "python": current.python,
        "cloudpickle": current.cloudpickle,
        "tasks": [msgspec.structs.asdict(task) for task in tasks],
    }
    return pickle.dumps(batch, protocol=5)


class _BuiltinsOnly(pickle.Unpickler):
    """An outcome file holds builtins only: refuse anything that names a class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"an outcome file may not name {module}.{name}")


def read_outcome(data: bytes) -> Outcome:
    """An outcome file the runner wrote, as an :class:`Outcome` (types checked)."""
    fields = _BuiltinsOnly(io.BytesIO(data)).load()
    if not isinstance(fields, dict):
        raise ValueError(f"an outcome file holds a {type(fields).__name__}, not a dict")
    row: list[Any] = ["outcome", *(fields.get(name) for name in _runtime.OUTCOME_FIELDS)]
    error = fields.get("error")
    if isinstance(error, dict):
        row[1 + _runtime.OUTCOME_FIELDS.index("error")] = [
            error.get(name) for name in ErrorInfo.__struct_fields__
        ]
    return msgspec.convert(row, Outcome)


class _SlurmJob(Job):
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
        self.chunk: list[_SlurmJob] = [self]  # the tasks its array task runs
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


class _Array:
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


class _Pending:
    __slots__ = ("abandoned", "done", "error", "ref", "task")

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.done = anyio.Event()
        self.ref: JobRef | None = None
        self.error: BaseException | None = None
        self.abandoned = False


class SlurmLauncher(BaseLauncher[_SlurmJob]):
    """Runs tasks as Slurm array tasks, reached through ``shell``.

    Args:
        shell: how to reach a login node (``LocalShell()`` on one).
        config: how to submit (see :class:`SlurmConfig`).
        staging_dir: a directory on a file system the compute nodes share,
            for the tasks, their outcomes and logs (default
            ``$HOME/.asyncexec/slurm`` on the cluster). Each array gets a
            subdirectory, removed once all its outcomes are read.
        batch_window: seconds ``start`` calls are gathered into one array.
        keep_staging: keep the subdirectories of finished arrays.
    """

    kind = "slurm"
    enforces_time_limit = True
    reattachable = True
    #: ``--cpus-per-task`` and ``--gres=gpu:N`` per array; the runner's RLIMIT_AS.
    honours_resources = frozenset({"cpus", "memory_mb", "gpus"})

    def __init__(
        self,
        shell: Shell,
        config: SlurmConfig | None = None,
        *,
        staging_dir: str | None = None,
        batch_window: float = 0.05,
        keep_staging: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(shell, Shell):
            raise TypeError(f"shell must be a Shell (LocalShell, SSHShell), got {shell!r}")
        if batch_window < 0:
            raise ValueError(f"batch_window must be >= 0, got {batch_window!r}")
        self.shell = shell
        self.config = config if config is not None else SlurmConfig()
        self.isolates_crashes = self.config.chunk_size == 1
        if staging_dir is not None and not staging_dir.startswith("/"):
            raise ValueError(f"staging_dir must be an absolute path, got {staging_dir!r}")
        self.staging_dir = staging_dir.rstrip("/") if staging_dir else None
        self._batch_window = batch_window
        self._keep_staging = keep_staging
        self.max_array_size = 0  # the cluster's MaxArraySize, read on opening
        #: How many times each command ran (sbatch, squeue, sacct, scancel, ...).
        self.calls: collections.Counter[str] = collections.Counter()
        self._pending: list[_Pending] = []
        self._to_cancel: list[_SlurmJob] = []
        self._submit_wanted = anyio.Event()
        self._cancel_wanted = anyio.Event()
        self._poll_wanted = anyio.Event()
        self._arrays: dict[str, _Array] = {}  # by array job id, until all its tasks settle
        self._reserved = 0  # of max_concurrent, for arrays being submitted
        self._freed = False  # an array task of ours ended: max_concurrent has room again
        self._dir_sizes: dict[str, int] = {}  # tasks in staging dirs found by find_refs
        self._read_in_dir: dict[str, int] = {}  # of those, outcomes read here
        self._adopted_chunks: dict[str, list[_SlurmJob]] = {}  # by array task, re-attached
        self._adopted_open: collections.Counter[str] = collections.Counter()  # by workdir
        self._to_sweep: dict[str, str] = {}  # re-attached dirs all read here: their array
        self._finished_dirs: list[str] = []
        self._submitting = 0  # sbatch calls in flight
        self._submitted = anyio.Event()  # set when none is
        self._background: list[tuple[anyio.CancelScope, anyio.Event]] = []
        self._partitions: tuple[float, dict[str, int]] | None = None  # when read, nodes
        self._closed = False

    def __repr__(self) -> str:
        return f"SlurmLauncher({self.shell!r}, staging_dir={self.staging_dir!r})"

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        script = 'echo "$HOME"; scontrol show config'
        done = await self._run("scontrol", ["sh", "-c", script])
        if done.returncode != 0:
            raise LaunchError(
                f"cannot read the Slurm configuration through {self.shell!r}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        lines = done.stdout.decode(errors="replace").splitlines()
        home = lines[0].strip() if lines else ""
        for line in lines[1:]:
            key, _, value = line.partition("=")
            if key.strip() == "MaxArraySize" and value.strip().isdigit():
                self.max_array_size = int(value.strip())
        if not self.max_array_size:
            self.max_array_size = 1001  # Slurm's default
        if self.staging_dir is None:
            if not home.startswith("/"):
                raise LaunchError(f"cannot find the home directory through {self.shell!r}")
            self.staging_dir = f"{home}/.asyncexec/slurm"
        for loop in (self._submitter, self._canceller, self._poller):
            self._start_background(loop)

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

        Cancellation: shielded, and every step is bounded in time (ten minutes
        for a submission under way, then ``scancel``, the staging clean-up and
        closing the shell): it finishes before the cancellation propagates. A
        second call returns at once.
        """
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_SUBMIT_TIMEOUT):
                while self._submitting:  # what they submit is swept below
                    await self._submitted.wait()
            # No command of theirs may run once the shell is closed (it would reconnect).
            for scope, _ in self._background:
                scope.cancel()
            for _, stopped in self._background:
                await stopped.wait()
            live = [job for job in self._jobs.values() if not job.finished]
            if live:
                ids = sorted({job.native_id for job in live})
                with contextlib.suppress(Exception), anyio.move_on_after(_COMMAND_TIMEOUT):
                    await self._run("scancel", ["scancel", *ids])
                    await self._until_gone(ids, _CLOSE_CONFIRM)
            for job in live:
                job.settle(Outcome(task_id=job.task_id, status="cancelled"))
                # Its array is over: its directory goes with the others' (a re-attached
                # task's may hold tasks followed by nobody: it stays, for find_refs).
                if not job.adopted and self._arrays.pop(job.array_id, None) is not None:
                    self._finished_dirs.append(job.workdir)
            for pending in self._pending:
                pending.error = LaunchError("the Slurm launcher closed")
                pending.done.set()
            self._pending = []
            with contextlib.suppress(Exception), anyio.move_on_after(_COMMAND_TIMEOUT):
                if self._to_sweep:  # array tasks that wrote their outcomes are ending
                    await self._until_gone(sorted(set(self._to_sweep.values())), 10.0)
                    await self._sweep()
                await self._clean_up()
            self._submit_wanted.set()
            self._cancel_wanted.set()
            self._poll_wanted.set()
            with contextlib.suppress(Exception), anyio.move_on_after(10):
                await self.shell.aclose()

    async def _until_gone(self, ids: list[str], timeout: float) -> None:
        """Wait until squeue lists none of ``ids`` (scancelled tasks pass COMPLETING)."""
        delay = 0.1
        with anyio.move_on_after(timeout):
            while True:
                if not await self._squeue(ids):
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.warning("Slurm still lists %s after scancel", ",".join(ids))

    async def _squeue(self, ids: list[str]) -> dict[str, _Queued]:
        """State, reason, nodes and partition of every array task squeue lists for ``ids``
        (arrays or tasks): one call for all."""
        done = await self._run(
            "squeue", ["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%r|%D|%P"]
        )
        stderr = done.stderr.decode(errors="replace")
        if done.returncode != 0 and "Invalid job id" not in stderr:
            raise LaunchError(f"squeue failed: {stderr.strip()}")
        queued: dict[str, _Queued] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            native_id, state, reason, nodes, partition = (line.strip().split("|", 4) + [""] * 4)[:5]
            count = int(nodes) if nodes.isdigit() else None
            queued[native_id] = _Queued(state, reason, count, partition)
        return queued

    async def _partition_nodes(self) -> dict[str, int]:
        """The most nodes a job of each partition can have (MaxNodes, TotalNodes)."""
        now = time.monotonic()
        if self._partitions is not None and now - self._partitions[0] < _PARTITIONS_TTL:
            return self._partitions[1]
        done = await self._run("scontrol", ["scontrol", "-o", "show", "partition"])
        found: dict[str, int] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = dict(item.partition("=")[::2] for item in line.split() if "=" in item)
            total = fields.get("TotalNodes", "")
            if "PartitionName" in fields and total.isdigit():
                most = int(total)
                if fields.get("MaxNodes", "").isdigit():
                    most = min(most, int(fields["MaxNodes"]))
                found[fields["PartitionName"]] = most
        self._partitions = (now, found)
        return found

    # -- the seam -------------------------------------------------------------------

    async def start(self, task: TaskSpec) -> JobRef:
        if self._closed or self._tg is None:
            raise LaunchError("the Slurm launcher is not open")
        # The outcome carries what the task printed: info.stdout / info.stderr.
        pending = _Pending(msgspec.structs.replace(task, capture_output=True))
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
        """Call ``callback`` once squeue shows the task's array task running (or ended)."""
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
        """Have the background canceller ``scancel`` the task (or mark it in its
        chunk), then wait until Slurm confirms its end, for at most
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
        with anyio.move_on_after(self.config.max_poll_interval + _ACCOUNTING_GRACE):
            await job.wait_finished()
        if not job.finished:
            log.warning("Slurm has not confirmed the end of %s after scancel", job.native_id)

    def _adopt(self, ref: JobRef) -> _SlurmJob:
        """Watch a task another launcher started (re-attach), from its JobRef."""
        if ref.kind != self.kind or ref.workdir is None or "_" not in ref.native_id:
            raise LaunchError(f"not a Slurm task of asyncexec: {ref!r}")
        array_id, _, index = ref.native_id.rpartition("_")
        if not array_id.isdigit() or not index.isdigit():
            raise LaunchError(f"not a Slurm array task: {ref.native_id!r}")
        job = _SlurmJob(ref.task_id or ref.native_id, array_id, int(index), ref.workdir)
        # Which tasks share its array task is known only for those re-attached here:
        # cancelling it writes a marker rather than killing tasks we do not follow.
        siblings = self._adopted_chunks.setdefault(job.native_id, [])
        siblings.append(job)
        job.chunk = siblings
        job.adopted = True
        self._adopted_open[job.workdir] += 1
        self._jobs[job.task_id] = job
        self._poll_wanted.set()
        return job

    def can_follow(self, ref: JobRef) -> bool:
        """Whether ``ref`` is a task of this cluster (re-attach)."""
        return super().can_follow(ref) and ref.host == self.shell.host

    async def find_refs(self) -> list[JobRef]:
        """JobRefs of every task whose array is still in the staging directory.

        What a driver killed before it read all outcomes leaves there: pass
        them to ``executor.attach`` to collect their outcomes (or to wait for
        those still running).

        Cancellation: the ``find`` command is killed and nothing is returned;
        it only reads, so nothing changes and it is safe to call again.
        """
        if self.staging_dir is None:
            raise LaunchError("the Slurm launcher is not open")
        done = await self._run("find", ["sh", "-c", _FIND, "asyncexec-find", self.staging_dir])
        refs = []
        for line in done.stdout.decode(errors="replace").splitlines():
            try:
                name, job_id, tasks_json = line.split("\t", 2)
                array_id = job_id.strip().split(";")[0]
                tasks = json.loads(tasks_json)
            except ValueError:
                log.warning("skipping an unreadable staging directory entry: %r", line)
                continue
            if not array_id.isdigit():
                continue
            workdir = f"{self.staging_dir}/{name}"
            self._dir_sizes[workdir] = len(tasks)
            for task_id, index in tasks:
                refs.append(self._ref(array_id, index, task_id, workdir))
        return refs

    def _ref(self, array_id: str, index: int, task_id: str, workdir: str) -> JobRef:
        return JobRef(
            kind=self.kind,
            native_id=f"{array_id}_{index}",
            host=self.shell.host,
            workdir=workdir,
            task_id=task_id,
        )

    # -- commands ---------------------------------------------------------------------

    async def _run(
        self,
        name: str,
        argv: list[str],
        *,
        input: bytes | None = None,
        timeout: float = _COMMAND_TIMEOUT,
    ) -> Any:
        """Run a command through the shell, counted; a hung link fails after ``timeout``."""
        self.calls[name] += 1
        with anyio.fail_after(timeout):
            return await self.shell.run(argv, input=input)

    async def _sweep(self) -> None:
        """Remove the re-attached directories whose every task (tasks.json) has an outcome
        file and whose array has left the queue; keep looking while it is in the queue."""
        queued = await self._squeue(sorted(set(self._to_sweep.values()), key=int))
        in_queue = {native_id.partition("_")[0] for native_id in queued}
        for workdir, array_id in list(self._to_sweep.items()):
            if array_id in in_queue:
                continue  # still ending, or running tasks nobody here follows
            done = await self._run("find", ["sh", "-c", _LIST, "asyncexec-list", workdir])
            listing, _, names = done.stdout.decode(errors="replace").partition("\n")
            try:
                tasks = json.loads(listing) if listing.strip() else None
            except ValueError:
                tasks = None
            files = set(names.split())
            if tasks and all(f"{task_id}.bin" in files for task_id, _ in tasks):
                self._finished_dirs.append(workdir)
            del self._to_sweep[workdir]  # looked at once it left the queue: done

    async def _clean_up(self) -> None:
        """Remove the staging directories whose every outcome was read."""
        if self._finished_dirs and not self._keep_staging:
            dirs = list(self._finished_dirs)
            await self._run("rm", ["rm", "-rf", "--", *dirs])
            # Forgotten only once removed: an rm cut short (closing) is run again.
            self._finished_dirs = [d for d in self._finished_dirs if d not in dirs]

    # -- submission -----------------------------------------------------------------

    async def _submitter(self) -> None:
        while not self._closed:
            await self._submit_wanted.wait()
            self._submit_wanted = anyio.Event()
            await anyio.sleep(self._batch_window)  # let concurrent starts gather
            batch, self._pending = self._pending, []
            if batch and not self._closed:
                await self._submit(batch)

    async def _submit(self, batch: list[_Pending]) -> None:
        size = self.config.chunk_size
        # An array's tasks share its --cpus-per-task and --gres: one group per request.
        groups: dict[tuple[int | None, int | None], list[_Pending]] = {}
        for pending in batch:
            cpus, gpus = pending.task.cpus, pending.task.gpus
            key = (None if cpus is None else math.ceil(cpus), gpus)
            groups.setdefault(key, []).append(pending)
        per_array = min(self.max_array_size, self.config.max_array_size or self.max_array_size)
        self._submitting += 1
        try:
            async with anyio.create_task_group() as tg:
                held: list[_Pending] = []
                for group in groups.values():
                    chunks = [group[i : i + size] for i in range(0, len(group), size)]
                    for start in range(0, len(chunks), per_array):
                        part = chunks[start : start + per_array]
                        throttle = self._throttle_for(len(part))
                        if throttle == 0:  # max_concurrent of ours may run already
                            held += [pending for chunk in part for pending in chunk]
                            continue
                        tg.start_soon(self._submit_array, part, throttle)
                if held:  # submitted once one of our array tasks ends
                    self._pending[:0] = held
        finally:
            self._submitting -= 1
            if not self._submitting:
                self._submitted.set()
                self._submitted = anyio.Event()

    def _throttle_for(self, chunks: int) -> int | None:
        """The %N of a new array of ``chunks`` array tasks, reserved: what is left of
        ``max_concurrent`` once every array of ours may run what its own %N lets it
        (0: nothing is left; None: no bound)."""
        bound = self.config.max_concurrent
        if bound is None:
            return None
        used = self._reserved + sum(array.may_run() for array in self._arrays.values())
        throttle = max(0, min(bound - used, chunks))
        self._reserved += throttle
        return throttle

    async def _rebalance(self) -> None:
        """Give the room of ended array tasks to arrays throttled below their open tasks
        (``scontrol update ArrayTaskThrottle``), oldest first, then to held submissions."""
        bound = self.config.max_concurrent
        if bound is None:
            return
        room = bound - self._reserved - sum(array.may_run() for array in self._arrays.values())
        for array_id, array in sorted(self._arrays.items(), key=lambda item: int(item[0])):
            if room <= 0:
                break
            if array.throttle is None or array.throttle >= len(array.open):
                continue
            raised = min(len(array.open), array.throttle + room)
            update = ["scontrol", "update", f"JobId={array_id}", f"ArrayTaskThrottle={raised}"]
            done = await self._run("scontrol", update)
            if done.returncode != 0:  # it ended meanwhile, say: the bound holds anyway
                log.warning("scontrol update: %s", done.stderr.decode(errors="replace").strip())
                continue
            room -= raised - array.throttle
            array.throttle = raised
        if room > 0 and self._pending:
            self._submit_wanted.set()

    async def _submit_array(self, chunks: list[list[_Pending]], throttle: int | None) -> None:
        try:
            await self._submit_throttled(chunks, throttle)
        finally:
            self._reserved -= throttle or 0

    async def _submit_throttled(self, chunks: list[list[_Pending]], throttle: int | None) -> None:
        assert self.staging_dir is not None
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        workdir = f"{self.staging_dir}/{name}"
        everyone = [pending for chunk in chunks for pending in chunk]
        local_logs: dict[str, tuple[str | None, str | None]] = {}
        for pending in everyone:
            task = pending.task
            if task.stdout_path or task.stderr_path:
                # log_stdout / log_stderr name files on the driver's side: the worker
                # writes beside its outcome, the poller brings the files back.
                local_logs[task.task_id] = (task.stdout_path, task.stderr_path)
                stem = f"{workdir}/out/{task.task_id}"
                pending.task = msgspec.structs.replace(
                    task,
                    stdout_path=f"{stem}.stdout" if task.stdout_path else None,
                    stderr_path=f"{stem}.stderr" if task.stderr_path else None,
                )
        try:
            archive = self._archive(workdir, chunks, throttle)
            command = ["sh", "-c", _SUBMIT, "asyncexec-submit", workdir]
            for attempt in range(3):
                try:
                    done = await self._run(
                        "sbatch", command, input=archive, timeout=_SUBMIT_TIMEOUT
                    )
                    break
                except (BackendUnavailable, TimeoutError) as exc:
                    # Safe to run again: a second run answers the job id of the first.
                    if attempt == 2:
                        raise LaunchError(f"cannot submit to Slurm: {exc}") from exc
                    log.warning("submitting to Slurm failed (%s); trying again", exc)
                    await anyio.sleep(1 + 2 * attempt)
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace").strip()
                raise LaunchError(f"sbatch refused {len(everyone)} task(s): {detail}")
            array_id = done.stdout.decode().strip().split(";")[0]
            if not array_id.isdigit():
                raise LaunchError(f"sbatch answered {done.stdout!r}, not a job id")
        except Exception as exc:
            error = exc if isinstance(exc, LaunchError) else LaunchError(f"cannot submit: {exc}")
            for pending in everyone:
                pending.error = error
                pending.done.set()
            return
        log.debug("submitted %d task(s) as Slurm array %s", len(everyone), array_id)
        array = self._arrays.setdefault(array_id, _Array(workdir, throttle))
        for index, chunk in enumerate(chunks):
            array.open[index] = len(chunk)
            siblings: list[_SlurmJob] = []
            for pending in chunk:
                job = _SlurmJob(pending.task.task_id, array_id, index, workdir)
                job.logs = local_logs.get(job.task_id, (None, None))
                job.chunk = siblings
                siblings.append(job)
                array.remaining += 1
                self._jobs[job.task_id] = job
                pending.ref = self._ref(array_id, index, job.task_id, workdir)
                pending.done.set()
                if pending.abandoned:  # its start was cancelled while sbatch ran
                    job.cancel_requested = True
                    self._to_cancel.append(job)
                    self._cancel_wanted.set()
        self._poll_wanted.set()

    def _archive(self, workdir: str, chunks: list[list[_Pending]], throttle: int | None) -> bytes:
        """The tar archive of an array: its job script, its tasks, and their index."""
        config = self.config
        limits = [
            sum(p.task.time_limit for p in chunk if p.task.time_limit is not None)
            for chunk in chunks
        ]
        unlimited = any(p.task.time_limit is None for chunk in chunks for p in chunk)
        # The worker stops a task at its limit and its watchdog the worker 10 s later.
        time_seconds = None if unlimited else math.ceil(max(limits) + 30)
        array = f"0-{len(chunks) - 1}"
        if throttle is not None:
            array += f"%{throttle}"
        first = chunks[0][0].task  # every task of an array asks for the same (whole) CPUs, GPUs
        header = [
            f"--array={array}",
            f"--output={workdir}/log/%a.out",
            f"--error={workdir}/log/%a.err",
            *config.sbatch_options(time_seconds=time_seconds, cpus=first.cpus, gpus=first.gpus),
        ]
        runner = shlex.join([config.interpreter(), "-c", _runtime.BOOT, workdir])
        # A failing setup line (module load, activate, the user's own) ends the script
        # before the runner starts, and says which line failed where the poller looks.
        setup_failed = shlex.quote(f"{workdir}/log/") + '"$SLURM_ARRAY_TASK_ID.setup"'
        on_error = f'rc=$?; printf "%s\\t%s\\n" "$rc" "$BASH_COMMAND" > {setup_failed}; exit $rc'
        script = "\n".join(
            [
                "#!/bin/bash",
                *(f"#SBATCH {shlex.quote(option)}" for option in header),
                f"trap {shlex.quote(on_error)} ERR",
                "umask 077",
                *config.prologue(),
                "trap - ERR",
                f'exec {runner} {shlex.quote(workdir + "/in/")}"$SLURM_ARRAY_TASK_ID.bin" '
                f"{shlex.quote(workdir + '/out')} {shlex.quote(workdir + '/cancel')}",
                "",
            ]
        )
        files: dict[str, bytes] = {
            "job.sh": script.encode(),
            _runtime.MODULE_FILE: _RUNNER_SOURCE,
        }
        index: list[tuple[str, int]] = []
        for number, chunk in enumerate(chunks):
            tasks = [pending.task for pending in chunk]
            files[f"in/{number}.bin"] = batch_file(tasks)
            index.extend((task.task_id, number) for task in tasks)
        files["tasks.json"] = json.dumps(index).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            directory = tarfile.TarInfo("in")
            directory.type = tarfile.DIRTYPE
            directory.mode = 0o700
            tar.addfile(directory)
            for path, data in files.items():
                info = tarfile.TarInfo(path)
                info.size = len(data)
                info.mode = 0o700 if path == "job.sh" else 0o600
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    # -- cancellation ---------------------------------------------------------------

    async def _canceller(self) -> None:
        while not self._closed:
            await self._cancel_wanted.wait()
            self._cancel_wanted = anyio.Event()
            await anyio.sleep(self._batch_window)  # cancels made together: one scancel
            jobs, self._to_cancel = self._to_cancel, []
            jobs = [job for job in jobs if not job.finished]
            if jobs and not self._closed:
                try:
                    await self._cancel_now(jobs)
                except Exception as exc:
                    # Still to kill: try again shortly (aclose sweeps what is left).
                    log.warning("could not cancel %d Slurm task(s) (%s); again", len(jobs), exc)
                    self._to_cancel.extend(jobs)
                    await anyio.sleep(1.0)
                    self._cancel_wanted.set()
                self._poll_wanted.set()

    async def _cancel_now(self, jobs: list[_SlurmJob]) -> None:
        whole: set[str] = set()  # array tasks to scancel
        markers: list[str] = []  # tasks to skip or interrupt inside a running chunk
        for job in jobs:
            others = [s for s in job.chunk if s is not job and not s.finished]
            alone = not job.adopted or self.config.chunk_size == 1
            if alone and all(other.cancel_requested for other in others):
                whole.add(job.native_id)
            else:
                markers.append(f"{job.workdir}/cancel/{job.task_id}")
        if markers:
            await self._run("touch", ["touch", "--", *markers])
            written = time.monotonic()
            for job in jobs:
                job.marked = job.native_id not in whole
                job.marked_at = written
        if whole:
            done = await self._run("scancel", ["scancel", *sorted(whole)])
            if done.returncode != 0:
                log.warning("scancel: %s", done.stderr.decode(errors="replace").strip())

    # -- polling ----------------------------------------------------------------------

    async def _poller(self) -> None:
        interval = self.config.poll_interval
        while not self._closed:
            live = [job for job in self._jobs.values() if not job.finished]
            ending = any(0 in array.open.values() for array in self._arrays.values())
            if not live and not ending and not self._to_sweep:
                await self._poll_wanted.wait()
                self._poll_wanted = anyio.Event()
                interval = self.config.poll_interval
                continue
            with anyio.move_on_after(interval):
                await self._poll_wanted.wait()
                interval = self.config.poll_interval  # new work, or a cancel to confirm
            self._poll_wanted = anyio.Event()
            if self._closed:
                return
            try:
                changed = await self._poll(live)
            except (BackendUnavailable, OSError, TimeoutError) as exc:
                log.warning("polling Slurm failed (%s); trying again", exc)
                changed = False
            except Exception:
                log.exception("polling Slurm failed; trying again")
                changed = False
            if self._freed:
                self._freed = False
                try:
                    await self._rebalance()
                except Exception as exc:
                    log.warning("raising an array's throttle failed (%s); again", exc)
                    self._freed = True
            if self._to_sweep:
                with contextlib.suppress(Exception):
                    await self._sweep()
            if self._finished_dirs:
                with contextlib.suppress(Exception):
                    await self._clean_up()
            if changed:
                interval = self.config.poll_interval
            else:
                interval = min(interval * 1.5, self.config.max_poll_interval)

    async def _poll(self, live: list[_SlurmJob]) -> bool:
        """One round: squeue, then outcomes (and sacct) for what left the queue, and
        the room under ``max_concurrent`` that array tasks leaving it make."""
        ending = [a for a, array in self._arrays.items() if 0 in array.open.values()]
        arrays = sorted({job.array_id for job in live} | set(ending), key=int)  # digits
        asked = time.monotonic()
        queued = await self._squeue(arrays)
        for array_id in ending:  # all its tasks settled: room once it left the queue
            array = self._arrays[array_id]
            for index in [i for i, n in array.open.items() if n <= 0]:
                if f"{array_id}_{index}" not in queued:
                    del array.open[index]
                    self._freed = True
            if array.remaining <= 0 and not array.open:
                del self._arrays[array_id]
        gone: list[_SlurmJob] = []
        marked: list[_SlurmJob] = []  # cancelled inside a running chunk: outcome comes early
        skipped = False  # marked in a chunk that has not started: settled now
        stuck: list[tuple[_SlurmJob, _Queued]] = []  # pending for a reason that may be final
        for job in live:
            seen = queued.get(job.native_id)
            if seen is None:
                gone.append(job)
                continue
            job.missing_since = None  # back in the queue (requeued), or sacct lagged
            if seen.state not in _WAITING_STATES:
                if not job.started:
                    job.mark_started()
            elif seen.state == "PENDING" and not job.cancel_requested:
                if seen.reason == "PartitionNodeLimit" or never_runs(seen.reason):
                    now = time.monotonic()
                    if job.never_since is None:
                        job.never_since = now
                    elif now - job.never_since >= _NEVER_CONFIRM:
                        stuck.append((job, seen))
                else:
                    job.never_since = None
            if job.marked:
                if seen.state in _WAITING_STATES and job.marked_at < asked:
                    # Its marker was written before squeue said the chunk still waits: the
                    # runner, once it starts, skips the task without running it.
                    self._settle(job, Outcome(task_id=job.task_id, status="cancelled"))
                    skipped = True
                else:
                    marked.append(job)
        refused = await self._refuse_never_running(stuck) if stuck else False
        refused |= skipped
        if not gone and not marked:
            return refused
        files = await self._fetch(gone + marked, logs={job.native_id: job for job in gone})
        changed = False
        vanished: list[_SlurmJob] = []
        for job in gone + marked:
            data = files.get(f"{job.workdir}/out/{job.task_id}.bin")
            outcome = None
            if data is not None:
                try:
                    outcome = read_outcome(data)
                except (pickle.UnpicklingError, msgspec.ValidationError, ValueError) as exc:
                    log.warning(
                        "unreadable outcome of task %s in %s: %s", job.task_id, job.workdir, exc
                    )
            if outcome is None and job.native_id not in queued:
                outcome = self._setup_failure(job, files)
            if outcome is not None:
                await self._copy_logs(job, files)
                self._settle(job, outcome)
                changed = True
            elif job.native_id not in queued:
                vanished.append(job)
        if vanished:
            changed |= await self._account(vanished, files)
        return changed

    async def _refuse_never_running(self, stuck: list[tuple[_SlurmJob, _Queued]]) -> bool:
        """Fail and scancel the array tasks whose pending reason can never clear."""
        limits: dict[str, int] = {}
        if any(seen.reason == "PartitionNodeLimit" for _, seen in stuck):
            limits = await self._partition_nodes()
        doomed: list[tuple[_SlurmJob, _Queued]] = []
        for job, seen in stuck:
            most = [limits[name] for name in seen.partition.split(",") if name in limits]
            if never_runs(seen.reason, seen.nodes, max(most) if most else None):
                doomed.append((job, seen))
        if not doomed:
            return False
        ids = sorted({job.native_id for job, _ in doomed})
        done = await self._run("scancel", ["scancel", *ids])
        if done.returncode != 0:
            raise LaunchError(f"scancel failed: {done.stderr.decode(errors='replace').strip()}")
        await self._until_gone(ids, _CLOSE_CONFIRM)
        for job, seen in doomed:
            message = (
                f"Slurm can never start array task {job.native_id}: it is pending with reason "
                f"{seen.reason} (partition {seen.partition or '?'}), which no other job's end "
                "clears; ask for what the partition allows. It was cancelled (scancel)."
            )
            error = ErrorInfo(type_name="LaunchError", message=message, traceback="")
            outcome = Outcome(task_id=job.task_id, status="refused", state="PENDING", error=error)
            self._settle(job, outcome)
        return True

    async def _fetch(self, jobs: list[_SlurmJob], logs: dict[str, _SlurmJob]) -> dict[str, bytes]:
        """The outcome files of ``jobs`` (and stderr logs of array tasks), in one archive."""
        names = [f"{job.workdir}/out/{job.task_id}.bin" for job in jobs]
        for job in jobs:
            names += [job.remote_log(n + 1) for n, local in enumerate(job.logs) if local]
        for job in logs.values():
            names += [f"{job.workdir}/log/{job.index}.err", f"{job.workdir}/log/{job.index}.setup"]
        done = await self._run("fetch", ["sh", "-c", _FETCH], input="\n".join(names).encode())
        files: dict[str, bytes] = {}
        if not done.stdout:
            return files
        with tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:") as tar:
            for member in tar:
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    files["/" + member.name.lstrip("/")] = extracted.read()
        return files

    async def _copy_logs(self, job: _SlurmJob, files: dict[str, bytes]) -> None:
        """Append what the task wrote to the log files the driver asked for."""
        for stream, local in enumerate(job.logs, start=1):
            data = files.get(job.remote_log(stream))
            if local and data is not None:
                try:
                    async with await anyio.open_file(local, "ab") as file:
                        await file.write(data)
                except OSError as exc:
                    log.warning(
                        "cannot write the log of task %s to %s: %s", job.task_id, local, exc
                    )

    async def _account(self, jobs: list[_SlurmJob], files: dict[str, bytes]) -> bool:
        """Settle tasks that left the queue without an outcome, from sacct's states."""
        now = time.monotonic()
        states: dict[str, tuple[str, str]] = {}
        asking = [job for job in jobs if not job.cancel_requested]
        if asking:
            ids = sorted({job.native_id for job in asking})
            done = await self._run(
                "sacct",
                [
                    "sacct",
                    "--parsable2",
                    "-n",
                    "-X",
                    "-j",
                    ",".join(ids),
                    "-o",
                    "JobID,State,ExitCode",
                ],
            )
            for line in done.stdout.decode(errors="replace").splitlines():
                fields = line.strip().split("|")
                if len(fields) >= 3:
                    states[fields[0]] = (fields[1].split()[0] if fields[1] else "", fields[2])
        changed = False
        for job in jobs:
            if job.cancel_requested:
                # Pending array tasks cancelled one by one never reach sacct.
                self._settle(job, Outcome(task_id=job.task_id, status="cancelled"))
                changed = True
                continue
            state, exit_text = states.get(job.native_id, ("", ""))
            outcome = self._outcome_from_state(job, state, exit_text, files)
            if outcome is None:
                if job.missing_since is None:
                    job.missing_since = now
                if now - job.missing_since < _ACCOUNTING_GRACE:
                    continue  # sacct lags squeue
                outcome = self._lost(job, state or "UNKNOWN", None, files, "left the queue")
            self._settle(job, outcome)
            changed = True
        return changed

    def _outcome_from_state(
        self, job: _SlurmJob, state: str, exit_text: str, files: dict[str, bytes]
    ) -> Outcome | None:
        waited = time.monotonic() - (job.missing_since or time.monotonic())
        judged = judge_accounting(state, exit_text, waited)
        if judged is None:
            return None  # not known yet, or still live (requeued)
        status, exit_code = judged
        if status == "lost":
            how = "ended without an outcome" if state == "COMPLETED" else "ended"
            return self._lost(job, state, exit_code, files, how)
        return Outcome(task_id=job.task_id, status=status, state=state, exit_code=exit_code)

    def _setup_failure(self, job: _SlurmJob, files: dict[str, bytes]) -> Outcome | None:
        """A refusal if the job script's setup failed (the runner never started), else None."""
        marker = files.get(f"{job.workdir}/log/{job.index}.setup")
        if marker is None:
            return None
        status, _, command = marker.decode(errors="replace").strip().partition("\t")
        message = (
            f"the setup of Slurm array task {job.native_id} failed, so the task did not run: "
            f"`{command}` exited with status {status}"
        )
        tail = files.get(f"{job.workdir}/log/{job.index}.err", b"")[-_LOG_TAIL:]
        if tail.strip():
            message += ": " + tail.decode(errors="replace").strip()
        error = ErrorInfo(type_name="LaunchError", message=message, traceback="")
        exit_code = int(status) if status.isdigit() else None
        return Outcome(
            task_id=job.task_id, status="refused", state="FAILED", exit_code=exit_code, error=error
        )

    def _lost(
        self,
        job: _SlurmJob,
        state: str,
        exit_code: int | None,
        files: dict[str, bytes],
        how: str,
    ) -> Outcome:
        message = f"Slurm array task {job.native_id} {how} ({state}"
        message += f", exit code {exit_code})" if exit_code is not None else ")"
        tail = files.get(f"{job.workdir}/log/{job.index}.err", b"")[-_LOG_TAIL:]
        if tail.strip():
            message += ": " + tail.decode(errors="replace").strip()
        return Outcome(
            task_id=job.task_id,
            status="lost",
            state=state,
            exit_code=exit_code,
            error=ErrorInfo(type_name="WorkerLost", message=message, traceback=""),
        )

    def _settle(self, job: _SlurmJob, outcome: Outcome) -> None:
        if job.finished:
            return
        job.on_running = None  # ended: the future leaves PENDING for its final state
        job.settle(outcome)
        workdir = job.workdir
        if job.adopted:
            # Re-attached: the directory goes once every task find_refs saw in it was read.
            read = self._read_in_dir[workdir] = self._read_in_dir.get(workdir, 0) + 1
            self._adopted_open[workdir] -= 1
            if read == self._dir_sizes.get(workdir):
                self._finished_dirs.append(workdir)
            elif workdir not in self._dir_sizes and self._adopted_open[workdir] <= 0:
                # Re-attached without find_refs (by stored JobRefs): the other tasks may
                # have been read by the driver that died. Looked at by _sweep.
                self._to_sweep[workdir] = job.array_id
            return
        array = self._arrays.get(job.array_id)
        if array is not None:
            if job.index in array.open:
                array.open[job.index] -= 1
                if array.open[job.index] <= 0 and array.throttle is None:
                    del array.open[job.index]
            array.remaining -= 1
            if array.remaining == 0:
                self._finished_dirs.append(workdir)
                if not array.open:
                    del self._arrays[job.array_id]


class SlurmExecutor(BaseExecutor):
    """Run tasks on a Slurm cluster, from its login node or over SSH.

    Args:
        shell: how to reach the cluster: ``LocalShell()`` (the default) on a
            login node, ``SSHShell(host, ...)`` from anywhere else.
        config: how array tasks are submitted (:class:`SlurmConfig`).
        n_workers: tasks handed to Slurm at once at most (pending or running
            there; default 1000); ``config.max_concurrent`` limits how many run.
        staging_dir: where tasks and outcomes live on the cluster's shared
            file system (default ``$HOME/.asyncexec/slurm``).
        batch_window: seconds submissions are gathered into one array.
        keep_staging: keep the staging subdirectories of finished arrays.
        options: default :class:`TaskOptions` for every task.
        max_pending: queued tasks at most before ``submit`` waits.

    ``time_limit`` becomes the array task's ``--time``, rounded up to whole
    minutes as Slurm counts, and the worker's own limit, which stops the task
    on time (a task stuck in C or ignoring signals is killed a second past it):
    the clock starts when the task starts, not while it waits in Slurm's queue,
    and the future is PENDING while it waits there. A task Slurm can never
    start (more CPUs or time than its partition has...) fails with a
    ``LaunchError`` quoting Slurm's pending reason, and its job is cancelled.

    Resources (``TaskOptions.resources``), per task, over ``config``'s:

    * ``cpus``: the array task's ``--cpus-per-task``, rounded up to whole CPUs.
    * ``gpus``: its ``--gres=gpu:N``. A cluster without them makes ``sbatch``
      refuse: the task fails with :class:`LaunchError` quoting it, and no job
      is left.
    * ``memory_mb``: what the task may add to the runner's address space
      (``RLIMIT_AS``); the job's ``--mem`` is ``config.memory``.

    Tasks that ask for different ``cpus`` or ``gpus`` go in different arrays.
    """

    def __init__(
        self,
        shell: Shell | None = None,
        config: SlurmConfig | None = None,
        n_workers: int | None = None,
        *,
        staging_dir: str | None = None,
        batch_window: float = 0.05,
        keep_staging: bool = False,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        super().__init__(
            1000 if n_workers is None else n_workers, options=options, max_pending=max_pending
        )
        if shell is None:
            shell = LocalShell()
        self.slurm = SlurmLauncher(
            shell,
            config,
            staging_dir=staging_dir,
            batch_window=batch_window,
            keep_staging=keep_staging,
        )

    def _create_launcher(self) -> Launcher:
        return self.slurm
