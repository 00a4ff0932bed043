"""The two seams a backend implements: :class:`Launcher` and :class:`Shell`.

The executor keeps all the bookkeeping (futures, concurrency, retries, time
limits, shutdown); a launcher only moves a serialized task to a place, waits
for its outcome, and kills it. How to reach a machine is a :class:`Shell`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from types import TracebackType
from typing import TypeVar

import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream

from ._exceptions import LaunchError
from ._messages import JobRef, Outcome, Resources, TaskSpec

__all__ = ["Capabilities", "Completed", "Launcher", "Shell", "SpawnedProcess"]

_L = TypeVar("_L", bound="Launcher")
_S = TypeVar("_S", bound="Shell")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a launcher can do, as one value: ``launcher.capabilities``.

    Read it from the instance, once it is made: an instance may differ from
    its class (a Slurm launcher that runs tasks in chunks does not isolate
    crashes, a Docker launcher's depend on its mode). The executor reads it
    when it opens the launcher; the conformance suite of
    :mod:`asyncexec.testing` picks its cases by it. The fields are those of
    the :class:`Launcher` attributes of the same names, documented there.
    """

    can_kill: bool = True
    isolates_crashes: bool = True
    reattachable: bool = False
    enforces_time_limit: bool = False
    fast_start: bool = False
    takes_buffers: bool = False
    honours_resources: frozenset[str] = frozenset()
    shares_files: bool = True

    @classmethod
    def from_attributes(cls, launcher: Launcher | type[Launcher]) -> Capabilities:
        """The capabilities a launcher's attributes say (a class gives its defaults)."""
        return cls(**{field.name: getattr(launcher, field.name) for field in _FIELDS})


_FIELDS = dataclasses.fields(Capabilities)


class Launcher(abc.ABC):
    """Moves tasks to where they run. Used as an async context manager by executors.

    Attributes say what a backend can do; :attr:`capabilities` gathers them in
    one value, which the executor and the conformance suite of
    :mod:`asyncexec.testing` read. The class sets the defaults; an instance may
    differ (a Slurm launcher that runs tasks in chunks does not isolate
    crashes), set in its ``__init__``:

    * ``can_kill``: running work can be stopped (time limits, cancellation).
    * ``isolates_crashes``: a task that kills its process fails alone.
    * ``reattachable``: the work outlives the driver, and ``wait`` and
      ``cancel`` accept a JobRef another launcher of the same ``kind`` made
      (re-attach after a crash: ``BaseExecutor.attach``).
    * ``enforces_time_limit``: the launcher stops a task at its time limit
      itself, counted from when the task starts running (a cluster job may
      wait in a queue first), and reports ``status="timeout"``; the executor
      then sets no deadline of its own.

    * ``fast_start``: :meth:`try_start` may take a task at once (the executor
      then runs it with no coroutine of its own).
    * ``takes_buffers``: the launcher moves ``TaskSpec.buffers``, the
      out-of-band buffers of the arguments' pickle: the executor then leaves
      large ``bytes`` arguments out of the pickle (no copy at submit).
    * ``shares_files``: tasks run where this machine's files are, at the same
      paths (this machine, or a shared file system), so the user's own modules
      (files of their project, not installed packages) can be imported there by
      name. Where it is false (containers, Azure, SSH hosts and clusters reached
      over SSH unless their shell says otherwise), the executor sends those
      modules' functions and classes by value with each task, and refuses at
      ``submit`` what cannot travel (see :mod:`asyncexec._travel`).

    ``prefetch`` is how many tasks per worker the launcher takes beyond those
    running (waiting in the worker's queue): an executor with ``n_workers``
    keeps ``n_workers * (1 + prefetch)`` tasks handed to it.

    ``honours_resources`` names the fields of :class:`~asyncexec.Resources`
    (``"cpus"``, ``"memory_mb"``, ``"gpus"``) the launcher gives a task when
    its ``TaskSpec`` asks (``TaskSpec.cpus``, ``.memory_mb``, ``.gpus``). It
    is read from the instance (a Docker launcher's depends on its mode). The
    executor asks :meth:`check_resources` at ``submit`` and refuses with
    :class:`LaunchError` what the launcher cannot honour: a request is never
    dropped silently.
    """

    can_kill: bool = True
    isolates_crashes: bool = True
    enforces_time_limit: bool = False
    reattachable: bool = False
    fast_start: bool = False
    takes_buffers: bool = False
    shares_files: bool = True
    #: What the JobRefs this launcher hands out say in ``kind``.
    kind: str = "local"
    prefetch: int = 0
    honours_resources: frozenset[str] = frozenset()

    @property
    def capabilities(self) -> Capabilities:
        """What this launcher can do, read from its attributes (see the class docstring)."""
        return Capabilities.from_attributes(self)

    async def __aenter__(self: _L) -> _L:
        """Acquire what the launcher needs (background tasks, connections).

        Cancellation: what was acquired is released before the cancellation
        propagates, as for any other error (``BaseLauncher`` closes itself,
        shielded); the launcher is then closed: make a new one to try again.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Call :meth:`aclose`.

        Cancellation: this default does not shield ``aclose``, so a launcher
        whose ``aclose`` awaits must shield it itself or override this (as
        ``BaseLauncher``, the base of asyncexec's launchers, does).
        """
        await self.aclose()

    def check_resources(self, resources: Resources) -> str | None:
        """Why this launcher cannot give one task ``resources``: None if it can.

        The executor calls it at ``submit`` (once per ``TaskOptions`` object,
        not per task) and raises :class:`LaunchError` with the reason. The
        default refuses each field that is asked for and not in
        ``honours_resources``; a launcher that must also check the values (more
        CPUs than its workers may use) extends it. Called once the launcher is
        open.
        """
        for name in Resources.__struct_fields__:
            if getattr(resources, name) is not None and name not in self.honours_resources:
                return (
                    f"{type(self).__name__} does not honour Resources.{name} "
                    f"(it honours {_names(self.honours_resources)}); the Resources "
                    "docstring says which backends do"
                )
        return None

    def can_follow(self, ref: JobRef) -> bool:
        """Whether ``wait`` and ``cancel`` can take ``ref``, made by another launcher."""
        return self.reattachable and ref.kind == self.kind

    @abc.abstractmethod
    async def start(self, task: TaskSpec) -> JobRef:
        """Hand ``task`` to the place it runs; return once it is accepted there.

        ``task`` is the executor's, and is handed over again for a retry: read it,
        never change it (copy with ``msgspec.structs.replace`` to send a variant).

        Raises:
            LaunchError: the backend refused the task.
            BackendUnavailable: the backend could not be reached.

        Cancellation: if cancelled, the task may or may not have been accepted;
        the launcher must not leave it running unseen (kill it or never start it).
        """

    def try_start(self, task: TaskSpec, on_outcome: Callable[[Outcome], None]) -> JobRef | None:
        """Hand ``task`` over at once, if that needs no waiting; else return None.

        An optional fast path, for launchers that can take a task without
        awaiting anything (a pool with an idle worker, or room in a busy one's
        queue): the executor then runs the task with no coroutine of its own.
        Instead of ``wait``, the launcher calls ``on_outcome(outcome)`` once,
        from the event loop, when the task ends; ``cancel`` works as for a task
        given to ``start``. Returning None (the default) means "not now": the
        executor calls ``start`` instead. Must not raise for a task ``start``
        would accept. Called only when ``fast_start`` is true.
        """
        return None

    def on_running(self, ref: JobRef, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the task ``start`` accepted really runs.

        The executor keeps the future PENDING until then. The default calls it at
        once: most backends run a task as soon as they accept it. A launcher whose
        tasks wait in a queue first (a batch system) calls it, from the event loop,
        when the task leaves that queue to run, and never for a task that ended
        without running. Must not raise.
        """
        callback()

    @abc.abstractmethod
    async def wait(self, ref: JobRef) -> Outcome:
        """Wait until the task ends and return its outcome.

        A worker that dies without an outcome yields ``status="lost"`` with its
        exit code. Cancellation: cancelling this only stops waiting; the work
        goes on and ``wait`` may be called again.
        """

    @abc.abstractmethod
    async def cancel(self, ref: JobRef) -> None:
        """Kill the task's work wherever it runs; return once it is stopped.

        Idempotent: cancelling a finished or unknown task does nothing.

        Cancellation: stops the waiting for the work to stop; the kill already
        asked for goes on. The executor always calls it shielded. Each
        launcher says whether calling it again finishes the job.
        """

    async def states(self, refs: Sequence[JobRef]) -> list[str]:
        """Where the work of each of ``refs`` is now, asked of the place in one query
        (not one per ref): ``"queued"`` (waiting in a scheduler's queue),
        ``"running"``, ``"ended"`` (over: its outcome waits to be collected by
        ``wait``, or it was lost) or ``"unknown"`` (not work this launcher can
        follow). This default, for launchers whose work ends with them, says
        ``"unknown"`` of every ref.

        Raises:
            LaunchError: the place could not be asked.

        Cancellation: the query is stopped; it only reads.
        """
        return ["unknown"] * len(refs)

    async def kill(self, refs: Sequence[JobRef]) -> list[str]:
        """Kill the work of ``refs``, started by any driver, without following it; wait
        until the place confirms its end. Returns the native ids still there.

        This default, for launchers whose work ends with them, raises.

        Raises:
            LaunchError: the place refused, or this launcher cannot.

        Cancellation: some may be killed, some not; it is safe to call again.
        """
        raise LaunchError(f"{type(self).__name__} cannot kill work it does not follow")

    async def release(self) -> None:
        """Let go of the place, the work it holds left running; then release the rest.

        For a ``reattachable`` launcher only (``executor.detach()``): the
        executor has let every task go, each with its JobRef, which a later
        driver attaches to. What the work needs to finish and to be collected
        (staging directories, containers, container groups) stays; what this
        process holds (connections, background tasks) goes. This default,
        for a launcher whose work does not outlive it, raises.

        Raises:
            LaunchError: the launcher's work does not outlive the driver.

        Cancellation: as :meth:`aclose`.
        """
        raise LaunchError(
            f"{type(self).__name__}'s work does not outlive this process: it cannot be "
            "detached (its tasks can be cancelled, or waited for)"
        )

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything; no process, container or job of ours is left.

        Idempotent. Called after the executor has settled every task.

        Cancellation: may stop part-way, with workers, containers or jobs
        still to reap; calling it again finishes the release. Leaving ``async
        with`` a ``BaseLauncher`` (the base of asyncexec's launchers) calls it
        shielded.
        """


def _names(fields: frozenset[str]) -> str:
    return ", ".join(sorted(fields)) or "none of them"


class Completed(msgspec.Struct, frozen=True):
    """The result of :meth:`Shell.run`."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes


class SpawnedProcess(abc.ABC):
    """A process started by :meth:`Shell.spawn`, with byte streams."""

    stdin: ByteSendStream
    stdout: ByteReceiveStream
    stderr: ByteReceiveStream

    @property
    def pid(self) -> int | None:
        """The process id on the machine it runs on (its shell's ``host``); None if unknown.

        A remote process's id is known once its command has announced it; the
        default says it is not.
        """
        return None

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the process to exit; return its exit status.

        Cancellation: stops the waiting only; the process goes on, and ``wait``
        may be called again.
        """

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill the process (and what it started, where the shell can).

        Cancellation: the kill is not interrupted (a signal sent at once
        locally; over SSH a shielded ``kill`` command, bounded by the connect
        timeout).
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the streams, kill the process if it still runs, and reap it.

        Cancellation: shielded: it finishes (over SSH, the wait for the channel
        to close is bounded at 10 s) before the cancellation propagates.
        """


class Shell(abc.ABC):
    """How to reach a machine: run commands and spawn processes.

    Kept deliberately small: the same launcher runs on a login node with
    :class:`~asyncexec.shells.LocalShell` or from a laptop over SSH. A shell
    implements ``run`` and ``spawn``; ``host``, ``place``, ``channel_capacity``
    and ``aclose`` have defaults for a shell on this machine with no limit.
    """

    @property
    def host(self) -> str | None:
        """The machine the commands run on: a host name, or None for this machine.

        Launchers put it in the JobRefs they make (``JobRef.host``), so that work
        started through one shell is followed only through a shell to the same host.
        """
        return None

    @property
    def place(self) -> Hashable:
        """What identifies the machine and account the commands run as: equal for two
        shells that reach the same ones (the same host, port and user over SSH).

        Launchers that keep one thing per place (the batch family's poller) key it
        on this. The default: the shell's type and :attr:`host`.
        """
        return (type(self).__name__, self.host)

    @property
    def shares_files(self) -> bool:
        """Whether the commands run where this machine's files are, at the same paths.

        Launchers that run tasks through the shell say so in their own
        ``shares_files`` (see :class:`Launcher`). The default: a shell on this
        machine does (:attr:`host` is None), a shell to another host does not.
        """
        return self.host is None

    @property
    def channel_capacity(self) -> int | None:
        """Commands and processes the shell may have open at once; None if it has no limit.

        A launcher that keeps processes open through the shell (a worker pool
        on SSH hosts, a channel per worker) checks that they fit, one spare
        left: killing a remote command takes a command of its own. An
        :class:`~asyncexec.shells.SSHShell`'s is ``max_connections *
        channels_per_connection``; a :class:`~asyncexec.shells.LocalShell`
        has no limit.
        """
        return None

    @abc.abstractmethod
    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> Completed:
        """Run ``argv`` to completion and collect its output.

        Cancellation: the command is killed.
        """

    @abc.abstractmethod
    async def spawn(self, argv: Sequence[str]) -> SpawnedProcess:
        """Start ``argv`` with piped stdin, stdout and stderr.

        Cancellation: no process is left unseen: what was being started is
        killed, or its channel closed, and nothing is handed back; or, where
        starting cannot be interrupted (``LocalShell`` on trio), the process
        is handed back and the caller sees the cancellation at its next await.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent.

        Cancellation: shielded where there is something to release (SSH: every
        connection is closed, the wait for each bounded at 5 s).
        """

    async def __aenter__(self: _S) -> _S:
        """Return the shell (it connects on first use).

        Cancellation: never waits, so never interrupted.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Call :meth:`aclose`.

        Cancellation: as :meth:`aclose` (shielded where there is something to
        release).
        """
        await self.aclose()
