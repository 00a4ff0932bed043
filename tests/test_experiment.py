"""The experiment runner and its results store, on real executors."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncexec import ProcessExecutor, ThreadExecutor
from asyncexec._sqlite import new_holder
from asyncexec.experiment import Experiment, Progress, ResultsStore, StoreError
from asyncexec.experiment._leases import RunLeases
from asyncexec.experiment._runner import _canonical, _canonical_text, _Dispatch

pytestmark = pytest.mark.anyio


def power(base: int, exponent: int) -> int:
    return int(base**exponent)


def fails_for_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x


def not_json(x: int) -> complex:
    return complex(x, 1)


def seeded(x: int, repeat: int) -> tuple[int, int]:
    return (x, repeat)


def logged(x: int, log: str) -> int:
    with open(log, "a") as out:
        out.write(f"{x}\n")
    return x


def printing(x: int) -> int:
    print(f"stdout of {x}")
    return x


async def test_runs_the_grid_and_stores_every_run(tmp_path: Path) -> None:
    experiment = Experiment(power, {"base": [2, 3], "exponent": [1, 2, 3]}, repeats=2)
    assert len(experiment.runs) == 12
    async with ThreadExecutor(2) as ex:
        summary = await experiment.run(ex, tmp_path / "exp", progress=False)
    assert (summary.total, summary.done, summary.failed, summary.ran) == (12, 12, 0, 12)
    assert summary.complete and not summary.cancelled
    with ResultsStore(tmp_path / "exp", create=False) as store:
        rows = store.rows()
        assert store.experiment == "power"
    assert len(rows) == 12
    assert {(r["params"]["base"], r["params"]["exponent"], r["repeat"]) for r in rows} == {
        (b, e, r) for b in (2, 3) for e in (1, 2, 3) for r in (0, 1)
    }
    for row in rows:
        assert row["status"] == "done"
        assert row["value"] == row["params"]["base"] ** row["params"]["exponent"]
        assert row["duration"] is not None and row["attempts"] == 1
        assert row["host"] and row["job_ref"]["kind"] == "thread"


async def test_failures_are_recorded_with_the_remote_traceback(tmp_path: Path) -> None:
    experiment = Experiment(fails_for_three, {"x": [1, 2, 3, 4]})
    async with ProcessExecutor(2) as ex:
        summary = await experiment.run(ex, tmp_path, progress=False)
    assert (summary.done, summary.failed) == (3, 1)
    with ResultsStore(tmp_path, create=False) as store:
        [failed] = store.rows(status="failed")
    assert failed["params"] == {"x": 3}
    assert failed["error_type"] == "ValueError" and failed["error_message"] == "three is bad"
    assert "fails_for_three" in failed["traceback"]


async def test_a_second_run_skips_what_is_done_and_can_retry_failures(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    experiment = Experiment(logged, {"x": [1, 2, 3], "log": [log]})
    async with ThreadExecutor(2) as ex:
        first = await experiment.run(ex, tmp_path / "exp", progress=False)
        again = await experiment.run(ex, tmp_path / "exp", progress=False)
    assert (first.ran, again.ran, again.done) == (3, 0, 3)
    assert sorted(Path(log).read_text().split()) == ["1", "2", "3"]

    failing = Experiment(fails_for_three, {"x": [1, 3]})
    async with ThreadExecutor(2) as ex:
        await failing.run(ex, tmp_path / "f", progress=False)
        skipped = await failing.run(ex, tmp_path / "f", progress=False)
        retried = await failing.run(ex, tmp_path / "f", progress=False, retry_failed=True)
    assert (skipped.ran, skipped.failed) == (0, 1)
    assert (retried.ran, retried.failed, retried.done) == (1, 1, 1)


async def test_a_new_version_runs_everything_again(tmp_path: Path) -> None:
    async with ThreadExecutor(2) as ex:
        one = await Experiment(power, {"base": [2], "exponent": [1, 2]}).run(
            ex, tmp_path, progress=False
        )
        two = await Experiment(power, {"base": [2], "exponent": [1, 2]}, version=2).run(
            ex, tmp_path, progress=False
        )
    assert (one.ran, two.ran) == (2, 2)
    with ResultsStore(tmp_path, create=False) as store:
        assert len(store.rows()) == 4


async def test_values_json_when_possible_else_pickled(tmp_path: Path) -> None:
    async with ThreadExecutor(2) as ex:
        await Experiment(not_json, {"x": [1]}).run(ex, tmp_path / "a", progress=False)
        await Experiment(seeded, {"x": [5]}, repeats=2).run(ex, tmp_path / "b", progress=False)
    with ResultsStore(tmp_path / "a", create=False) as store:
        assert store.rows()[0]["value"] == complex(1, 1)
        assert json.loads(store.to_json())[0]["value"] == "(1+1j)"
    with ResultsStore(tmp_path / "b", create=False) as store:
        assert sorted(row["value"] for row in store.rows()) == [[5, 0], [5, 1]]  # repeat passed
        csv_text = store.to_csv()
    header, *lines = csv_text.strip().splitlines()
    assert header.startswith("fingerprint,x,repeat,status,value")
    assert len(lines) == 2


async def test_output_goes_to_log_files_and_the_store(tmp_path: Path) -> None:
    async with ProcessExecutor(1) as ex:
        await Experiment(printing, {"x": [7]}).run(ex, tmp_path, progress=False)
    [out_log] = (tmp_path / "logs").glob("*.out")
    assert out_log.read_text() == "stdout of 7\n"
    with ResultsStore(tmp_path, create=False) as store:
        assert store.rows()[0]["stdout"] == "stdout of 7\n"


async def test_cancelling_the_runner_leaves_the_store_consistent(tmp_path: Path) -> None:
    experiment = Experiment(_sleep_then_return, {"x": list(range(6))})
    async with ProcessExecutor(2) as ex:
        with anyio.move_on_after(1.5):
            await experiment.run(ex, tmp_path, progress=False)
        with ResultsStore(tmp_path, create=False) as store:
            counts = store.counts()
        assert counts["running"] == 0, counts  # nothing claims to run any more
        assert counts["cancelled"] + counts["pending"] + counts["done"] == 6
        summary = await experiment.run(ex, tmp_path, progress=False)
    assert summary.done == 6 and summary.complete


async def test_a_run_is_recorded_running_once_it_has_run_a_second(tmp_path: Path) -> None:
    """A run still running a second after its submission is recorded running (on a pool,
    whose work ends with its runner), with when it was submitted, and then done. (One
    that ends sooner is written once, when it ends: not asserted here, since a loaded
    machine may take a second to run anything.)"""
    experiment = Experiment(_sleep_for, {"seconds": [3.0]})
    async with ProcessExecutor(2) as ex, anyio.create_task_group() as tg:
        await ex.run(_sleep_for, 0.0)  # (the workers started)
        began = time.time()
        tg.start_soon(functools.partial(experiment.run, ex, tmp_path, progress=False))
        with anyio.fail_after(30):
            while True:
                await anyio.sleep(0.02)
                if not (tmp_path / "results.sqlite").exists():
                    continue
                with ResultsStore(tmp_path, create=False) as store:
                    (row,) = store.rows()
                if row["status"] != "pending":
                    seen = time.time()
                    break
    assert row["status"] == "running" and row["submitted"] is not None
    # Recorded a second after it was submitted, with when that was:
    assert began <= row["submitted"] <= seen - _Dispatch.RUNNING_AFTER + 0.2
    with ResultsStore(tmp_path, create=False) as store:
        assert [row["status"] for row in store.rows()] == ["done"]


def _sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def _sleep_then_return(x: int) -> int:
    import time

    time.sleep(1.0)
    return x


def _sleep_then_touch(path: str) -> None:
    import time

    time.sleep(3.0)
    Path(path).touch()


async def test_a_runner_cancelled_as_it_submits_cancels_and_records_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancellation comes as the executor accepts a run's task: the run is cancelled
    and recorded so, not left pending while its task runs to its end unfollowed."""
    from asyncexec import ConfiguredExecutor

    marker = tmp_path / "finished"
    original = ConfiguredExecutor.submit

    async def submit_then_cancel(self: ConfiguredExecutor, *args: Any, **kwargs: Any) -> Any:
        future = await original(self, *args, **kwargs)
        scope.cancel()
        return future

    monkeypatch.setattr(ConfiguredExecutor, "submit", submit_then_cancel)
    experiment = Experiment(_sleep_then_touch, {"path": [str(marker)]})
    async with ProcessExecutor(1) as ex:
        with anyio.CancelScope() as scope:
            await experiment.run(ex, tmp_path / "runs", progress=False)
        assert scope.cancelled_caught
    with ResultsStore(tmp_path / "runs", create=False) as store:
        assert [row["status"] for row in store.rows()] == ["cancelled"]
    assert not marker.exists(), "the cancelled run's task ran to its end"


async def test_a_cancelled_runner_closes_its_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bool] = []
    original = RunLeases.close

    def spy(self: RunLeases) -> None:
        closed.append(True)
        original(self)

    monkeypatch.setattr(RunLeases, "close", spy)
    experiment = Experiment(_sleep_then_return, {"x": [1, 2, 3]})
    async with ThreadExecutor(2) as ex:
        with anyio.move_on_after(0.3) as scope:
            await experiment.run(ex, tmp_path, progress=False)
    assert scope.cancelled_caught
    assert closed == [True]  # its heartbeat thread does not linger


async def test_two_runners_on_one_store_never_run_a_run_twice(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    experiment = Experiment(logged, {"x": list(range(40)), "log": [log]})
    async with ThreadExecutor(2) as one, ThreadExecutor(2) as two, anyio.create_task_group() as tg:
        tg.start_soon(experiment.run, one, tmp_path / "exp")
        tg.start_soon(experiment.run, two, tmp_path / "exp")
    calls = Path(log).read_text().split()
    assert sorted(calls, key=int) == [str(x) for x in range(40)]


def test_a_directory_that_is_not_ours_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an asyncexec experiment directory"):
        ResultsStore(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_corrupted_store_is_refused_untouched(tmp_path: Path) -> None:
    garbage = os.urandom(4096)
    (tmp_path / "results.sqlite").write_bytes(garbage)
    with pytest.raises(StoreError, match="damaged"):
        ResultsStore(tmp_path)
    assert (tmp_path / "results.sqlite").read_bytes() == garbage


def test_another_database_or_experiment_is_refused(tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "results.sqlite")
    other.execute("CREATE TABLE runs (x)")
    other.execute("INSERT INTO runs VALUES (1)")
    other.commit()
    other.close()
    with pytest.raises(StoreError):
        ResultsStore(tmp_path)
    with ResultsStore(tmp_path / "mine", experiment="alpha"):
        pass
    with pytest.raises(StoreError, match="'alpha', not 'beta'"):
        ResultsStore(tmp_path / "mine", experiment="beta")


def test_bad_experiments_are_refused() -> None:
    with pytest.raises(TypeError):
        Experiment(42, {"x": [1]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeats"):
        Experiment(power, {"base": [1]}, repeats=0)
    with pytest.raises(ValueError, match="no level"):
        Experiment(power, {"base": []})
    with pytest.raises(TypeError, match="unhashable"):
        Experiment(power, {"base": [[1, 2]]})
    with pytest.raises(ValueError, match="at least one"):
        Experiment(power, [])


def test_explicit_parameter_lists_and_stable_fingerprints() -> None:
    first = Experiment(power, [{"base": 2, "exponent": 3}, {"exponent": 1, "base": 5}])
    second = Experiment(power, [{"exponent": 3, "base": 2}, {"base": 5, "exponent": 1}])
    assert [r.fingerprint for r in first.runs] == [r.fingerprint for r in second.runs]
    assert len({r.fingerprint for r in first.runs}) == 2


def test_fingerprints_never_change() -> None:
    """Results stores on disk are keyed by them: a change would run everything again."""
    params = {"base": 2, "tags": frozenset({"b", "a"}), "xs": [1.5, (2, {"k": None})]}
    runs = Experiment(math.hypot, [params], repeats=2).runs
    assert [run.fingerprint for run in runs] == [
        "456fa9ca4f16d0dfa5215177",
        "aee18cc797b44d969b518a15",
    ]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"x": 1},
        {"b": 2.5, "a": "it's", "c": None},
        {'q"': 'say "hi"', "a'b": True, "é": "ü", "x y": -0.0, "n": "\n"},
        {"big": 10**30, "inf": float("inf"), "f": False, "two": 2.0},
    ],
)
def test_the_quick_canonical_text_of_scalars_is_the_general_one(params: dict[str, Any]) -> None:
    """Fingerprints of plain scalar parameters come from a quicker path: the same text."""
    assert _canonical_text(params) == repr(_canonical(dict(params)))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_lines_and_terminal_bar() -> None:
    plain = io.StringIO()
    progress = Progress("exp", 10, 2, stream=plain)
    progress.start()
    progress.done, progress.failed, progress.running = 3, 1, 2
    progress.stop()
    line = plain.getvalue()
    assert "[exp] 6/10 finished" in line and "2 running" in line and "runs/s" in line

    terminal = _Terminal()
    bar = Progress("exp", 10, 0, stream=terminal)
    bar.start()
    bar.done = 4
    bar.changed()
    bar.stop()
    assert "exp" in terminal.getvalue() and "4/10" in terminal.getvalue()


async def test_other_runs_in_the_store_do_not_count(tmp_path: Path) -> None:
    async with ThreadExecutor(2) as ex:
        await Experiment(power, {"base": [2], "exponent": [1, 2, 3]}).run(
            ex, tmp_path, progress=False
        )
        smaller = await Experiment(power, {"base": [2], "exponent": [4]}).run(
            ex, tmp_path, progress=False
        )
    assert (smaller.total, smaller.done, smaller.ran) == (1, 1, 1)


@pytest.mark.parametrize("how", ["deleted", "emptied", "rows-lost", "failed"])
async def test_runs_whose_results_are_gone_run_again(tmp_path: Path, how: str) -> None:
    """The store is the truth: runs it has no result for (or a failure, retried) run
    again, and only those (an earlier version's ``sweeper/`` is not read)."""
    log = tmp_path / "log"
    experiment = Experiment(logged, {"x": [1, 2, 3], "log": [str(log)]})
    directory = tmp_path / "exp"
    async with ThreadExecutor(2) as ex:
        with anyio.fail_after(30):
            await experiment.run(ex, directory, progress=False)
        results = directory / "results.sqlite"
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{results}{suffix}").unlink(missing_ok=True)
        elif how == "emptied":
            for suffix in ("-wal", "-shm"):
                Path(f"{results}{suffix}").unlink(missing_ok=True)
            results.write_bytes(b"")
        else:
            with sqlite3.connect(results) as db:
                if how == "rows-lost":
                    db.execute("DELETE FROM runs WHERE params_json LIKE '%\"x\":2%'")
                else:
                    db.execute(
                        "UPDATE runs SET status = 'failed' WHERE params_json LIKE '%\"x\":2%'"
                    )
            db.close()
        with anyio.fail_after(30):  # a regression fails here instead of hanging
            summary = await experiment.run(ex, directory, progress=False, retry_failed=True)
    assert (summary.total, summary.done, summary.failed) == (3, 3, 0)
    again = {"deleted": 3, "emptied": 3, "rows-lost": 1, "failed": 1}[how]
    assert summary.ran == again
    assert len(log.read_text().split()) == 3 + again
    with ResultsStore(directory, create=False) as store:
        assert store.counts()["done"] == 3


async def test_runs_held_by_runners_that_are_gone_are_taken_again(tmp_path: Path) -> None:
    """A run whose holder's lease expired, or whose holder was a process of this
    machine that is gone, is taken by the next runner; what is done is not run again;
    nothing is left held."""
    log = tmp_path / "log"
    experiment = Experiment(logged, {"x": [1, 2, 3], "log": [str(log)]})
    directory = tmp_path / "exp"
    async with ThreadExecutor(2) as ex:
        with anyio.fail_after(30):
            await experiment.run(ex, directory, progress=False)
        gone = new_holder().rsplit(":", 2)[0] + ":999999999:0"  # (this machine, no such pid)
        with sqlite3.connect(directory / "results.sqlite") as db:
            db.execute(  # held elsewhere, its lease expired
                "UPDATE runs SET status = 'pending', holder = 'elsewhere:1:x', lease_until = 0 "
                "WHERE params_json LIKE '%\"x\":1%'"
            )
            db.execute(  # held here by a process that is gone, its lease not expired
                "UPDATE runs SET status = 'running', holder = ?, lease_until = ? "
                "WHERE params_json LIKE '%\"x\":2%'",
                (gone, time.time() + 3600),
            )
        db.close()
        with anyio.fail_after(30):
            summary = await experiment.run(ex, directory, progress=False)
    assert (summary.done, summary.ran) == (3, 2)
    assert sorted(log.read_text().split()) == ["1", "1", "2", "2", "3"]
    with sqlite3.connect(directory / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM runs WHERE holder IS NOT NULL").fetchone() == (0,)
    db.close()


_KILLED_DRIVER = """
import asyncio, os, sys
from asyncexec import ProcessExecutor
from asyncexec.experiment import Experiment
from killedexp import counted

async def main() -> None:
    async with ProcessExecutor(2) as ex:
        summary = await Experiment(counted, {"x": list(range(5000))}).run(
            ex, sys.argv[1], progress=False
        )
    print(summary.done, summary.ran)

asyncio.run(main())
"""


def _done_runs(directory: Path) -> set[int]:
    with sqlite3.connect(directory / "results.sqlite") as db:
        rows = db.execute("SELECT params_json FROM runs WHERE status = 'done'").fetchall()
    return {json.loads(text)["x"] for (text,) in rows}


def _executions(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_for_workers_gone(marker: str) -> None:
    """Until no process has ``AE_EXECUTIONS=marker`` in its environment."""
    import time

    import psutil

    deadline = time.monotonic() + 60
    while True:
        alive = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("AE_EXECUTIONS") == marker:
                    alive.append(process.pid)
        if not alive:
            return
        assert time.monotonic() < deadline, f"the killed runner's workers stay: {alive}"
        time.sleep(0.05)


@pytest.mark.infra  # twenty interpreters and their pools: the tests session runs it
def test_a_runner_killed_twenty_times_loses_nothing_and_repeats_nothing_recorded(
    tmp_path: Path,
) -> None:
    """A 5,000-run experiment whose runner is SIGKILLed 20 times at random points (in
    the store's opening too) and resumed: every run ends done; none recorded done
    before a kill runs again after it; and a kill repeats at most the runs then in
    flight (the window, ``n_workers * (1 + prefetch)``: 130 on this pool), as
    the runner's docstring bounds it."""
    import random
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "killedexp.py").write_text(
        "import os\n\n"
        "def counted(x):\n"
        "    with open(os.environ['AE_EXECUTIONS'], 'a') as log:\n"
        "        log.write(f'{x}\\n')\n"
        "    return x\n"
    )
    (tmp_path / "driver.py").write_text(_KILLED_DRIVER)
    log, directory = tmp_path / "executions", tmp_path / "runs"
    env = {
        **os.environ,
        "AE_EXECUTIONS": str(log),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    chance = random.Random(2112)
    window = 2 * (1 + 64)  # ProcessExecutor(2): its capacity, what the runner keeps in flight
    kills = []  # (runs recorded done, executions logged) just after each kill
    for _ in range(20):
        before = len(_executions(log))
        driver = subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), str(directory)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        # A random point: while it opens (no run executed yet), or after some runs.
        target = before + chance.choice([0, *range(1, 400)])
        deadline = time.monotonic() + 60
        if target == before:
            time.sleep(chance.uniform(0.0, 0.5))
        else:
            while len(_executions(log)) < target and driver.poll() is None:
                assert time.monotonic() < deadline, "the runner made no progress"
                time.sleep(0.002)
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
        _wait_for_workers_gone(str(log))  # they run what they had queued, then go
        kills.append(
            (
                _done_runs(directory) if (directory / "results.sqlite").exists() else set(),
                len(_executions(log)),
            )
        )
    finished = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert _done_runs(directory) == set(range(5000))
    executions = _executions(log)
    for recorded, logged in kills:
        again = recorded.intersection(executions[logged:])
        assert not again, f"runs recorded done before a kill ran again: {sorted(again)[:10]}"
    repeated = len(executions) - 5000
    midway = sum(1 for recorded, _ in kills if 0 < len(recorded) < 5000)
    assert midway >= 10, f"only {midway} kills came while runs were recorded"
    assert sorted(set(executions)) == list(range(5000))
    assert repeated <= 20 * window, f"{repeated} executions repeated over 20 kills"
