"""The one-shot runner of cluster jobs, run as real processes the way a job script runs it."""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyncexec._codec import dumps, dumps_call, loads
from asyncexec._messages import Outcome, TaskSpec
from asyncexec._runtime import BOOT, MODULE_FILE, OUTCOME_FIELDS
from asyncexec._worker import execute
from asyncexec.launchers.slurm import _RUNNER_SOURCE, batch_file, read_outcome
from asyncexec.testing import add, heartbeat, print_both, raise_value_error, return_lock, touch

#: This module's functions are pickled by reference: the runner must find ``tests``.
#: (And bytecode is written, as on a cluster unless the user's environment says otherwise.)
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}


def spec(task_id: str, fn: object, *args: object, **extra: object) -> TaskSpec:
    fn_bytes, args_bytes, _ = dumps_call(fn, args, {})
    return TaskSpec(task_id=task_id, fn=fn_bytes, args=args_bytes, **extra)  # type: ignore[arg-type]


def stage(tmp_path: Path) -> Path:
    """An array's directory as the Slurm launcher leaves it: the runner and empty dirs."""
    workdir = tmp_path / "array"
    for sub in ("in", "out", "cancel"):
        (workdir / sub).mkdir(parents=True, mode=0o700)
    (workdir / MODULE_FILE).write_bytes(_RUNNER_SOURCE)
    return workdir


def command(workdir: Path) -> list[str]:
    """What job.sh runs, for array task 0."""
    return [
        sys.executable,
        "-c",
        BOOT,
        str(workdir),
        str(workdir / "in" / "0.bin"),
        str(workdir / "out"),
        str(workdir / "cancel"),
    ]


def write_batch(workdir: Path, tasks: list[TaskSpec], **changes: Any) -> None:
    batch = pickle.loads(batch_file(tasks))
    batch.update(changes)
    (workdir / "in" / "0.bin").write_bytes(pickle.dumps(batch, protocol=5))


def run(workdir: Path, tasks: list[TaskSpec], **changes: Any) -> subprocess.CompletedProcess[bytes]:
    write_batch(workdir, tasks, **changes)
    return subprocess.run(
        command(workdir), capture_output=True, timeout=120, env=ENV, cwd=workdir.parent, check=False
    )


def outcomes(workdir: Path) -> dict[str, Outcome]:
    found = {}
    for path in (workdir / "out").glob("*.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        outcome = read_outcome(path.read_bytes())
        found[outcome.task_id] = outcome
    leftovers = [p.name for p in (workdir / "out").iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return found


def value(outcome: Outcome) -> Any:
    assert outcome.status == "ok", outcome.error
    return loads(outcome.value or b"")


def test_a_batch_of_tasks(tmp_path: Path) -> None:
    workdir = stage(tmp_path)
    log = str(workdir / "out" / "logged.stdout")
    done = run(
        workdir,
        [
            spec("ok", add, 2, 3),
            spec("raised", raise_value_error, "one-shot boom"),
            spec("timeout", heartbeat, str(tmp_path / "beat"), time_limit=0.5),
            spec("output", print_both, "shot", capture_output=True),
            spec("logged", print_both, "kept", capture_output=True, stdout_path=log),
            spec("env", os.getenv, "ASYNCEXEC_ONESHOT", env={"ASYNCEXEC_ONESHOT": "set"}),
        ],
    )
    assert done.returncode == 0, done.stderr.decode()
    found = outcomes(workdir)
    assert value(found["ok"]) == 5
    raised = found["raised"]
    assert raised.status == "raised" and raised.error is not None
    assert raised.error.type_name == "ValueError" and "one-shot boom" in raised.error.traceback
    assert (
        "raise_value_error" in raised.error.traceback and "_oneshot" not in raised.error.traceback
    )
    assert isinstance(loads(raised.error.pickled or b""), ValueError)
    assert found["timeout"].status == "timeout"
    assert "out:shot" in found["output"].stdout and "err:shot" in found["output"].stderr
    assert Path(log).read_text() == "out:kept\n" and "err:kept" in found["logged"].stderr
    assert value(found["env"]) == "set" and "ASYNCEXEC_ONESHOT" not in os.environ
    assert {o.pid for o in found.values()} == {found["ok"].pid}
    assert all(o.host and o.started and o.finished for o in found.values())


def test_starts_on_the_standard_library_alone(tmp_path: Path) -> None:
    """What a job pays for at start: no msgspec, cloudpickle, typing or asyncexec."""

    def loaded_modules() -> list[str]:  # sent by value, as a function in a script is
        return sorted(sys.modules)

    workdir = stage(tmp_path)
    run(workdir, [spec("modules", loaded_modules), spec("by-reference", eval, "1 + 1")])
    bare = subprocess.run(
        [sys.executable, "-c", "import sys; print(*sys.modules)"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    # Beyond what the interpreter itself loads (site hooks of this environment included):
    found = outcomes(workdir)
    loaded = set(value(found["modules"])) - set(bare.stdout.decode().split())
    assert not loaded & {"msgspec", "cloudpickle", "typing", "asyncexec", "argparse", "tempfile"}
    assert not loaded & {"signal", "enum", "re", "pickle", "threading"}, "more than the C modules"
    assert value(found["by-reference"]) == 2
    # The bytecode was cached beside it, for the array's other tasks.
    assert list((workdir / "__pycache__").glob("_asyncexec_oneshot.*.pyc"))


def test_the_runner_and_the_pool_worker_run_a_task_alike(tmp_path: Path) -> None:
    """Both run tasks through the one runtime: what became of a task reads the same."""
    workdir = stage(tmp_path)
    missing = str(tmp_path / "no such directory" / "log")
    tasks = [
        spec("ok", add, 2, 3),
        spec("raised", raise_value_error, "alike"),
        spec("result", return_lock),
        spec("log", print_both, "x", stdout_path=missing),
        spec("env", os.getenv, "ASYNCEXEC_ALIKE", env={"ASYNCEXEC_ALIKE": "set"}),
        TaskSpec(task_id="broken", fn=b"not a pickle", args=dumps(((), {}))),
    ]
    run(workdir, tasks)
    found = outcomes(workdir)
    for task in tasks:
        here, there = execute(task), found[task.task_id]
        assert (here.status, here.value) == (there.status, there.value), task.task_id
        if here.error is None or there.error is None:
            assert here.error is there.error is None, task.task_id
            continue
        assert here.error.type_name == there.error.type_name, task.task_id
        assert here.error.message == there.error.message, task.task_id
    assert [found[name].status for name in ("ok", "raised", "result", "log", "broken")] == [
        "ok",
        "raised",
        "unpicklable",
        "raised",
        "unpicklable",
    ]


def test_callables_pickled_by_value_and_results_only_cloudpickle_can_pickle(
    tmp_path: Path,
) -> None:
    offset = 10

    def shifted(x: int) -> int:  # a closure: cloudpickle sends it by value
        return x + offset

    def adder(n: int) -> Callable[[int], int]:
        return lambda x: x + n

    workdir = stage(tmp_path)
    run(workdir, [spec("closure", shifted, 1), spec("lambda", adder, 3)])
    found = outcomes(workdir)
    assert value(found["closure"]) == 11
    assert value(found["lambda"])(4) == 7


def test_version_mismatches_are_refused(tmp_path: Path) -> None:
    workdir = stage(tmp_path)
    run(workdir, [spec("x", add, 1, 1)], python="2.7")
    refused = outcomes(workdir)["x"]
    assert refused.status == "refused" and refused.error is not None
    assert "python 2.7 on the driver" in refused.error.message

    def local() -> int:
        return 1

    other = stage(tmp_path / "other")
    run(other, [spec("by-value", local), spec("by-reference", add, 1, 1)], cloudpickle="0.0.1")
    found = outcomes(other)
    assert found["by-value"].status == "refused" and found["by-value"].error is not None
    assert "cloudpickle 0.0.1 on the driver" in found["by-value"].error.message
    assert value(found["by-reference"]) == 2  # needs no cloudpickle on the node


def test_an_unloadable_task_fails_alone(tmp_path: Path) -> None:
    workdir = stage(tmp_path)
    broken = TaskSpec(task_id="broken", fn=b"not a pickle", args=dumps(((), {})))
    run(workdir, [broken, spec("fine", add, 1, 1)])
    found = outcomes(workdir)
    assert found["broken"].status == "unpicklable" and value(found["fine"]) == 2


class SlowToPickle:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        time.sleep(1.0)
        return (int, (7,))


def returns_slow_to_pickle() -> SlowToPickle:
    time.sleep(0.6)
    return SlowToPickle()


def test_the_time_limit_stops_the_function_not_the_pickling(tmp_path: Path) -> None:
    workdir = stage(tmp_path)
    run(workdir, [spec("quick", add, 1, 2), spec("slow", returns_slow_to_pickle, time_limit=1.0)])
    found = outcomes(workdir)
    assert value(found["quick"]) == 3 and value(found["slow"]) == 7


def stuck_in_c() -> None:  # the time limit's SIGALRM never gets through
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)


def stuck_holding_the_gil(child_marker: str) -> None:
    """A C call that never returns and holds the GIL (a mutex locked twice), a child beside."""
    import ctypes

    subprocess.Popen(["sleep", "300", child_marker])
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


def test_tasks_stuck_past_their_limit_are_killed_and_time_out(tmp_path: Path) -> None:
    workdir = stage(tmp_path)
    marker = f"asyncexec-stuck-child-{os.getpid()}-{time.monotonic_ns()}"
    began = time.monotonic()
    done = run(
        workdir,
        [
            spec("blocked", stuck_in_c, time_limit=0.5),
            spec("gil", stuck_holding_the_gil, marker, time_limit=0.5),
            spec("after", add, 2, 3),
        ],
        stuck_grace=1.0,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert time.monotonic() - began < 20  # not the minutes they would spin
    assert b"Timeout" in done.stderr and b"stuck_in_c" in done.stderr  # where it was stuck
    found = outcomes(workdir)
    assert found["blocked"].status == "timeout" and found["gil"].status == "timeout"
    assert value(found["after"]) == 5  # the chunk goes on in a new child
    assert found["blocked"].pid != found["after"].pid
    listed = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert listed.stdout == "", "the stuck task's child outlived it"


def test_cancel_markers_skip_or_interrupt_one_task(tmp_path: Path) -> None:
    workdir = stage(tmp_path)
    beat = str(tmp_path / "beat")
    never = str(tmp_path / "never")
    (workdir / "cancel" / "skipped").touch()
    write_batch(
        workdir,
        [
            spec("skipped", touch, never),
            spec("running", heartbeat, beat),
            spec("after", add, 2, 2),
        ],
    )
    with subprocess.Popen(command(workdir), env=ENV, stderr=subprocess.PIPE) as runner:
        deadline = time.monotonic() + 60
        while not os.path.exists(beat):
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(0.02)
        (workdir / "cancel" / "running").touch()
        assert runner.wait(timeout=30) == 0
    found = outcomes(workdir)
    assert found["skipped"].status == "cancelled" and not os.path.exists(never)
    assert found["running"].status == "cancelled"
    assert value(found["after"]) == 4


def test_outcome_files_hold_builtins_only() -> None:
    assert Outcome.__struct_fields__ == OUTCOME_FIELDS
    with pytest.raises(pickle.UnpicklingError):
        read_outcome(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        read_outcome(pickle.dumps({"task_id": "x", "status": "ok", "value": Path("/")}))
    with pytest.raises(msgspec.ValidationError):
        read_outcome(pickle.dumps({"task_id": "x", "status": "exploded"}))
    fine = read_outcome(pickle.dumps({"task_id": "x", "status": "ok", "stdout": "", "stderr": ""}))
    assert fine == Outcome(task_id="x", status="ok")


def test_functions_sent_by_value_load_as_cloudpickle_loads_them() -> None:
    """The runner's copy of cloudpickle's function reconstructors, against cloudpickle."""
    import asyncio
    import functools
    import math
    import os.path

    import cloudpickle

    from asyncexec._runtime import TaskUnpickler

    factor = 3

    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * factorial(n - 1)

    def defaults(a: int, b: int = 2, *, c: int = 3) -> int:
        """Documented."""
        return a + b + c

    defaults.extra = "attribute"  # type: ignore[attr-defined]

    def modules(x: float) -> float:
        return math.sqrt(x) + len(os.path.join("a", "b"))

    def nested(n: int) -> Callable[[int], int]:
        def inner(m: int) -> int:
            return m * n * factor

        return inner

    def generator(n: int) -> Any:
        yield from range(n)

    async def coroutine(x: int) -> int:
        await asyncio.sleep(0)
        return x * factor

    def empty_cell() -> Callable[[], int]:
        def read() -> int:
            return later

        later = 5
        return read

    cases: list[tuple[Callable[..., Any], Callable[[Any], Any]]] = [
        (factorial, lambda f: f(5)),
        (defaults, lambda f: (f(1), f(1, 1, c=1), f.__doc__, f.extra, f.__defaults__)),
        (modules, lambda f: f(16.0)),
        (nested, lambda f: f(2)(5)),
        (nested(4), lambda f: f(5)),
        (generator, lambda f: list(f(4))),
        (coroutine, lambda f: asyncio.run(f(2))),
        (lambda x: x - factor, lambda f: f(10)),
        (empty_cell, lambda f: f()()),
        (functools.partial(defaults, 10), lambda f: f(c=0)),
    ]
    fallbacks: list[str | None] = []

    def needs_cloudpickle(version: str | None) -> str | None:
        fallbacks.append(version)
        return None

    for fn, use in cases:
        data = cloudpickle.dumps(fn, protocol=5)
        copy = TaskUnpickler(data, cloudpickle.__version__, needs_cloudpickle).load()
        expected = cloudpickle.loads(data)
        assert use(copy) == use(expected) == use(fn)
        for name in ("__name__", "__qualname__", "__module__", "__annotations__", "__kwdefaults__"):
            assert getattr(copy, name, None) == getattr(expected, name, None), name
    assert fallbacks == [], "a function needed cloudpickle itself"
    # A class defined in a script still comes from cloudpickle itself.

    class Local:
        pass

    TaskUnpickler(cloudpickle.dumps(Local), cloudpickle.__version__, needs_cloudpickle).load()
    assert fallbacks
