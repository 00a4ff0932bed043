"""ProcessExecutor against bad tasks: each fails alone, with a typed error."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncexec import (
    BaseExecutor,
    FutureState,
    LaunchError,
    ProcessExecutor,
    RemoteError,
    Resources,
    SerializationError,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    WorkerLost,
)
from asyncexec.launchers import ProcessLauncher
from asyncexec.launchers.process import _has_exited
from asyncexec.testing import assert_heartbeat_stopped, heartbeat

from .conftest import ASYNCIO, TRIO, UVLOOP, children, loops

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(params=loops(ASYNCIO, TRIO, UVLOOP))
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """The process pool also runs under uvloop."""
    return request.param


def identity(x: Any) -> Any:
    return x


def pid() -> int:
    return os.getpid()


def call_exit(code: int) -> None:
    sys.exit(code)


def hard_exit(code: int) -> None:
    os._exit(code)


def interrupt() -> None:
    raise KeyboardInterrupt


def spin() -> None:
    while True:
        pass


def report_pid_then_sleep(path: str) -> None:
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(60)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def print_lots(megabytes: int) -> str:
    line = "x" * 1023 + "\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(line)
    print("THE-END")
    return "printed"


def recurse(n: int) -> int:
    return recurse(n + 1) + 1


def big_value(megabytes: int) -> bytes:
    return b"v" * (megabytes * 2**20)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault() -> None:
    ctypes.string_at(0)


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    return len(block)


def unpicklable_result() -> object:
    return threading.Lock()


def read_env(name: str) -> str | None:
    return os.environ.get(name)


INITIALIZED: list[str] = []


def init_marker() -> None:
    INITIALIZED.append("ready")


def initialized() -> list[str]:
    return INITIALIZED


def broken_initializer() -> None:
    raise RuntimeError("initializer exploded")


async def test_lambda_and_closure_work() -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    async with ProcessExecutor(2) as ex:
        assert await ex.run(lambda x: x * 2, 21) == 42
        assert await ex.run(closure, 5) == 15
        assert await ex.run(identity, {"nested": [1, (2, 3)]}) == {"nested": [1, (2, 3)]}


async def test_sys_exit_is_a_remote_error_not_a_driver_exit() -> None:
    async with ProcessExecutor(1) as ex:
        first = await ex.run(pid)
        with pytest.raises(RemoteError) as info:
            await ex.run(call_exit, 3)
        assert info.value.remote_type == "SystemExit"
        assert not isinstance(info.value, SystemExit)
        assert await ex.run(pid) == first  # the worker survived


async def test_keyboard_interrupt_in_a_task_stays_in_the_task() -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(RemoteError) as info:
            await ex.run(interrupt)
        assert info.value.remote_type == "KeyboardInterrupt"
        assert not isinstance(info.value, KeyboardInterrupt)
        assert await ex.run(identity, 1) == 1


async def test_os_exit_loses_only_its_worker() -> None:
    async with ProcessExecutor(2) as ex:
        others = [await ex.submit(identity, i) for i in range(20)]
        with pytest.raises(WorkerLost) as info:
            await ex.run(hard_exit, 3)
        assert info.value.exit_code == 3
        assert "status 3" in str(info.value)
        assert await ex.wait(others) == list(range(20))
        assert await ex.run(identity, "after") == "after"


@pytest.mark.parametrize(
    ("signum", "state"),
    [(signal.SIGKILL, "SIGKILL"), (signal.SIGTERM, "SIGTERM")],
    ids=["sigkill", "sigterm"],
)
async def test_worker_killed_by_a_signal(signum: int, state: str) -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(WorkerLost) as info:
            await ex.run(kill_self, signum)
        assert info.value.state == state
        assert info.value.exit_code == -signum
        if signum == signal.SIGKILL:
            assert "out-of-memory" in str(info.value)
        assert await ex.run(identity, 2) == 2


async def test_segfault_is_worker_lost() -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(WorkerLost) as info:
            await ex.run(segfault)
        assert info.value.state == "SIGSEGV"
        assert await ex.run(identity, 3) == 3


async def test_worker_killed_from_outside_fails_only_its_task(tmp_path: Path) -> None:
    pid_file = tmp_path / "victim.pid"
    async with ProcessExecutor(2) as ex:
        victim = await ex.submit(report_pid_then_sleep, str(pid_file))
        while not pid_file.exists():
            await anyio.sleep(0.01)
        bystanders = [await ex.submit(identity, i) for i in range(10)]
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        with pytest.raises(WorkerLost) as info:
            await victim
        assert info.value.state == "SIGKILL"
        assert await ex.wait(bystanders) == list(range(10))


async def test_infinite_loop_with_time_limit_is_killed() -> None:
    async with ProcessExecutor(1) as ex:
        before = await ex.run(pid)
        with pytest.raises(TaskTimeout) as info:
            await ex.with_options(time_limit=0.5).run(spin)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, TaskFailed)
        after = await ex.run(pid)
        assert after != before  # the spinning worker was killed and replaced
        assert not _exists(before)


def _exists(process_id: int) -> bool:
    try:
        os.kill(process_id, 0)
    except ProcessLookupError:
        return False
    import psutil

    try:
        return bool(psutil.Process(process_id).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_sleeping_task_cancelled_is_killed_at_once() -> None:
    async with ProcessExecutor(1) as ex:
        worker = await ex.run(pid)
        future = await ex.submit(sleep, 60)
        while future.state in (FutureState.PENDING,):
            await anyio.sleep(0.01)
        with anyio.fail_after(30):  # a hang guard, not a timing assertion
            await ex.cancel(future)
        assert future.state is FutureState.CANCELLED
        with pytest.raises(TaskCancelled):
            await future
        assert not _exists(worker)
        assert await ex.run(identity, "next") == "next"


async def test_run_cancelled_from_a_cancel_scope_kills_the_work(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    async with ProcessExecutor(1) as ex:
        with anyio.move_on_after(1.0):
            await ex.run(heartbeat, str(beat))
        assert beat.exists()
        await assert_heartbeat_stopped(str(beat))


@pytest.mark.parametrize("anyio_backend", [TRIO], indirect=True)
async def test_run_cancelled_by_a_trio_cancel_scope_kills_the_work(tmp_path: Path) -> None:
    import trio

    beat = tmp_path / "beat"
    async with ProcessExecutor(1) as ex:
        with trio.move_on_after(1.0):
            await ex.run(heartbeat, str(beat))
        assert beat.exists()
        await assert_heartbeat_stopped(str(beat))


@pytest.mark.parametrize("anyio_backend", [ASYNCIO], indirect=True)
async def test_run_cancelled_as_an_asyncio_task_kills_the_work(tmp_path: Path) -> None:
    import asyncio

    beat = tmp_path / "beat"
    async with ProcessExecutor(1) as ex:
        task = asyncio.ensure_future(ex.run(heartbeat, str(beat)))
        while not beat.exists():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_heartbeat_stopped(str(beat))


async def test_hundred_megabytes_of_output_keeps_a_tail(tmp_path: Path) -> None:
    async with ProcessExecutor(1) as ex:
        future = await ex.with_options(capture_output=True).submit(print_lots, 100)
        assert await future == "printed"
        assert future.info.stdout.endswith("THE-END\n")
        assert len(future.info.stdout) <= 64 * 1024


async def test_log_files_receive_the_whole_output(tmp_path: Path) -> None:
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    async with ProcessExecutor(1) as ex:
        logged = ex.with_options(log_stdout=out, log_stderr=err)
        assert await logged.run(print_lots, 1) == "printed"
    assert out.stat().st_size > 2**20
    assert out.read_text().endswith("THE-END\n")
    assert err.exists()


async def test_prints_over_stdio_do_not_garble_the_protocol() -> None:
    async with BaseExecutor(1, launcher=ProcessLauncher(1, transport="stdio")) as ex:
        assert await ex.run(print_lots, 1) == "printed"
        assert await ex.run(identity, "intact") == "intact"


def exceed_cpu_rlimit() -> None:
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    seconds = int(used.ru_utime + used.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, resource.RLIM_INFINITY))
    spin()


async def test_rlimit_death_is_worker_lost() -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(WorkerLost) as info:
            await ex.run(exceed_cpu_rlimit)
        assert info.value.state == "SIGXCPU"
        assert await ex.run(identity, 5) == 5


async def test_unpicklable_argument_fails_at_submit() -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(SerializationError, match=r"argument 1 of type _thread\.lock"):
            await ex.submit(identity, 1, threading.Lock())
        assert await ex.run(identity, 6) == 6


async def test_recursion_error_is_a_remote_error() -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(RecursionError) as info:
            await ex.run(recurse, 0)
        assert isinstance(info.value, RemoteError)
        assert "recurse" in info.value.remote_traceback
        assert await ex.run(identity, 4) == 4


async def test_two_hundred_megabyte_result() -> None:
    async with ProcessExecutor(1) as ex:
        value = await ex.run(big_value, 200)
        assert len(value) == 200 * 2**20 and value[:1] == b"v"


async def test_unpicklable_result_fails_the_task_not_the_worker() -> None:
    async with ProcessExecutor(1) as ex:
        worker = await ex.run(pid)
        with pytest.raises(SerializationError, match="lock"):
            await ex.run(unpicklable_result)
        assert await ex.run(pid) == worker


async def test_memory_limit_stops_a_hungry_task() -> None:
    async with ProcessExecutor(1) as ex:
        limited = ex.with_options(resources=Resources(memory_mb=64))
        with pytest.raises((MemoryError, WorkerLost)):
            await limited.run(allocate, 1024)
        assert await limited.run(allocate, 8) == 8 * 2**20
        assert await ex.run(allocate, 256) == 256 * 2**20  # the limit was per task


# -- Resources(cpus=...): the worker pinned while the task runs ---------------------------

USABLE = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two_cpus = pytest.mark.skipif(
    len(USABLE) < 2 and os.environ.get("CI") != "true",
    reason="pinning needs 2 usable CPUs (CI's machines have them: there this runs)",
)


def thread_affinities(seconds: float = 0.0, start_thread: bool = False) -> list[list[int]]:
    """The CPUs of every thread of the worker (the task's first), after ``seconds``;
    with ``start_thread``, of a thread the task starts too (left running after it)."""
    if start_thread:
        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
    time.sleep(seconds)
    tids = [threading.get_native_id()]
    tids += [int(t) for t in os.listdir("/proc/self/task") if int(t) != tids[0]]
    affinities = []
    for tid in tids:
        with contextlib.suppress(OSError):  # it ended meanwhile
            affinities.append(sorted(os.sched_getaffinity(tid)))
    return affinities


@needs_two_cpus
async def test_cpus_pin_every_thread_of_the_worker_and_are_given_back() -> None:
    async with ProcessExecutor(1) as ex:
        one = ex.with_options(resources=Resources(cpus=1))
        pinned = await one.run(thread_affinities, 0, True)
        after = await ex.run(thread_affinities)  # the same worker, the thread it left too
        rounded_up = await ex.with_options(resources=Resources(cpus=1.2)).run(thread_affinities)
        half = await ex.with_options(resources=Resources(cpus=0.5)).run(thread_affinities)
    assert len(pinned) >= 3  # the task's thread, the worker's own, the one it started
    assert all(cpus == pinned[0] for cpus in pinned) and len(pinned[0]) == 1, pinned
    assert len(after) == len(pinned)
    assert all(cpus == USABLE for cpus in after), after
    assert all(len(cpus) == 2 for cpus in rounded_up), rounded_up
    assert all(len(cpus) == 1 for cpus in half), half


@needs_two_cpus
async def test_pinned_tasks_running_together_get_different_cpus() -> None:
    async with ProcessExecutor(2) as ex:
        one = ex.with_options(resources=Resources(cpus=1))
        together = await ex.wait([await one.submit(thread_affinities, 0.5) for _ in range(2)])
        # One at a time, each may have the lowest: nothing else is pinned then.
        apart = [await one.run(thread_affinities) for _ in range(2)]
    first, second = (affinities[0] for affinities in together)
    assert len(first) == len(second) == 1 and first != second, together
    assert apart[0][0] == apart[1][0] == USABLE[:1], apart


async def test_resources_the_pool_cannot_honour_are_refused_at_submit() -> None:
    async with ProcessExecutor(1) as ex:
        with pytest.raises(LaunchError, match=r"ProcessExecutor .*Resources\(gpus=1\).*gpus"):
            await ex.with_options(resources=Resources(gpus=1)).submit(identity, 1)
        too_many = Resources(cpus=len(USABLE) + 0.5)
        with pytest.raises(LaunchError, match="cpus") as caught:
            await ex.with_options(resources=too_many).submit(identity, 1)
        assert f"may use {len(USABLE)}" in str(caught.value)
        assert await ex.with_options(resources=Resources(cpus=len(USABLE))).run(identity, 2) == 2


async def test_max_tasks_per_worker_recycles_without_losing_tasks() -> None:
    async with ProcessExecutor(2, max_tasks_per_worker=2) as ex:
        pids = await ex.wait([await ex.submit(pid) for _ in range(12)])
        assert len(pids) == 12
        assert len(set(pids)) >= 6


async def test_initializer_runs_in_every_worker() -> None:
    async with ProcessExecutor(2, initializer=init_marker) as ex:
        assert await ex.run(initialized) == ["ready"]


async def test_failing_initializer_is_a_launch_error() -> None:
    with pytest.raises(LaunchError, match="initializer exploded"):
        async with ProcessExecutor(1, initializer=broken_initializer):
            pass


async def test_environment_for_workers_and_per_task() -> None:
    async with ProcessExecutor(1, env={"AE_POOL": "pool"}) as ex:
        assert await ex.run(read_env, "AE_POOL") == "pool"
        assert await ex.with_options(env={"AE_TASK": "task"}).run(read_env, "AE_TASK") == "task"
        assert await ex.run(read_env, "AE_TASK") is None  # restored after the task


async def test_lazy_pool_starts_workers_on_demand() -> None:
    before = len(children())
    async with ProcessExecutor(2, eager=False) as ex:
        assert len(children()) == before
        assert await ex.run(identity, 1) == 1
        assert len(children()) == before + 1


async def test_stats_tell_the_workers_and_what_they_were_sent() -> None:
    async with ProcessExecutor(2, max_tasks_per_worker=50) as ex:
        before = ex.launcher.stats()
        assert len(before.workers) == 2 and before.tasks == 0 and before.depth == 0, before
        assert all(not worker.tasks and worker.tasks_sent == 0 for worker in before.workers)
        pids = set(await ex.wait([await ex.submit(pid) for _ in range(20)]))
        after = ex.launcher.stats()
        assert pids <= {worker.pid for worker in after.workers}, (pids, after)
        assert sum(worker.tasks_sent for worker in after.workers) == 20, after
        assert after.tasks == 0 and after.mean_run > 0, after
        assert after.shared_memory == 0 and after.memory_files == 0, after  # no large argument


async def test_bad_python_is_a_launch_error() -> None:
    with pytest.raises(LaunchError, match="cannot start a worker"):
        async with ProcessExecutor(1, python="/nonexistent/python3"):
            pass


async def test_workers_start_and_run_script_functions_without_cloudpickle() -> None:
    """cloudpickle costs a worker's start ~20 ms: it is imported only when needed."""

    def loaded() -> list[str]:  # a closure, sent by value as a script's function is
        return [name for name in ("cloudpickle", "argparse", "tempfile") if name in sys.modules]

    def make_adder(n: int) -> Any:
        return lambda x: x + n  # only cloudpickle pickles this

    async with ProcessExecutor(1) as ex:
        assert await ex.run(loaded) == []
        adder = await ex.run(make_adder, 2)
        assert adder(3) == 5
        assert await ex.run(loaded) == ["cloudpickle"]


async def test_version_mismatch_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python-with-other-cloudpickle"
    fake.write_text(
        "#!/bin/sh\n"
        f'exec {sys.executable} -c "import cloudpickle, runpy, sys; '
        "cloudpickle.__version__ = '0.0.1'; sys.argv = ['worker'] + sys.argv[3:]; "
        "runpy.run_module('asyncexec.worker', run_name='__main__')\" \"$@\"\n"
    )
    fake.chmod(0o755)
    with pytest.raises(LaunchError, match="cloudpickle"):
        async with ProcessExecutor(1, python=str(fake)):
            pass


async def test_close_leaves_no_worker_behind() -> None:
    before = {child.pid for child in children()}
    async with ProcessExecutor(2) as ex:
        await ex.run(identity, 0)
        assert len({child.pid for child in children()} - before) == 2
    assert {child.pid for child in children()} - before == set()


DRIVER = """
import sys, anyio, time
from asyncexec import ProcessExecutor

def report(path):
    import os
    open(path, "a").write(f"{os.getpid()}\\n")
    time.sleep(60)

async def main():
    async with ProcessExecutor(2) as ex:
        futures = [await ex.submit(report, sys.argv[1]) for _ in range(2)]
        await ex.wait(futures)

anyio.run(main, backend=sys.argv[2])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_killed_driver_leaves_no_worker(tmp_path: Path, backend: str) -> None:
    import subprocess

    import psutil

    pids = tmp_path / "pids"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(pids), backend])
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() < deadline and driver.poll() is None, "the driver never started"
            time.sleep(0.05)
        workers = [int(line) for line in pids.read_text().split()]
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 15  # a hang guard: the watch thread polls every 0.5 s
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [
            pid
            for pid in workers
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        time.sleep(0.1)
    assert not alive, f"workers outlived their driver: {alive}"


def fail_then_sleep(path: str) -> None:
    if not os.path.exists(path):
        Path(path).write_text("first attempt")
        print("first attempt output")
        raise ValueError("first attempt fails fast")
    time.sleep(60)


async def test_info_describes_the_last_attempt_only(tmp_path: Path) -> None:
    async with ProcessExecutor(1) as ex:
        # The worker up, and this module imported there, first: under load (another
        # test file's containers on the other core) that import alone could outlast
        # the 1 s limit of the first attempt, and the function's first call would be
        # the last attempt.
        assert await (await ex.submit(identity, 1)) == 1
        retried = ex.with_options(retries=1, retry_backoff=0.05, time_limit=1, capture_output=True)
        future = await retried.submit(fail_then_sleep, str(tmp_path / "marker"))
        with pytest.raises(TaskTimeout):
            await future
        info = future.info
        assert info.attempts == 2
        assert info.duration is not None and info.duration > 0
        assert "first attempt output" not in info.stdout


async def test_a_worker_killed_with_its_outcome_unread_is_not_reused() -> None:
    # One worker, two slots: B waits in the launcher for the worker A holds.
    async with BaseExecutor(2, launcher=ProcessLauncher(1)) as ex:
        a = await ex.submit(sleep, 0.2)
        b = await ex.submit(identity, "b")
        await anyio.sleep(0.05)
        time.sleep(0.5)  # noqa: ASYNC251 - block the loop while A's outcome arrives unread
        await ex.cancel(a)
        assert a.state is FutureState.CANCELLED
        assert await b == "b"


async def test_an_idle_worker_that_died_is_not_given_tasks() -> None:
    async with ProcessExecutor(1) as ex:
        worker = await ex.run(pid)
        os.kill(worker, signal.SIGKILL)
        # Wait until the whole process has exited (not just its main thread), but
        # do not yield to the event loop: its reader must not have seen the EOF yet.
        while not _has_exited(worker):
            time.sleep(0.001)  # noqa: ASYNC251
        assert await ex.run(identity, "after") == "after"


# -- prefetch: tasks queued at busy workers -------------------------------------------


def touch_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return path


def mark_then_sleep(path: str, seconds: float) -> None:
    Path(path).touch()
    time.sleep(seconds)


def crash_after(path: str, seconds: float) -> None:
    Path(path).touch()
    time.sleep(seconds)
    os._exit(9)


async def _queue_short_tasks(ex: ProcessExecutor) -> None:
    """Run enough no-op tasks that the pool learns tasks are short and queues them."""
    await ex.wait([await ex.submit(identity, i) for i in range(300)])
    stats = ex.launcher.stats()
    assert stats.depth >= 8, stats


async def _until_exists(*paths: Path) -> None:
    with anyio.fail_after(30):
        while not all(path.exists() for path in paths):
            await anyio.sleep(0.01)


def _queued_at_workers(ex: ProcessExecutor) -> int:
    return sum(len(worker.tasks) for worker in ex.launcher.stats().workers)


async def _until_queued_at_workers(ex: ProcessExecutor, count: int) -> None:
    """Wait until ``count`` tasks are at the workers (sent ahead, or running)."""
    with anyio.fail_after(30):
        while _queued_at_workers(ex) != count:
            await anyio.sleep(0.01)


async def test_short_tasks_are_queued_at_busy_workers(tmp_path: Path) -> None:
    async with ProcessExecutor(2) as ex:
        await _queue_short_tasks(ex)
        marks = [tmp_path / "a", tmp_path / "b"]
        blockers = [await ex.submit(mark_then_sleep, str(mark), 0.5) for mark in marks]
        await _until_exists(*marks)
        queued = [await ex.submit(identity, i) for i in range(6)]
        # Sent ahead: they wait in the workers' queues, not in the executor's.
        await _until_queued_at_workers(ex, 8)
        assert not any(future.ready() for future in queued)
        assert await ex.wait(queued) == list(range(6))
        await ex.wait(blockers)


async def test_a_queued_task_cancelled_never_runs_and_spares_the_running_one(
    tmp_path: Path,
) -> None:
    async with ProcessExecutor(1) as ex:
        await _queue_short_tasks(ex)
        started, queued_marker = tmp_path / "started", tmp_path / "queued"
        running = await ex.submit(mark_then_sleep, str(started), 0.5)
        await _until_exists(started)
        queued = await ex.submit(touch_after, str(queued_marker), 0.0)
        await _until_queued_at_workers(ex, 2)  # both sent
        assert await queued.cancel() is True
        await running  # its worker was not killed
        await anyio.sleep(0.3)
    assert queued.state is FutureState.CANCELLED
    assert not queued_marker.exists(), "a cancelled queued task ran"


async def test_cancelling_a_queued_task_does_not_wait_for_the_running_one(
    tmp_path: Path,
) -> None:
    """The worker answers a Cancel while it runs the task ahead (which here runs for
    a minute): the cancel returns long before that task ends, and the worker lives."""
    async with ProcessExecutor(1) as ex:
        await _queue_short_tasks(ex)
        started, queued_marker = tmp_path / "started", tmp_path / "queued"
        running = await ex.submit(mark_then_sleep, str(started), 60)
        await _until_exists(started)
        queued = [await ex.submit(touch_after, str(queued_marker), 0.0) for _ in range(3)]
        await _until_queued_at_workers(ex, 4)  # all sent: they wait at the busy worker
        with anyio.fail_after(20):
            await ex.cancel(queued[1:])
            assert await queued[0].cancel() is True
        assert all(future.state is FutureState.CANCELLED for future in queued)
        assert not running.ready(), "the running task ended: nothing was shown"
        assert _queued_at_workers(ex) == 1
        await running.cancel()  # the one running: its worker is killed
        assert await ex.run(identity, 5) == 5
    assert not queued_marker.exists(), "a cancelled queued task ran"


async def test_tasks_queued_behind_a_memory_limited_task_do_not_count_against_it(
    tmp_path: Path,
) -> None:
    """A task's memory limit binds its whole worker while it runs: what arrives for
    the task behind it (a 4 MiB argument, in the pool's shared memory, which the
    worker maps on first use) waits until it has ended, and neither task fails."""
    async with ProcessExecutor(1) as ex:
        await _queue_short_tasks(ex)
        started = tmp_path / "started"
        limited = ex.with_options(resources=Resources(memory_mb=16))
        running = await limited.submit(mark_then_sleep, str(started), 1.0)
        await _until_exists(started)
        behind = await ex.submit(len, b"y" * (4 << 20))
        assert _queued_at_workers(ex) == 2  # sent while it runs
        assert await behind == 4 << 20
        await running
        assert running.successful()


async def test_a_crash_fails_only_the_running_task_not_those_queued_behind_it(
    tmp_path: Path,
) -> None:
    async with ProcessExecutor(1) as ex:
        await _queue_short_tasks(ex)
        started = tmp_path / "started"
        doomed = await ex.submit(crash_after, str(started), 0.3)
        await _until_exists(started)
        behind = [await ex.submit(identity, i) for i in range(5)]
        await anyio.sleep(0.05)
        assert _queued_at_workers(ex) == 6
        with pytest.raises(WorkerLost):
            await doomed
        # They never started there: a new worker runs them.
        assert await ex.wait(behind) == list(range(5))


async def test_a_task_with_a_time_limit_is_never_queued_behind_another(
    tmp_path: Path,
) -> None:
    async with ProcessExecutor(1) as ex:
        await _queue_short_tasks(ex)
        started = tmp_path / "started"
        first = await ex.submit(mark_then_sleep, str(started), 0.6)
        await _until_exists(started)
        limited = await ex.with_options(time_limit=0.5).submit(identity, "in time")
        await anyio.sleep(0.1)
        assert _queued_at_workers(ex) == 1  # it waits in the executor, not at the worker
        # Its clock starts when it is handed over, after `first`: it does not time out.
        assert await limited == "in time"
        await first


async def test_prefetch_zero_hands_tasks_to_idle_workers_only(tmp_path: Path) -> None:
    async with ProcessExecutor(2, prefetch=0) as ex:
        await ex.wait([await ex.submit(identity, i) for i in range(300)])
        marks = [tmp_path / "a", tmp_path / "b"]
        blockers = [await ex.submit(mark_then_sleep, str(mark), 0.3) for mark in marks]
        await _until_exists(*marks)
        queued = [await ex.submit(identity, i) for i in range(4)]
        await anyio.sleep(0.1)
        assert _queued_at_workers(ex) == 2
        assert await ex.wait(queued) == list(range(4))
        await ex.wait(blockers)


# -- tasks handed over without a coroutine each (Launcher.try_start) --------------------


def crash_first_time(path: str, value: str) -> str:
    marker = Path(path)
    if not marker.exists():
        marker.touch()
        os._exit(3)
    return value


def append_then_sleep(path: str, item: int, seconds: float) -> None:
    with open(path, "a") as out:
        out.write(f"{item}\n")
    time.sleep(seconds)


async def test_tasks_handed_to_workers_have_no_coroutine_each(tmp_path: Path) -> None:
    outside = len(anyio.get_running_tasks())
    async with ProcessExecutor(2) as ex:
        await _queue_short_tasks(ex)
        futures = [await ex.submit(sleep, 0.01) for _ in range(100)]
        # They are in the pool's hands (sent to the workers, or waiting at the
        # executor), and the event loop runs no coroutine per task or per slot:
        # only the pool's reader and writer of each worker, and a few more.
        assert len(anyio.get_running_tasks()) - outside < 12
        assert sum(future.state is FutureState.RUNNING for future in futures) >= 2
        await ex.wait(futures)
        assert all(future.info.job_ref is not None for future in futures)
        assert all(future.info.attempts == 1 for future in futures)


async def test_a_crash_is_retried_without_a_coroutine(tmp_path: Path) -> None:
    marker = str(tmp_path / "crashed")
    async with ProcessExecutor(1) as ex:
        retried = ex.with_options(retries=1, retry_backoff=0.01)
        future = await retried.submit(crash_first_time, marker, "second time")
        assert await future == "second time"
        assert future.info.attempts == 2
        assert future.info.exit_code is None  # the last attempt's, not the crash's
        once = ex.with_options(retries=0)
        Path(marker).unlink()
        with pytest.raises(WorkerLost):
            await (await once.submit(crash_first_time, marker, "never"))


def garble_the_channel() -> None:
    """Write a frame that is not a message to the worker's own channel to the driver."""
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    os.write(fd, b"\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1")
    time.sleep(60)


async def test_a_garbled_frame_kills_its_worker_only(caplog: pytest.LogCaptureFixture) -> None:
    async with ProcessExecutor(2) as ex:
        other = await ex.submit(sleep, 0.3)
        with pytest.raises(WorkerLost):
            await ex.run(garble_the_channel)
        assert "unreadable message" in caplog.text
        await other
        assert await ex.run(identity, "after") == "after"


async def test_tasks_behind_a_full_pool_start_in_submit_order(tmp_path: Path) -> None:
    log = tmp_path / "order"
    # prefetch=0: a task goes to an idle worker only, so all but the first wait for room.
    async with ProcessExecutor(1, prefetch=0) as ex:
        futures = [await ex.submit(append_then_sleep, str(log), item, 0.01) for item in range(30)]
        await ex.wait(futures)
    assert log.read_text().split() == [str(item) for item in range(30)]


async def test_a_task_cancelled_as_it_finishes_settles_once(tmp_path: Path) -> None:
    async with ProcessExecutor(1) as ex:
        for _ in range(20):
            future = await ex.submit(sleep, 0.0)
            await anyio.sleep(0.001)
            await ex.cancel(future)
            assert future.state in (FutureState.DONE, FutureState.CANCELLED)
        # The pool is whole: every slot was given back, one worker is still there.
        assert ex.stats().active == 0
        assert await ex.run(identity, "still fine") == "still fine"


# -- large arguments in memory files --------------------------------------------------


def checksum(data: bytes) -> tuple[int, int]:
    return len(data), sum(data[::4096])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_fds_but_shared_memory() -> int:
    """A worker's open file descriptors, but for the pool's shared memory: its mapping
    holds one (mmap keeps a duplicate), and a worker that replaced a dead one maps it
    only once it is sent a task placed there, which depends on timing."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own fd is gone by now)
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:asyncexec-shared"):
                continue
        count += 1
    return count


@pytest.mark.skipif(
    not hasattr(os, "memfd_create") and os.environ.get("CI") != "true",
    reason="memory files are Linux's (in CI this runs, and fails without them)",
)
async def test_large_arguments_travel_outside_frames_and_leave_no_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncexec.launchers.pool import FD_PAYLOAD

    data = os.urandom(FD_PAYLOAD + 12345)
    expected = checksum(data)
    # Shared memory for one such argument at a time: the others take memory files.
    monkeypatch.setattr(ProcessLauncher, "SHARED_MEMORY", len(data) + 4096)
    async with ProcessExecutor(1) as ex:
        launcher = ex.launcher
        assert launcher.fd_payloads and launcher.takes_buffers
        assert await ex.run(checksum, data) == expected  # the shared memory is made
        # Quick tasks, so that the worker is sent tasks ahead (its first task's import
        # made tasks look slow): then several large arguments are out at once.
        for _ in range(20):
            await ex.wait([await ex.submit(checksum, b"") for _ in range(100)])
            if launcher.stats().depth >= 8:
                break
        stats = launcher.stats()
        assert stats.depth >= 8, stats
        assert stats.shared_memory == len(data) + 4096 and stats.shared_memory_in_use == 0
        files = stats.memory_files
        worker_fds = await ex.run(open_fds_but_shared_memory)
        driver_fds = open_fds()
        futures = [await ex.submit(checksum, data) for _ in range(20)]
        assert await ex.wait(futures) == [expected] * 20
        files = launcher.stats().memory_files - files
        assert files, "no argument went to a memory file of its own"
        assert files < 20, "no argument went to shared memory"
        # Queued behind a crash: the arguments go again, to the new worker.
        started = tmp_path / "started"
        doomed = await ex.submit(crash_after, str(started), 0.3)
        await _until_exists(started)
        behind = [await ex.submit(checksum, data) for _ in range(5)]
        with pytest.raises(WorkerLost):
            await doomed
        assert await ex.wait(behind) == [expected] * 5
        # Cancelled while queued: its region is freed, its memory file closed.
        blocker = await ex.submit(sleep, 0.3)
        queued = [await ex.submit(checksum, data) for _ in range(5)]
        await ex.cancel(queued)
        await blocker
        assert launcher.stats().shared_memory_in_use == 0
        assert await ex.run(open_fds_but_shared_memory) == worker_fds
        assert open_fds() == driver_fds
    assert open_fds() < driver_fds  # the shared memory is closed with the pool


def record(path: str, data: bytes) -> int:
    """Write down (a line more) that this task ran, and with what."""
    with open(path, "a") as file:
        file.write(f"{data[:1]!r} {len(data)}\n")
    return len(data)


@pytest.mark.parametrize(
    ("together", "size"), [(False, "shared"), (True, "shared"), (False, "file")]
)
async def test_a_task_cancelled_after_its_worker_died_never_runs(
    tmp_path: Path, together: bool, size: str
) -> None:
    """Queued at a worker that dies, then cancelled while it waits for another.

    It must never run: not on the next worker, and not with the arguments of the
    task that took its place in shared memory. Cancelled with the task that ran
    before it (together), or after.
    """
    from asyncexec.launchers.pool import FD_PAYLOAD, SHARED_PART_MAX

    length = FD_PAYLOAD + 1 if size == "shared" else SHARED_PART_MAX + 1
    async with ProcessExecutor(2, prefetch=2) as ex:
        launcher = ex.launcher
        for _ in range(20):  # until the pool has learnt that tasks are short: it queues them
            await ex.wait([await ex.submit(identity, i) for i in range(100)])
            if launcher.stats().depth == 2:
                break
        stats = launcher.stats()
        assert stats.depth == 2, stats
        blockers = [await ex.submit(sleep, 30) for _ in range(2)]
        await anyio.sleep(0.2)
        doomed = await ex.submit(record, str(tmp_path / "doomed"), b"B" * length)
        [worker] = [w for w in launcher.stats().workers if doomed.task_id in w.tasks]
        [ahead] = [b for b in blockers if b.task_id in worker.tasks]
        if together:
            await ex.cancel([ahead, doomed])
        else:
            await ex.cancel(ahead)  # kills the worker: the queued task waits for another
            await ex.cancel(doomed)
        assert doomed.state is FutureState.CANCELLED
        after = await ex.submit(record, str(tmp_path / "after"), b"D" * length)
        await ex.cancel(blockers)
        assert await after == length
        await anyio.sleep(0.5)  # room for the cancelled task to run, were it sent again
        assert not (tmp_path / "doomed").exists(), "a cancelled task ran"
        # (Sent again with its frame pointing into shared memory that the next task
        # took, it would run that task's call a second time.)
        assert (tmp_path / "after").read_text() == f"b'D' {length}\n"
        stats = launcher.stats()
        assert stats.shared_memory_in_use == 0 and stats.tasks == 0, stats


async def test_large_bytes_arguments_are_not_copied_at_submit() -> None:
    """Pending tasks keep a reference to a large bytes argument, not a copy of it."""
    data = os.urandom(1 << 20)
    async with ProcessExecutor(1) as ex:
        blocker = await ex.submit(sleep, 0.3)
        before = sys.getrefcount(data)
        futures = [await ex.submit(checksum, data) for _ in range(50)]
        assert sys.getrefcount(data) == before + 50
        await blocker
        assert await ex.wait(futures) == [checksum(data)] * 50
        del futures
        assert sys.getrefcount(data) == before


async def test_an_argument_larger_than_the_shared_part_goes_in_a_memory_file() -> None:
    from asyncexec.launchers.pool import SHARED_PART_MAX

    data = os.urandom(SHARED_PART_MAX + 1)
    async with ProcessExecutor(1) as ex:
        assert await ex.run(checksum, data) == checksum(data)
        stats = ex.launcher.stats()
        assert stats.shared_memory == 0, stats  # not made for it
        assert stats.memory_files == (1 if ex.launcher.fd_payloads else 0), stats


def test_prefetch_must_be_a_count() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        ProcessExecutor(1, prefetch=-1)


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def current(self) -> int:
        return self.count


async def test_pickles_remembered_are_those_without_state() -> None:
    """A module's function is pickled once; a bound method or a partial every time."""
    import functools

    from asyncexec._pickle_cache import remembered

    counter = Counter()
    items: list[int] = []
    method = counter.current
    partial = functools.partial(len, items)
    async with ProcessExecutor(1) as ex:
        for expected in range(3):
            assert await ex.run(method) == expected
            assert await ex.run(partial) == expected
            assert await ex.run(identity, expected) == expected
            counter.count += 1
            items.append(expected)
    assert remembered(identity) == "reference"
    assert remembered(method) != "reference" and remembered(partial) != "reference"


SCRIPT = """
import dataclasses, sys, anyio
from asyncexec import ProcessExecutor

@dataclasses.dataclass
class Point:  # lives in __main__: pickled by value, as cloudpickle does
    x: int
    y: int

def norm(p):
    return abs(p.x) + abs(p.y)

SCALE = 2

def scaled(x):
    return x * SCALE

async def main():
    global SCALE
    async with ProcessExecutor(1) as ex:
        print(await ex.run(norm, Point(3, -4)), await ex.run(lambda: Point(1, 2)))
        # Pickled once while unchanged; again when a global it reads is rebound.
        print(await ex.run(scaled, 1), await ex.run(scaled, 2), end=" ")
        SCALE = 5
        print(await ex.run(scaled, 1))
        # A large argument skips the fast path (and its scan): still by value.
        print(await ex.run(lambda p, data: norm(p) + len(data), Point(1, 1), bytes(200_000)))

anyio.run(main)
"""


def test_a_scripts_functions_classes_and_lambdas_travel_by_value(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "Point(x=1,", "y=2)", "2", "4", "5", "200002"]


def test_modules_registered_by_value_are_pickled_by_cloudpickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import cloudpickle

    from asyncexec import _codec
    from asyncexec._pickle_cache import remembered

    (tmp_path / "by_value_here.py").write_text("def shout(x):\n    return str(x).upper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("by_value_here")
    by_reference, _, _ = _codec.dumps_call(module.shout, ("a",), {})
    assert b"cloudpickle" not in by_reference and remembered(module.shout) == "reference"
    cloudpickle.register_pickle_by_value(module)
    try:
        by_value, _, _ = _codec.dumps_call(module.shout, ("a",), {})
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert b"cloudpickle" in by_value  # the remembered pickle was not used
    assert _codec.dumps_call(module.shout, ("a",), {})[0] == by_reference


# -- a task whose new worker dies while starting never ran (issue 17, item 5) -----------


def count_start_and_die_at(path: str, doomed: tuple[int, ...]) -> None:
    """An initializer: counts the workers started (in ``path``); those whose number is in
    ``doomed`` kill themselves, before their handshake ends."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    if os.path.getsize(path) in doomed:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "lazy"])
async def test_a_task_whose_new_worker_dies_while_starting_runs_on_the_next(
    tmp_path: Path, eager: bool
) -> None:
    """The first worker dies running a task; the one started next for the task that
    waited dies while starting (killed before its handshake ended: no task reached
    it). That task is not failed and spends no retry: it runs on the worker after."""
    import functools

    starts = tmp_path / "starts"
    initializer = functools.partial(count_start_and_die_at, str(starts), (2,))
    async with ProcessExecutor(1, eager=eager, initializer=initializer) as ex:
        crash = await ex.submit(hard_exit, 3)
        waiting = await ex.submit(pid)  # waits for the one worker
        with pytest.raises(WorkerLost):
            await crash
        assert await waiting.get(timeout=60) != crash.info.pid
        assert waiting.info.attempts == 1  # no retry spent (retries=0: none to spend)
        assert starts.read_text() == "xxx"


async def test_workers_that_always_die_while_starting_fail_the_task_clearly(
    tmp_path: Path,
) -> None:
    """No endless requeue: a few workers in a row die while starting, then the task
    fails with a LaunchError saying why."""
    import functools

    starts = tmp_path / "starts"
    initializer = functools.partial(count_start_and_die_at, str(starts), tuple(range(1, 100)))
    async with ProcessExecutor(1, eager=False, initializer=initializer) as ex:
        with anyio.fail_after(120):
            with pytest.raises(LaunchError, match=r"died while starting.*3 workers in a row"):
                await ex.run(pid)
    assert starts.read_text() == "xxx"


# -- a killed driver takes every process its tasks started (issue 17, item 6) -----------

TREE_DRIVER = """
import os, subprocess, sys, time, anyio
from asyncexec import ProcessExecutor

def start_child(marker, path, then_sleep):
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", marker]
    )
    with open(path, "a") as out:
        out.write(f"{child.pid}\\n")
    if then_sleep:  # the worker stays busy; else it is idle, its task's child running
        time.sleep(600)
    return child.pid

async def main():
    marker, path = sys.argv[1], sys.argv[2]
    async with ProcessExecutor(2) as ex:
        idle = await ex.run(start_child, marker, path, False)
        print(idle, flush=True)
        busy = await ex.submit(start_child, marker, path, True)
        await busy

anyio.run(main, backend=sys.argv[3])
"""


def marked(marker: str) -> list[Any]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[-1:] == [marker] and (  # (not the driver: its argv ends otherwise)
            process.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(process)
    return found


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_killed_driver_takes_the_processes_its_tasks_started(
    tmp_path: Path, backend: str
) -> None:
    import subprocess
    import uuid

    marker = f"asyncexec-tree-{uuid.uuid4().hex}"
    pids = tmp_path / "pids"
    driver = subprocess.Popen([sys.executable, "-c", TREE_DRIVER, marker, str(pids), backend])
    try:
        try:
            deadline = time.monotonic() + 60
            while not (pids.exists() and len(pids.read_text().split()) == 2):
                assert time.monotonic() < deadline, "the driver never started its tasks"
                assert driver.poll() is None, "the driver ended early"
                time.sleep(0.05)
            assert len(marked(marker)) == 2
        finally:
            driver.kill()  # SIGKILL: no cleanup code of the driver's runs
            driver.wait()
        deadline = time.monotonic() + 30  # generous: the workers poll every 0.5 s
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [(process.pid, process.ppid()) for process in marked(marker)]
        assert not left, f"processes started by tasks outlived their driver: {left}"
    finally:
        for process in marked(marker):
            with contextlib.suppress(Exception):
                process.kill()


def exit_while_starting() -> None:
    os._exit(3)


async def test_a_worker_that_exits_while_starting_fails_the_task_at_once() -> None:
    """Exiting by itself with a status is no accident (a broken environment): the next
    worker would do the same, so none is started for the task."""
    async with ProcessExecutor(1, eager=False, initializer=exit_while_starting) as ex:
        with pytest.raises(LaunchError, match=r"died while starting.*status 3$"):
            await ex.run(pid)
