"""The one worker of pools, run as ``python -m asyncexec.worker``.

``serve --fd N`` or ``serve --stdio [--finish]``
    Long-lived. Speaks length-framed msgpack over the socket ``N`` (the task's
    stdout and stderr stay the worker's own) or over stdin and stdout (for SSH
    channels and attached containers; the task's stdout then goes to stderr).
    It sends :class:`Hello`, receives :class:`Setup` (and runs the pool's
    ``setup`` hook), answers :class:`Ready`, then runs the :class:`TaskSpec` s
    it receives in order until the driver closes the channel, answering each
    with an :class:`Outcome`; then it runs the pool's ``teardown`` hook. The driver
    may send tasks ahead (they wait in the worker's queue); a :class:`Cancel`
    for a task still queued drops it, with a ``cancelled`` Outcome (a thread
    reads messages while a task runs). Output can also be captured per task.

    The driver closes the channel only when the worker is idle: the channel
    ending while a task runs means the driver is gone (killed, or its
    connection dropped), and so does a local or SSH worker's parent changing.
    Either way, and whenever it exits, the worker kills every process its
    tasks started (its descendants, and what is left in its process group).
    The ``teardown`` hook runs only when the channel ends while the worker is
    idle (a graceful close, a retiring worker), not when it is killed, nor when
    the driver goes in the middle of a task; what it raises is printed on the
    worker's stderr.
    With ``--finish`` (one-shot containers, whose output the engine keeps) the
    task running when the driver goes finishes first, and its Outcome is
    written out for another driver to collect.

``version``
    Prints the versions a driver must match.

Each task runs as everywhere else, through :func:`asyncexec._runtime.run_task`;
cluster jobs run the runner in that same file instead of this worker (it needs
only the standard library, and starts faster).
"""

from __future__ import annotations

import _pickle
import contextlib
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._affinity import cpus_refusal, pinned, usable_cpus
from ._codec import (
    cloudpickle_version,
    describe_exception,
    encode_frame,
    hostname,
    versions,
)
from ._messages import (
    Cancel,
    ErrorInfo,
    Hello,
    Outcome,
    Ready,
    Setup,
    TaskSpec,
    Versions,
)
from ._pickle_cache import LoadedFunctions
from ._runtime import Refused, TaskUnpickler, end_kept_capture, fd_capture, run_task
from ._worker_channel import WorkerChannel, stdio_channel

__all__ = ["execute", "main", "serve", "version_mismatch"]

_HOST = hostname()
#: The version the handshake compares with the driver's (cloudpickle not imported).
_CLOUDPICKLE = cloudpickle_version()

OutputCapture = Callable[
    [TaskSpec], contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]
]


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


def execute(spec: TaskSpec, *, capture: OutputCapture | None = None) -> Outcome:
    """Run one task and describe what became of it. Never raises for the task's errors.

    The task runs as everywhere else (:func:`asyncexec._runtime.run_task`), pinned
    to CPUs where it asks for some (:func:`asyncexec._affinity.pinned`).

    Args:
        spec: the task.
        capture: how to capture output when ``spec.capture_output`` is set;
            by default the process's file descriptors 1 and 2 are redirected.
    """

    def load() -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        fn = _functions.load(spec.fn)
        args, kwargs = _loads(spec.args, spec.buffers)
        return fn, args, kwargs

    status, value, error, started, finished, stdout, stderr = run_task(
        load,
        env=spec.env,
        memory_mb=spec.memory_mb,
        capture=(lambda: (capture or _fd_capture)(spec)) if _wants_capture(spec) else None,
        pin=(lambda: _pinning(spec)) if spec.cpus is not None else None,
    )
    return Outcome(
        task_id=spec.task_id,
        status=status,  # type: ignore[arg-type]  # (one of the statuses: see run_task)
        value=value,
        error=None if error is None else ErrorInfo(**error),
        started=started,
        finished=finished,
        pid=os.getpid(),
        host=_HOST,
        stdout=stdout,
        stderr=stderr,
    )


def _pinning(spec: TaskSpec) -> contextlib.AbstractContextManager[None]:
    """What pins the task to the CPUs it asks for; Refused if this worker cannot."""
    assert spec.cpus is not None
    refusal = cpus_refusal(spec.cpus)
    if refusal is not None:
        raise Refused(refusal)
    return pinned(spec.cpus, spec.affinity)


def _wants_capture(spec: TaskSpec) -> bool:
    return bool(spec.capture_output or spec.stdout_path or spec.stderr_path or spec.whole_output)


def _fd_capture(
    spec: TaskSpec, keep: bool = False
) -> contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]:
    import tempfile  # not at start: it costs a worker's start about 10 ms

    return fd_capture(
        spec.stdout_path,
        spec.stderr_path,
        tempfile.gettempdir(),
        whole=spec.whole_output,
        at_end=spec.logs_at_end,
        keep=keep,
    )


def _kept_fd_capture(
    spec: TaskSpec,
) -> contextlib.AbstractContextManager[Callable[[], tuple[str, str]]]:
    """A long-lived worker's capture: 1 and 2 stay on the capture files from one task
    whose logs are written at its end to the next (see :func:`fd_capture`)."""
    return _fd_capture(spec, keep=True)


def _loads(data: bytes, buffers: tuple[bytes, ...] = ()) -> Any:
    """Unpickle a task's part; a function sent by value loads without cloudpickle."""
    # (Scanning costs about 0.5 ms a MiB: large pickles go through the unpickler.)
    if len(data) <= 65536 and b"cloudpickle" not in data:
        return _pickle.loads(data, buffers=buffers)
    return TaskUnpickler(data, _CLOUDPICKLE, _import_cloudpickle, buffers).load()


def _import_cloudpickle(version: str | None) -> None:
    import cloudpickle  # noqa: F401  (the handshake checked its version)


#: The task callables this worker loaded, kept while loading again would give the same.
_functions = LoadedFunctions(_loads)


# -- long-lived mode -------------------------------------------------------------


def serve(fd: int | None = None, *, finish: bool = False) -> int:
    """Run the TaskSpecs received, in order, until the driver closes the channel.

    Meant to be the whole of a process (``python -m asyncexec.worker serve``): when
    it ends, or the driver goes, every process descending from this one (and the
    rest of its process group, if it leads one) is killed (:func:`_kill_tree`).

    Args:
        fd: a connected socket to speak on; None: stdin and stdout (for SSH
            channels and attached containers), with the task's stdout sent to stderr.
        finish: the channel ending while a task runs does not kill it: the task
            finishes and its outcome is written out before the worker exits (a
            one-shot container, whose output the engine keeps for another driver
            to collect: ``serve --stdio --finish``).
    """
    channel = stdio_channel() if fd is None else WorkerChannel(fd, fd, is_socket=True)
    _die_with_parent(or_session=fd is None)
    hello = Hello(versions=versions(), pid=os.getpid(), host=hostname(), affinity=usable_cpus())
    channel.send([encode_frame(hello)])
    queue: deque[TaskSpec] = deque()
    # Held here but while a task runs: then the watcher may use the channel.
    between_tasks = threading.Lock()
    between_tasks.acquire()
    limited = [False]  # a task with a memory limit runs: the watcher reads nothing then
    failed = _watch_while_running(channel, queue, between_tasks, limited, finish)
    try:
        return _serve(channel, queue, between_tasks, limited, failed)
    finally:
        end_kept_capture()  # (before the exit's messages, if any)


def _serve(
    channel: WorkerChannel,
    queue: deque[TaskSpec],
    between_tasks: threading.Lock,
    limited: list[bool],
    failed: list[BaseException],
) -> int:
    """:func:`serve`'s loop."""
    out: list[bytes] = []  # frames to send, written together
    while True:
        if out:  # before the next task starts, which may take long
            channel.send(out)
            out = []
        messages = channel.take(wait=not queue)
        if messages is None:
            end_kept_capture()
            _tear_down()  # idle, and told no more tasks come: a normal end
            _kill_tree()  # what earlier tasks left running goes with the worker
            return 0
        _handle(messages, queue, out)
        if out or not queue:
            continue  # answers go first (a Cancel's: its caller waits)
        spec = queue.popleft()
        if not (spec.logs_at_end and _wants_capture(spec)):
            end_kept_capture()  # (else the task's output would go where the last one's went)
        if spec.memory_mb is None:
            between_tasks.release()
            outcome = execute(spec, capture=_kept_fd_capture)
            between_tasks.acquire()
        else:  # the task's limit binds the whole process: the watcher would allocate
            limited[0] = True
            outcome = execute(spec, capture=_kept_fd_capture)
            limited[0] = False
        out.append(encode_frame(outcome))
        del spec, outcome
        if failed:  # the watcher could not read: this task's outcome goes first
            channel.send(out)
            raise failed[0]


def _handle(messages: list[Any], queue: deque[TaskSpec], out: list[bytes]) -> None:
    """Take what the driver sent: tasks join the queue; answers go to ``out``."""
    for message in messages:
        if isinstance(message, TaskSpec):
            queue.append(message)
        elif isinstance(message, Cancel):
            out.extend(_drop(queue, message.task_id))
        elif isinstance(message, Setup):
            out.append(encode_frame(_setup(message)))


#: How often the watcher looks for messages while a task runs (seconds).
_WATCH_PERIOD = 0.05


def _watch_while_running(
    channel: WorkerChannel,
    queue: deque[TaskSpec],
    lock: threading.Lock,
    limited: list[bool],
    finish: bool = False,
) -> list[BaseException]:
    """Read the channel while a task runs, so a Cancel for a task queued behind it is
    answered at once, not once the running one ends (which may take hours).

    The lock is free only while a task runs: the watcher then reads and answers in
    the main loop's stead, and holds the lock meanwhile. It never blocks on input.
    While a task with a memory limit runs (``limited``), the main loop keeps the
    lock and the watcher only asks whether the driver hung up (the channel's peer
    is gone), reading nothing. The driver gone, the running task is killed, unless
    ``finish`` (see :func:`serve`). Returns where it puts what it raised, if it does:
    the main loop raises it once the running task's outcome is sent (that task is
    not lost).
    """
    failed: list[BaseException] = []
    # Its own poll object (the main loop's may be in use); with no event asked for,
    # poll still reports POLLHUP: a pipe without writers, a socket whose peer closed.
    hangups = select.poll()
    hangups.register(channel.read_fd, 0)

    def watch() -> None:
        while True:
            time.sleep(_WATCH_PERIOD)
            if not lock.acquire(blocking=False):
                if limited[0] and not finish and _hung_up(hangups):
                    _kill_tree()  # the driver is gone (see serve)
                    os._exit(1)
                continue  # between tasks: the main loop reads
            try:
                messages = channel.take(wait=False)
                if messages is None:
                    if finish:
                        return  # the main loop sends the outcome, then sees the end
                    # The driver closes the channel of idle workers only: it is gone,
                    # and the running task (with all it started) goes with this worker.
                    _kill_tree()
                    os._exit(1)
                out: list[bytes] = []
                _handle(messages, queue, out)
                if out:
                    channel.send(out)
            except BaseException as exc:
                failed.append(exc)
                return
            finally:
                lock.release()

    threading.Thread(target=watch, name="asyncexec-watch", daemon=True).start()
    return failed


def _hung_up(poller: select.poll) -> bool:
    """Whether the channel's peer is gone (never reading from it)."""
    try:
        return any(events & select.POLLHUP for _, events in poller.poll(0))
    except MemoryError:  # at the task's memory limit: ask again later
        return False


def _drop(queue: deque[TaskSpec], task_id: str) -> list[bytes]:
    """Remove a queued task; the frame of its ``cancelled`` Outcome (none if not queued)."""
    for spec in queue:
        if spec.task_id == task_id:
            queue.remove(spec)
            cancelled = Outcome(task_id=task_id, status="cancelled", pid=os.getpid(), host=_HOST)
            return [encode_frame(cancelled)]
    return []  # it ran already: its Outcome was sent


#: The pool's teardown hook, once its setup hook has run (see :func:`_tear_down`).
_teardown: list[Callable[[], object]] = []


def _setup(message: Setup) -> Ready:
    """Take the import path, run the setup hook and keep the teardown hook: the answer
    says what the setup hook raised (or what could not be unpickled), if anything."""
    for entry in reversed(message.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    doing = "cannot unpickle the teardown hook"
    try:
        teardown = None if message.teardown is None else _loads(message.teardown)
        if message.initializer is not None:
            doing = "cannot unpickle the setup hook"
            setup = _loads(message.initializer)
            doing = "setup raised"
            setup()
    except BaseException as exc:  # the hook's own errors, SystemExit included
        error = describe_exception(exc)
        error.message = f"{doing} {error.type_name}: {error.message}"
        return Ready(error=error)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if teardown is not None:
        _teardown.append(teardown)
    return Ready()


def _tear_down() -> None:
    """Run the teardown hook, once; what it raises is printed on stderr, never raised."""
    while _teardown:
        teardown = _teardown.pop()
        try:
            teardown()
        except BaseException:
            import traceback

            sys.stderr.write("asyncexec: the worker's teardown hook raised:\n")
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _die_with_parent(period: float = 0.5, *, or_session: bool = False) -> None:
    """Exit when the driver dies, even in the middle of a task, so none is left behind:
    the worker's tasks and every process they started (:func:`_kill_tree`).

    The driver names itself in ``ASYNCEXEC_PARENT_PID`` (local pools). With
    ``or_session`` (a worker on stdin and stdout), the parent it has now stands
    for the driver: over SSH that is sshd's session process, which ends when
    the connection drops. (Linux's PR_SET_PDEATHSIG would be cheaper but
    follows the *thread* that spawned us, and trio spawns from worker threads
    that come and go.) A worker in a container has an init for parent: there
    the end of its input says the driver is gone (see ``serve``).
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
        _kill_tree()
        os._exit(1)

    threading.Thread(target=watch, name="asyncexec-parent-watch", daemon=True).start()


def _kill_tree() -> None:
    """SIGKILL every process the worker's tasks started: its descendants, and the
    orphans still in its process group (the worker leads one: a session of its own
    locally and over SSH, its own group under a container's init).

    A process that left both (a new session of its own whose parent exited) is
    out of reach. Without ``/proc``, the worker's whole group is killed, the
    worker with it.
    """
    import signal  # only here: the module's enums would slow every worker's start

    me = os.getpid()
    for _ in range(2):  # again: what forked while the first pass killed
        try:
            targets = _tree(me)
        except OSError:
            if os.getpgrp() == me:
                os.killpg(me, signal.SIGKILL)
            return
        if not targets:
            return
        for pid in targets:
            with contextlib.suppress(OSError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)


def _tree(root: int) -> set[int]:
    """The processes descending from ``root``, and those in its process group (if it
    leads one), ``root`` excepted, from ``/proc``."""
    children: dict[int, list[int]] = {}
    group: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                line = stat.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = line[line.rfind(b")") + 2 :].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        if int(fields[2]) == root:
            group.add(pid)
    found = group
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.add(child)
            stack.append(child)
    found.discard(root)
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # What launchers run, parsed without argparse (about 6 ms of every start).
    if args == ["serve", "--stdio"]:
        return serve(None)
    if args == ["serve", "--stdio", "--finish"]:
        return serve(None, finish=True)
    if len(args) == 3 and args[:2] == ["serve", "--fd"] and args[2].isdigit():
        return serve(int(args[2]))
    import argparse

    parser = argparse.ArgumentParser(prog="python -m asyncexec.worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="long-lived worker (pools)")
    channel = serve_parser.add_mutually_exclusive_group(required=True)
    channel.add_argument("--fd", type=int, help="speak on this connected socket")
    channel.add_argument("--stdio", action="store_true", help="speak on stdin and stdout")
    serve_parser.add_argument(
        "--finish",
        action="store_true",
        help="a task running when the driver goes finishes, and its outcome is written out",
    )
    commands.add_parser("version", help="print the versions a driver must match")
    options = parser.parse_args(args)
    if options.command == "serve":
        return serve(None if options.stdio else options.fd, finish=options.finish)
    current = versions()
    print(
        f"python {current.python} cloudpickle {current.cloudpickle} asyncexec {current.asyncexec}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
