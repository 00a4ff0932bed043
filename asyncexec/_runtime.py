"""Running a task where nothing but Python is: one file, standard library only.

Every place runs a task through :func:`run_task`: the long-lived worker of
process pools, SSH hosts and containers (:mod:`asyncexec._worker`, one-shot
containers included: ``serve --stdio --finish``), the thread launcher, and the
runner of cluster jobs below. It loads the task, sets its environment, memory
limit and output capture up, calls it (under a time limit and watching for a
cancel, in the runner), describes what it raised in builtins
(:func:`describe_exception`) and pickles its value: an outcome's fields, which
the worker turns into an :class:`asyncexec.Outcome` and the runner writes to
an outcome file. Functions sent by value load without cloudpickle where they
can (:class:`TaskUnpickler`); :func:`run_chunk` is the task of a chunk of
``map``.

The runner of cluster jobs
--------------------------

The Slurm launcher ships this file inside every array it submits, as
:data:`MODULE_FILE`, and each array task runs it with :data:`BOOT`::

    python -c "$BOOT" WORKDIR WORKDIR/in/N.bin WORKDIR/out WORKDIR/cancel

It reads a batch (a pickled dict of builtins: the driver's Python and
cloudpickle versions and the tasks), runs the tasks one after the other and
writes each one's outcome as soon as it ends to ``out/<task id>.bin`` (a
pickled dict of builtins, renamed into place), so that what finished survives
the array task being killed later. A file ``cancel/<task id>`` skips that
task, or interrupts it while it runs.

Hooks: a batch may hold the executor's ``setup`` and ``teardown`` hooks
(pickled, as its tasks). The runner calls ``setup`` before the first task of
the batch that runs (none runs if every task was cancelled), and ``teardown``
after the last one, before that task's outcome is written: once the driver
holds the outcome of a chunk's last task, its teardown has run. A setup that
raises refuses every task of the batch with a ``SetupFailed`` error, and no
teardown runs; what a teardown raises is printed on the array task's stderr.
A runner killed (``scancel``, a node failure) runs no teardown; nor does a
child the supervisor kills at a stuck task's time limit, and the next child
runs ``setup`` again before the next task.

Time limits: SIGALRM raises inside a task at its limit. A batch with a time
limit runs its tasks in a forked child, watched by the process the job
started (the supervisor), which needs neither the GIL nor the task's help:
a task still running :data:`STUCK_GRACE` seconds past its limit (stuck in C,
or ignoring the signal) is killed with its process group, its timeout
outcome written, and a new child goes on with the chunk's next task.

Why one file of its own: an array task is a fresh interpreter, and what it
imports before the first task runs is paid once per array task, hundreds of
times an array. This file imports ``_pickle``, ``threading`` and little else
(cloudpickle only when a callable was pickled by value), where the pool
worker's msgspec, cloudpickle, argparse and the package cost about 60 ms more
per start on the project's machine. Travelling with the job, it also needs no
asyncexec on the cluster: a Python of the driver's minor version, plus
cloudpickle for what a script defines that the runner cannot load alone
(functions from a driver with cloudpickle 3 it can: see the reconstructors
below). What of asyncexec a task names (``map``'s :func:`run_chunk`), it
takes from this very file: see :class:`TaskUnpickler`. Hence also its size:
what runs on a node is this one file, which the launcher ships and the job
imports whole. It keeps to syntax older Pythons parse, so that a node with
the wrong Python gets a clear refusal rather than a SyntaxError.
"""

from __future__ import annotations

import _pickle
import contextlib
import io
import os
import sys
import time

TYPE_CHECKING = False  # typing alone costs a cluster job's start a few ms
if TYPE_CHECKING:
    import _thread
    import signal
    from collections.abc import Callable, Iterator, Sequence
    from typing import IO, Any

    #: What :func:`run_task` answers: the outcome's fields :data:`RAN_FIELDS`, in order.
    Ran = tuple[str, bytes | None, dict[str, Any] | None, float, float, str, str]
    #: How a task's function is called: its status, value and the exception it raised.
    Call = Callable[
        [Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        tuple[str, Any, BaseException | None],
    ]
else:
    import _signal as signal  # what signal wraps, without its enums

__all__ = [
    "BOOT",
    "BOOT_BLOB",
    "FORMAT",
    "MODULE_FILE",
    "OUTCOME_FIELDS",
    "RAN_FIELDS",
    "TAIL_BYTES",
    "Refused",
    "Runner",
    "SoftCancel",
    "SoftTimeout",
    "TaskUnpickler",
    "call_task",
    "describe_exception",
    "dumps_value",
    "end_kept_capture",
    "environment",
    "fd_capture",
    "keep_outcome",
    "main",
    "make_outcome",
    "memory_limit",
    "problem",
    "run_chunk",
    "run_task",
    "serve_blobs",
    "supervise",
    "type_name",
]

#: The version of the batch and outcome files; the driver writes it in every batch.
FORMAT = 1
#: What a job script runs: this file from the array's directory, then :func:`main`.
#: (Imported rather than run as a script, so its bytecode is cached after the first
#: array task; the directory leaves ``sys.path`` before any task runs.)
BOOT = (
    "import sys;sys.path.insert(0,sys.argv[1]);import _asyncexec_oneshot as m;"
    "del sys.path[0];sys.exit(m.main(sys.argv[2:]))"
)
#: The name the file takes in an array's directory.
MODULE_FILE = "_asyncexec_oneshot.py"
#: What a container with no shared file system runs (Azure Container Instances): it
#: fetches this file over the read SAS URL in ``ASYNCEXEC_RUNTIME``, then
#: :func:`serve_blobs` fetches its chunk, runs it and sends each outcome to Blob Storage.
BOOT_BLOB = """\
import os, sys, tempfile, time, urllib.request
d = tempfile.mkdtemp(prefix="asyncexec-")
for attempt in range(8):
    try:
        data = urllib.request.urlopen(os.environ["ASYNCEXEC_RUNTIME"], timeout=120).read()
        break
    except OSError as exc:
        if attempt == 7:
            raise SystemExit("asyncexec: cannot fetch the runtime: %s" % exc)
        time.sleep(2 ** attempt)
with open(os.path.join(d, "_asyncexec_oneshot.py"), "wb") as f:
    f.write(data)
sys.path.insert(0, d)
import _asyncexec_oneshot as m
del sys.path[0]
sys.exit(m.serve_blobs(d))
"""
#: The keys of an outcome file, in the order of :class:`asyncexec.Outcome`'s fields.
OUTCOME_FIELDS = (
    "task_id",
    "status",
    "value",
    "error",
    "started",
    "finished",
    "pid",
    "host",
    "exit_code",
    "state",
    "stdout",
    "stderr",
)
#: The fields of an outcome :func:`run_task` answers, in its order.
RAN_FIELDS = ("status", "value", "error", "started", "finished", "stdout", "stderr")
#: How much of a task's captured stdout and stderr comes back with its outcome.
TAIL_BYTES = 64 * 1024
#: Seconds between looks for cancel markers while a task runs.
WATCH_PERIOD = 0.5
#: Seconds past a task's time limit after which the supervisor kills a task that did not
#: stop (stuck in C, holding the GIL, or ignoring the signal) and reports its timeout.
STUCK_GRACE = 1.0


class SoftTimeout(BaseException):
    """Raised inside a task when its time limit passes."""


class SoftCancel(BaseException):
    """Raised inside a task when it is cancelled while it runs."""


# -- what a task runs in: environment, memory limit, output capture ---------------


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a task."""
    if not env:
        yield
        return
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def memory_limit(memory_mb: int | None) -> Iterator[None]:
    """Cap the address space at its current size plus ``memory_mb`` (RLIMIT_AS)."""
    if memory_mb is None:
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space_bytes() + memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _read_tail(stream: IO[bytes], whole: bool = False) -> str:
    """The last :data:`TAIL_BYTES` of what ``stream`` holds (``whole``: all of it)."""
    stream.flush()
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0 if whole else max(0, size - TAIL_BYTES))
    return stream.read().decode("utf-8", "replace")


def _scratch_fd(directory: str) -> int:
    """The descriptor of an anonymous file in ``directory``: created private, unlinked
    at once."""
    for attempt in range(100):
        name = f".capture-{os.getpid()}-{time.monotonic_ns()}-{attempt}"
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.unlink(path)
        return fd
    raise FileExistsError("no free name for a capture file in " + directory)


#: Empty anonymous capture files free for the next task, by directory: a worker runs
#: one task after another, and opening two files was most of what capturing cost.
_spare_fds: dict[str, list[int]] = {}


class _Kept:
    """Descriptors 1 and 2 left on capture files by a block that kept them
    (:func:`fd_capture`'s ``keep``): where they pointed before, and the files."""

    __slots__ = ("directory", "fds", "saved")

    def __init__(self, directory: str, fds: list[int], saved: list[int]) -> None:
        self.directory = directory
        self.fds = fds
        self.saved = saved


_kept: _Kept | None = None


def end_kept_capture() -> None:
    """Point descriptors 1 and 2 back where they pointed before the capture blocks that
    kept them on their files (see :func:`fd_capture`), if any; what was written there
    since the last block ended is dropped."""
    global _kept
    kept, _kept = _kept, None
    if kept is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    spare = _spare_fds.setdefault(kept.directory, [])
    for fd, old, scratch in zip((1, 2), kept.saved, kept.fds, strict=True):
        os.dup2(old, fd)
        os.close(old)
        os.ftruncate(scratch, 0)
        os.lseek(scratch, 0, os.SEEK_SET)
        spare.append(scratch)


def fd_capture(
    stdout_path: str | None,
    stderr_path: str | None,
    scratch_dir: str,
    whole: bool = False,
    at_end: bool = False,
    keep: bool = False,
) -> contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]:
    """Redirect file descriptors 1 and 2 into files for the duration of a task.

    File-level redirection also catches what C extensions and child processes
    write. A stream without a path goes to an anonymous file in ``scratch_dir``
    (emptied and kept for the next task: a child process the task left running
    that still writes would write into the next task's capture). With ``at_end``,
    so does a stream with a path: what it holds is appended to the path when the
    block ends, if anything (its directory is checked first). Yields a function
    answering the tails of both once the block has ended (``whole``: all that was
    written, for a driver that keeps the log files).

    ``keep`` (with ``at_end``): for a worker that runs task after task, 1 and 2 stay
    on the anonymous files when the block ends, and the next such block finds them
    there: a block then costs two system calls (the files' sizes), not ten. Any
    other block, or :func:`end_kept_capture`, points them back first; the worker
    calls that before anything else of its own may write (a hook, its exit).
    """
    kept = _kept
    if kept is not None and keep and at_end and kept.directory == scratch_dir:
        for path in (stdout_path, stderr_path):
            if path:
                _check_directory(os.path.dirname(path) or ".", path)
        return _KeptBlock(kept.fds, (stdout_path, stderr_path), whole)
    if kept is not None:
        end_kept_capture()
    return _capture(stdout_path, stderr_path, scratch_dir, whole, at_end, keep and at_end)


class _KeptBlock:
    """A capture block that finds 1 and 2 on its files already (see :func:`fd_capture`)."""

    __slots__ = ("fds", "paths", "tails", "whole")

    def __init__(self, fds: list[int], paths: tuple[str | None, str | None], whole: bool) -> None:
        self.fds = fds
        self.paths = paths
        self.whole = whole
        self.tails = ["", ""]

    def __enter__(self) -> Callable[[], tuple[str, str]]:
        # (What was written since the last block is this task's now, as what a child
        # process the last task left running writes.)
        sys.stdout.flush()
        sys.stderr.flush()
        tails = self.tails
        return lambda: (tails[0], tails[1])

    def __exit__(self, *exc_info: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for index, scratch in enumerate(self.fds):
            _collect(scratch, self.paths[index], self.tails, index, self.whole)


def _collect(scratch: int, path: str | None, tails: list[str], index: int, whole: bool) -> None:
    """Put the tail of what anonymous capture file ``scratch`` holds in ``tails[index]``,
    append it all to ``path`` (if any), and empty the file."""
    size = os.lseek(scratch, 0, os.SEEK_END)
    if not size:
        return
    start = 0 if whole else max(0, size - TAIL_BYTES)
    tails[index] = os.pread(scratch, size - start, start).decode("utf-8", "replace")
    try:
        if path:
            _append_fd(scratch, size, path)
    finally:
        os.ftruncate(scratch, 0)
        os.lseek(scratch, 0, os.SEEK_SET)


@contextlib.contextmanager
def _capture(
    stdout_path: str | None,
    stderr_path: str | None,
    scratch_dir: str,
    whole: bool,
    at_end: bool,
    keeping: bool,
) -> Iterator[Callable[[], tuple[str, str]]]:
    """:func:`fd_capture` where 1 and 2 are not on its files yet."""
    global _kept
    paths = (stdout_path, stderr_path)
    files: list[IO[bytes] | None] = []  # a log file written as the task writes, or None
    fds: list[int] = []
    spare = _spare_fds.setdefault(scratch_dir, [])
    try:  # open both before redirecting either: a bad path leaves nothing redirected
        for path in paths:
            if path and not at_end:
                file = open(path, "ab+")  # noqa: SIM115
                files.append(file)
                fds.append(file.fileno())
                continue
            if path:
                _check_directory(os.path.dirname(path) or ".", path)
            files.append(None)
            fds.append(spare.pop() if spare else _scratch_fd(scratch_dir))
    except BaseException:
        for fd, opened in zip(fds, files, strict=False):
            if opened is not None:
                opened.close()
            else:
                spare.append(fd)
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[int] = []
    for fd, target in zip((1, 2), fds, strict=True):
        saved.append(os.dup(fd))
        os.dup2(target, fd)
    if keeping:  # (recorded first: whatever happens at the end, it is undone later)
        _kept = _Kept(scratch_dir, fds, saved)
    tails = ["", ""]
    try:
        yield lambda: (tails[0], tails[1])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for index, (fd, old) in enumerate(zip((1, 2), saved, strict=True)):
            if not keeping:
                os.dup2(old, fd)
                os.close(old)
            opened = files[index]
            if opened is not None:
                tails[index] = _read_tail(opened, whole)
                opened.close()
                continue
            _collect(fds[index], paths[index], tails, index, whole)
            if not keeping:
                spare.append(fds[index])


#: Directories of log files found there (a runner of many tasks logs to one).
_directories_seen: set[str] = set()


def _check_directory(directory: str, path: str) -> None:
    """Raise as ``open(path)`` would if ``directory`` is not one (first time only)."""
    if directory in _directories_seen:
        return
    if not os.path.isdir(directory):
        raise FileNotFoundError(2, "No such file or directory", path)  # (ENOENT)
    if len(_directories_seen) > 64:
        _directories_seen.clear()
    _directories_seen.add(directory)


def _append_fd(source: int, size: int, path: str) -> None:
    """Append the first ``size`` bytes of file descriptor ``source`` to the file at
    ``path`` (made if missing)."""
    with open(path, "ab") as target:
        done = 0
        while done < size:
            block = os.pread(source, min(1 << 20, size - done), done)
            if not block:
                return
            target.write(block)
            done += len(block)


def type_name(obj: object) -> str:
    """The qualified name of an object's class, as users know it."""
    cls = type(obj)
    module = cls.__module__
    if module == "builtins":
        return str(cls.__qualname__)
    return f"{module}.{cls.__qualname__}"


# -- functions sent by value ---------------------------------------------------------
#
# A function defined in the driver's script travels by value: cloudpickle pickles
# it as calls to a few reconstructors of its own module, and unpickling it would
# import cloudpickle (about 23 ms of a job's start here: dataclasses, logging,
# typing...). These are the reconstructors a function needs, as cloudpickle 3
# defines them (cloudpickle/cloudpickle.py, BSD-3-Clause); anything else a pickle
# names from cloudpickle (classes, enums, dataclasses...) comes from cloudpickle.


def _reconstructors_known(version: str | None) -> bool:
    """Whether the driver's cloudpickle pickles functions as the ones below expect."""
    return version is not None and version.split(".")[0] == "3"


def _builtin_type(name: str) -> Any:
    import types

    return type if name == "ClassType" else getattr(types, name)


def _make_function(
    code: Any, globals: dict[str, Any], name: Any, argdefs: Any, closure: Any
) -> Any:
    import types

    globals["__builtins__"] = __builtins__
    return types.FunctionType(code, globals, name, argdefs, closure)


def _make_empty_cell() -> Any:
    import types

    return types.CellType()


def _make_cell(value: Any) -> Any:
    import types

    return types.CellType(value)


def _function_setstate(obj: Any, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    own, slots = state
    obj.__dict__.update(own)
    obj_globals = slots.pop("__globals__")
    obj_closure = slots.pop("__closure__")
    slots.pop("_cloudpickle_submodules")  # imported already, by unpickling them
    obj.__globals__.update(obj_globals)
    obj.__globals__["__builtins__"] = __builtins__
    if obj_closure is not None:
        for index, cell in enumerate(obj_closure):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            obj.__closure__[index].cell_contents = value
    for key, value in slots.items():
        setattr(obj, key, value)


def _subimport(name: str) -> Any:
    __import__(name)
    return sys.modules[name]


_CLOUDPICKLE: dict[str, Any] = {
    "_builtin_type": _builtin_type,
    "_make_function": _make_function,
    "_make_empty_cell": _make_empty_cell,
    "_make_cell": _make_cell,
    "_function_setstate": _function_setstate,
    "subimport": _subimport,
}


class Refused(Exception):
    """A task this place cannot run as asked: its message says why (cloudpickle
    missing or of another version, CPUs it cannot have...)."""


#: This file's name in the package: a pickle made on the driver names its functions so.
PACKAGE_MODULE = "asyncexec._runtime"


class TaskUnpickler(_pickle.Unpickler):
    """Loads functions sent by value without cloudpickle where it can, and this file's
    own functions (``map``'s :func:`run_chunk`) from this file, without asyncexec.

    The driver pickles ``run_chunk`` by reference, as ``asyncexec._runtime.run_chunk``
    (a name: a few bytes, no cloudpickle needed to load it); a cluster job runs this
    file as ``_asyncexec_oneshot`` on a node that may have no asyncexec (or another
    version of it), so such names are resolved in this file, which travels with every
    job. In the pool worker this file is ``asyncexec._runtime``: the same objects.
    """

    def __init__(
        self,
        data: bytes,
        cloudpickle_version: str | None,
        needs_cloudpickle: Callable[[str | None], str | None],
        buffers: Sequence[bytes] | None = None,
    ) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self.cloudpickle_version = cloudpickle_version
        self.known = _reconstructors_known(cloudpickle_version)
        self.needs_cloudpickle = needs_cloudpickle

    def find_class(self, module: str, name: str) -> Any:
        if module == PACKAGE_MODULE:
            own = globals().get(name)
            if own is not None:
                return own
        if module.partition(".")[0] == "cloudpickle":
            if self.known and name in _CLOUDPICKLE:
                return _CLOUDPICKLE[name]
            refusal = self.needs_cloudpickle(self.cloudpickle_version)
            if refusal is not None:
                raise Refused(refusal)
        return super().find_class(module, name)


def run_chunk(fn: Callable[..., Any], *columns: Sequence[Any]) -> list[Any]:
    """``fn`` over the zipped columns: the task of a chunk of ``map`` (``chunksize``).

    (Columns, not a tuple of arguments per call: a list of 2,500 numbers pickles
    several times faster than 2,500 one-element tuples.)
    """
    return list(map(fn, *columns))


def dumps_value(obj: object) -> bytes:
    """Pickle with the standard library, or with cloudpickle for what only it can."""
    try:
        return bytes(_pickle.dumps(obj, protocol=5))
    except Exception as first:
        try:
            import cloudpickle
        except ImportError:
            raise first from None
        return bytes(cloudpickle.dumps(obj, protocol=5))


def describe_exception(exc: BaseException, *, skip_frames: int = 0) -> dict[str, Any]:
    """An exception as builtins (an ``ErrorInfo``), readable where its class is not."""
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type_name(exc)}>"
    pickled: bytes | None
    try:
        pickled = dumps_value(exc)
        _pickle.loads(pickled)  # an exception whose __init__ rejects its args won't load
    except Exception:
        pickled = None
    return {"type_name": type_name(exc), "message": message, "traceback": text, "pickled": pickled}


def problem(message: str, exc: BaseException | None = None) -> dict[str, Any]:
    """An ErrorInfo's fields saying ``message``: about ``exc`` if given, else a refusal."""
    if exc is None:
        return {"type_name": "LaunchError", "message": message, "traceback": "", "pickled": None}
    error = describe_exception(exc)
    error["message"] = message
    return error


# -- running one task --------------------------------------------------------------


def call_task(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, Any, BaseException | None]:
    """``fn(*args, **kwargs)``: ``("ok", value, None)``, or ``("raised", None, exc)``
    for whatever it raised (SystemExit included)."""
    try:
        return "ok", fn(*args, **kwargs), None
    except BaseException as exc:  # the task's own errors, SystemExit included
        return "raised", None, exc


def run_task(
    load: Callable[[], tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
    *,
    env: dict[str, str],
    memory_mb: int | None,
    capture: Callable[[], contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]]
    | None = None,
    pin: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    call: Call = call_task,
) -> Ran:
    """Load one task and run it: its outcome's fields :data:`RAN_FIELDS`, in order
    (the value pickled, the error an ErrorInfo's fields). Never raises for the
    task's errors, nor for its set-up's.

    (A tuple, not a dict: the pool worker runs tens of thousands of tasks a second.)

    Args:
        load: the task's function, positional and keyword arguments. What it
            raises makes the task ``unpicklable``; a :class:`Refused`, ``refused``.
        env: environment variables set while the task runs.
        memory_mb: the task's address space beyond the process's (RLIMIT_AS).
        capture: makes what redirects the task's output and answers its tails
            (:func:`fd_capture`); None: the output is not captured.
        pin: makes what pins the task to CPUs while it runs; it may raise
            :class:`Refused` (then the task is ``refused``).
        call: calls the task's function (:func:`call_task`; the runner's adds a
            time limit and a cancel marker). The function must be called in
            ``call`` itself: the traceback of what it raised starts below it.
    """
    started = time.time()
    try:
        fn, args, kwargs = load()
    except Refused as refused:
        return "refused", None, problem(str(refused)), started, time.time(), "", ""
    except Exception as exc:
        message = f"cannot unpickle the task: {type_name(exc)}: {exc}"
        return "unpicklable", None, problem(message, exc), started, time.time(), "", ""
    pinning = None
    if pin is not None:
        try:
            pinning = pin()
        except Refused as refused:
            return "refused", None, problem(str(refused)), started, time.time(), "", ""
    info = None
    stdout = stderr = ""
    try:
        if capture is not None and not env and memory_mb is None and pinning is None:
            with capture() as answer:  # (the runner's tasks: their logs are written at the end)
                status, value, error = call(fn, args, kwargs)
                if error is not None:
                    info = describe_exception(error, skip_frames=1)  # not call() itself
                sys.stdout.flush()
                sys.stderr.flush()
            stdout, stderr = answer()
        elif env or memory_mb is not None or capture is not None or pinning is not None:
            capturing = capture() if capture is not None else _NOTHING
            pinned = pinning if pinning is not None else _NOTHING
            with environment(env), memory_limit(memory_mb), pinned, capturing as tails:
                status, value, error = call(fn, args, kwargs)
                if error is not None:
                    info = describe_exception(error, skip_frames=1)  # not call() itself
                sys.stdout.flush()
                sys.stderr.flush()
            if tails is not None:
                stdout, stderr = tails()
        else:  # nothing to set up: no context managers (most tasks; they cost microseconds)
            status, value, error = call(fn, args, kwargs)
            if error is not None:
                info = describe_exception(error, skip_frames=1)  # not call() itself
            sys.stdout.flush()
            sys.stderr.flush()
    except Exception as exc:  # setting the task up failed: a log file that cannot be opened...
        status, value, info = "raised", None, describe_exception(exc)
    pickled = None
    if status == "ok":
        try:
            pickled = dumps_value(value)
        except Exception as exc:
            message = f"the task's result cannot be pickled: {type_name(exc)}: {exc}"
            status, info = "unpicklable", problem(message, exc)
    return status, pickled, info, started, time.time(), stdout, stderr


_NOTHING = contextlib.nullcontext(None)


# -- the runner of cluster jobs -------------------------------------------------------


class Runner:
    """Runs a batch's tasks in this process, one outcome file each."""

    def __init__(
        self, output_dir: str, cancel_dir: str | None, report_fd: int | None = None
    ) -> None:
        self.output_dir = output_dir
        # To the supervisor: "S <index> <limit>" as a timed task starts, "E <index>" once
        # its outcome is written (see supervise()).
        self.report_fd = report_fd
        self.index = 0  # of the task running, in the batch
        self.cancel_dir = cancel_dir
        self.host = os.uname().nodename
        self.pid = os.getpid()
        self.python = "{}.{}".format(*sys.version_info[:2])
        self.cloudpickle: str | None = None  # its version, once imported
        # The task inside the user's function, if any: interrupts raise only then.
        self.running: str | None = None
        # The task the watcher signalled to stop, and the marker it watches.
        self.cancel_for: str | None = None
        self.marker: str | None = None
        self.lock: _thread.LockType | None = None
        # The array task's own stderr (fd 2 may be a task's capture file), for the watchdog.
        self.log_fd = os.dup(2)
        self.stuck_grace = STUCK_GRACE
        # The batch's hooks (pickled) and how its setup went: None until it ran, then
        # the ErrorInfo fields every task is refused with should it have raised.
        self.setup_hook: bytes | None = None
        self.teardown_hook: bytes | None = None
        self.set_up_done = False
        self.setup_error: dict[str, Any] | None = None
        self.teardown: Callable[[], object] | None = None
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGUSR2, self._on_cancel)

    def run(self, batch: dict[str, Any]) -> None:
        """Run every task of ``batch``, refusing it whole if the Pythons differ."""
        tasks: list[dict[str, Any]] = batch["tasks"]
        self.stuck_grace = float(batch.get("stuck_grace", STUCK_GRACE))
        refusal = None
        if batch.get("format") != FORMAT:
            refusal = f"batch format {batch.get('format')!r}, this runner reads {FORMAT}"
        elif batch["python"] != self.python:
            refusal = (
                f"version mismatch: python {batch['python']} on the driver"
                f" but {self.python} on the worker"
            )
        self.setup_hook = batch.get("setup")
        self.teardown_hook = batch.get("teardown")
        first = int(batch.get("first", 0))  # the supervisor's next child starts there
        last = len(tasks) - 1
        for index in range(first, len(tasks)):
            task = tasks[index]
            self.index = index
            if refusal is not None:
                outcome = self.outcome(task["task_id"], "refused", error=problem(refusal))
            else:
                outcome = self.run_one(task, batch.get("cloudpickle"))
            if index == last and self.teardown is not None:
                # The teardown first: the driver, once it has the last outcome, may
                # remove what runs the chunk (a container group). No time limit runs.
                self.report(f"E {index}")
                self.tear_down()
                self.keep(outcome)
                continue
            self.keep(outcome)
            self.report(f"E {index}")

    def set_up(self, cloudpickle_version: str | None) -> dict[str, Any] | None:
        """Run the batch's setup hook, once, before its first task runs: None, or the
        ErrorInfo fields every task is refused with, because it raised (or a hook
        could not be unpickled)."""
        if self.set_up_done:
            return self.setup_error
        self.set_up_done = True
        doing = "cannot unpickle the teardown hook"
        try:
            teardown = None
            if self.teardown_hook is not None:
                teardown = self.loads(self.teardown_hook, cloudpickle_version)
            if self.setup_hook is not None:
                doing = "cannot unpickle the setup hook"
                setup = self.loads(self.setup_hook, cloudpickle_version)
                doing = "setup raised"
                setup()
        except BaseException as exc:  # the hook's own errors, SystemExit included
            error = describe_exception(exc)
            error.update(
                type_name="SetupFailed",
                message=(
                    f"{doing} {type_name(exc)}: {error['message']} (on {self.host}), "
                    "so the task did not run"
                ),
                pickled=None,
            )
            self.setup_error = error
            return error
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        self.teardown = teardown
        return None

    def tear_down(self) -> None:
        """Run the teardown hook (once its setup ran); what it raises is printed."""
        teardown, self.teardown = self.teardown, None
        if teardown is None:
            return
        try:
            teardown()
        except BaseException:
            import traceback

            sys.stderr.write("asyncexec: the teardown hook raised:\n")
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    def report(self, line: str) -> None:
        if self.report_fd is not None:
            os.write(self.report_fd, line.encode() + b"\n")

    def outcome(self, task_id: str, status: str, **fields: Any) -> dict[str, Any]:
        return make_outcome(task_id, status, pid=self.pid, host=self.host, **fields)

    def keep(self, outcome: dict[str, Any]) -> None:
        """Write an outcome file where the poller looks, whole or not at all.

        Renamed into place but not synced: the poller reads it through the
        shared file system once it is renamed, and a node that crashes takes
        its running tasks with it either way (an unreadable outcome counts as
        none, and Slurm's NODE_FAIL says what happened).
        """
        keep_outcome(self.output_dir, outcome)

    def needs_cloudpickle(self, wanted: str | None) -> str | None:
        """Import cloudpickle for a callable pickled by value; why not, if it cannot be."""
        if self.cloudpickle is None:
            try:
                import cloudpickle
            except ImportError as exc:
                return f"this task was pickled by value and needs cloudpickle {wanted} here: {exc}"
            self.cloudpickle = str(cloudpickle.__version__)
        if wanted is not None and wanted != self.cloudpickle:
            return (
                f"version mismatch: cloudpickle {wanted} on the driver"
                f" but {self.cloudpickle} on the worker"
            )
        return None

    def loads(self, data: bytes, cloudpickle_version: str | None) -> Any:
        """Unpickle what the driver pickled with cloudpickle ``cloudpickle_version``."""
        return TaskUnpickler(data, cloudpickle_version, self.needs_cloudpickle).load()

    def run_one(self, task: dict[str, Any], cloudpickle_version: str | None) -> dict[str, Any]:
        """Run one task of the batch (:func:`run_task`, under its time limit and
        watching its cancel marker): its outcome file's dict."""
        task_id: str = task["task_id"]
        marker = os.path.join(self.cancel_dir, task_id) if self.cancel_dir else None
        if marker is not None and os.path.exists(marker):
            return self.outcome(task_id, "cancelled")
        failed = self.set_up(cloudpickle_version)
        if failed is not None:
            return self.outcome(task_id, "refused", error=failed)
        time_limit: float | None = task["time_limit"]

        def load() -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
            fn = self.loads(task["fn"], cloudpickle_version)
            args, kwargs = self.loads(task["args"], cloudpickle_version)
            return fn, args, kwargs

        def call(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[str, Any, BaseException | None]:
            return self.call(task_id, fn, args, kwargs, time_limit, marker)

        def capture() -> contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]:
            return fd_capture(task["stdout_path"], task["stderr_path"], self.output_dir)

        wants_capture = task["capture_output"] or task["stdout_path"] or task["stderr_path"]
        ran = run_task(
            load,
            env=task["env"],
            memory_mb=task["memory_mb"],
            capture=capture if wants_capture else None,
            call=call,
        )
        outcome = self.outcome(task_id, ran[0])
        outcome.update(zip(RAN_FIELDS, ran, strict=True))
        return outcome

    def call(
        self,
        task_id: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        time_limit: float | None,
        marker: str | None,
    ) -> tuple[str, Any, BaseException | None]:
        """Call the task's function: its status, value and exception.

        An interrupt (the time limit's SIGALRM, the watcher's SIGUSR2) raises
        only while ``running`` names this task, and clears it first: at most
        one raises per task, and none after the function returned.
        """
        import faulthandler

        if marker is not None:
            self.watch(marker)
        if time_limit is not None:
            # Code stuck in C never sees the alarm: the supervisor kills it after the
            # grace; just before, the log shows where it was stuck.
            faulthandler.dump_traceback_later(
                time_limit + self.stuck_grace / 2, exit=False, file=self.log_fd
            )
        try:
            try:
                self.running = task_id
                if time_limit is not None:
                    self.report(f"S {self.index} {time_limit!r}")
                    signal.setitimer(signal.ITIMER_REAL, time_limit)
                return "ok", fn(*args, **kwargs), None
            finally:
                self.running = None
        except SoftTimeout:
            return "timeout", None, None
        except SoftCancel:
            return "cancelled", None, None
        except BaseException as exc:  # the task's own errors, SystemExit included
            return "raised", None, exc
        finally:
            # Runs with ``running`` cleared, so no interrupt can cut it short.
            if time_limit is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                faulthandler.cancel_dump_traceback_later()
            if marker is not None:
                self.watch(None)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.running is not None:
            self.running = None
            raise SoftTimeout

    def _on_cancel(self, signum: int, frame: Any) -> None:
        if self.running is not None and self.running == self.cancel_for:
            self.running = None
            raise SoftCancel

    def watch(self, marker: str | None) -> None:
        """Look for ``marker`` while the current task runs (None: stop looking)."""
        if self.lock is None:
            import _thread  # what threading wraps: this thread needs none of the rest

            self.lock = _thread.allocate_lock()
            # Not joined: the interpreter ends with the main thread.
            _thread.start_new_thread(self._watch, (_thread.get_ident(),))
        with self.lock:
            self.marker = marker

    def _watch(self, main_thread: int) -> None:
        assert self.lock is not None
        while True:
            time.sleep(WATCH_PERIOD)
            marker = self.marker
            if marker is None or not os.path.exists(marker):
                continue
            with self.lock:
                if self.marker == marker:  # still that task's
                    self.cancel_for = os.path.basename(marker)
                    self.marker = None
                    signal.pthread_kill(main_thread, signal.SIGUSR2)


def make_outcome(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """An outcome file's dict: every field of :data:`OUTCOME_FIELDS`, these set."""
    outcome: dict[str, Any] = dict.fromkeys(OUTCOME_FIELDS)
    outcome.update(task_id=task_id, status=status, stdout="", stderr="")
    outcome.update(fields)
    return outcome


def keep_outcome(output_dir: str, outcome: dict[str, Any]) -> None:
    """Write an outcome file, renamed into place: whole or not at all."""
    data = _pickle.dumps(outcome, protocol=5)
    path = os.path.join(output_dir, outcome["task_id"] + ".bin")
    temporary = os.path.join(output_dir, f".tmp-{outcome['task_id']}-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(temporary, path)


def supervise(batch: dict[str, Any], output_dir: str, cancel_dir: str | None) -> int:
    """Run the batch in forked children; kill one whose task outlives its limit.

    Each child runs the tasks from ``first`` on and reports on a pipe when a timed
    task starts and when its outcome is written. A task not done :data:`STUCK_GRACE`
    seconds past its limit is killed with the child's process group (SIGKILL needs no
    GIL and no cooperation), gets a ``timeout`` outcome, and a new child goes on with
    the next task. Returns the exit status of the last child (a child killed by a
    signal, for another reason than a time limit, is mirrored: Slurm sees the crash).
    """
    tasks: list[dict[str, Any]] = batch["tasks"]
    grace = float(batch.get("stuck_grace", STUCK_GRACE))
    first = 0
    while True:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run the tasks
            code = 1
            try:
                os.close(read_fd)
                os.setpgid(0, 0)  # what the task starts dies with it
                Runner(output_dir, cancel_dir, report_fd=write_fd).run(dict(batch, first=first))
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        try:
            exited, index, started = _watch(pid, read_fd, grace)
        finally:
            os.close(read_fd)
        if exited:
            status = index
            break
        task_id = tasks[index]["task_id"]
        if not os.path.exists(os.path.join(output_dir, task_id + ".bin")):
            timeout = make_outcome(
                task_id,
                "timeout",
                started=started,
                finished=time.time(),
                pid=pid,
                host=os.uname().nodename,
            )
            keep_outcome(output_dir, timeout)
        first = index + 1
        if first >= len(tasks):
            return 0
    if os.WIFSIGNALED(status):  # a crash: Slurm sees the same
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def _watch(pid: int, read_fd: int, grace: float) -> tuple[bool, int, float]:
    """Follow child ``pid``'s reports until it exits: ``(True, wait status, 0.0)``; or
    until one of its tasks outlives its limit by ``grace``: then kill the child and
    answer ``(False, the task's index, its start time)``."""
    import select

    running: tuple[int, float, float] | None = None  # index, start time, deadline
    pending = b""
    reading = True
    while True:
        wait = 0.5 if running is None else min(0.5, max(0.0, running[2] - time.monotonic()))
        if reading and select.select([read_fd], [], [], wait)[0]:
            data = os.read(read_fd, 4096)
            reading = bool(data)  # end of file: the child is exiting
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode().partition(" ")
                if kind == "S":
                    index, _, limit = rest.partition(" ")
                    deadline = time.monotonic() + float(limit) + grace
                    running = (int(index), time.time(), deadline)
                elif kind == "E":
                    running = None
        elif not reading:
            time.sleep(wait)
        if running is not None and time.monotonic() >= running[2]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False, running[0], running[1]
        if not reading:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return True, status, 0.0


def main(argv: list[str]) -> int:
    """``BATCH OUTPUT_DIR [CANCEL_DIR]``: run a batch file's tasks, one outcome file each."""
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: BATCH OUTPUT_DIR [CANCEL_DIR]\n")
        return 2
    with open(argv[0], "rb") as file:
        batch = _pickle.load(file)
    cancel_dir = argv[2] if len(argv) == 3 else None
    if any(task.get("time_limit") is not None for task in batch["tasks"]):
        return supervise(batch, argv[1], cancel_dir)
    Runner(argv[1], cancel_dir).run(batch)
    return 0


# -- in a container without a shared file system: blobs over SAS URLs ------------------

#: Seconds a blob request may be retried for (Storage answers 503 under load).
BLOB_RETRY_SECONDS = 600.0
#: Seconds between two looks at the chunk's cancel blob.
CANCEL_PERIOD = 1.0


class _Blobs:
    """The container's side of Blob Storage, standard library only: GET through read SAS
    URLs, and Put Blob through a create-only (``sp=c``) SAS URL of the container."""

    def __init__(self, container_url: str, version: str | None) -> None:
        base, _, self.query = container_url.partition("?")
        self.base = base.rstrip("/")
        self.version = version

    def _send(
        self, request: Any, allowed: tuple[int, ...] = (), again: tuple[int, ...] = ()
    ) -> tuple[int, bytes, Any]:
        """Send ``request``, retrying what Storage says is passing; ``allowed`` statuses
        (and ``again`` ones on a retry) answer instead of raising."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + BLOB_RETRY_SECONDS
        delay = 0.5
        retry = False
        while True:
            try:
                with urllib.request.urlopen(request, timeout=120) as answer:
                    return answer.status, answer.read(), answer.headers
            except urllib.error.HTTPError as exc:
                if exc.code in allowed or (retry and exc.code in again):
                    return exc.code, b"", exc.headers
                if exc.code not in (408, 429, 500, 502, 503, 504) or time.monotonic() > deadline:
                    raise
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
            retry = True

    def get(self, url: str, etag: str | None = None) -> tuple[int, bytes, str | None]:
        """``(status, body, etag)`` of the blob a read SAS URL names: 404 and 304 answer."""
        import urllib.request

        headers = {"x-ms-version": self.version} if self.version else {}
        if etag:
            headers["If-None-Match"] = etag
        request = urllib.request.Request(url, headers=headers)
        status, body, answer_headers = self._send(request, allowed=(304, 404))
        return status, body, answer_headers.get("ETag") if answer_headers else None

    def create(self, name: str, data: bytes) -> None:
        """Create blob ``name`` once: one that exists already (a retry) is left as it is."""
        import urllib.parse
        import urllib.request

        url = f"{self.base}/{urllib.parse.quote(name)}?{self.query}"
        headers = {
            "x-ms-blob-type": "BlockBlob",
            "If-None-Match": "*",
            "Content-Type": "application/octet-stream",
        }
        if self.version:
            headers["x-ms-version"] = self.version
        request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
        # A create-only SAS meets a blob that exists with 403 (409 under Shared Key): on
        # a retry, that is the first try's blob.
        self._send(request, allowed=(409,), again=(403,))


def serve_blobs(directory: str) -> int:
    """Run a chunk in a container, its files in Blob Storage (see :data:`BOOT_BLOB`).

    The environment names: ``ASYNCEXEC_BATCH`` (read SAS URL of the chunk's
    input), ``ASYNCEXEC_CANCEL`` (read SAS URL of its cancel blob: task ids, one a
    line), ``ASYNCEXEC_OUT`` (create-only SAS URL of the storage container),
    ``ASYNCEXEC_PREFIX`` (the array's blob prefix), ``ASYNCEXEC_INDEX`` (the
    chunk's) and ``ASYNCEXEC_BLOB_VERSION``. It writes ``log/<index>.started``,
    then runs the chunk as :func:`main` does, in a child process, and sends each
    outcome file (with the task's stdout and stderr files first) as soon as it
    is written; a task named in the cancel blob is skipped or interrupted. Once
    the child exits, ``log/<index>.err`` (the end of its stderr) and
    ``log/<index>.exit`` (its exit status) say the chunk is over. The container
    exits with the child's status.
    """
    import subprocess

    env = os.environ
    prefix, index = env["ASYNCEXEC_PREFIX"].strip("/"), env["ASYNCEXEC_INDEX"]
    blobs = _Blobs(env["ASYNCEXEC_OUT"], env.get("ASYNCEXEC_BLOB_VERSION"))
    status, data, _ = blobs.get(env["ASYNCEXEC_BATCH"])
    if status != 200:
        sys.stderr.write(f"asyncexec: the chunk's input is missing (HTTP {status})\n")
        return 2
    batch = _pickle.loads(data)
    out = os.path.join(directory, "out")
    cancel = os.path.join(directory, "cancel")
    os.mkdir(out, 0o700)
    os.mkdir(cancel, 0o700)
    for task in batch["tasks"]:  # the task's own output files: here, then sent
        for key, suffix in (("stdout_path", ".stdout"), ("stderr_path", ".stderr")):
            if task.get(key):
                task[key] = os.path.join(out, task["task_id"] + suffix)
    batch_path = os.path.join(directory, "in.bin")
    with open(batch_path, "wb") as file:
        _pickle.dump(batch, file, protocol=5)
    blobs.create(f"{prefix}/log/{index}.started", os.uname().nodename.encode())
    err_path = os.path.join(directory, "stderr")
    with open(err_path, "wb") as err:
        argv = [sys.executable, "-c", BOOT, directory, batch_path, out, cancel]
        child = subprocess.Popen(argv, stderr=err)
    sent: set[str] = set()
    etag: str | None = None
    cancel_url = env.get("ASYNCEXEC_CANCEL")
    next_look = 0.0
    while True:
        try:
            code: int | None = child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            code = None
        _send_outcomes(blobs, prefix, out, sent)
        if code is not None:
            break
        if cancel_url and time.monotonic() >= next_look:
            next_look = time.monotonic() + CANCEL_PERIOD
            try:
                status, data, tag = blobs.get(cancel_url, etag)
            except OSError as exc:  # looked at again next time
                sys.stderr.write(f"asyncexec: cannot read the cancel blob: {exc}\n")
                continue
            if status == 200:
                etag = tag
                for task_id in data.decode().split():
                    with open(os.path.join(cancel, os.path.basename(task_id)), "wb"):
                        pass
    with open(err_path, "rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - TAIL_BYTES))
        tail = file.read()
    sys.stderr.buffer.write(tail)
    sys.stderr.flush()
    status_code = code if code >= 0 else 128 - code
    blobs.create(f"{prefix}/log/{index}.err", tail)
    blobs.create(f"{prefix}/log/{index}.exit", str(status_code).encode())
    return status_code


def _send_outcomes(blobs: _Blobs, prefix: str, out: str, sent: set[str]) -> None:
    """Send the outcome files written since the last look (a task's output files
    first: the driver reads them once it sees the outcome)."""
    for name in sorted(os.listdir(out)):
        if not name.endswith(".bin") or name.startswith(".") or name in sent:
            continue
        stem = name[: -len(".bin")]
        for suffix in (".stdout", ".stderr"):
            path = os.path.join(out, stem + suffix)
            if os.path.exists(path):
                with open(path, "rb") as file:
                    blobs.create(f"{prefix}/out/{stem}{suffix}", file.read())
        with open(os.path.join(out, name), "rb") as file:
            blobs.create(f"{prefix}/out/{name}", file.read())
        sent.add(name)


# -- index-addressed sweeps: one payload per array, outcomes appended per array task ---
#
# An indexed array (asyncexec.launchers.batch.indexed) stages ONE payload for all its
# array tasks: the function once, and the runs as sections, one per array task, each
# found through the payload's header. Array task N runs its section's runs in order and
# appends each run's outcome, as a framed record, to out/N.rec: two files per array
# task on the shared file system (that one, and the scheduler's log), however many runs.

#: What the job script of an indexed array runs: this file, then :func:`main_indexed`.
BOOT_INDEXED = (
    "import sys;sys.path.insert(0,sys.argv[1]);import _asyncexec_oneshot as m;"
    "del sys.path[0];sys.exit(m.main_indexed(sys.argv[1:]))"
)
#: The version of an indexed payload.
INDEXED_FORMAT = 1
#: A record: this magic, its body's length (4 bytes, big-endian), the CRC-32 of those 4
#: bytes, the CRC-32 of the body, then the body (a pickled dict of builtins).
RECORD_MAGIC = b"AXR1"
RECORD_HEADER = 16
#: Seconds at most between a record's write and its fsync (a background thread syncs
#: what was written; the array task's end syncs the rest).
SYNC_PERIOD = 1.0
#: Array tasks that may end (a node failure, a kill, a crash of the interpreter) while
#: the same run runs, before that run is recorded ``lost`` rather than run again.
LOST_AFTER = 2


def frame_record(record: dict[str, Any]) -> bytes:
    """One record of an array task's outcome file: header, then the pickled ``record``."""
    import binascii

    body = _pickle.dumps(record, protocol=5)
    size = len(body).to_bytes(4, "big")
    return (
        RECORD_MAGIC
        + size
        + binascii.crc32(size).to_bytes(4, "big")
        + binascii.crc32(body).to_bytes(4, "big")
        + body
    )


def split_records(data: bytes, start: int = 0) -> tuple[list[bytes], int]:
    """The bodies of the whole records of ``data`` from ``start``, and where to read from
    next time (the start of a record still being written, or the end).

    Bytes that are no record (what a writer killed mid-write left, then padded by the
    next one: see :func:`pad_torn`) are skipped up to the next record's magic.
    """
    import binascii

    bodies: list[bytes] = []
    at, end = start, len(data)
    while at < end:
        if end - at < RECORD_HEADER:
            if data[at : at + 4] == RECORD_MAGIC[: min(4, end - at)]:
                break  # a header being written
        elif data[at : at + 4] == RECORD_MAGIC:
            size_bytes = data[at + 4 : at + 8]
            if binascii.crc32(size_bytes) == int.from_bytes(data[at + 8 : at + 12], "big"):
                size = int.from_bytes(size_bytes, "big")
                if end - at < RECORD_HEADER + size:
                    break  # a body being written
                body = data[at + RECORD_HEADER : at + RECORD_HEADER + size]
                if binascii.crc32(body) == int.from_bytes(data[at + 12 : at + 16], "big"):
                    bodies.append(body)
                    at += RECORD_HEADER + size
                    continue
        following = data.find(RECORD_MAGIC, at + 1)
        at = following if following >= 0 else max(at + 1, end - 3)
    return bodies, at


def pad_torn(data: bytes, consumed: int) -> bytes:
    """Zeros that make the torn record at ``consumed`` (its writer is dead) whole but
    invalid, so that readers skip it and read what is appended after it."""
    rest = len(data) - consumed
    if rest <= 0:
        return b""
    if rest >= RECORD_HEADER:  # a whole header (split_records checked it): the body is short
        size = int.from_bytes(data[consumed + 4 : consumed + 8], "big")
        return bytes(RECORD_HEADER + size - rest)
    return bytes(RECORD_HEADER - rest)


class _BuiltinRecords(_pickle.Unpickler):
    """A record holds builtins only."""

    def find_class(self, module: str, name: str) -> Any:
        raise _pickle.UnpicklingError(f"a record may not name {module}.{name}")


def load_record(body: bytes) -> dict[str, Any]:
    """A record's dict (builtins only)."""
    record = _BuiltinRecords(io.BytesIO(body)).load()
    if not isinstance(record, dict):
        raise ValueError(f"a record holds a {type(record).__name__}, not a dict")
    return record


def read_payload(path: str, index: int) -> tuple[dict[str, Any], list[str], bytes]:
    """An indexed payload's header, and the keys and pickled calls of section ``index``.

    The file: the header's length (8 bytes, big-endian), the header (a pickled dict:
    ``format``, ``python``, ``cloudpickle``, ``fn``, ``sections`` as ``(offset, keys'
    length, calls' length)`` from the end of the header, and the runs' options), then
    the sections: each the pickled list of its runs' keys, then the pickled list of
    their ``(args, kwargs)``.
    """
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "big")
        header = _pickle.loads(file.read(size))
        offset, keys_size, calls_size = header["sections"][index]
        file.seek(8 + size + offset)
        keys = _pickle.loads(file.read(keys_size))
        calls = file.read(calls_size)
    return header, keys, calls


def blame(records: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, int]:
    """How many earlier array tasks of the slot ended while each run ran.

    Each attempt appends a ``begin`` record, then its runs' records, in ``keys``'
    order, skipping those recorded: an attempt followed by another one (or by this
    one) ended while its first run without a record ran.
    """
    done: set[str] = set()
    deaths: dict[str, int] = {}
    began = False
    for record in [*records, {"kind": "begin"}]:
        if record.get("kind") == "begin":
            if began:
                culprit = next((key for key in keys if key not in done), None)
                if culprit is not None:
                    deaths[culprit] = deaths.get(culprit, 0) + 1
            began = True
        else:
            done.add(str(record.get("task_id")))
    return deaths


class IndexedRunner(Runner):
    """Runs one array task's section of an indexed payload, appending a record per run."""

    def __init__(self, fd: int, scratch_dir: str) -> None:
        super().__init__(scratch_dir, None)
        self.fd = fd
        self.dirty = False
        self.syncing = False
        self.key = ""  # the run running
        self.error: BaseException | None = None  # what its last attempt raised
        self.retry_on: tuple[type[BaseException], ...] | None = None  # loaded when needed

    def keep(self, outcome: dict[str, Any]) -> None:
        """Append the run's record: whole, in one write (O_APPEND)."""
        outcome.setdefault("kind", "run")
        data = frame_record(outcome)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.dirty = True
        if not self.syncing:
            import _thread

            self.syncing = True
            _thread.start_new_thread(self._sync, ())

    def _sync(self) -> None:
        while True:
            time.sleep(SYNC_PERIOD)
            if self.dirty:
                self.dirty = False
                with contextlib.suppress(OSError):
                    os.fsync(self.fd)

    def run_section(
        self, header: dict[str, Any], keys: list[str], calls: bytes, done: set[str]
    ) -> None:
        """Run the section's runs not in ``done``, in order, one record each."""
        refusal = None
        if header.get("format") != INDEXED_FORMAT:
            refusal = f"payload format {header.get('format')!r}, this runner reads {INDEXED_FORMAT}"
        elif header["python"] != self.python:
            refusal = (
                f"version mismatch: python {header['python']} on the driver"
                f" but {self.python} on the worker"
            )
        if refusal is not None:
            for key in keys:
                if key not in done:
                    self.keep(self.outcome(key, "refused", error=problem(refusal)))
            return
        version = header.get("cloudpickle")
        loaded: list[Any] = []

        def load_all() -> tuple[Any, list[Any]]:
            if not loaded:
                try:
                    loaded.append((self.loads(header["fn"], version), self.loads(calls, version)))
                except BaseException as exc:  # every run of the section says why
                    loaded.append(exc)
            if isinstance(loaded[0], BaseException):
                raise loaded[0]
            fn, every = loaded[0]
            return fn, every

        time_limit = header.get("time_limit")
        scratch = self.output_dir

        def call(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[str, Any, BaseException | None]:
            ended = self.call(self.key, fn, args, kwargs, time_limit, None)
            self.error = ended[2]
            return ended

        def capture() -> contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]:
            # (The same two anonymous files for every run of the section: fd_capture
            # keeps them.)
            return fd_capture(None, None, scratch)

        retries = int(header.get("retries") or 0)
        # The executor's hooks: setup before the first run that runs here, teardown
        # after the last (as the chunk runner's); a setup that fails refuses the runs.
        self.setup_hook = header.get("setup")
        self.teardown_hook = header.get("teardown")
        for position, key in enumerate(keys):
            if key in done:
                continue
            self.key = key
            failed = self.set_up(version)
            if failed is not None:
                self.keep(self.outcome(key, "refused", error=failed))
                continue

            def load(
                at: int = position,
            ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
                fn, every = load_all()
                args, kwargs = every[at]
                return fn, tuple(args), dict(kwargs)

            attempt = 1
            while True:
                self.error = None
                ran = run_task(
                    load,
                    env=header.get("env") or {},
                    memory_mb=header.get("memory_mb"),
                    capture=capture if header.get("capture") else None,
                    call=call,
                )
                if attempt > retries or not self.worth_retry(header, ran[0], version):
                    break
                backoff = float(header.get("retry_backoff") or 0.0) * 2 ** (attempt - 1)
                time.sleep(min(backoff, float(header.get("retry_backoff_max") or 0.0)))
                attempt += 1
            outcome = self.outcome(key, ran[0], attempts=attempt)
            outcome.update(zip(RAN_FIELDS, ran, strict=True))
            self.keep(outcome)
        self.tear_down()

    def worth_retry(self, header: dict[str, Any], status: str, version: str | None) -> bool:
        """Whether a run that ended ``status`` is tried again, as the driver's
        ``retry_on`` says (matched here against what the run raised)."""
        if status == "timeout":
            return bool(header.get("retry_timeouts"))
        if status != "raised":
            return False
        if header.get("retry_raised"):
            return True  # retry_on matches every remote error (Exception, say)
        if self.retry_on is None:
            try:
                self.retry_on = tuple(self.loads(header["retry_on"], version))
            except Exception:
                self.retry_on = ()
        return self.error is not None and isinstance(self.error, self.retry_on)


def main_indexed(argv: list[str]) -> int:
    """``WORKDIR INDEX``: run array task INDEX of the indexed array staged in WORKDIR.

    Reads its section of ``payload.bin``; reads ``out/INDEX.rec`` (what earlier
    attempts of this array task recorded: those runs are skipped, and a run two
    attempts ended during is recorded ``lost``, see :data:`LOST_AFTER`); appends a
    ``begin`` record, then one record per run as it ends.
    """
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: WORKDIR INDEX\n")
        return 2
    workdir, index = argv[0], int(argv[1])
    header, keys, calls = read_payload(os.path.join(workdir, "payload.bin"), index)
    path = os.path.join(workdir, "out", f"{index}.rec")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        existing = b"".join(chunks)
        bodies, consumed = split_records(existing)
        padding = pad_torn(existing, consumed)
        if padding:
            os.write(fd, padding)
        records = []
        for body in bodies:
            with contextlib.suppress(Exception):
                records.append(load_record(body))
        done = {str(r.get("task_id")) for r in records if r.get("kind") != "begin"}
        deaths = blame(records, keys)
        runner = IndexedRunner(fd, os.environ.get("TMPDIR") or "/tmp")
        runner.keep(
            {"kind": "begin", "host": runner.host, "pid": runner.pid, "started": time.time()}
        )
        most = max(LOST_AFTER, int(header.get("retries") or 0) + 1)
        for key, count in deaths.items():
            if count >= most and key not in done:
                message = (
                    f"its array task ended {count} times while it ran (a crash of the "
                    "interpreter, the memory limit, a node failure or a kill): not run again"
                )
                error = {"type_name": "WorkerLost", "message": message, "traceback": ""}
                runner.keep(runner.outcome(key, "lost", error=error, state="LOST"))
                done.add(key)
        runner.run_section(header, keys, calls, done)
        sys.stdout.flush()
        sys.stderr.flush()
        os.fsync(fd)
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
