"""The executor's public API: futures, collecting, cancelling, options, lifecycle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import asyncexec
from asyncexec import (
    AsyncException,
    AsyncResult,
    BaseExecutor,
    DockerExecutor,
    ExecutorClosed,
    Future,
    FutureState,
    InvalidStateError,
    LaunchError,
    ProcessExecutor,
    RemoteError,
    SerializationError,
    SlurmExecutor,
    TaskCancelled,
    TaskFailed,
    TaskLaunchError,
    TaskOptions,
    TaskSerializationError,
    ThreadExecutor,
)
from asyncexec.testing import InlineLauncher, assert_heartbeat_stopped, heartbeat

pytestmark = pytest.mark.anyio


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def square(x: int) -> int:
    return x * x


def slow_square(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"bad {x}")
    return x


def raise_custom(code: int) -> None:
    raise CustomError(code, "custom detail")


def flaky(counter: str, failures: int) -> int:
    """Fail ``failures`` times (counted in a file), then return the attempt number."""
    path = Path(counter)
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count <= failures:
        raise ConnectionError(f"attempt {count} failed")
    return count


def wait_for_file(path: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return path


def inline() -> BaseExecutor:
    return BaseExecutor(2, launcher=InlineLauncher())


class Box:
    """A value whose collection a test can watch (with a weakref)."""

    def __init__(self, i: int) -> None:
        self.i = i


def make_box(i: int) -> Box:
    return Box(i)


def _explode() -> None:
    raise RuntimeError("this value cannot be rebuilt here")


class Unloadable:
    """Pickles fine where it is made; fails to unpickle."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


def return_unloadable() -> Unloadable:
    return Unloadable()


def return_lock() -> object:
    return threading.Lock()


def beat_unless_zero(i: int, directory: str) -> int:
    """0 at once; any other item beats in ``directory/<i>.beat`` forever."""
    if i:
        heartbeat(os.path.join(directory, f"{i}.beat"))
    return 0


# -- lifecycle -------------------------------------------------------------------


async def test_submit_needs_async_with() -> None:
    ex = ThreadExecutor(2)
    with pytest.raises(RuntimeError, match="async with"):
        await ex.submit(square, 2)


async def test_submit_after_close_raises_executor_closed() -> None:
    async with ThreadExecutor(2) as ex:
        assert await ex.run(square, 3) == 9
    with pytest.raises(ExecutorClosed):
        await ex.submit(square, 2)
    with pytest.raises(ExecutorClosed):
        await ex.run(square, 2)
    with pytest.raises(RuntimeError, match="closed"):  # what concurrent.futures code catches
        await ex.submit(square, 2)


BAD_INPUT: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: asyncexec.Resources(memory_mb=1.5), TypeError, "memory_mb"),  # type: ignore[arg-type]
    (lambda: asyncexec.Resources(memory_mb=float("nan")), TypeError, "memory_mb"),  # type: ignore[arg-type]
    (lambda: asyncexec.Resources(memory_mb="100"), TypeError, "memory_mb"),  # type: ignore[arg-type]
    (lambda: asyncexec.Resources(cpus=float("nan")), ValueError, "cpus"),
    (lambda: asyncexec.Resources(gpus=True), TypeError, "gpus"),
    (lambda: TaskOptions(time_limit="1"), TypeError, "time_limit"),  # type: ignore[arg-type]
    (lambda: TaskOptions(time_limit=float("inf")), ValueError, "time_limit"),
    (lambda: TaskOptions(retries=1.5), TypeError, "retries"),  # type: ignore[arg-type]
    (lambda: TaskOptions(retries="2"), TypeError, "retries"),  # type: ignore[arg-type]
    (lambda: TaskOptions(retry_on=ValueError("x")), TypeError, "retry_on"),  # type: ignore[arg-type]
    (lambda: TaskOptions(retry_backoff="1"), TypeError, "retry_backoff"),  # type: ignore[arg-type]
    (lambda: TaskOptions(resources={"cpus": 1}), TypeError, "resources"),  # type: ignore[arg-type]
    (lambda: TaskOptions(env={"A": 1}), TypeError, "env"),  # type: ignore[dict-item]
    (lambda: ProcessExecutor(env={"A": 1}), TypeError, "env"),  # type: ignore[dict-item]
    (lambda: DockerExecutor("some-image", env={"A": 1}), TypeError, "env"),  # type: ignore[dict-item]
]


@pytest.mark.parametrize(("make", "error", "field"), BAD_INPUT)
def test_bad_input_is_refused_at_construction_naming_the_field(
    make: Callable[[], object], error: type[Exception], field: str
) -> None:
    """Never accepted to kill a worker later (a float memory_mb made it die decoding)."""
    with pytest.raises(error, match=field):
        make()


def test_retry_on_may_be_a_list_and_good_input_is_kept() -> None:
    options = TaskOptions(retry_on=[KeyError, OSError], time_limit=2, retries=1)  # type: ignore[arg-type]
    assert options.retry_on == (KeyError, OSError) and options.time_limit == 2
    assert asyncexec.Resources(cpus=0.5, memory_mb=64, gpus=1).cpus == 0.5


def test_zero_workers_is_refused_everywhere_and_none_is_the_default() -> None:
    makers: dict[str, Callable[[int | None], BaseExecutor]] = {
        "ThreadExecutor": lambda n: ThreadExecutor(n),
        "ProcessExecutor": lambda n: ProcessExecutor(n),
        "DockerExecutor": lambda n: DockerExecutor("some-image", n),
        "SlurmExecutor": lambda n: SlurmExecutor(n_workers=n),
        "BaseExecutor": lambda n: BaseExecutor(n, launcher=InlineLauncher()),  # type: ignore[arg-type]
    }
    for name, make in makers.items():
        for bad in (0, -1):
            with pytest.raises(ValueError, match="n_workers"):
                make(bad)
        if name != "BaseExecutor":
            assert make(None).n_workers >= 1, name
    assert ProcessExecutor(None).n_workers == (os.cpu_count() or 1)
    # The launchers under them, too (a pool of no worker would wait forever).
    from asyncexec.launchers import ProcessLauncher, ThreadLauncher
    from asyncexec.launchers.docker import DockerLauncher

    launchers: list[Callable[[int], object]] = [
        ProcessLauncher,
        ThreadLauncher,
        lambda n: DockerLauncher("some-image", n, mode="warm"),
        lambda n: DockerLauncher("some-image", n),
    ]
    for make_launcher in launchers:
        with pytest.raises(ValueError, match="n_workers"):
            make_launcher(0)


async def test_aclose_inside_block_then_exit() -> None:
    async with ThreadExecutor(2) as ex:
        future = await ex.submit(slow_square, 4)
        await ex.aclose()
        assert future.state is FutureState.DONE  # graceful close waits for the work
        with pytest.raises(ExecutorClosed):
            await ex.submit(square, 1)
        await ex.aclose()  # twice is harmless


async def test_aclose_cancel_pending(tmp_path: Path) -> None:
    async with ThreadExecutor(1) as ex:
        running = await ex.submit(wait_for_file, str(tmp_path / "never"), 2.0)
        queued = await ex.submit(square, 2)
        await ex.aclose(cancel_pending=True)
        assert running.state is FutureState.CANCELLED
        assert queued.state is FutureState.CANCELLED


async def test_error_in_block_cancels_tasks(tmp_path: Path) -> None:
    futures: list[asyncexec.Future[Any]] = []

    async def body() -> None:
        async with ThreadExecutor(1) as ex:
            futures.append(await ex.submit(wait_for_file, str(tmp_path / "never"), 2.0))
            futures.append(await ex.submit(square, 5))
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        await body()
    assert [future.state for future in futures] == [FutureState.CANCELLED] * 2


async def test_enter_twice_is_refused() -> None:
    ex = inline()
    async with ex:
        pass
    with pytest.raises(RuntimeError, match="once"):
        async with ex:
            pass


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="n_workers"):
        BaseExecutor(0, launcher=InlineLauncher())
    with pytest.raises(ValueError, match="max_pending"):
        BaseExecutor(1, max_pending=0, launcher=InlineLauncher())
    with pytest.raises(ValueError, match="time_limit"):
        TaskOptions(time_limit=-1)
    with pytest.raises(ValueError, match="retries"):
        TaskOptions(retries=-1)
    with pytest.raises(TypeError, match="retry_on"):
        TaskOptions(retry_on=("nope",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="env"):
        TaskOptions(env={"A": 1})  # type: ignore[dict-item]


async def test_base_executor_without_launcher_says_what_to_do() -> None:
    with pytest.raises(TypeError, match="launcher"):
        async with BaseExecutor(1):
            pass


# -- bad input at submit ----------------------------------------------------------


async def test_non_callable_is_a_type_error_and_executor_survives() -> None:
    async with inline() as ex:
        with pytest.raises(TypeError, match="not callable"):
            await ex.submit(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="coroutine function"):
            await ex.submit(anyio.sleep, 1)
        assert await ex.run(square, 3) == 9


@pytest.mark.parametrize(
    ("make_arg", "type_fragment"),
    [(threading.Lock, "lock"), (lambda: (i for i in range(3)), "generator")],
    ids=["lock", "generator"],
)
async def test_unpicklable_argument_fails_at_submit(make_arg: Any, type_fragment: str) -> None:
    async with inline() as ex:
        with pytest.raises(SerializationError, match=type_fragment) as info:
            await ex.submit(square, make_arg())
        assert "argument 0" in str(info.value)
        with pytest.raises(SerializationError, match="keyword argument 'x'"):
            await ex.submit(square, x=make_arg())
        assert await ex.run(square, 4) == 16


async def test_unpicklable_function_fails_at_submit() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    async with inline() as ex:
        with pytest.raises(SerializationError, match="function"):
            await ex.submit(uses_lock)


# -- futures ----------------------------------------------------------------------


async def test_every_failed_future_raises_a_task_failed() -> None:
    """`except TaskFailed` around `await fut` catches every failure, whatever it is;
    the error is also the specific one (SerializationError, LaunchError)."""
    async with ProcessExecutor(1) as ex:
        for fn in (return_unloadable, return_lock):  # unpicklable here, or there
            with pytest.raises(TaskFailed) as failed:
                await ex.run(fn)
            assert isinstance(failed.value, SerializationError), fn
            assert isinstance(failed.value, TaskSerializationError), fn
        assert await ex.run(square, 5) == 25
    async with ProcessExecutor(1, python="/nonexistent/python3", eager=False) as ex:
        future = await ex.submit(square, 2)  # accepted: the pool starts workers on need
        with pytest.raises(TaskFailed, match="/nonexistent/python3") as refused:
            await future
        assert isinstance(refused.value, LaunchError)
        assert isinstance(refused.value, TaskLaunchError)
        assert isinstance(future.exception(), TaskFailed)


def test_a_future_awaited_from_another_event_loop_fails_at_once(tmp_path: Path) -> None:
    """Another thread's loop, or trio awaiting an asyncio-made future: a clear
    RuntimeError at once, never a hang; the owning loop still gets the value."""
    import trio

    gate = tmp_path / "gate"
    shared: dict[str, Any] = {}
    handed = threading.Event()

    async def owner() -> None:
        async with ThreadExecutor(1) as ex:
            future = await ex.submit(wait_for_file, str(gate))
            shared["future"] = future
            handed.set()
            shared["value"] = await future  # the owning loop waits too

    thread = threading.Thread(target=anyio.run, args=(owner,))  # on asyncio
    thread.start()
    try:
        assert handed.wait(30)
        future = shared["future"]

        async def from_asyncio() -> None:
            await asyncio.wait_for(future.wait(), 10)

        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(from_asyncio())

        async def from_trio() -> None:
            with trio.fail_after(10):
                await future

        with pytest.raises(RuntimeError, match="another event loop"):
            trio.run(from_trio)
        assert not future.ready()
    finally:
        gate.touch()
        thread.join(30)
    assert shared["value"] == str(gate)


async def test_done_callbacks_read_the_value_without_waiting() -> None:
    async with inline() as ex:
        seen: list[object] = []

        def on_done(future: Future[Any]) -> None:
            try:
                seen.append(future.result())
            except TaskFailed as exc:
                seen.append(type(exc))

        good = await ex.submit(square, 4)
        good.add_done_callback(on_done)
        bad = await ex.submit(fail_on, 1, 1)
        bad.add_done_callback(on_done)
        await ex.wait([good])
        with pytest.raises(KeyError):
            await bad
        assert len(seen) == 2 and 16 in seen and type(bad.exception()) in seen
        assert good.result() == 16
        with pytest.raises(KeyError):
            bad.result()
    async with ThreadExecutor(1) as ex:
        blocker = await ex.submit(slow_square, 1, 0.5)
        queued = await ex.submit(square, 2)
        await ex.cancel(queued)
        with pytest.raises(TaskCancelled):
            queued.result()
        assert isinstance(queued.exception(), TaskCancelled)
        assert await blocker == 1


async def test_future_api(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with ThreadExecutor(2) as ex:
        future = await ex.submit(wait_for_file, str(gate))
        assert not future.ready()
        with pytest.raises(ValueError, match="not finished"):
            future.successful()
        with pytest.raises(ValueError, match="not finished"):
            future.exception()
        # As asyncio's futures: result() never waits.
        with pytest.raises(asyncio.InvalidStateError, match="not finished"):
            future.result()
        with pytest.raises(concurrent.futures.InvalidStateError):
            future.result()
        with pytest.raises(InvalidStateError):
            future.exception()
        with pytest.raises(TimeoutError) as timeout:
            await future.get(timeout=0.05)
        assert not isinstance(timeout.value, TaskFailed)  # the builtin: the task goes on
        assert await future.wait(0.05) is False
        seen: list[asyncexec.Future[str]] = []
        future.add_done_callback(seen.append)
        gate.touch()
        assert await future.get(timeout=30) == str(gate)
        assert await future.wait(0) is True
        assert future.ready() and future.successful() and future.exception() is None
        assert seen == [future]
        late: list[asyncexec.Future[str]] = []
        future.add_done_callback(late.append)
        assert late == [future]
        assert future.task_id in repr(future)
        assert future.info.duration is not None and future.info.duration >= 0
        assert await future.cancel() is False  # already finished


async def test_accepted_gives_the_job_ref_once_a_backend_took_the_task(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with ThreadExecutor(1) as ex:
        running = await ex.submit(wait_for_file, str(gate))
        queued = await ex.submit(square, 3)
        with anyio.fail_after(10):
            ref = await running.accepted()
        assert ref is not None and ref == running.info.job_ref
        assert queued.info.job_ref is None  # waits for the one worker: not handed over
        with anyio.move_on_after(0.1):  # cancelling the caller stops the waiting only
            await queued.accepted()
        assert not queued.ready()
        assert await queued.cancel() is True
        assert await queued.accepted() is None  # ended before a backend took it
        gate.touch()
        assert await running == str(gate)
        assert await running.accepted() == ref


async def test_remote_error_is_the_original_class_too() -> None:
    async with inline() as ex:
        future = await ex.submit(raise_custom, 42)
        with pytest.raises(CustomError) as info:
            await future
        error = info.value
        assert isinstance(error, RemoteError) and isinstance(error, TaskFailed)
        assert error.code == 42 and error.detail == "custom detail"
        assert error.remote_type.endswith("CustomError")
        assert "raise_custom" in error.remote_traceback
        assert future.exception() is error
        assert future.state is FutureState.FAILED


# -- collecting -------------------------------------------------------------------


async def test_async_get_semantics(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with ThreadExecutor(2) as ex:
        assert await ex.async_get([]) == []
        slow = await ex.submit(wait_for_file, str(gate))
        futures: list[asyncexec.Future[Any]] = [slow]
        assert await ex.async_get(futures, timeout=0.05) == []  # nothing finished: [] not raise
        assert futures == [slow]
        good = await ex.submit(square, 3)
        bad = await ex.submit(fail_on, 1, 1)
        futures += [good, bad]
        await good.wait()
        await bad.wait()
        results = await ex.async_get(futures)
        assert futures == [slow]  # the finished ones were removed in place
        by_future = {result.future: result for result in results}
        assert isinstance(by_future[good], AsyncResult) and by_future[good].value == 9
        failed = by_future[bad]
        assert isinstance(failed, AsyncException)
        assert isinstance(failed.exception, KeyError)
        assert "fail_on" in failed.traceback
        with pytest.raises(KeyError):
            _ = failed.value
        gate.touch()
        [last] = await ex.async_get(futures, timeout=None)  # waits until one finishes
        assert last.future is slow and futures == []


async def test_wait_returns_values_in_order_or_the_first_failure() -> None:
    async with ThreadExecutor(3) as ex:
        assert await ex.wait([]) == []
        futures = [await ex.submit(slow_square, i, 0.01 * (5 - i)) for i in range(5)]
        assert await ex.wait(futures) == [0, 1, 4, 9, 16]
        futures = [await ex.submit(fail_on, i, 2) for i in range(4)]
        with pytest.raises(KeyError, match="bad 2"):
            await ex.wait(futures)
        assert all(future.ready() for future in futures)


async def test_as_completed_yields_every_future() -> None:
    async with ThreadExecutor(3) as ex:
        futures = [await ex.submit(slow_square, i, 0.01 * (4 - i)) for i in range(4)]
        seen = [future async for future in ex.as_completed(futures)]
        assert sorted(f.task_id for f in seen) == sorted(f.task_id for f in futures)
        assert all(future.ready() for future in seen)


async def test_map_ordered_and_unordered() -> None:
    async with ThreadExecutor(3) as ex:
        values = [value async for value in ex.map(square, range(20))]
        assert values == [i * i for i in range(20)]
        unordered = [
            value async for value in ex.map(slow_square, range(10), [0.01] * 10, ordered=False)
        ]
        assert sorted(unordered) == [i * i for i in range(10)]
        with pytest.raises(KeyError):
            async for _ in ex.map(fail_on, range(10), [3] * 10):
                pass


@pytest.mark.parametrize("ordered", [True, False])
async def test_map_in_chunks(ordered: bool) -> None:
    """Chunks of calls, one task each, in worker processes: every value, once."""
    async with asyncexec.ProcessExecutor(2) as ex:
        values = [v async for v in ex.map(square, range(1001), ordered=ordered, chunksize=100)]
        assert (values if ordered else sorted(values)) == [i * i for i in range(1001)]
        # A chunk of 100 is one task: 11 tasks for 1001 items (ids count submits).
        first = await ex.submit(square, 0)
        async for _ in ex.map(square, range(250), chunksize=100):
            pass
        after = await ex.submit(square, 0)
        assert int(after.task_id.rsplit("-", 1)[1]) - int(first.task_id.rsplit("-", 1)[1]) == 4
        # Zipped iterables, keyword-free as the builtin map, stopping at the shortest.
        pairs = ex.map(fail_on, range(5), [99] * 10, chunksize=2)
        assert [v async for v in pairs] == [0, 1, 2, 3, 4]
        # A failure fails its chunk: the items before it in that chunk are not yielded.
        seen: list[int] = []

        async def collect() -> None:
            async for value in ex.map(fail_on, range(100), [25] * 100, chunksize=10):
                seen.append(value)

        with pytest.raises(KeyError, match="bad 25"):
            await collect()
        assert seen == list(range(20))
        assert [v async for v in ex.with_options(name="chunks").map(square, [3], chunksize=5)] == [
            9
        ]


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True])
async def test_map_chunksize_must_be_a_count(chunksize: Any) -> None:
    async with ThreadExecutor(1) as ex:
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(square, [1], chunksize=chunksize)
        with pytest.raises(ValueError, match="chunksize"):
            ex.with_options(name="x").map(square, [1], chunksize=chunksize)


async def coroutine_square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("chunksize", [1, 3])
async def test_map_checks_the_function_at_once(chunksize: int) -> None:
    """As submit does, chunks or not: not a TypeError from the worker later."""
    async with ThreadExecutor(1) as ex:
        for fn, match in ((coroutine_square, "coroutine function"), (42, "not callable")):
            with pytest.raises(TypeError, match=match):
                ex.map(fn, [1], chunksize=chunksize)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=match):
                ex.with_options(name="x").map(fn, [1], chunksize=chunksize)  # type: ignore[arg-type]


async def test_map_stopped_early_cancels_what_is_in_flight(tmp_path: Path) -> None:
    # Item 0 returns at once; every other item beats in a file until it is killed.
    # map keeps 2 * n_workers tasks in flight: items 1-4 once 0 is yielded.
    async with ProcessExecutor(2, prefetch=0) as ex:
        iterator = ex.map(beat_unless_zero, range(100), [str(tmp_path)] * 100)
        async for value in iterator:
            assert value == 0
            with anyio.fail_after(30):  # items 1 and 2 run, one on each worker
                while len(list(tmp_path.glob("*.beat"))) < 2:
                    await anyio.sleep(0.02)
            break
        with anyio.fail_after(30):
            await iterator.aclose()  # type: ignore[attr-defined]
        beating = sorted(int(path.stem) for path in tmp_path.glob("*.beat"))
        assert beating == [1, 2], f"map ran ahead of its window: {beating}"
        for item in beating:  # the running ones were killed...
            await assert_heartbeat_stopped(str(tmp_path / f"{item}.beat"))
        # ...and the queued ones dropped: both workers are free for new work at once.
        with anyio.fail_after(30):
            assert await ex.run(square, 7) == 49
            assert await ex.run(square, 8) == 64
        await anyio.sleep(0.5)
        assert sorted(int(path.stem) for path in tmp_path.glob("*.beat")) == beating


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("ordered", [True, False])
async def test_map_keeps_no_yielded_value(ordered: bool, chunksize: int) -> None:
    """A value the caller dropped can be collected while the loop goes on (as
    CPython made concurrent.futures' map do)."""
    async with inline() as ex:
        seen: list[weakref.ref[Box]] = []
        async for box in ex.map(make_box, range(30), ordered=ordered, chunksize=chunksize):
            seen.append(weakref.ref(box))
            del box
            gc.collect()
            assert all(ref() is None for ref in seen), [ref() for ref in seen]
        assert len(seen) == 30


async def test_as_completed_keeps_no_yielded_future_and_yields_each_once() -> None:
    async with inline() as ex:
        seen: list[weakref.ref[Future[Box]]] = []
        async for future in ex.as_completed([await ex.submit(make_box, i) for i in range(20)]):
            seen.append(weakref.ref(future))
            del future
            gc.collect()
            assert all(ref() is None for ref in seen)
        assert len(seen) == 20
        once = await ex.submit(square, 3)
        twice = [future async for future in ex.as_completed([once, once, once])]
        assert twice == [once]


# -- cancelling and backpressure --------------------------------------------------


async def test_cancel_queued_and_running(tmp_path: Path) -> None:
    async with ThreadExecutor(1) as ex:
        running = await ex.submit(wait_for_file, str(tmp_path / "never"), 3.0)
        queued = await ex.submit(square, 2)
        await ex.cancel([queued, running])
        assert queued.state is FutureState.CANCELLED
        assert running.state is FutureState.CANCELLED
        with pytest.raises(TaskCancelled):
            await running
        assert await ex.run(square, 6) == 36


async def test_cancel_foreign_future_is_refused() -> None:
    async with inline() as first, inline() as second:
        future = await first.submit(square, 2)
        with pytest.raises(ValueError, match="another executor"):
            await second.cancel(future)
        await future


async def test_max_pending_applies_backpressure(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with ThreadExecutor(1, max_pending=2) as ex:
        running = await ex.submit(wait_for_file, str(gate))
        while running.state is not FutureState.RUNNING:
            await anyio.sleep(0.01)
        queued: list[asyncexec.Future[Any]] = [await ex.submit(square, i) for i in range(2)]
        blocked = True
        with anyio.move_on_after(0.2):
            await ex.submit(square, 99)
            blocked = False
        assert blocked, "submit did not wait with max_pending tasks queued"
        gate.touch()
        assert await ex.wait([running, *queued]) == [str(gate), 0, 1]
        assert await ex.run(square, 5) == 25


async def test_stats_count_the_tasks_where_they_are(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    executor = ThreadExecutor(1)
    assert executor.stats() == asyncexec.ExecutorStats()  # not open: nothing, no room
    async with executor as ex:
        limit = ex.stats().limit
        assert limit >= 1
        futures = [await ex.submit(wait_for_file, str(gate)) for _ in range(limit + 2)]
        stats = ex.stats()
        assert (stats.accepted, stats.live, stats.active, stats.queued) == (
            limit + 2,
            limit + 2,
            limit,
            2,
        )
        await futures[-1].cancel()  # a queued one
        stats = ex.stats()
        assert (stats.accepted, stats.live, stats.active, stats.queued) == (
            limit + 2,
            limit + 1,
            limit,
            1,
        )
        gate.touch()
        await ex.wait(futures[:-1])
        assert ex.stats() == asyncexec.ExecutorStats(accepted=limit + 2, limit=limit)


async def test_run_cancelled_by_the_caller_cancels_the_task(tmp_path: Path) -> None:
    async with ThreadExecutor(1) as ex:
        with anyio.move_on_after(0.2):
            await ex.run(wait_for_file, str(tmp_path / "never"), 5.0)
        # The slot was freed at once: the next task runs without waiting 5 s.
        with anyio.fail_after(3):
            assert await ex.run(square, 7) == 49


# -- options ----------------------------------------------------------------------


async def test_retries_with_backoff(tmp_path: Path) -> None:
    async with ThreadExecutor(1) as ex:
        retrying = ex.with_options(retries=2, retry_backoff=0.01, retry_on=ConnectionError)
        future = await retrying.submit(flaky, str(tmp_path / "a"), 2)
        assert await future == 3
        assert future.info.attempts == 3
        exhausted = await retrying.submit(flaky, str(tmp_path / "b"), 5)
        with pytest.raises(ConnectionError):
            await exhausted
        assert exhausted.info.attempts == 3
        other = ex.with_options(retries=3, retry_on=(KeyError,))
        no_retry = await other.submit(flaky, str(tmp_path / "c"), 1)
        with pytest.raises(ConnectionError):
            await no_retry
        assert no_retry.info.attempts == 1


def test_backoff_grows_and_is_capped() -> None:
    options = TaskOptions(retry_backoff=1.0, retry_backoff_max=3.0)
    assert [options.backoff(attempt) for attempt in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


async def test_with_options_layers_and_names() -> None:
    async with inline() as ex:
        named = ex.with_options(name="sq", tags={"grid": "a"}).with_options(retries=1)
        assert named.options.name == "sq" and named.options.retries == 1
        future = await named.submit(square, 3)
        assert await future == 9
        assert future.info.name == "sq" and future.info.tags == {"grid": "a"}
        assert await named.run(square, 2) == 4
        assert [value async for value in named.map(square, [1, 2])] == [1, 4]
        assert ex.options.name is None


async def test_thread_refuses_env_and_memory_limits() -> None:
    async with ThreadExecutor(1) as ex:
        with pytest.raises(asyncexec.LaunchError, match="environment"):
            await ex.with_options(env={"A": "1"}).run(square, 1)
        with pytest.raises(asyncexec.LaunchError, match="memory"):
            await ex.with_options(resources=asyncexec.Resources(memory_mb=10)).run(square, 1)


async def test_thread_refuses_every_resource_at_submit() -> None:
    async with ThreadExecutor(1) as ex:
        for asked, field in [
            (asyncexec.Resources(cpus=1), "cpus"),
            (asyncexec.Resources(memory_mb=10), "memory_mb"),
            (asyncexec.Resources(gpus=1), "gpus"),
        ]:
            with pytest.raises(asyncexec.LaunchError) as caught:
                await ex.with_options(resources=asked).submit(square, 1)  # not even accepted
            message = str(caught.value)
            assert message.startswith("ThreadExecutor cannot run a task with Resources(")
            assert f"ThreadLauncher does not honour Resources.{field}" in message
            assert "the Resources docstring says which backends do" in message


class CountingLauncher(InlineLauncher):
    """Honours cpus (as far as these tests go: its tasks never ask), counting the checks."""

    honours_resources = frozenset({"cpus"})

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def check_resources(self, resources: asyncexec.Resources) -> str | None:
        self.checks += 1
        return super().check_resources(resources)


async def test_resources_are_checked_once_per_resources_object_and_refusals_every_time() -> None:
    launcher = CountingLauncher()
    async with BaseExecutor(2, launcher=launcher) as ex:
        await ex.wait([await ex.submit(square, i) for i in range(20)])
        assert launcher.checks == 1
        named = ex.with_options(name="n")  # other options, the same Resources: no check
        await ex.wait([await named.submit(square, i) for i in range(20)])
        assert await ex.run(square, 3) == 9
        assert launcher.checks == 1
        pinned = ex.with_options(resources=asyncexec.Resources(cpus=1))
        await ex.wait([await pinned.submit(square, i) for i in range(3)])
        assert await ex.run(square, 3) == 9
        assert launcher.checks == 3  # (the executor's were checked again after pinned's)
        refused = ex.with_options(resources=asyncexec.Resources(gpus=2))
        for _ in range(2):
            with pytest.raises(asyncexec.LaunchError, match=r"Resources\(gpus=2\)"):
                await refused.submit(square, 1)
        with pytest.raises(asyncexec.LaunchError, match="gpus"):
            async for _ in refused.map(square, [1, 2]):
                pass
        assert launcher.checks == 6
        stats = ex.stats()
        assert stats.accepted == 45 and stats.live == 0  # nothing refused was accepted


# -- regressions ------------------------------------------------------------------


async def test_a_raising_done_callback_harms_nobody(caplog: pytest.LogCaptureFixture) -> None:
    def broken(future: asyncexec.Future[Any]) -> None:
        raise RuntimeError("callback bug")

    seen: list[int] = []
    async with inline() as ex:
        future = await ex.submit(square, 3)
        future.add_done_callback(broken)
        future.add_done_callback(lambda f: seen.append(1))
        assert await future == 9
        assert await ex.run(square, 2) == 4
    assert seen == [1]
    assert "callback bug" in caplog.text


async def test_a_bad_log_path_fails_the_task_only() -> None:
    async with ThreadExecutor(1) as ex:
        bad = ex.with_options(log_stdout="/nonexistent-dir/out.log")
        with pytest.raises(FileNotFoundError):
            await bad.run(square, 2)
        assert await ex.run(square, 3) == 9


async def test_ordered_map_lets_go_of_consumed_futures() -> None:
    import gc

    async with ThreadExecutor(2) as ex:
        consumed = 0
        async for _ in ex.map(big_bytes, range(200)):
            consumed += 1
            if consumed == 150:
                gc.collect()
                alive = sum(isinstance(o, asyncexec.Future) for o in gc.get_objects())
                assert alive <= 3 * ex.n_workers, f"{alive} futures kept by map()"


def big_bytes(i: int) -> bytes:
    return bytes(10_000)


async def test_awaiting_a_failure_again_does_not_grow_its_traceback() -> None:
    import traceback as tb

    async with inline() as ex:
        future = await ex.submit(fail_on, 1, 1)
        depths = []
        for _ in range(50):
            try:
                await future
            except KeyError as exc:
                depths.append(len(tb.extract_tb(exc.__traceback__)))
        assert depths[0] == depths[-1]


def cancelled_side_effect(path: str, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # pure Python, so the thread can be stopped
        pass
    Path(path).touch()


async def test_thread_tasks_cancelled_right_after_submit_never_run(tmp_path: Path) -> None:
    async with ThreadExecutor(4) as ex:
        for index in range(100):
            future = await ex.submit(cancelled_side_effect, str(tmp_path / str(index)), 0.2)
            await ex.cancel(future)
            assert future.state is FutureState.CANCELLED
        await anyio.sleep(0.5)
    assert list(tmp_path.iterdir()) == []


async def test_the_inline_launchers_cancelled_wait_leaves_its_task_to_wait_for() -> None:
    """The seam's contract: cancelling ``wait`` only stops waiting (it lost the task)."""
    from asyncexec import TaskSpec
    from asyncexec._codec import dumps_call
    from asyncexec.testing import add

    launcher = InlineLauncher()
    fn, args, _ = dumps_call(add, (1, 2), {})
    ref = await launcher.start(TaskSpec(task_id="t1", fn=fn, args=args))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await launcher.wait(ref)
    assert scope.cancelled_caught
    outcome = await launcher.wait(ref)
    assert outcome.status == "ok", outcome
