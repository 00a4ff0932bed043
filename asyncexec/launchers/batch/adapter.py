"""The seam of the batch family: what a batch system answers, and a base for those
reached through a :class:`~asyncexec.abc.Shell`.

A :class:`BatchAdapter` answers four questions for :class:`BatchLauncher`:

* **submit a chunk** — :meth:`~BatchAdapter.submit` an array (its archive
  staged and the job submitted in one round trip), written by
  :meth:`~BatchAdapter.script`;
* **ask the state of many** — :meth:`~BatchAdapter.states` of every array
  task still queued, in one call;
* **cancel some** — :meth:`~BatchAdapter.cancel`;
* **move bytes** — :meth:`~BatchAdapter.fetch` outcome files back (one
  archive), :meth:`~BatchAdapter.mark` cancel markers, :meth:`~BatchAdapter.remove`
  staging directories, and :meth:`~BatchAdapter.find` / :meth:`~BatchAdapter.listing`
  what is staged (re-attach).

Optional answers have defaults: a scheduler's accounting of ended tasks
(:meth:`~BatchAdapter.accounting`), raising an array's throttle, and pending
reasons that never clear. Everything else (chunking, the poller, per-task
cancel, re-attach, ``max_concurrent``) is the launcher's.
"""

from __future__ import annotations

import abc
import logging
import shlex
from collections.abc import Awaitable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio

from ..._exceptions import BackendUnavailable, LaunchError
from ..._messages import OutcomeStatus
from ...abc import Completed, Shell
from .files import untar

if TYPE_CHECKING:
    from .jobs import BatchJob

__all__ = ["BatchAdapter", "Opened", "Queued", "ShellAdapter", "Verdict"]

log = logging.getLogger("asyncexec")

#: Seconds a scheduler command may take before it counts as failed (a dead link).
COMMAND_TIMEOUT = 120.0
#: Seconds submitting one array may take (its archive travels with it).
SUBMIT_TIMEOUT = 600.0


class Run(Protocol):
    """How an adapter runs a command: the launcher's, which counts it (and budgets
    the scheduler's) and fails it after ``timeout``."""

    def __call__(
        self, name: str, argv: list[str], *, input: bytes | None = ..., timeout: float = ...
    ) -> Awaitable[Completed]: ...


class Queued(NamedTuple):
    """What the scheduler says of an array task still in its queue."""

    state: str  #: the scheduler's word (``PENDING``, ``RUNNING``...)
    waiting: bool  #: it has not started yet (its tasks' futures stay PENDING)
    reason: str  #: why it waits
    nodes: int | None  #: nodes it asks for
    partition: str  #: where it waits (comma-separated)


class Verdict(NamedTuple):
    """What an adapter itself saw of an array task that ended without an outcome."""

    status: str  #: ``"refused"`` (it never ran: a LaunchError) or ``"lost"`` (a WorkerLost)
    state: str  #: the system's word for it (``FAILED``, ``TERMINATED``...)
    exit_code: int | None
    message: str  #: what the system said (its events, the end of the task's log)


class Opened(NamedTuple):
    """What an adapter learns of its place on opening."""

    home: str  #: the user's home directory there (the default staging directory's root)
    max_array_size: int  #: array tasks per array at most
    place: Hashable  #: what identifies the place: launchers with equal ones share a poller


class BatchAdapter(abc.ABC):
    """A batch system, as the four questions :class:`BatchLauncher` asks it."""

    #: ``JobRef.kind`` of its tasks.
    kind: str = "batch"
    #: The system's name in messages ("Slurm").
    name: str = "the batch system"
    #: The name of its cancel, in messages ("scancel").
    cancel_name: str = "cancel"
    #: Commands that load the scheduler: counted against the place's budget.
    scheduler_commands: frozenset[str] = frozenset()

    @property
    @abc.abstractmethod
    def host(self) -> str | None:
        """Where the work runs, as ``JobRef.host`` says it (None: this machine)."""

    @abc.abstractmethod
    async def open(self) -> Opened:
        """Read what the launcher needs of the place.

        Cancellation: the command is stopped; nothing changed.
        """

    @abc.abstractmethod
    def script(
        self,
        workdir: str,
        chunks: int,
        throttle: int | None,
        *,
        time_seconds: int | None,
        cpus: float | None,
        gpus: int | None,
    ) -> str:
        """The job script of an array of ``chunks`` array tasks staged in ``workdir``."""

    @abc.abstractmethod
    async def submit(self, workdir: str, archive: bytes, tasks: int) -> str:
        """Stage ``archive`` in ``workdir`` and submit its job script: the array's id.

        Raises:
            LaunchError: refused; nothing is left staged.

        Cancellation: the submission may or may not have happened; running it
        again with the same ``workdir`` answers the same id.
        """

    @abc.abstractmethod
    async def states(self, ids: Sequence[str]) -> dict[str, Queued]:
        """Every array task still queued of ``ids`` (arrays or array tasks), by its id.

        Cancellation: the query is stopped; it only reads.
        """

    @abc.abstractmethod
    async def cancel(self, ids: Sequence[str]) -> str | None:
        """Kill these array tasks: None, or what the scheduler said when it refused.

        Cancellation: some may be killed, some not; it is safe to call again.
        """

    @abc.abstractmethod
    async def fetch(self, paths: Sequence[str]) -> dict[str, bytes]:
        """The files of ``paths`` that exist, by path: one round trip.

        Cancellation: stopped; it only reads.
        """

    @abc.abstractmethod
    async def mark(self, paths: Sequence[str]) -> None:
        """Create these empty files (a task's cancel marker).

        Cancellation: some may be created; it is safe to call again.
        """

    @abc.abstractmethod
    async def remove(self, directories: Sequence[str]) -> None:
        """Remove these staging directories.

        Cancellation: some may be left; it is safe to call again.
        """

    @abc.abstractmethod
    async def find(self, staging_dir: str) -> list[tuple[str, str, str]]:
        """``(name, job id, tasks.json)`` of every array staged under ``staging_dir``.

        Cancellation: stopped; it only reads.
        """

    @abc.abstractmethod
    async def listing(self, workdir: str) -> tuple[str, set[str]]:
        """``tasks.json`` of a staged array and the names of its outcome files.

        Cancellation: stopped; it only reads.
        """

    async def execute(self, argv: list[str], *, input: bytes | None = None) -> Completed:
        """Run one of the system's commands (what :class:`Run` ends in).

        An adapter that talks to its system otherwise (HTTP) runs none.

        Cancellation: the command is killed.
        """
        raise NotImplementedError(f"{type(self).__name__} runs no commands")

    async def serve(self) -> None:  # noqa: B027 - optional hook
        """What the adapter does in the background while the launcher is open (creating
        what the system cannot queue itself, say); the launcher cancels it on closing.

        Cancellation: stops; whatever it started is for :meth:`aclose` to end.
        """

    async def release(self, ids: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """The launcher lets these array tasks go, running (``executor.detach()``): make
        sure they will run to their end with no driver, and that :meth:`aclose` leaves
        them. Called before the background (:meth:`serve`) stops.

        Cancellation: stops; what is not handed over yet is lost (a later driver
        that attaches finds those tasks lost).
        """

    def knows(self, native_id: str) -> bool:
        """Whether :meth:`states` can tell of this array task without following it (a
        scheduler's queue lists every job; an adapter that keeps its own view of its
        arrays knows only those it follows)."""
        return True

    def adopt(self, job: BatchJob) -> None:  # noqa: B027 - optional hook
        """Follow ``job``, re-attached: an array task another launcher submitted."""

    def written(self, job: BatchJob) -> bool:
        """Whether the task's outcome file is known to exist already, though its array
        task is still in the queue (the launcher then reads it at once)."""
        return False

    def verdict(self, native_id: str) -> Verdict | None:
        """What the adapter saw of an array task that left the queue without an outcome
        (read before the accounting), or None."""
        return None

    async def accounting(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``(state, exit code text)`` of array tasks that left the queue, by id.

        Without accounting, a task that left without an outcome is lost once
        the launcher's grace has passed.

        Cancellation: stopped; it only reads.
        """
        return {}

    def judge(
        self, state: str, exit_text: str, waited: float
    ) -> tuple[OutcomeStatus, int | None] | None:
        """What the accounting of a task gone ``waited`` seconds says, or None (not yet)."""
        return None

    async def set_throttle(self, array_id: str, throttle: int) -> bool:
        """Let ``throttle`` of an array's tasks run at once: whether it took.

        Cancellation: it may or may not have taken; the bound holds either way.
        """
        return False

    def may_never_run(self, seen: Queued) -> bool:
        """Whether ``seen``'s pending reason looks final (confirmed by :meth:`hopeless`)."""
        return False

    async def hopeless(
        self, stuck: Sequence[tuple[BatchJob, Queued]]
    ) -> list[tuple[BatchJob, Queued]]:
        """Of the array tasks whose reason looked final for a while, those that can
        never start (refused and cancelled by the launcher).

        Cancellation: stopped; it only reads.
        """
        return []

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the connection.

        Cancellation: as the shell's (shielded where there is something to release).
        """


# The one command of a submission: unpack the archive (the job script, the
# tasks), submit, and keep the job id beside them. umask 077 keeps everything,
# the scheduler's logs included, private to the user. Idempotent: run again
# after a dropped connection, it answers the job id it gave. Refused (the
# submission, or the unpacking before it), it removes what it staged and exits
# with that status: a refusal leaves nothing behind (no job ran from it).
_SUBMIT = (
    'umask 077 && mkdir -p "$1" && cd "$1" && '
    "if [ -s job_id ]; then cat >/dev/null; cat job_id; exit 0; fi && "
    "if tar -x -f - && mkdir -p out cancel log && {submit} > job_id.tmp; "
    'then mv job_id.tmp job_id && cat job_id; else rc=$?; cd / && rm -rf -- "$1"; exit $rc; fi'
)
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


class ShellAdapter(BatchAdapter):
    """A batch system whose commands run through a :class:`~asyncexec.abc.Shell`, on a
    shared file system: bytes move as tar archives over the shell's pipes.

    Args:
        shell: how to reach a machine where the system's commands run.
        run: how to run a command through it (the launcher's: counted, budgeted).
    """

    #: The command that submits ``job.sh`` in the staging directory and prints the id.
    submit_command: tuple[str, ...] = ()

    def __init__(self, shell: Shell, run: Run) -> None:
        self.shell = shell
        self._run = run

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shell!r})"

    @property
    def host(self) -> str | None:
        return self.shell.host

    def place_of(self, cluster: str) -> Hashable:
        """What identifies a place: the system, where the shell logs in
        (:attr:`~asyncexec.abc.Shell.place`: host, and port and user over SSH)
        and ``cluster``, the name the system gives itself."""
        return (self.kind, self.shell.place, cluster)

    async def submit(self, workdir: str, archive: bytes, tasks: int) -> str:
        script = _SUBMIT.format(submit=shlex.join(self.submit_command))
        command = ["sh", "-c", script, "asyncexec-submit", workdir]
        name = self.submit_command[0]
        done: Any = None
        for attempt in range(3):
            try:
                done = await self._run(name, command, input=archive, timeout=SUBMIT_TIMEOUT)
                break
            except (BackendUnavailable, TimeoutError) as exc:
                # Safe to run again: a second run answers the job id of the first.
                if attempt == 2:
                    raise LaunchError(f"cannot submit to {self.name}: {exc}") from exc
                log.warning("submitting to %s failed (%s); trying again", self.name, exc)
                await anyio.sleep(1 + 2 * attempt)
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()
            raise LaunchError(f"{name} refused {tasks} task(s): {detail}")
        array_id: str = done.stdout.decode().strip().split(";")[0]
        if not array_id.isdigit():
            raise LaunchError(f"{name} answered {done.stdout!r}, not a job id")
        return array_id

    async def execute(self, argv: list[str], *, input: bytes | None = None) -> Completed:
        return await self.shell.run(argv, input=input)

    async def fetch(self, paths: Sequence[str]) -> dict[str, bytes]:
        done = await self._run("fetch", ["sh", "-c", _FETCH], input="\n".join(paths).encode())
        return untar(done.stdout)

    async def mark(self, paths: Sequence[str]) -> None:
        await self._run("touch", ["touch", "--", *paths])

    async def remove(self, directories: Sequence[str]) -> None:
        await self._run("rm", ["rm", "-rf", "--", *directories])

    async def find(self, staging_dir: str) -> list[tuple[str, str, str]]:
        done = await self._run("find", ["sh", "-c", _FIND, "asyncexec-find", staging_dir])
        found = []
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = line.split("\t", 2)
            if len(fields) != 3:
                log.warning("skipping an unreadable staging directory entry: %r", line)
                continue
            found.append((fields[0], fields[1], fields[2]))
        return found

    async def listing(self, workdir: str) -> tuple[str, set[str]]:
        done = await self._run("find", ["sh", "-c", _LIST, "asyncexec-list", workdir])
        listing, _, names = done.stdout.decode(errors="replace").partition("\n")
        return listing, set(names.split())

    async def aclose(self) -> None:
        await self.shell.aclose()
