"""The messages that cross process and machine boundaries.

Every message is a msgspec Struct encoded as a msgpack array (``array_like``),
so envelopes stay small and fast to encode; user callables, arguments and
values travel inside them as cloudpickle bytes. They are plain data that can
never be part of a reference cycle: ``gc=False`` keeps them out of the garbage
collector's lists (thousands of pending tasks each hold one; every collection
would walk them all).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Cancel",
    "ErrorInfo",
    "Hello",
    "JobRef",
    "Message",
    "Outcome",
    "OutcomeStatus",
    "Ready",
    "Resources",
    "Setup",
    "SharedMemory",
    "TaskSpec",
    "Versions",
]


class Resources(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """What one task may use (``TaskOptions.resources``). ``None``: nothing is asked for.

    Each backend honours what it can and refuses the rest: ``submit`` raises
    :class:`~asyncexec.LaunchError` for a request its launcher cannot honour
    (``Launcher.honours_resources``); a request is never dropped silently.

    ========================== ============================ ================= ==========
    backend                    ``cpus``                     ``memory_mb``     ``gpus``
    ========================== ============================ ================= ==========
    ThreadExecutor             refused                      refused           refused
    ProcessExecutor            pinned (affinity)            RLIMIT_AS         refused
    SSHExecutor                pinned (affinity)            RLIMIT_AS         refused
    DockerExecutor, one-shot   the container's NanoCpus     RLIMIT_AS         DeviceRequests
    DockerExecutor, warm       pinned (affinity)            RLIMIT_AS         refused
    SlurmExecutor              ``--cpus-per-task``          RLIMIT_AS         ``--gres=gpu:N``
    ========================== ============================ ================= ==========

    Attributes:
        cpus: CPUs for the task. Pinned (the pool family: process pool, SSH
            hosts, warm containers), the worker runs the task on that many
            whole CPUs of those it may use (``os.sched_setaffinity``; a
            fraction is rounded up), chosen apart from the CPUs of tasks
            running on the same machine's other workers where there are
            enough, and gets all of them back once the task ends. More CPUs
            than the worker may use is refused. A one-shot container gets
            exactly ``cpus`` (fractions too); a Slurm array task
            ``--cpus-per-task`` rounded up.
        memory_mb: megabytes the task may add to its worker's address space
            (``RLIMIT_AS``, lifted when it ends): an allocation beyond it fails
            with ``MemoryError``.
        gpus: GPUs for the task: a one-shot container's device request, a
            Slurm array task's ``--gres=gpu:N``. Where the place has none, the
            task fails with the engine's or ``sbatch``'s refusal
            (:class:`~asyncexec.LaunchError`).
    """

    cpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("cpus", "memory_mb", "gpus"):
            value = getattr(self, name)
            if value is None:
                continue
            # Checked here, not by a worker decoding the task later (msgspec checks
            # types when it decodes, not when a Struct is made).
            integer = name != "cpus"
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                kind = "an integer" if integer else "a number"
                raise TypeError(f"Resources.{name} must be {kind}, got {value!r}")
            if not value > 0 or value == float("inf"):  # (nan is not > 0)
                raise ValueError(f"Resources.{name} must be positive and finite, got {value!r}")


class Versions(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """What must match between a driver and a worker for pickles to be read."""

    python: str
    cloudpickle: str
    asyncexec: str


class TaskSpec(msgspec.Struct, gc=False, tag="task", array_like=True):
    """One task, as a worker receives it.

    ``fn`` and ``args`` are cloudpickle bytes: the callable, and the tuple
    ``(args, kwargs)`` (with ``buffers``, its out-of-band buffers).
    """

    task_id: str
    fn: bytes
    args: bytes
    time_limit: float | None = None
    capture_output: bool = False
    stdout_path: str | None = None
    stderr_path: str | None = None
    env: dict[str, str] = {}
    memory_mb: int | None = None
    attempt: int = 1
    name: str | None = None
    #: Out-of-band buffers of ``args`` (pickle protocol 5): large ``bytes`` arguments.
    buffers: tuple[bytes, ...] = ()
    #: ``args`` and ``buffers`` are empty: their bytes, of these sizes (``args``
    #: first), lie outside the frame, one after the other: in the pool's shared
    #: memory at ``outside_at`` (see :class:`SharedMemory`), or else in a memory
    #: file passed with this frame (a local pool's large arguments).
    outside: list[int] | None = None
    outside_at: int | None = None
    #: ``TaskOptions.resources``: CPUs (a fraction is fine) and GPUs asked for.
    cpus: float | None = None
    gpus: int | None = None
    #: The CPUs a pool chose for a task with ``cpus`` (the worker pins it to them).
    affinity: list[int] | None = None
    #: The Outcome's ``stdout`` and ``stderr`` hold all the task wrote, not their
    #: tails: where the worker cannot see the driver's files (SSH hosts, containers),
    #: the driver appends them to ``log_stdout`` / ``log_stderr`` itself.
    whole_output: bool = False
    #: ``TaskOptions.logs_at_end``: the log files are written when the task ends, and
    #: only for the streams it wrote to.
    logs_at_end: bool = False


class ErrorInfo(msgspec.Struct, gc=False, array_like=True):
    """An exception, described so it survives a missing class on the reader's side."""

    type_name: str
    message: str
    traceback: str
    pickled: bytes | None = None


OutcomeStatus = Literal[
    "ok",  # value holds the pickled result
    "raised",  # user code raised; error describes it
    "unpicklable",  # the task or its result could not be (un)pickled
    "timeout",  # the worker stopped the task at its time limit
    "lost",  # the worker died without an outcome (made by the driver side)
    "cancelled",  # the work was cancelled where it ran
    "refused",  # the worker refused the task (version mismatch...)
]


class Outcome(msgspec.Struct, gc=False, tag="outcome", array_like=True):
    """What became of one task: a value or an error, and where and when it ran."""

    task_id: str
    status: OutcomeStatus
    value: bytes | None = None
    error: ErrorInfo | None = None
    started: float | None = None
    finished: float | None = None
    pid: int | None = None
    host: str | None = None
    exit_code: int | None = None
    state: str | None = None
    stdout: str = ""
    stderr: str = ""


class Hello(msgspec.Struct, gc=False, tag="hello", array_like=True):
    """The first message of a long-lived worker: who it is and what it runs."""

    versions: Versions
    pid: int
    host: str
    #: The CPUs the worker may use (``os.sched_getaffinity``); None where unknown.
    affinity: list[int] | None = None


class Setup(msgspec.Struct, gc=False, tag="setup", array_like=True):
    """The driver's answer to Hello: import path (a local pool's), and the pool's
    ``setup`` hook (run now: :class:`Ready` says how it went) and ``teardown`` hook
    (run when the worker's input ends while it is idle), pickled."""

    sys_path: list[str] = []
    initializer: bytes | None = None
    teardown: bytes | None = None


class Ready(msgspec.Struct, gc=False, tag="ready", array_like=True):
    """The worker is set up (or says why it is not)."""

    error: ErrorInfo | None = None


class Cancel(msgspec.Struct, gc=False, tag="cancel", array_like=True):
    """Drop this task if it has not started: answer it with a ``cancelled`` Outcome."""

    task_id: str


class SharedMemory(msgspec.Struct, gc=False, tag="shm", array_like=True):
    """The pool's shared memory, a file of ``size`` bytes passed with this frame.

    Tasks sent after it may hold their arguments there (``TaskSpec.outside_at``).
    The driver writes a task's region before it sends the task, and frees it
    only once the task has ended: the worker copies it out when it receives it.
    """

    size: int


Message = Hello | Setup | Ready | TaskSpec | Outcome | Cancel | SharedMemory


class JobRef(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """Where a launcher put a task: enough to find, wait for or kill it later.

    JobRefs are plain data that can be persisted, so that a restarted driver can
    re-attach to work still running on a backend that outlives it.
    """

    kind: str
    native_id: str
    host: str | None = None
    workdir: str | None = None
    #: The task's id, where the native id names more (a Slurm array task runs a chunk).
    task_id: str | None = None
