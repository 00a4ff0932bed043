"""The one worker, run as ``python -m asyncexec.worker``.

Two modes share one :func:`execute`:

``serve --fd N`` or ``serve --stdio``
    Long-lived, for pools. Speaks length-framed msgpack over the socket ``N``
    (the task's stdout and stderr stay the worker's own) or over stdin and
    stdout (for SSH channels and attached containers; the task's stdout then
    goes to stderr). It sends :class:`Hello`, receives :class:`Setup`, answers
    :class:`Ready`, then runs the :class:`TaskSpec` s it receives in order
    until the driver closes the channel, answering each with an
    :class:`Outcome`. The driver may send tasks ahead (they wait in the
    worker's queue); a :class:`Cancel` for a task still queued drops it, with a
    ``cancelled`` Outcome. Output can also be captured per task.

``run --input FILE --output FILE``
    One-shot, for remote backends. Reads a :class:`Batch` (``-`` for stdin),
    refuses it if the driver's versions differ, runs its tasks and writes a
    :class:`Results` atomically (temporary file, then rename; ``-`` for stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

from ._codec import (
    HEADER,
    decode_message,
    describe_exception,
    dumps,
    encode_frame,
    hostname,
    loads,
    versions,
)
from ._exceptions import SerializationError
from ._files import write_atomically
from ._messages import (
    Batch,
    Cancel,
    ErrorInfo,
    Hello,
    Outcome,
    OutcomeStatus,
    Ready,
    Results,
    Setup,
    TaskSpec,
    Versions,
)

__all__ = ["TAIL_BYTES", "execute", "main", "run_batch", "run_once", "serve", "version_mismatch"]

#: How much of a task's captured stdout and stderr comes back with its outcome.
TAIL_BYTES = 64 * 1024

_HOST = hostname()

OutputCapture = Callable[
    [TaskSpec], contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]
]


class _SoftTimeout(BaseException):
    """Raised inside a one-shot task when its time limit passes."""


class _SoftCancel(BaseException):
    """Raised inside a one-shot task when it is cancelled where it runs."""


def version_mismatch(driver: Versions, worker: Versions) -> str | None:
    """Say what differs between a driver's and a worker's versions, if anything."""
    problems = [
        f"{field} {getattr(driver, field)} on the driver but {getattr(worker, field)} on the worker"
        for field in ("python", "cloudpickle", "asyncexec")
        if getattr(driver, field) != getattr(worker, field)
    ]
    if not problems:
        return None
    return "version mismatch: " + "; ".join(problems)


def execute(
    spec: TaskSpec, *, capture: OutputCapture | None = None, enforce_time_limit: bool = False
) -> Outcome:
    """Run one task and describe what became of it. Never raises for the task's errors.

    Args:
        spec: the task.
        capture: how to capture output when ``spec.capture_output`` is set;
            by default the process's file descriptors 1 and 2 are redirected.
        enforce_time_limit: interrupt the function at ``spec.time_limit`` (with
            SIGALRM; main thread only). Pools leave this to the driver, which kills.
    """
    started = time.time()
    outcome = Outcome(
        task_id=spec.task_id, status="ok", started=started, pid=os.getpid(), host=_HOST
    )
    try:
        fn = loads(spec.fn)
        args, kwargs = loads(spec.args)
    except SerializationError as exc:
        outcome.status = "unpicklable"
        outcome.error = _error(exc, f"cannot unpickle the task: {exc}")
        outcome.finished = time.time()
        return outcome
    wants_capture = spec.capture_output or spec.stdout_path or spec.stderr_path
    capturing = (capture or _fd_capture)(spec) if wants_capture else contextlib.nullcontext(None)
    time_limit = spec.time_limit if enforce_time_limit else None
    value = None
    try:
        with _environment(spec.env), _memory_limit(spec.memory_mb), capturing as tails:
            try:
                with _alarm(time_limit):
                    value = fn(*args, **kwargs)
            except _SoftTimeout:
                outcome.status = "timeout"
            except _SoftCancel:
                outcome.status = "cancelled"
            except BaseException as exc:  # the task's own errors, SystemExit included
                outcome.status = "raised"
                outcome.error = describe_exception(exc, skip_frames=1)  # not execute() itself
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
        if tails is not None:
            outcome.stdout, outcome.stderr = tails()
    except Exception as exc:  # setting the task up failed: a log file that cannot be opened...
        outcome.status = "raised"
        outcome.error = describe_exception(exc)
        value = None
    if outcome.status == "ok":
        try:
            outcome.value = dumps(value)
        except SerializationError as exc:
            outcome.status = "unpicklable"
            outcome.error = _error(exc, f"the task's result cannot be pickled: {exc}")
    outcome.finished = time.time()
    return outcome


def _error(exc: BaseException, message: str) -> ErrorInfo:
    info = describe_exception(exc)
    info.message = message
    return info


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
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
def _memory_limit(memory_mb: int | None) -> Iterator[None]:
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


def _read_tail(stream: IO[bytes]) -> str:
    stream.flush()
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - TAIL_BYTES))
    return stream.read().decode("utf-8", "replace")


@contextlib.contextmanager
def _fd_capture(spec: TaskSpec) -> Iterator[Callable[[], tuple[str, str]]]:
    """Redirect file descriptors 1 and 2 into files for the duration of a task.

    File-level redirection also catches what C extensions and child processes
    write. Without a ``stdout_path``/``stderr_path`` the files are temporary.
    """
    files: list[IO[bytes]] = []
    try:  # open both before redirecting either: a bad path leaves nothing redirected
        for path in (spec.stdout_path, spec.stderr_path):
            files.append(open(path, "ab+") if path else tempfile.TemporaryFile())  # noqa: SIM115
    except BaseException:
        for opened in files:
            opened.close()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[int] = []
    for fd, target in zip((1, 2), files, strict=True):
        saved.append(os.dup(fd))
        os.dup2(target.fileno(), fd)
    tails: list[str] = ["", ""]
    try:
        yield lambda: (tails[0], tails[1])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for index, (fd, old) in enumerate(zip((1, 2), saved, strict=True)):
            os.dup2(old, fd)
            os.close(old)
            tails[index] = _read_tail(files[index])
            files[index].close()


# -- long-lived mode -------------------------------------------------------------


class _Channel:
    """Frames over a pair of blocking file descriptors (one socket, or stdin and stdout)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.buffer = bytearray()
        self.ended = False

    def take(self, wait: bool) -> list[Any] | None:
        """The messages that have arrived (at least one if ``wait``); None once input ended."""
        messages = self._frames()
        while not self.ended and ((wait and not messages) or self._readable()):
            data = os.read(self.read_fd, 1 << 20)
            if not data:
                self.ended = True
                break
            self.buffer += data
            messages.extend(self._frames())
        if not messages and self.ended:
            return None
        return messages

    def _readable(self) -> bool:
        return bool(select.select([self.read_fd], [], [], 0)[0])

    def _frames(self) -> list[Any]:
        messages = []
        buffer = self.buffer
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                messages.append(decode_message(view[start + HEADER.size : end]))
            start = end
        if start:
            del buffer[:start]
        return messages

    def send(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        with memoryview(data) as view:
            while view:
                written = os.write(self.write_fd, view)
                view = view[written:]


def _stdio_channel() -> _Channel:
    """Take stdin/stdout for the protocol; the task's prints then go to stderr."""
    sys.stdout.flush()
    reader = os.dup(0)
    writer = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return _Channel(reader, writer)


def serve(fd: int | None = None) -> int:
    """Run the TaskSpecs received, in order, until the driver closes the channel.

    Args:
        fd: a connected socket to speak on; None: stdin and stdout (for SSH
            channels and attached containers), with the task's stdout sent to stderr.
    """
    channel = _stdio_channel() if fd is None else _Channel(fd, fd)
    _die_with_parent(or_session=fd is None)
    channel.send([encode_frame(Hello(versions=versions(), pid=os.getpid(), host=hostname()))])
    queue: deque[TaskSpec] = deque()
    out: list[bytes] = []  # frames to send, written together
    while True:
        if out:  # before the next task starts, which may take long
            channel.send(out)
            out = []
        messages = channel.take(wait=not queue)
        if messages is None:
            return 0
        for message in messages:
            if isinstance(message, TaskSpec):
                queue.append(message)
            elif isinstance(message, Cancel):
                out.extend(_drop(queue, message.task_id))
            elif isinstance(message, Setup):
                out.append(encode_frame(_setup(message)))
        if not queue:
            continue
        spec = queue.popleft()
        out.append(encode_frame(execute(spec)))
        del spec


def _drop(queue: deque[TaskSpec], task_id: str) -> list[bytes]:
    """Remove a queued task; the frame of its ``cancelled`` Outcome (none if not queued)."""
    for spec in queue:
        if spec.task_id == task_id:
            queue.remove(spec)
            cancelled = Outcome(task_id=task_id, status="cancelled", pid=os.getpid(), host=_HOST)
            return [encode_frame(cancelled)]
    return []  # it ran already: its Outcome was sent


def _setup(message: Setup) -> Ready:
    for entry in reversed(message.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if message.initializer is None:
        return Ready()
    try:
        initializer = loads(message.initializer)
        initializer()
    except BaseException as exc:
        return Ready(error=describe_exception(exc))
    return Ready()


def _die_with_parent(period: float = 0.5, *, or_session: bool = False) -> None:
    """Exit when the driver dies, even in the middle of a task, so none is left behind.

    The driver names itself in ``ASYNCEXEC_PARENT_PID`` (local pools). With
    ``or_session`` (a worker on stdin and stdout), the parent it has now stands
    for the driver: over SSH that is sshd's session process, which ends when
    the connection drops. (Linux's PR_SET_PDEATHSIG would be cheaper but
    follows the *thread* that spawned us, and trio spawns from worker threads
    that come and go.)
    """
    parent = os.environ.get("ASYNCEXEC_PARENT_PID")
    if parent is not None:
        expected = int(parent)
    elif or_session and os.getppid() > 1:  # not a container's init, not an orphan
        expected = os.getppid()
    else:
        return

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="asyncexec-parent-watch", daemon=True).start()


# -- one-shot mode ----------------------------------------------------------------


def run_batch(
    batch: Batch,
    *,
    output_dir: str | None = None,
    cancel_dir: str | None = None,
) -> Results:
    """Run every task of a batch, refusing it whole on a version mismatch.

    Args:
        batch: the tasks.
        output_dir: write each task's Outcome to ``<output_dir>/<task_id>.bin``
            (msgpack, atomically) as soon as it ends, so that what finished
            survives the worker being killed later (cluster jobs).
        cancel_dir: a task whose ``<cancel_dir>/<task_id>`` exists is not
            started (its Outcome says ``cancelled``), or is interrupted if it
            runs when the file appears.
    """
    mismatch = version_mismatch(batch.versions, versions())
    if mismatch is not None:
        error = ErrorInfo(type_name="LaunchError", message=mismatch, traceback="")
        outcomes = [
            Outcome(task_id=task.task_id, status="refused", error=error) for task in batch.tasks
        ]
        for outcome in outcomes:
            _keep(outcome, output_dir)
        return Results(outcomes=outcomes)
    outcomes = []
    for task in batch.tasks:
        marker = os.path.join(cancel_dir, task.task_id) if cancel_dir is not None else None
        if marker is not None and os.path.exists(marker):
            outcome = Outcome(task_id=task.task_id, status="cancelled", pid=os.getpid(), host=_HOST)
        else:
            finished: Outcome | None = None
            try:
                with _watchdog(task.time_limit), _cancel_watch(marker):
                    finished = execute(task, enforce_time_limit=True)
            except (_SoftTimeout, _SoftCancel) as interrupt:
                # Rang in the last instant, outside the task: what it produced stands.
                status: OutcomeStatus = (
                    "timeout" if isinstance(interrupt, _SoftTimeout) else "cancelled"
                )
                finished = finished or Outcome(
                    task_id=task.task_id, status=status, pid=os.getpid(), host=_HOST
                )
            outcome = finished
        _keep(outcome, output_dir)
        outcomes.append(outcome)
    return Results(outcomes=outcomes)


def _keep(outcome: Outcome, output_dir: str | None) -> None:
    if output_dir is not None:
        path = os.path.join(output_dir, f"{outcome.task_id}.bin")
        write_atomically(path, msgspec.msgpack.encode(outcome))


@contextlib.contextmanager
def _cancel_watch(marker: str | None, period: float = 0.5) -> Iterator[None]:
    """Interrupt the running task (with _SoftCancel) when ``marker`` appears."""
    if marker is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def interrupt(signum: int, frame: Any) -> None:
        if not stop.is_set():
            raise _SoftCancel

    def watch() -> None:
        while not stop.wait(period):
            if os.path.exists(marker):
                signal.pthread_kill(main, signal.SIGUSR2)
                return

    previous = signal.signal(signal.SIGUSR2, interrupt)
    watcher = threading.Thread(target=watch, name="asyncexec-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        try:
            stop.set()  # from now on the handler never raises
        finally:
            stop.set()
            watcher.join()
            signal.signal(signal.SIGUSR2, previous)


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise _SoftTimeout in the task when its time limit passes (main thread only)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _SoftTimeout

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _watchdog(seconds: float | None, grace: float = 10.0) -> Iterator[None]:
    """Code stuck in C never sees the alarm: end the whole worker ``grace`` s later."""
    if seconds is None:
        yield
        return
    watchdog = threading.Timer(seconds + grace, os._exit, args=(124,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def run_once(
    input_path: str,
    output_path: str,
    *,
    output_dir: str | None = None,
    cancel_dir: str | None = None,
) -> int:
    """One-shot mode: a Batch in, Results out (atomically); see :func:`run_batch`."""
    raw = sys.stdin.buffer.read() if input_path == "-" else open(input_path, "rb").read()  # noqa: SIM115
    batch = msgspec.msgpack.decode(raw, type=Batch)
    del raw
    if output_path == "none":  # the outcomes are in output_dir
        run_batch(batch, output_dir=output_dir, cancel_dir=cancel_dir)
    elif output_path == "-":
        # The results own stdout: what the tasks print goes to stderr.
        sys.stdout.flush()
        results_fd = os.dup(1)
        os.dup2(2, 1)
        data = msgspec.msgpack.encode(
            run_batch(batch, output_dir=output_dir, cancel_dir=cancel_dir)
        )
        sys.stdout.flush()
        with os.fdopen(results_fd, "wb") as out:
            out.write(data)
    else:
        data = msgspec.msgpack.encode(
            run_batch(batch, output_dir=output_dir, cancel_dir=cancel_dir)
        )
        write_atomically(output_path, data)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncexec.worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="long-lived worker (pools)")
    channel = serve_parser.add_mutually_exclusive_group(required=True)
    channel.add_argument("--fd", type=int, help="speak on this connected socket")
    channel.add_argument("--stdio", action="store_true", help="speak on stdin and stdout")
    run_parser = commands.add_parser("run", help="run one batch of tasks and exit")
    run_parser.add_argument("--input", default="-", help="Batch file, or - for stdin")
    run_parser.add_argument(
        "--output", default="-", help="Results file, - for stdout, none for no file"
    )
    run_parser.add_argument("--output-dir", help="also write each Outcome to DIR/<task id>.bin")
    run_parser.add_argument("--cancel-dir", help="skip or interrupt tasks named by files here")
    commands.add_parser("version", help="print the versions a driver must match")
    options = parser.parse_args(argv)
    if options.command == "serve":
        return serve(None if options.stdio else options.fd)
    if options.command == "run":
        return run_once(
            options.input,
            options.output,
            output_dir=options.output_dir,
            cancel_dir=options.cancel_dir,
        )
    current = versions()
    print(
        f"python {current.python} cloudpickle {current.cloudpickle} asyncexec {current.asyncexec}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
