"""Tools for testing with asyncexec and for writing launchers.

* :class:`InlineLauncher` runs each task in the event loop's own thread, with
  the full pickling round trip: deterministic, fast, for testing code that
  uses an executor (it cannot stop running work or survive a crash).
* :func:`check_launcher` is the conformance suite every launcher passes:
  value, exception with traceback, unpicklable result, crash, timeout,
  cancellation of queued and running tasks, 10 MB payloads both ways, 1,000
  concurrent tasks, captured output. Which cases apply follows the launcher's
  ``capabilities`` (``can_kill``, ``isolates_crashes``), read from the instance
  (a launcher may set them per instance: Slurm arrays in chunks do not isolate
  crashes).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import anyio
import anyio.lowlevel

from . import (
    AsyncException,
    BaseExecutor,
    FutureState,
    JobRef,
    LaunchError,
    Outcome,
    RemoteError,
    Resources,
    SerializationError,
    TaskCancelled,
    TaskFailed,
    TaskSpec,
    TaskTimeout,
    WorkerLost,
)
from .abc import Capabilities, Launcher

__all__ = [
    "CONFORMANCE_CASES",
    "InlineLauncher",
    "assert_heartbeat_stopped",
    "check_capabilities",
    "check_launcher",
    "conformance_cases",
    "heartbeat",
]


class InlineLauncher(Launcher):
    """Runs each task when it is waited for, in the event loop's thread.

    Tasks go through the same pickling and :func:`asyncexec.worker.execute` as
    everywhere else, so serialization problems show up in tests. A running
    task blocks the event loop and cannot be stopped.
    """

    can_kill = False
    isolates_crashes = False

    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}

    async def start(self, task: TaskSpec) -> JobRef:
        self._specs[task.task_id] = task
        return JobRef(kind="inline", native_id=task.task_id)

    async def wait(self, ref: JobRef) -> Outcome:
        await anyio.lowlevel.checkpoint()  # first: a cancelled wait leaves the task there
        spec = self._specs.pop(ref.native_id, None)
        if spec is None:
            raise LaunchError(f"unknown or cancelled task {ref.native_id}")
        from .launchers.thread import run_in_this_thread

        return run_in_this_thread(spec)

    async def cancel(self, ref: JobRef) -> None:
        """Forget the task: it never runs (a running one cannot be stopped).

        Cancellation: never waits, so never interrupted.
        """
        self._specs.pop(ref.native_id, None)

    async def aclose(self) -> None:
        """Forget every task not yet run.

        Cancellation: never waits, so never interrupted.
        """
        self._specs.clear()


# -- task functions the suite sends (importable by workers) ----------------------------


def add(x: int, y: int) -> int:
    return x + y


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def return_lock() -> object:
    return threading.Lock()


def exit_hard(code: int) -> None:
    os._exit(code)


def heartbeat(path: str, period: float = 0.05) -> None:
    """Write the time to ``path`` every ``period`` seconds, forever."""
    while True:
        with open(path, "w") as out:
            out.write(repr(time.time()))
        time.sleep(period)


def reverse_bytes(data: bytes) -> bytes:
    return data[::-1]


def join_bytes(*parts: bytes | bytearray, sep: bytes = b"") -> tuple[bytes, list[str]]:
    """The parts joined, and the types they arrived as."""
    return sep.join(parts), [type(part).__name__ for part in (*parts, sep)]


def print_both(text: str) -> int:
    print(f"out:{text}")
    print(f"err:{text}", file=sys.stderr)
    return len(text)


def touch(path: str) -> str:
    Path(path).touch()
    return path


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# -- the suite -----------------------------------------------------------------


class _Context:
    def __init__(self, executor: BaseExecutor, launcher: Launcher, workdir: str) -> None:
        self.executor = executor
        self.launcher = launcher
        self.workdir = workdir

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)


async def _read_beat(path: str) -> str:
    beat = anyio.Path(path)
    return await beat.read_text() if await beat.exists() else ""


async def assert_heartbeat_stopped(path: str) -> None:
    """Assert the :func:`heartbeat` at ``path`` no longer changes: the work really stopped.

    Cancellation: it only sleeps and reads the file: nothing is left.
    """
    await anyio.sleep(0.3)
    before = await _read_beat(path)
    await anyio.sleep(0.5)
    assert await _read_beat(path) == before, "the task's work kept running after it was stopped"


async def _until_exists(path: str, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while not await anyio.Path(path).exists():
            await anyio.sleep(0.02)


async def _case_value(ctx: _Context) -> None:
    future = await ctx.executor.submit(add, 2, 3)
    assert await future == 5
    assert future.state is FutureState.DONE and future.successful()
    assert future.info.started is not None and future.info.finished is not None
    assert future.info.attempts == 1


async def _case_exception(ctx: _Context) -> None:
    future = await ctx.executor.submit(raise_value_error, "boom-conformance")
    try:
        await future
    except ValueError as exc:
        assert isinstance(exc, RemoteError) and isinstance(exc, TaskFailed)
        assert exc.remote_type == "ValueError"
        assert "boom-conformance" in str(exc)
        assert "raise_value_error" in exc.remote_traceback
        assert isinstance(exc.original, ValueError)
    else:
        raise AssertionError("a raising task did not raise")
    assert future.state is FutureState.FAILED
    [result] = await ctx.executor.async_get([future])
    assert isinstance(result, AsyncException)
    assert "boom-conformance" in result.traceback


async def _case_unpicklable_result(ctx: _Context) -> None:
    future = await ctx.executor.submit(return_lock)
    try:
        await future
    except SerializationError as exc:
        assert "lock" in str(exc)
    else:
        raise AssertionError("an unpicklable result did not fail")
    assert await (await ctx.executor.submit(add, 1, 1)) == 2


async def _case_crash(ctx: _Context) -> None:
    future = await ctx.executor.submit(exit_hard, 7)
    try:
        await future
    except WorkerLost as exc:
        assert exc.exit_code in (7, None), exc.exit_code
    else:
        raise AssertionError("a crashing task did not fail with WorkerLost")
    assert await (await ctx.executor.submit(add, 2, 2)) == 4


async def _case_timeout(ctx: _Context) -> None:
    beat = ctx.path("timeout.beat")
    future = await ctx.executor.with_options(time_limit=1.0).submit(heartbeat, beat)
    try:
        await future
    except TaskTimeout as exc:
        assert isinstance(exc, TimeoutError)
    else:
        raise AssertionError("a task past its time limit did not time out")
    await assert_heartbeat_stopped(beat)
    assert await (await ctx.executor.submit(add, 3, 3)) == 6


async def _case_cancel_pending(ctx: _Context) -> None:
    ex = ctx.executor
    blockers = [await ex.submit(sleep_for, 0.5) for _ in range(ex.n_workers)]
    marker = ctx.path("pending.touched")
    target = await ex.submit(touch, marker)
    await ex.cancel(target)
    assert target.state is FutureState.CANCELLED
    try:
        await target
    except TaskCancelled:
        pass
    else:
        raise AssertionError("a cancelled future gave a value")
    await ex.wait(blockers)
    await anyio.sleep(0.2)
    assert not await anyio.Path(marker).exists(), "a task cancelled while queued ran anyway"


async def _case_cancel_running(ctx: _Context) -> None:
    beat = ctx.path("running.beat")
    future = await ctx.executor.submit(heartbeat, beat)
    await _until_exists(beat)
    assert not future.ready(), future.state
    assert await future.cancel() is True
    assert future.state is FutureState.CANCELLED
    await assert_heartbeat_stopped(beat)
    assert await (await ctx.executor.submit(add, 4, 4)) == 8


async def _case_large_payload(ctx: _Context) -> None:
    data = os.urandom(10 * 2**20)
    future = await ctx.executor.submit(reverse_bytes, data)
    assert await future == data[::-1]
    # Several large arguments, positional and keyword, bytes and not: each arrives
    # as itself, whichever way the launcher moves them.
    first, second, sep = os.urandom(300_000), bytearray(os.urandom(200_000)), os.urandom(150_000)
    joined = await ctx.executor.submit(join_bytes, first, b"small", second, sep=sep)
    assert await joined == (
        sep.join([first, b"small", second]),
        ["bytes", "bytes", "bytearray", "bytes"],
    )


async def _case_many_concurrent(ctx: _Context) -> None:
    futures = [await ctx.executor.submit(add, i, 1) for i in range(1000)]
    assert await ctx.executor.wait(futures) == [i + 1 for i in range(1000)]


async def _case_captured_output(ctx: _Context) -> None:
    future = await ctx.executor.with_options(capture_output=True).submit(print_both, "conformance")
    assert await future == len("conformance")
    assert "out:conformance" in future.info.stdout, future.info.stdout
    assert "err:conformance" in future.info.stderr, future.info.stderr


Case = Callable[[_Context], Awaitable[None]]

#: name -> (case, needs can_kill, needs isolates_crashes)
CONFORMANCE_CASES: dict[str, tuple[Case, bool, bool]] = {
    "value": (_case_value, False, False),
    "exception": (_case_exception, False, False),
    "unpicklable_result": (_case_unpicklable_result, False, False),
    "crash": (_case_crash, False, True),
    "timeout": (_case_timeout, True, False),
    "cancel_pending": (_case_cancel_pending, False, False),
    "cancel_running": (_case_cancel_running, True, False),
    "large_payload": (_case_large_payload, False, False),
    "many_concurrent": (_case_many_concurrent, False, False),
    "captured_output": (_case_captured_output, False, False),
}


def conformance_cases(launcher: Launcher | type[Launcher]) -> list[str]:
    """The names of the cases that apply to ``launcher``.

    Capabilities are read from what is given: pass the launcher itself (as
    :func:`check_launcher` does) where they may differ per instance; a class
    gives its defaults.
    """
    capabilities = (
        Capabilities.from_attributes(launcher)
        if isinstance(launcher, type)
        else launcher.capabilities
    )
    return [
        name
        for name, (_, needs_kill, needs_isolation) in CONFORMANCE_CASES.items()
        if (capabilities.can_kill or not needs_kill)
        and (capabilities.isolates_crashes or not needs_isolation)
    ]


def check_capabilities(launcher: Launcher) -> None:
    """Check that ``launcher.capabilities`` is a consistent :class:`Capabilities`.

    :func:`check_launcher` calls it first. Raises AssertionError naming what
    does not hold.
    """
    capabilities = launcher.capabilities
    name = type(launcher).__name__
    assert isinstance(capabilities, Capabilities), f"{name}.capabilities is {capabilities!r}"
    unknown = capabilities.honours_resources - set(Resources.__struct_fields__)
    assert not unknown, f"{name} honours unknown Resources fields {sorted(unknown)}"
    if capabilities.fast_start:
        assert type(launcher).try_start is not Launcher.try_start, (
            f"{name} says fast_start but does not implement try_start"
        )
    if capabilities.enforces_time_limit:
        assert capabilities.can_kill, f"{name} enforces time limits but cannot kill"


async def check_launcher(
    make_launcher: Callable[[], Launcher],
    *,
    only: Iterable[str] | None = None,
    n_workers: int = 2,
    tmp_root: str | None = None,
    workdir_mode: int | None = None,
) -> None:
    """Run the conformance suite against launchers made by ``make_launcher``.

    Each case gets a fresh launcher inside a fresh executor. Raises
    AssertionError (naming the case) on the first failure.

    Args:
        make_launcher: makes a new, unopened launcher.
        only: case names to run (default: all that apply).
        n_workers: the executor's concurrency.
        tmp_root: where the cases' scratch directories go (default: the
            system's temporary directory). Tasks write there, so it must be the
            same path for the driver and for the tasks (a shared or mounted
            directory, for containers and clusters).
        workdir_mode: the scratch directories' mode, when tasks run as
            another user (``0o777`` for a cluster's user).

    Cancellation: the running case's executor is left as a cancelled
    ``async with`` leaves it (its tasks cancelled, the launcher closed,
    shielded) and its scratch directory removed; the cases after it do not
    run.
    """
    probe = make_launcher()
    check_capabilities(probe)
    applicable = conformance_cases(probe)
    names = applicable if only is None else list(only)
    for name in names:
        if name not in applicable:
            raise ValueError(f"case {name!r} does not apply to {type(probe).__name__}")
        case = CONFORMANCE_CASES[name][0]
        launcher = probe if name == names[0] else make_launcher()
        with tempfile.TemporaryDirectory(prefix="asyncexec-conformance-", dir=tmp_root) as workdir:
            if workdir_mode is not None:
                os.chmod(workdir, workdir_mode)
            async with BaseExecutor(n_workers, launcher=launcher) as executor:
                try:
                    await case(_Context(executor, launcher, workdir))
                except AssertionError as exc:
                    raise AssertionError(
                        f"{type(launcher).__name__} fails {name!r}: {exc}"
                    ) from exc
