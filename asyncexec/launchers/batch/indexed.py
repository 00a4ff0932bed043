"""Index-addressed sweeps on a batch launcher: one payload per array, one outcome file
per array task, appended.

The chunk-and-poll path stages an input file per array task and writes an outcome
file per task: right for tasks submitted one by one, a flood of small files on a
shared file system for a sweep of 100,000 runs. An :class:`IndexedSweep` stages
instead, per array:

* ``payload.bin``: the function ONCE, and the runs as sections, one per array
  task (its runs' keys, then their pickled arguments), found through the
  payload's header (:func:`asyncexec._runtime.read_payload`);
* ``job.sh`` and the one-file runtime.

Array task ``N`` runs its section's runs in order with
:func:`asyncexec._runtime.main_indexed` and APPENDS each run's outcome to
``out/N.rec`` as a framed record (magic, length, CRC-32s, pickled builtins). The
writes are fsync'd by the runtime at most :data:`~asyncexec._runtime.SYNC_PERIOD`
seconds after they are made, and at the array task's end: a node that fails
loses the records of its last second at most (their runs run again). The
scheduler's log of the array task is ``log/N.log`` (appended to by every attempt):
two files per array task, three if its setup fails (``log/N.setup``).

The driver follows every array of the sweep with ONE scheduler query per round
(the adapter's ``states``) and ONE command that reads what was appended to the
files of the array tasks running or ended since the last round, from the offset
it had read to (:meth:`IndexedAdapter.read`). An array task that left the queue
with runs unrecorded (``NODE_FAIL``, cancelled, killed, a crash) is submitted
again, alone or with the others of its array, in the same directory: the new
attempt skips the runs its file records, so only the missing runs run again. A
run during which :data:`~asyncexec._runtime.LOST_AFTER` attempts ended (a run
that crashes its interpreter, say) is recorded ``lost`` (``WorkerLost``) instead;
an array task that ends :data:`IDLE_ATTEMPTS` times without starting (its setup
fails) fails its runs.

Arrays hold at most the place's ``MaxArraySize`` array tasks: a sweep with
more is split in arrays of that size, each with its own payload.

Each run's :class:`~asyncexec.JobRef` names its array task: ``kind`` the
adapter's (``"slurm"``), ``native_id`` ``"<array id>_<index>"``, ``host`` the
adapter's, ``workdir`` the array's directory and ``task_id``
``"indexed:<key>"`` (the prefix says the run is one of an indexed array: its
outcome is in ``out/<index>.rec``, not a file of its own). A later driver follows
such refs with :meth:`IndexedSweep.follow`.

The seam is the batch family's: an adapter offers indexed arrays through an
:class:`IndexedAdapter` (the job script and the submission command; a shell
adapter's reads and submission are :class:`ShellIndexed`'s), found in the
``indexed`` module of the adapter's package (:func:`indexed_adapter`).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import math
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ... import _runtime
from ..._codec import dumps, loads, versions
from ..._exceptions import (
    BackendUnavailable,
    LaunchError,
    RemoteError,
    SerializationError,
    TaskCancelled,
    TaskSerializationError,
    TaskTimeout,
    WorkerLost,
    outcome_error,
)
from ..._hooks import Hooks
from ..._messages import ErrorInfo, JobRef, Outcome
from ..._options import TaskOptions
from ..._pickle_cache import fast_dumps, pickle_function
from ...abc import Completed
from .adapter import COMMAND_TIMEOUT, SUBMIT_TIMEOUT, BatchAdapter, Queued, Run
from .files import _RUNNER_SOURCE, tar

if TYPE_CHECKING:
    from .launcher import BatchLauncher

__all__ = [
    "IndexedAdapter",
    "IndexedBatch",
    "IndexedResult",
    "IndexedSweep",
    "ShellIndexed",
    "build_payload",
    "indexed_adapter",
    "is_indexed_ref",
    "offers_indexed",
]

log = logging.getLogger("asyncexec")

#: ``JobRef.task_id`` of an indexed run: this prefix, then the run's key.
REF_PREFIX = "indexed:"
#: Array tasks of a sweep at most when the caller does not say how many runs each runs
#: (4 * ``max_concurrent`` if that is smaller)...
DEFAULT_TASKS = 256
#: ...and runs per array task at least: an array task's start (the scheduler's, the
#: interpreter's) costs about what a hundred trivial runs do on the test cluster.
MIN_RUNS_PER_TASK = 50
#: Attempts of an array task that end without its runtime starting (no ``begin``
#: record: its setup failed, it was cancelled while pending) before its runs fail.
IDLE_ATTEMPTS = 3
#: Seconds an array task that left the queue is read again before its missing runs
#: count as lost (records the file system shows late; the accounting's lag).
GONE_GRACE = 2.0
#: Seconds of that grace for one the scheduler calls COMPLETED (its runtime ended
#: well: the records must be there, the shared file system may show them late).
COMPLETED_GRACE = 30.0
#: Run keys are file-system-safe and short: the experiment's fingerprints.
_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.")


def is_indexed_ref(ref: JobRef) -> bool:
    """Whether ``ref`` is a run of an indexed array (its outcome is a record)."""
    return bool(ref.task_id and ref.task_id.startswith(REF_PREFIX))


# -- the seam --------------------------------------------------------------------------


class IndexedAdapter(abc.ABC):
    """What a batch system offers for indexed arrays, beside its :class:`BatchAdapter`
    (whose ``states``, ``cancel``, ``accounting``, ``fetch`` and ``remove`` serve
    them too).

    Args:
        adapter: the system's adapter.
        run: how to run a command (counted, budgeted; see :class:`IndexedSweep`).
    """

    def __init__(self, adapter: BatchAdapter, run: Run) -> None:
        self.adapter = adapter
        self._run = run

    @abc.abstractmethod
    def script(
        self,
        workdir: str,
        *,
        time_seconds: int | None,
        cpus: float | None,
        gpus: int | None,
    ) -> str:
        """The job script of an indexed array staged in ``workdir``: it runs
        ``python -c BOOT_INDEXED WORKDIR INDEX`` for its array task's index, its
        output appended to ``WORKDIR/log/INDEX.log`` (see :func:`indexed_job_script`)."""

    @abc.abstractmethod
    async def submit(self, workdir: str, archive: bytes | None, indices: str, token: str) -> str:
        """Stage ``archive`` in ``workdir`` (None: staged already) and submit the array
        tasks ``indices`` (``"0-999"``, ``"3,17"``, ``"0-99%10"``) of its job script:
        the array's id.

        Raises:
            LaunchError: refused; a first submission leaves nothing staged.

        Cancellation: it may or may not have happened; the same ``token`` again
        answers the same id without submitting twice.
        """

    @abc.abstractmethod
    async def read(self, offsets: Mapping[str, int]) -> dict[str, bytes]:
        """What was appended to each of these files past its offset, by path (the
        files that exist and grew): one round trip.

        Cancellation: stopped; it only reads.
        """


def indexed_adapter(adapter: BatchAdapter, run: Run) -> IndexedAdapter | None:
    """The :class:`IndexedAdapter` of ``adapter``, or None if its system has none.

    An adapter's package offers one as ``indexed_adapter(adapter, run)`` in its
    ``indexed`` module (``asyncexec.launchers.slurm.indexed``).
    """
    package = type(adapter).__module__.rpartition(".")[0]
    try:
        module = importlib.import_module(f"{package}.indexed")
    except ImportError:
        return None
    make = getattr(module, "indexed_adapter", None)
    if make is None or make is indexed_adapter:
        return None
    made = make(adapter, run)
    return made if isinstance(made, IndexedAdapter) else None


def offers_indexed(adapter: BatchAdapter) -> bool:
    """Whether ``adapter``'s system offers indexed arrays."""

    async def never(name: str, argv: list[str], **kwargs: Any) -> Completed:
        raise AssertionError("only asked whether it offers them")

    return indexed_adapter(adapter, never) is not None


def indexed_job_script(
    directives: Sequence[str], prologue: Sequence[str], python: str, workdir: str, index: str
) -> str:
    """An indexed array task's bash script: ``directives``, ``prologue`` under an
    ``ERR`` trap (a failing line is written to ``log/<index>.setup``), then the
    runtime on ``workdir`` for the array task ``index`` (a shell expression)."""
    setup_failed = shlex.quote(f"{workdir}/log/") + f'"{index}.setup"'
    on_error = f'rc=$?; printf "%s\\t%s\\n" "$rc" "$BASH_COMMAND" > {setup_failed}; exit $rc'
    runner = shlex.join([python, "-c", _runtime.BOOT_INDEXED, workdir])
    return "\n".join(
        [
            "#!/bin/bash",
            *directives,
            f"trap {shlex.quote(on_error)} ERR",
            "umask 077",
            *prologue,
            "trap - ERR",
            f'exec {runner} "{index}"',
            "",
        ]
    )


# Stage (once) and submit, in one round trip; $1 the directory, $2 a token that makes
# it idempotent (run again, it answers the id it gave), the rest the submit command.
# A first submission refused leaves nothing behind.
_SUBMIT = r"""
umask 077; w=$1; tok=$2; shift 2
mkdir -p "$w" && cd "$w" || exit 1
if [ -f job_ids ]; then
    id=$(sed -n "s/^$tok //p" job_ids)
    if [ -n "$id" ]; then cat >/dev/null; echo "$id"; exit 0; fi
fi
first=0
if [ -f payload.bin ]; then cat >/dev/null
elif tar -x -f - && mkdir -p out log; then first=1
else rc=$?; cd / && rm -rf -- "$w"; exit $rc
fi
if "$@" > job_id.tmp; then
    id=$(cut -d';' -f1 job_id.tmp); rm -f job_id.tmp
    echo "$tok $id" >> job_ids; echo "$id"
else
    rc=$?; [ "$first" = 1 ] && cd / && rm -rf -- "$w"; exit $rc
fi
"""
# What grew: stdin "OFFSET PATH" lines, $@ the directories; stdout per grown file
# "OFFSET LENGTH PATH\n" then those bytes (a file only grows: LENGTH bytes are there).
_READ = r"""
declare -A off
while read -r o p; do off[$p]=$o; done
for d in "$@"; do find "$d/out" -maxdepth 1 -name '*.rec' -printf '%s %p\n' 2>/dev/null; done |
while read -r s p; do
    o=${off[$p]-}
    [ -n "$o" ] && [ "$s" -gt "$o" ] || continue
    n=$((s - o))
    printf '%s %s %s\n' "$o" "$n" "$p"
    dd if="$p" iflag=skip_bytes,count_bytes skip="$o" count="$n" status=none
done
true
"""


class ShellIndexed(IndexedAdapter):
    """Indexed arrays of a system whose commands run through a shell, on a shared file
    system (:class:`~asyncexec.launchers.batch.ShellAdapter`): bash, GNU ``find``
    and ``dd`` on the login node."""

    @abc.abstractmethod
    def submit_command(self, indices: str) -> list[str]:
        """The command that submits ``job.sh`` (in the array's directory) for the array
        tasks ``indices`` and prints the array's id."""

    async def submit(self, workdir: str, archive: bytes | None, indices: str, token: str) -> str:
        command = ["sh", "-c", _SUBMIT, "asyncexec-submit", workdir, token]
        command += self.submit_command(indices)
        name = self.submit_command("0")[0]
        done: Completed | None = None
        for attempt in range(3):
            try:
                done = await self._run(name, command, input=archive or b"", timeout=SUBMIT_TIMEOUT)
                break
            except (BackendUnavailable, TimeoutError) as exc:
                # Safe to run again: the same token answers the id of the first run.
                if attempt == 2:
                    raise LaunchError(f"cannot submit to {self.adapter.name}: {exc}") from exc
                log.warning("submitting to %s failed (%s); again", self.adapter.name, exc)
                await anyio.sleep(1 + 2 * attempt)
        assert done is not None
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()
            raise LaunchError(f"{name} refused the array tasks {indices} of {workdir}: {detail}")
        array_id = done.stdout.decode().strip().split(";")[0]
        if not array_id.isdigit():
            raise LaunchError(f"{name} answered {done.stdout!r}, not a job id")
        return array_id

    async def read(self, offsets: Mapping[str, int]) -> dict[str, bytes]:
        if not offsets:
            return {}
        directories = sorted({path.rsplit("/out/", 1)[0] for path in offsets})
        lines = "".join(f"{offset} {path}\n" for path, offset in offsets.items())
        done = await self._run(
            "read", ["bash", "-c", _READ, "asyncexec-read", *directories], input=lines.encode()
        )
        if done.returncode != 0:
            raise LaunchError(
                f"reading the outcome files failed: {done.stderr.decode(errors='replace')}"
            )
        return _parse_reads(done.stdout, offsets)


def _parse_reads(data: bytes, offsets: Mapping[str, int]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    at = 0
    while at < len(data):
        newline = data.index(b"\n", at)
        offset_text, length_text, path = data[at:newline].decode().split(" ", 2)
        length = int(length_text)
        start = newline + 1
        if int(offset_text) == offsets.get(path):
            found[path] = data[start : start + length]
        at = start + length
    return found


# -- what the driver keeps --------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Slot:
    """An array task of an indexed array: its runs and what was read of its file."""

    part: _Part
    index: int
    keys: list[str]
    pending: set[str]
    array_id: str
    offset: int = 0
    begins: int = 0  # ``begin`` records read: attempts that started
    begins_at_submit: int = 0
    idle: int = 0  # attempts in a row that never started
    attempts: int = 1
    queued: bool = True  # listed by the scheduler at the last round
    gone_at: float | None = None  # when it left the queue with runs unrecorded
    state: str = ""  # what the accounting said of its last attempt

    @property
    def native_id(self) -> str:
        return f"{self.array_id}_{self.index}"

    @property
    def path(self) -> str:
        return f"{self.part.workdir}/out/{self.index}.rec"


@dataclasses.dataclass(eq=False)
class _Part:
    """An indexed array: its directory, its array tasks, the ids it was submitted as."""

    workdir: str
    slots: list[_Slot] = dataclasses.field(default_factory=list)
    array_ids: set[str] = dataclasses.field(default_factory=set)
    submissions: int = 0
    removed: bool = False


class IndexedResult(msgspec.Struct, kw_only=True):
    """What became of one run of an indexed sweep."""

    key: str
    status: str  #: ``"done"``, ``"failed"`` or ``"cancelled"``
    value: Any = None
    error: BaseException | None = None
    started: float | None = None
    finished: float | None = None
    host: str | None = None
    worker: str | None = None
    ref: JobRef | None = None
    stdout: str = ""
    stderr: str = ""
    attempts: int = 1


class IndexedBatch(msgspec.Struct):
    """What one round found: runs that ended, and runs whose array task changed (submitted
    again: their new refs)."""

    results: list[IndexedResult]
    refs: dict[str, JobRef]


# -- the sweep -------------------------------------------------------------------------


class IndexedSweep:
    """Runs of one function as indexed arrays on an open :class:`BatchLauncher`.

    Args:
        launcher: an open batch launcher (its executor entered), whose adapter
            offers indexed arrays (:func:`indexed_adapter`; else ``LaunchError``).
        options: the runs' options: ``time_limit`` (each run's, stopped by the
            runtime's alarm; the array task's time is the sum over its runs plus
            30 s), ``env``, ``resources`` (``cpus``/``gpus`` per array task,
            ``memory_mb`` per run), ``retries``, ``retry_on`` and the backoff
            (a run that raises or times out is tried again in its array task, as
            ``retry_on`` says; a run during which its array task ended, more
            than :data:`~asyncexec._runtime.LOST_AFTER` times if ``retries`` asks
            for more). The tails of what each run prints always come back with
            it (``stdout``/``stderr``); ``log_stdout``/``log_stderr`` are not
            written on the cluster (a file per run is what this path avoids).
        runs_per_task: runs per array task (default: the runs spread over
            :data:`DEFAULT_TASKS` array tasks, or ``4 * max_concurrent``, with
            :data:`MIN_RUNS_PER_TASK` runs each at least).
        max_array_size: array tasks per array at most (the place's cap anyway).

    Raises:
        LaunchError: the launcher is not open, or its system has no indexed arrays.
    """

    def __init__(
        self,
        launcher: BatchLauncher,
        *,
        options: TaskOptions | None = None,
        runs_per_task: int | None = None,
        max_array_size: int | None = None,
    ) -> None:
        if launcher.poller is None or launcher.staging_dir is None:
            raise LaunchError(f"the {launcher.adapter.name} launcher is not open")
        if runs_per_task is not None and (
            isinstance(runs_per_task, bool)
            or not isinstance(runs_per_task, int)
            or runs_per_task < 1
        ):
            raise ValueError(f"runs_per_task must be a positive integer, got {runs_per_task!r}")
        made = indexed_adapter(launcher.adapter, self._command)
        if made is None:
            raise LaunchError(f"{launcher.adapter.name} offers no indexed arrays")
        self.launcher = launcher
        self.indexed = made
        self.options = options or TaskOptions()
        self.runs_per_task = runs_per_task
        cap = launcher.max_array_size or 1001
        configured = max_array_size or getattr(launcher, "_max_array_size", None)
        self.max_array_size = min(cap, configured) if configured else cap
        self.poll_interval = launcher.poll_interval
        self.max_poll_interval = launcher.max_poll_interval
        #: The launcher's name where it does not share this machine's files: the
        #: user's own modules travel by value (asyncexec._travel).
        self._travel_to = None if launcher.capabilities.shares_files else type(launcher).__name__
        self._parts: list[_Part] = []
        self._slots: dict[str, _Slot] = {}  # by path of its file
        self._interval = self.poll_interval
        self._wanted = anyio.Event()
        #: When the first array was submitted (time.monotonic()), for the benchmarks.
        self.first_submit: float | None = None

    @property
    def done(self) -> bool:
        """Whether every run followed has its result."""
        return not any(slot.pending for slot in self._slots.values())

    @property
    def pending(self) -> int:
        """Runs followed that have no result yet."""
        return sum(len(slot.pending) for slot in self._slots.values())

    async def _command(
        self,
        name: str,
        argv: list[str],
        *,
        input: bytes | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Completed:
        """Run one of the system's commands, counted in the launcher's ``calls``; the
        scheduler's commands wait for the place's budget."""
        launcher = self.launcher
        poller = launcher.poller
        if name in launcher.adapter.scheduler_commands and poller is not None:
            await poller.spend()
        launcher.calls[name] += 1
        with anyio.fail_after(timeout):
            return await launcher.adapter.execute(argv, input=input)

    # -- submitting -------------------------------------------------------------------

    async def start(
        self, fn: Callable[..., Any], runs: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]
    ) -> dict[str, JobRef]:
        """Submit ``fn(*args, **kwargs)`` for each ``(key, args, kwargs)`` of ``runs``,
        as few arrays as the place allows: each run's JobRef, by key.

        Raises:
            SerializationError: ``fn`` or some arguments cannot be pickled.
            LaunchError: the scheduler refused an array (the arrays submitted
                before it are followed).

        Cancellation: an array being submitted may or may not be; those submitted
        are followed (cancel them with :meth:`cancel`).
        """
        if not runs:
            return {}
        for key, _, _ in runs:
            if not key or not set(key) <= _KEY_CHARS or key.startswith("."):
                raise ValueError(f"a run's key must be a short file-system-safe word: {key!r}")
        per_task = self.runs_per_task or max(
            min(MIN_RUNS_PER_TASK, len(runs)), math.ceil(len(runs) / self._tasks_wanted())
        )
        fn_bytes = pickle_function(fn)
        if self._travel_to is not None:  # the user's own modules travel by value
            from ... import _travel

            fn_bytes = _travel.pickle_function(fn, fn_bytes, self._travel_to)
        chunks = [runs[i : i + per_task] for i in range(0, len(runs), per_task)]
        refs: dict[str, JobRef] = {}
        parts = [
            chunks[i : i + self.max_array_size] for i in range(0, len(chunks), self.max_array_size)
        ]
        for part_chunks in parts:
            refs.update(await self._submit_part(fn_bytes, part_chunks, per_task, len(parts)))
        return refs

    def _tasks_wanted(self) -> int:
        bound = self.launcher.max_concurrent
        return min(DEFAULT_TASKS, 4 * bound) if bound else DEFAULT_TASKS

    async def _submit_part(
        self,
        fn_bytes: bytes,
        chunks: list[Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]],
        per_task: int,
        parts: int,
    ) -> dict[str, JobRef]:
        assert self.launcher.staging_dir is not None
        name = f"indexed-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        workdir = f"{self.launcher.staging_dir}/{name}"
        payload = await anyio.to_thread.run_sync(
            build_payload,
            fn_bytes,
            chunks,
            self.options,
            getattr(self.launcher, "hooks", None),
            self._travel_to,
        )
        options = self.options
        limit = options.time_limit
        time_seconds = None if limit is None else math.ceil(limit * per_task + 30)
        script = self.indexed.script(
            workdir,
            time_seconds=time_seconds,
            cpus=options.resources.cpus,
            gpus=options.resources.gpus,
        )
        archive = tar(
            {
                "job.sh": script.encode(),
                _runtime.MODULE_FILE: _RUNNER_SOURCE,
                "payload.bin": payload,
            }
        )
        indices = f"0-{len(chunks) - 1}"
        bound = self.launcher.max_concurrent
        if bound:
            indices += f"%{max(1, bound // parts)}"
        part = _Part(workdir)
        array_id = await self.indexed.submit(workdir, archive, indices, "s0")
        if self.first_submit is None:
            self.first_submit = time.monotonic()
        log.debug("submitted %d run(s) as indexed array %s", sum(map(len, chunks)), array_id)
        part.submissions = 1
        part.array_ids.add(array_id)
        self._parts.append(part)
        refs = {}
        for index, chunk in enumerate(chunks):
            keys = [key for key, _, _ in chunk]
            slot = _Slot(part, index, keys, set(keys), array_id)
            part.slots.append(slot)
            self._slots[slot.path] = slot
            for key in keys:
                refs[key] = self._ref(slot, key)
        self._wanted.set()
        return refs

    def _ref(self, slot: _Slot, key: str) -> JobRef:
        return JobRef(
            kind=self.launcher.kind,
            native_id=slot.native_id,
            host=self.launcher.adapter.host,
            workdir=slot.part.workdir,
            task_id=REF_PREFIX + key,
        )

    # -- re-attaching -----------------------------------------------------------------

    def follow(self, refs: Mapping[str, JobRef]) -> list[str]:
        """Follow runs another driver submitted, from their refs (by key): their records
        are read from the start of their array tasks' files, and what was lost is
        submitted again. Returns the keys whose refs are not an indexed run of this
        place (the caller submits them anew)."""
        refused = []
        parts = {part.workdir: part for part in self._parts}
        for key, ref in refs.items():
            array_id, _, index = ref.native_id.rpartition("_")
            if (
                not is_indexed_ref(ref)
                or ref.kind != self.launcher.kind
                or ref.host != self.launcher.adapter.host
                or not ref.workdir
                or not array_id.isdigit()
                or not index.isdigit()
            ):
                refused.append(key)
                continue
            part = parts.get(ref.workdir)
            if part is None:
                part = parts[ref.workdir] = _Part(ref.workdir)
                self._parts.append(part)
            part.array_ids.add(array_id)
            path = f"{ref.workdir}/out/{int(index)}.rec"
            slot = self._slots.get(path)
            if slot is None:
                slot = _Slot(part, int(index), [], set(), array_id)
                part.slots.append(slot)
                self._slots[path] = slot
            elif int(slot.array_id) < int(array_id):
                slot.array_id = array_id  # the latest attempt
            slot.keys.append(key)
            slot.pending.add(key)
        self._wanted.set()
        return refused

    # -- following --------------------------------------------------------------------

    async def next_batch(self) -> IndexedBatch:
        """Wait for the next round (sooner once something changed), run it, and return
        what it found (nothing, with a warning logged, when the system could not be
        reached or did not answer: the next round tries again).

        Cancellation: the round is stopped; what it read is read again next time.
        """
        with anyio.move_on_after(self._interval):
            await self._wanted.wait()
        self._wanted = anyio.Event()
        try:
            batch = await self.poll()
        except (BackendUnavailable, LaunchError, OSError, TimeoutError) as exc:
            # A dropped link, a scheduler that did not answer: what was not read is read
            # next time (nothing is lost by waiting; the arrays run on).
            log.warning("following the indexed arrays failed (%s); again", exc)
            self._interval = min(self._interval * 1.5, self.max_poll_interval)
            return IndexedBatch([], {})
        if batch.results or batch.refs:
            self._interval = self.poll_interval
        else:
            self._interval = min(self._interval * 1.5, self.max_poll_interval)
        return batch

    async def poll(self) -> IndexedBatch:
        """One round: ask the scheduler about every live array task (one query), read
        what the running and ended ones appended (one command), submit again what was
        lost, remove the directories of finished arrays.

        Cancellation: stopped; what it read is read again next time.
        """
        batch = IndexedBatch([], {})
        live = [slot for slot in self._slots.values() if slot.pending]
        ids = sorted({slot.array_id for slot in live}, key=int)
        queued: dict[str, Queued] = await self.launcher.adapter.states(ids) if ids else {}
        now = time.monotonic()
        reading: list[_Slot] = []
        for slot in live:
            seen = queued.get(slot.native_id)
            slot.queued = seen is not None
            if seen is None:
                if slot.gone_at is None:
                    slot.gone_at = now
                reading.append(slot)
            elif not seen.waiting:
                reading.append(slot)
        if reading:
            await self._read(reading, batch)
        # What was read is the caller's from here: a failure below is logged, and what
        # failed is done again next round.
        try:
            gone = [s for s in reading if s.pending and not s.queued]
            if gone:
                await self._lost(gone, now, batch)
            await self._clean_up(queued)
        except (BackendUnavailable, LaunchError, OSError, TimeoutError) as exc:
            log.warning("resubmitting or cleaning up indexed arrays failed (%s); again", exc)
        return batch

    async def _read(self, slots: list[_Slot], batch: IndexedBatch) -> None:
        grown = await self.indexed.read({slot.path: slot.offset for slot in slots})
        for slot in slots:
            data = grown.get(slot.path)
            if not data:
                continue
            bodies, consumed = _runtime.split_records(data)
            slot.offset += consumed
            for body in bodies:
                try:
                    record = _runtime.load_record(body)
                except Exception as exc:
                    log.warning("an unreadable record in %s: %s", slot.path, exc)
                    continue
                if record.get("kind") == "begin":
                    slot.begins += 1
                    continue
                key = str(record.get("task_id"))
                if key not in slot.pending:
                    continue  # recorded earlier (another attempt, another driver)
                slot.pending.discard(key)
                batch.results.append(self._result(slot, key, record))

    def _result(self, slot: _Slot, key: str, record: dict[str, Any]) -> IndexedResult:
        error = record.get("error")
        info = None
        if isinstance(error, dict):
            info = ErrorInfo(
                type_name=str(error.get("type_name")),
                message=str(error.get("message")),
                traceback=str(error.get("traceback") or ""),
                pickled=error.get("pickled"),
            )
        status = str(record.get("status"))
        state = record.get("state")
        if status == "lost" and slot.state:
            state = slot.state
            if info is not None:
                info.message += f" (the last one ended {slot.state})"
        outcome = Outcome(
            task_id=key,
            status=status,  # type: ignore[arg-type]
            error=info,
            exit_code=record.get("exit_code"),
            state=state,
        )
        value: Any = None
        failure: BaseException | None = None
        if status == "ok":
            try:
                value = loads(record.get("value") or b"")
            except SerializationError as exc:
                failure = TaskSerializationError(f"cannot unpickle the run's result: {exc}")
        else:
            original = None
            if status == "raised" and info is not None and info.pickled is not None:
                try:
                    candidate = loads(info.pickled)
                except Exception:
                    candidate = None
                if isinstance(candidate, BaseException):
                    original = candidate
            failure = outcome_error(outcome, original)
        host = record.get("host")
        pid = record.get("pid")
        return IndexedResult(
            key=key,
            status="done" if failure is None else "failed",
            value=value,
            error=failure,
            started=record.get("started"),
            finished=record.get("finished"),
            host=host,
            worker=f"{host or 'localhost'}:{pid}" if pid is not None else None,
            ref=self._ref(slot, key),
            stdout=str(record.get("stdout") or ""),
            stderr=str(record.get("stderr") or ""),
            attempts=int(record.get("attempts") or 1) + slot.attempts - 1,
        )

    async def _lost(self, gone: list[_Slot], now: float, batch: IndexedBatch) -> None:
        """Array tasks that left the queue with runs unrecorded: once the grace has
        passed, submit them again (or fail their runs, if they never start)."""
        due = [s for s in gone if s.gone_at is not None and now - s.gone_at >= GONE_GRACE]
        if not due:
            return
        accounting = await self.launcher.adapter.accounting(sorted({s.native_id for s in due}))
        again: list[_Slot] = []
        for slot in due:
            state = accounting.get(slot.native_id, ("", ""))[0]
            assert slot.gone_at is not None
            if state in ("", "COMPLETED") and now - slot.gone_at < COMPLETED_GRACE:
                continue  # not in the accounting yet, or records still to show
            slot.state = state or "UNKNOWN"
            if slot.begins > slot.begins_at_submit:
                slot.idle = 0
            else:
                slot.idle += 1
            if slot.idle >= IDLE_ATTEMPTS:
                await self._fail(slot, batch)
            else:
                again.append(slot)
        if again:
            await self._submit_again(again, batch)

    async def _fail(self, slot: _Slot, batch: IndexedBatch) -> None:
        """Fail the runs of an array task that never started, saying why."""
        workdir = slot.part.workdir
        files = await self.launcher.adapter.fetch(
            [f"{workdir}/log/{slot.index}.setup", f"{workdir}/log/{slot.index}.log"]
        )
        setup = files.get(f"{workdir}/log/{slot.index}.setup")
        tail = files.get(f"{workdir}/log/{slot.index}.log", b"")[-2000:]
        tail_text = tail.decode(errors="replace").strip()
        name = self.launcher.adapter.name
        error: BaseException
        if setup is not None:
            rc, _, command = setup.decode(errors="replace").strip().partition("\t")
            message = (
                f"the setup of {name} array task {slot.native_id} failed, so its runs did not "
                f"run: `{command}` exited with status {rc}"
            )
            error = LaunchError(message + (f": {tail_text}" if tail_text else ""))
        else:
            message = (
                f"{name} array task {slot.native_id} ended {slot.idle} times without "
                f"starting ({slot.state})"
            )
            error = WorkerLost(message + (f": {tail_text}" if tail_text else ""), state=slot.state)
        for key in sorted(slot.pending):
            batch.results.append(
                IndexedResult(
                    key=key,
                    status="failed",
                    error=error,
                    ref=self._ref(slot, key),
                    attempts=slot.attempts,
                )
            )
        slot.pending.clear()

    async def _submit_again(self, slots: list[_Slot], batch: IndexedBatch) -> None:
        """Submit these array tasks again, one array per directory: each skips what its
        file records."""
        by_part: dict[int, list[_Slot]] = {}
        for slot in slots:
            by_part.setdefault(id(slot.part), []).append(slot)
        for group in by_part.values():
            part = group[0].part
            indices = ",".join(str(slot.index) for slot in sorted(group, key=lambda s: s.index))
            token = f"s{part.submissions}"
            try:
                array_id = await self.indexed.submit(part.workdir, None, indices, token)
            except LaunchError as exc:
                log.warning("submitting lost array tasks again failed: %s", exc)
                for slot in group:
                    error = WorkerLost(
                        f"{self.launcher.adapter.name} array task {slot.native_id} ended "
                        f"({slot.state}) and could not be submitted again: {exc}",
                        state=slot.state,
                    )
                    for key in sorted(slot.pending):
                        batch.results.append(
                            IndexedResult(
                                key=key, status="failed", error=error, attempts=slot.attempts
                            )
                        )
                    slot.pending.clear()
                continue
            log.info(
                "%s array tasks %s of %s ended (%s) with runs unrecorded: submitted again as %s",
                self.launcher.adapter.name,
                indices,
                part.workdir,
                ", ".join(sorted({slot.state for slot in group})),
                array_id,
            )
            part.submissions += 1
            part.array_ids.add(array_id)
            for slot in group:
                slot.array_id = array_id
                slot.attempts += 1
                slot.begins_at_submit = slot.begins
                slot.gone_at = None
                slot.queued = True
                for key in slot.pending:
                    batch.refs[key] = self._ref(slot, key)

    async def _clean_up(self, queued: Mapping[str, Queued]) -> None:
        """Remove the directories of arrays whose every run has its result and whose
        array tasks all left the queue."""
        if getattr(self.launcher, "_keep_staging", False):
            return
        listed = {native_id.partition("_")[0] for native_id in queued}
        finished = [
            part
            for part in self._parts
            if not part.removed
            and not any(slot.pending for slot in part.slots)
            and not part.array_ids & listed
        ]
        if finished:
            await self.launcher.adapter.remove([part.workdir for part in finished])
            for part in finished:
                part.removed = True

    # -- ending -----------------------------------------------------------------------

    async def cancel(self) -> IndexedBatch:
        """Kill every array task of the sweep, collect what they recorded, and answer
        the other runs ``cancelled``.

        Cancellation: shield it: some array tasks may be left; it is safe to call
        again.
        """
        live = [slot for slot in self._slots.values() if slot.pending]
        ids = sorted({slot.array_id for slot in live}, key=int)
        batch = IndexedBatch([], {})
        if ids:
            refused = await self.launcher.adapter.cancel(ids)
            if refused is not None:
                log.warning("cancel: %s", refused)
            delay = 0.1
            with anyio.move_on_after(60):
                while await self.launcher.adapter.states(ids):
                    await anyio.sleep(delay)
                    delay = min(2 * delay, 2.0)
            await self._read(live, batch)
        for slot in live:
            for key in sorted(slot.pending):
                batch.results.append(
                    IndexedResult(
                        key=key,
                        status="cancelled",
                        error=TaskCancelled(f"run {key} was cancelled"),
                        ref=self._ref(slot, key),
                        attempts=slot.attempts,
                    )
                )
            slot.pending.clear()
        await self._clean_up({})
        return batch

    async def aclose(self, timeout: float = 60.0) -> None:
        """Once every run has its result: wait (``timeout`` seconds at most) for the
        arrays' last array tasks to leave the queue, then remove their directories.

        Cancellation: stops waiting; directories may be left (as after a crash).
        """
        ids = sorted(
            {array for part in self._parts if not part.removed for array in part.array_ids},
            key=int,
        )
        if not ids or self.pending:
            return
        delay = 0.1
        queued: Mapping[str, Queued] = {}
        with anyio.move_on_after(timeout):
            while queued := await self.launcher.adapter.states(ids):
                await anyio.sleep(delay)
                delay = min(2 * delay, 2.0)
        await self._clean_up(queued)

    def release(self) -> None:
        """Stop following, leaving the arrays running (re-attach with :meth:`follow`)."""
        self._slots.clear()
        self._parts.clear()

    def refs(self) -> Iterable[tuple[str, JobRef]]:
        """The current ref of every run without a result yet."""
        for slot in self._slots.values():
            for key in slot.pending:
                yield key, self._ref(slot, key)


def build_payload(
    fn_bytes: bytes,
    chunks: Sequence[Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]],
    options: TaskOptions,
    hooks: Hooks | None = None,
    travel_to: str | None = None,
) -> bytes:
    """An indexed array's ``payload.bin``: the header, then a section per array task
    (``chunks``: its runs' ``(key, args, kwargs)``), and the executor's ``hooks``
    (each array task runs ``setup`` before its first run, ``teardown`` after its
    last); see :func:`asyncexec._runtime.read_payload`. ``travel_to``: the
    launcher's name where it does not share this machine's files (the user's own
    modules in the arguments travel by value: :mod:`asyncexec._travel`).

    Raises:
        SerializationError: some arguments cannot be pickled.
    """
    sections: list[tuple[int, int, int]] = []
    blobs: list[bytes] = []
    at = 0
    for chunk in chunks:
        keys = _runtime.dumps_value([key for key, _, _ in chunk])  # plain strings
        calls = _dumps_calls([(tuple(args), dict(kwargs)) for _, args, kwargs in chunk], travel_to)
        sections.append((at, len(keys), len(calls)))
        blobs += [keys, calls]
        at += len(keys) + len(calls)
    current = versions()
    header = _runtime.dumps_value(
        {
            "format": _runtime.INDEXED_FORMAT,
            "python": current.python,
            "cloudpickle": current.cloudpickle,
            "fn": fn_bytes,
            "sections": sections,
            "time_limit": options.time_limit,
            "env": dict(options.env),
            "memory_mb": options.resources.memory_mb,
            "capture": True,
            "retries": options.retries,
            "retry_on": _dumps_retry_on(options.retry_on),
            "retry_raised": any(issubclass(RemoteError, c) for c in options.retry_on),
            "retry_timeouts": any(issubclass(TaskTimeout, c) for c in options.retry_on),
            "retry_backoff": options.retry_backoff,
            "retry_backoff_max": options.retry_backoff_max,
            "setup": hooks.setup if hooks is not None else None,
            "teardown": hooks.teardown if hooks is not None else None,
        }
    )
    return b"".join([len(header).to_bytes(8, "big"), header, *blobs])


def _dumps_retry_on(classes: tuple[type[BaseException], ...]) -> bytes:
    """``retry_on`` for the runtime, which matches what a run raised against it."""
    try:
        return dumps(classes)
    except SerializationError as exc:
        raise SerializationError(f"cannot pickle retry_on: {exc}") from exc


def _dumps_calls(
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]], travel_to: str | None = None
) -> bytes:
    """Pickle a section's calls: the standard library where it pickles as cloudpickle
    would, else cloudpickle (what ``__main__`` defines travels by value); with
    ``travel_to``, the user's own modules travel by value too."""
    data = fast_dumps(calls) if travel_to is None else None
    if data is not None:
        return data
    try:
        return dumps(calls, travel_to=travel_to)
    except SerializationError as exc:
        raise SerializationError(f"cannot pickle the runs' arguments: {exc}") from exc
