"""Faults at scale, and the fault matrix of docs/faults.md kept honest.

The per-fault regression tests live with their backend; here are the ones that
mix faults among many tasks, and a check that every test the matrix names exists.
"""

from __future__ import annotations

import ast
import ctypes
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from asyncexec import (
    FutureState,
    ProcessExecutor,
    SlurmExecutor,
    TaskCancelled,
    TaskFailed,
    WorkerLost,
)
from asyncexec.experiment import ResultsStore
from asyncexec.testing import add, heartbeat

from .cluster import Cluster, squeue
from .test_cli import EXPERIMENT, asyncexec, finish, wait_for_lines
from .test_slurm import config as slurm_config

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

#: One task in CRASH_EVERY dies, each time another way.
CRASH_EVERY = 40
CRASHES = ("exit", "sigkill", "segfault", "abort", "raise")


def work(i: int) -> int:
    if i % CRASH_EVERY == CRASH_EVERY - 1:
        kind = CRASHES[(i // CRASH_EVERY) % len(CRASHES)]
        if kind == "exit":
            os._exit(3)
        if kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "segfault":
            ctypes.string_at(0)
        if kind == "abort":
            os.abort()
        raise ValueError(f"task {i} failed")
    return i * i


def sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


@pytest.mark.anyio
async def test_crashes_of_every_kind_among_many_tasks_fail_only_their_own() -> None:
    count = 2000
    async with ProcessExecutor(2) as ex:
        futures = [await ex.submit(work, i) for i in range(count)]
        for future in futures:
            await future.wait()
        for i, future in enumerate(futures):
            error = future.exception()
            if i % CRASH_EVERY != CRASH_EVERY - 1:
                assert error is None, (i, error)
                assert future.result() == i * i
            elif CRASHES[(i // CRASH_EVERY) % len(CRASHES)] == "raise":
                assert isinstance(error, TaskFailed), (i, error)
                assert f"task {i} failed" in str(error)
            else:  # the worker died under it: only this task is lost
                assert isinstance(error, WorkerLost), (i, error)
        # The pool is whole again.
        assert await ex.run(work, 0) == 0


@pytest.mark.anyio
async def test_a_thousand_concurrent_cancels_leave_nothing_running() -> None:
    async with ProcessExecutor(2) as ex:
        futures = [await ex.submit(sleep, 60) for _ in range(1000)]
        with anyio.fail_after(60):  # generous: the two running ones are killed
            while sum(f.state is FutureState.RUNNING for f in futures) < 2:
                await anyio.sleep(0.01)
            async with anyio.create_task_group() as group:
                for future in futures:
                    group.start_soon(future.cancel)
        assert all(f.state is FutureState.CANCELLED for f in futures)
        assert await ex.run(work, 2) == 4
    # no_leftover_processes: the killed tasks' workers are gone with the pool.


TEST_REF = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")


def test_every_test_the_fault_matrix_names_exists() -> None:
    matrix = (ROOT / "docs" / "faults.md").read_text()
    refs = TEST_REF.findall(matrix)
    assert len(refs) >= 30, "the matrix names the tests that pin its rows"
    defined: dict[str, set[str]] = {}
    missing = []
    for path, name in refs:
        if path not in defined:
            tree = ast.parse((ROOT / path).read_text())
            defined[path] = {
                node.name
                for node in tree.body
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
        if name not in defined[path]:
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/faults.md names tests that do not exist: {missing}"


# -- the runner killed again and again, and runners side by side ---------------------

RUNS = 40
MANY = EXPERIMENT + (
    f"many = Experiment(slow_square, {{'x': list(range({RUNS})), 'log': [LOG],"
    " 'seconds': [SECONDS]})\n"
)


def _cli(experiment: Path, directory: Path, log: Path, *extra: str) -> subprocess.Popen[str]:
    return asyncexec(
        "run",
        f"{experiment}:many",
        "--dir",
        str(directory),
        "--workers",
        "2",
        *extra,
        log=log,
        seconds=0.1,
    )


def _starts(log: Path) -> list[int]:
    return [
        int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start")
    ]


@pytest.mark.infra
def test_ten_sigkills_in_a_row_lose_nothing(tmp_path: Path) -> None:
    experiment = tmp_path / "exp.py"
    experiment.write_text(MANY)
    log, directory = tmp_path / "log", tmp_path / "runs"
    for kill in range(10):
        driver = _cli(experiment, directory, log, *(("--continue",) if kill else ()))
        try:
            # Kill it at a different moment each time: before, while and after runs end.
            before = len(_starts(log)) if log.exists() else 0
            wait_for_lines(log, "start", before + 1 + kill % 3)
            time.sleep(0.05 * kill)
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.communicate()
    code, _out, err = finish(_cli(experiment, directory, log, "--continue"))
    assert code == 0, err
    with ResultsStore(directory, create=False) as store:
        rows = store.rows()
    assert len(rows) == RUNS
    assert all(row["status"] == "done" for row in rows), [r for r in rows if r["status"] != "done"]
    assert sorted(row["params"]["x"] for row in rows) == list(range(RUNS))
    assert all(row["value"] == row["params"]["x"] ** 2 for row in rows)
    # A run in flight at a kill may run again (docs/faults.md); a finished one never.
    starts = _starts(log)
    assert set(starts) == set(range(RUNS))
    assert len(starts) - RUNS <= 10 * 2 * 2  # at most the dispatch window per kill


@pytest.mark.infra
def test_three_runners_on_one_directory_run_each_run_once(tmp_path: Path) -> None:
    experiment = tmp_path / "exp.py"
    experiment.write_text(MANY)
    log, directory = tmp_path / "log", tmp_path / "runs"
    first = _cli(experiment, directory, log)
    wait_for_lines(log, "start", 1)  # the directory exists: the others continue it
    others = [_cli(experiment, directory, log, "--continue") for _ in range(2)]
    for runner in (first, *others):
        code, _out, err = finish(runner)
        assert code == 0, err
    with ResultsStore(directory, create=False) as store:
        rows = store.rows()
    done = [row["params"]["x"] for row in rows if row["status"] == "done"]
    assert sorted(done) == list(range(RUNS))
    assert sorted(_starts(log)) == list(range(RUNS)), "a run ran twice"


# -- Slurm: work stopped behind the driver's back ---------------------------------------


@pytest.mark.infra
@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncssh: asyncio only
async def test_an_outside_scancel_cancels_only_that_task(cluster: Cluster, scratch: str) -> None:
    async with SlurmExecutor(cluster.shell(), slurm_config(cluster)) as ex:
        beat = f"{scratch}/beat"
        doomed = await ex.submit(heartbeat, beat)
        spared = await ex.submit(add, 1, 2)
        with anyio.fail_after(120):
            while not os.path.exists(beat) or doomed.info.job_ref is None:
                await anyio.sleep(0.05)
        ref = doomed.info.job_ref
        assert ref is not None
        await anyio.run_process(["scancel", ref.native_id])
        with anyio.fail_after(120), pytest.raises(TaskCancelled):
            await doomed
        assert await spared == 3
        with anyio.fail_after(60):
            while any(line.split()[0] == ref.native_id for line in squeue(cluster.user)):
                await anyio.sleep(0.2)
        assert await (await ex.submit(add, 2, 3)) == 5
