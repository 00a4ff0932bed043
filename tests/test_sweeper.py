"""ParamSweeper on real SQLite: every method, execo's state rules, leases, processes, threads.

execo_engine itself only ever runs in subprocesses (see test_sweep.py for why).
"""

from __future__ import annotations

import decimal
import enum
import fractions
import gc
import hashlib
import inspect
import io
import json
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest

from asyncexec.sweep import HashableDict, ParamSweeper, SweeperError, sweep
from asyncexec.sweep._keys import _by_equality, combination_key, combination_keys

pytestmark = pytest.mark.anyio


def combos(count: int, start: int = 0) -> list[HashableDict]:
    return [HashableDict(i=i) for i in range(start, start + count)]


def ids(combinations: Iterable[Any]) -> list[int]:
    return [combination["i"] for combination in combinations]


def eventually(probe: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``probe`` until it holds; the deadline only bounds a hung test."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# A ParamSweeper in another process: runs a plan of operations and prints a JSON report.
DRIVER = r"""
import json, sys, time
from asyncexec.sweep import HashableDict, ParamSweeper

directory, count, lease, plan = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sweeps = None if count < 0 else [HashableDict(i=i) for i in range(count)]
report = {"taken": []}
with ParamSweeper(directory, sweeps, lease=lease) as sweeper:
    for op, arg in json.loads(plan):
        if op == "take":
            report["taken"] += [c["i"] for c in sweeper.get_next_batch(arg)]
        elif op == "done":
            sweeper.done(HashableDict(i=arg))
        elif op == "skip":
            sweeper.skip(HashableDict(i=arg))
        elif op == "state":
            names = ("sweeps", "remaining", "skipped", "inprogress", "done")
            report.update({n: [c["i"] for c in part] for n, part in zip(names, sweeper.stats())})
        elif op == "hold":  # report, then hold the leases until killed
            print(json.dumps(report), flush=True)
            time.sleep(3600)
print(json.dumps(report), flush=True)
"""

Plan = list[tuple[str, int]]


def driver_args(directory: Path, count: int, plan: Plan, lease: float) -> list[str]:
    return [sys.executable, "-c", DRIVER, str(directory), str(count), str(lease), json.dumps(plan)]


def run_driver(directory: Path, count: int, plan: Plan, lease: float = 60.0) -> dict[str, Any]:
    """Run a plan in a fresh process (``count`` < 0: load the saved sweeps)."""
    done = subprocess.run(
        driver_args(directory, count, plan, lease),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


@contextmanager
def holder(
    directory: Path, count: int, take: int, lease: float
) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A process that takes ``take`` combinations, then holds them until killed."""
    with subprocess.Popen(
        driver_args(directory, count, [("take", take), ("hold", 0)], lease),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"the holder failed: {process.stderr.read()}")
            yield process, json.loads(line)["taken"]
        finally:
            process.kill()
            process.wait()


# -- handing out ------------------------------------------------------------------------


def test_get_next_hands_out_each_combination_once_in_order(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(5)) as sweeper:
        got = [sweeper.get_next() for _ in range(5)]
        assert ids(got) == [0, 1, 2, 3, 4]
        assert all(type(combination) is HashableDict for combination in got)
        assert sweeper.get_next() is None
        assert sweeper.get_next() is None
        assert ids(sweeper.get_inprogress()) == [0, 1, 2, 3, 4]
        assert sweeper.get_remaining() == []
        assert sweeper.get_done() == [] and sweeper.get_skipped() == []


def test_get_next_with_filter(tmp_path: Path) -> None:
    seen: list[list[int]] = []

    def odd_descending(remaining: Iterable[Any]) -> list[Any]:
        remaining = list(remaining)
        seen.append(ids(remaining))
        return sorted((c for c in remaining if c["i"] % 2), key=lambda c: -c["i"])

    with ParamSweeper(tmp_path / "sweeps", combos(10)) as sweeper:
        sweeper.done(HashableDict(i=0))
        assert sweeper.get_next() == {"i": 1}  # in progress
        sweeper.skip(sweeper.get_next())  # 2 skipped
        assert sweeper.get_next(odd_descending) == {"i": 9}
        assert seen == [[3, 4, 5, 6, 7, 8, 9]]  # the filter sees only the remaining ones
        assert sweeper.get_next(odd_descending) == {"i": 7}
        assert seen[-1] == [3, 4, 5, 6, 7, 8]
        assert sweeper.get_next(lambda remaining: []) is None
        assert sweeper.get_next(lambda r: (c for c in r if c["i"] == 4)) == {"i": 4}
        assert ids(sweeper.get_inprogress()) == [1, 4, 7, 9]
        assert ids(sweeper.get_remaining()) == [3, 5, 6, 8]
        assert sweeper.get_next() == {"i": 3}  # no filter: back to the order
        # A filter may repeat a combination (taken once), never invent or revive one:
        # neither a done, held or skipped combination is handed out again.
        twice = sweeper.get_next_batch(3, lambda r: [HashableDict(i=5)] * 2)
        assert twice == [{"i": 5}]
        for stranger in (0, 1, 2, 42):

            def invent(remaining: Iterable[Any], i: int = stranger) -> list[Any]:
                return [HashableDict(i=i)]

            with pytest.raises(ValueError, match="not one of the remaining"):
                sweeper.get_next(invent)
        assert ids(sweeper.get_inprogress()) == [1, 3, 4, 5, 7, 9]
        assert ids(sweeper.get_remaining()) == [6, 8]


def test_get_next_batch(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(10)) as sweeper:
        assert ids(sweeper.get_next_batch(3)) == [0, 1, 2]
        assert sweeper.get_next_batch(0) == []
        assert sweeper.get_next_batch(-1) == []
        assert ids(sweeper.get_next_batch(2, lambda r: list(r)[::-1])) == [9, 8]
        assert ids(sweeper.get_next_batch(2, lambda r: [c for c in r if c["i"] > 5])) == [6, 7]
        assert ids(sweeper.get_next_batch(100)) == [3, 4, 5]  # fewer than asked: all left
        assert sweeper.get_next_batch(5) == []
        assert ids(sweeper.get_inprogress()) == list(range(10))


def test_iteration(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(4)) as sweeper:
        seen = []
        for combination in sweeper:
            seen.append(combination["i"])
            sweeper.done(combination)
        assert seen == [0, 1, 2, 3]
        assert list(sweeper) == []
        assert ids(sweeper.get_done()) == [0, 1, 2, 3]
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as relaunched:
        assert ids(relaunched) == [4, 5]


# -- marking ----------------------------------------------------------------------------


def test_done_and_done_batch(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as sweeper:
        first = sweeper.get_next()
        sweeper.done(first)
        assert ids(sweeper.get_done()) == [0]
        assert sweeper.get_inprogress() == []
        sweeper.done(HashableDict(i=3))  # never handed out: done all the same
        sweeper.done_batch(sweeper.get_next_batch(2))
        assert ids(sweeper.get_done()) == [0, 1, 2, 3]
        assert ids(sweeper.get_remaining()) == [4, 5]
        assert sweeper.get_inprogress() == []
        sweeper.done_batch([])
        sweeper.done(HashableDict(i=0))  # done twice: still done once
        assert ids(sweeper.get_done()) == [0, 1, 2, 3]
        assert ids(sweeper.get_next_batch(10)) == [4, 5]


def test_done_batch_accepts_repeated_combinations(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(3)) as sweeper:
        sweeper.done_batch([HashableDict(i=0), HashableDict(i=0)])
        sweeper.done_batch([HashableDict(i=7), HashableDict(i=7)])  # outside the sweeps
        assert ids(sweeper.get_done()) == [0]
        sweeper.set_sweeps(combos(8))
        assert ids(sweeper.get_done()) == [0, 7]


def test_done_outside_the_sweeps_is_remembered(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(3)) as sweeper:
        sweeper.done(HashableDict(i=10))
        assert sweeper.get_done() == []  # only our sweeps' are listed
        assert ids(sweeper.get_remaining()) == [0, 1, 2]
        sweeper.done_batch([HashableDict(i=2), HashableDict(i=11)])  # one in, one outside
        assert ids(sweeper.get_done()) == [2]
        sweeper.set_sweeps(combos(12))
        assert ids(sweeper.get_done()) == [2, 10, 11]
        assert not {2, 10, 11} & set(ids(sweeper.get_remaining()))
    with ParamSweeper(tmp_path / "sweeps", combos(12)) as relaunched:
        assert ids(relaunched.get_done()) == [2, 10, 11]
        assert not {2, 10, 11} & set(ids(relaunched.get_next_batch(100)))


def test_combinations_are_identified_by_content_not_key_order(tmp_path: Path) -> None:
    combinations = sweep({"a": [1, 2], "b": ["x", "y"]})
    with ParamSweeper(tmp_path / "sweeps", combinations) as sweeper:
        sweeper.done(HashableDict(b="x", a=1))
        sweeper.done(HashableDict([("b", "y"), ("a", 2)]))
        assert sweeper.get_done() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
        assert sweeper.get_remaining() == [{"a": 1, "b": "y"}, {"a": 2, "b": "x"}]


def test_combinations_are_identified_by_value_not_object_identity(tmp_path: Path) -> None:
    # The same combination, once with one string object used twice, once with two
    # equal string objects (as read from a file, argv or JSON): equal, same hash.
    shared = "host-a"
    distinct = "".join(["host", "-a"])
    assert distinct == shared and distinct is not shared
    built_here = HashableDict(src=shared, dst=shared)
    read_elsewhere = HashableDict(src=shared, dst=distinct)
    assert built_here == read_elsewhere and hash(built_here) == hash(read_elsewhere)
    other = HashableDict(src=shared, dst="host-b")
    with ParamSweeper(tmp_path / "sweeps", [built_here, other]) as sweeper:
        sweeper.done(read_elsewhere)
        assert sweeper.get_done() == [built_here]
        assert sweeper.get_remaining() == [other]
        assert sweeper.get_next() == other


def test_any_hashable_picklable_values_are_combinations(tmp_path: Path) -> None:
    values: list[Any] = [7, "seven", (7, "7"), frozenset({7}), 7.5, None, b"7"]
    with ParamSweeper(tmp_path / "sweeps", values) as sweeper:
        assert sweeper.get_sweeps() == values
        assert [sweeper.get_next() for _ in range(3)] == values[:3]
        sweeper.done("seven")
        sweeper.done_batch([frozenset({7}), b"7"])
        assert sweeper.get_done() == ["seven", frozenset({7}), b"7"]
        assert sweeper.get_remaining() == [7.5, None]
    with ParamSweeper(tmp_path / "sweeps", values) as relaunched:
        assert relaunched.get_done() == ["seven", frozenset({7}), b"7"]


def test_unpicklable_combinations_are_refused(tmp_path: Path) -> None:
    unpicklable = HashableDict(i=1, lock=threading.Lock())
    with ParamSweeper(tmp_path / "sweeps", combos(2)) as sweeper:
        with pytest.raises(TypeError, match="cannot persist"):
            sweeper.done(unpicklable)
        with pytest.raises(TypeError, match="cannot persist"):
            sweeper.set_sweeps([*combos(3), unpicklable])
        # A call that failed changed nothing.
        assert ids(sweeper.get_sweeps()) == [0, 1]
        assert ids(sweeper.get_next_batch(10)) == [0, 1]


def test_skip_and_skip_batch(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as sweeper:
        sweeper.skip(sweeper.get_next())
        assert ids(sweeper.get_skipped()) == [0]
        assert sweeper.get_inprogress() == []
        assert ids(sweeper.get_remaining()) == [1, 2, 3, 4, 5]
        assert sweeper.get_next() == {"i": 1}
        sweeper.skip_batch([HashableDict(i=1), HashableDict(i=2)])  # in progress, and todo
        assert sorted(ids(sweeper.get_skipped())) == [0, 1, 2]
        assert sweeper.get_inprogress() == []
        assert ids(sweeper.get_next_batch(10)) == [3, 4, 5]
        assert sweeper.get_next() is None
        sweeper.skip(HashableDict(i=99))  # not in the sweeps: not listed
        assert sorted(ids(sweeper.get_skipped())) == [0, 1, 2]


def test_skipped_belongs_to_one_instance(tmp_path: Path) -> None:
    with (
        ParamSweeper(tmp_path / "sweeps", combos(3)) as one,
        ParamSweeper(tmp_path / "sweeps", combos(3)) as other,
    ):
        one.skip(one.get_next())
        assert ids(one.get_skipped()) == [0] and other.get_skipped() == []
        assert ids(one.get_remaining()) == [1, 2]
        assert ids(other.get_remaining()) == [0, 1, 2]
        assert other.get_next() == {"i": 0}  # retried by another instance
        assert one.get_next() == {"i": 1}


def test_cancel_and_cancel_batch(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(4)) as sweeper:
        sweeper.cancel(sweeper.get_next())
        assert sweeper.get_inprogress() == []
        assert ids(sweeper.get_remaining()) == [0, 1, 2, 3]
        assert sweeper.get_skipped() == []
        assert sweeper.get_next() == {"i": 0}  # handed out again in this run
        batch = sweeper.get_next_batch(3)
        sweeper.cancel_batch(batch[:2])
        assert ids(sweeper.get_inprogress()) == [0, 3]
        assert ids(sweeper.get_remaining()) == [1, 2]
        assert ids(sweeper.get_next_batch(5)) == [1, 2]
        sweeper.cancel(HashableDict(i=99))  # unknown: nothing happens
        sweeper.done(HashableDict(i=0))
        sweeper.cancel(HashableDict(i=0))  # done stays done
        assert ids(sweeper.get_done()) == [0]
        sweeper.cancel_batch([])


def test_get_sweeps_and_set_sweeps(tmp_path: Path) -> None:
    order = [HashableDict(i=i) for i in (5, 3, 9, 1)]
    with ParamSweeper(tmp_path / "sweeps", [*order, HashableDict(i=3)]) as sweeper:
        assert sweeper.get_sweeps() == order  # the given order, each once
        assert ids(sweeper.get_next_batch(2)) == [5, 3]
        sweeper.done(HashableDict(i=5))
        sweeper.skip(HashableDict(i=9))
        sweeper.set_sweeps(combos(4, start=3))
        assert ids(sweeper.get_sweeps()) == [3, 4, 5, 6]
        assert ids(sweeper.get_done()) == [5]
        assert ids(sweeper.get_inprogress()) == [3]
        assert sweeper.get_skipped() == []  # 9 left the sweeps
        assert ids(sweeper.get_remaining()) == [4, 6]
        assert ids(sweeper.get_next_batch(10)) == [4, 6]
        with pytest.raises(SweeperError, match="no saved sweeps"):
            sweeper.set_sweeps([])  # as execo: empty means the saved ones; none: no change
        assert ids(sweeper.get_sweeps()) == [3, 4, 5, 6]
        sweeper.set_sweeps(iter([]))  # an empty iterator (execo: true): empty sweeps
        assert sweeper.get_sweeps() == [] and sweeper.get_next() is None
        assert sweeper.get_done() == [] and sweeper.get_inprogress() == []
        sweeper.set_sweeps(combos(10))
        assert ids(sweeper.get_skipped()) == [9]  # skipped before: skipped again
        assert ids(sweeper.get_done()) == [5]


def test_instances_with_different_sweeps_share_state(tmp_path: Path) -> None:
    with (
        ParamSweeper(tmp_path / "sweeps", combos(10)) as low,
        ParamSweeper(tmp_path / "sweeps", combos(10, start=5)) as high,
    ):
        low.done_batch(combos(5, start=5))
        assert ids(high.get_done()) == [5, 6, 7, 8, 9]
        assert ids(high.get_remaining()) == [10, 11, 12, 13, 14]
        assert ids(low.get_next_batch(3)) == [0, 1, 2]
        assert high.get_inprogress() == []  # low's are outside high's sweeps
        assert ids(high.get_next_batch(100)) == [10, 11, 12, 13, 14]
        assert ids(low.get_inprogress()) == [0, 1, 2]


def test_reset(tmp_path: Path) -> None:
    with (
        ParamSweeper(tmp_path / "sweeps", combos(5)) as sweeper,
        ParamSweeper(tmp_path / "sweeps", combos(5)) as other,
    ):
        assert other.get_next() == {"i": 0}
        sweeper.skip(sweeper.get_next())  # 1 skipped
        assert sweeper.get_next() == {"i": 2}
        sweeper.done(HashableDict(i=3))

        sweeper.reset()
        assert sweeper.get_skipped() == []
        assert ids(sweeper.get_remaining()) == [1, 4]
        assert ids(sweeper.get_inprogress()) == [0, 2]  # kept
        assert ids(sweeper.get_done()) == [3]

        sweeper.skip(HashableDict(i=4))
        sweeper.reset(reset_inprogress=True)
        assert sweeper.get_skipped() == []
        assert sweeper.get_inprogress() == [] == other.get_inprogress()  # everyone's
        assert ids(sweeper.get_remaining()) == [0, 1, 2, 4]
        assert ids(sweeper.get_done()) == [3]  # done is never forgotten
        assert ids(other.get_next_batch(10)) == [0, 1, 2, 4]


def test_update_and_full_update(tmp_path: Path) -> None:
    with (
        ParamSweeper(tmp_path / "sweeps", combos(4)) as sweeper,
        ParamSweeper(tmp_path / "sweeps", combos(4)) as other,
    ):
        other.done(HashableDict(i=2))
        held = other.get_next()
        sweeper.update()
        assert ids(sweeper.get_done()) == [2]
        assert sweeper.get_inprogress() == [held]
        other.done(held)
        sweeper.full_update()
        assert ids(sweeper.get_done()) == [0, 2]
        assert ids(sweeper.get_remaining()) == [1, 3]


def test_stats_partition_the_sweeps(tmp_path: Path) -> None:
    rng = random.Random(7)
    with ParamSweeper(tmp_path / "sweeps", combos(40)) as sweeper:
        for _ in range(60):
            combination = sweeper.get_next()
            if combination is None:
                break
            action = rng.choice(["done", "skip", "cancel", "keep"])
            if action != "keep":
                getattr(sweeper, action)(combination)
        sweeps, remaining, skipped, inprogress, done = sweeper.stats()
        assert ids(sweeps) == list(range(40))
        parts = [set(ids(part)) for part in (remaining, skipped, inprogress, done)]
        assert sum(len(part) for part in parts) == 40
        assert set().union(*parts) == set(range(40))
        assert all(part for part in parts[1:])  # the random walk reached every state
        assert (remaining, skipped, inprogress, done) == (
            sweeper.get_remaining(),
            sweeper.get_skipped(),
            sweeper.get_inprogress(),
            sweeper.get_done(),
        )


def test_str(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "my-run", combos(6), name="exp") as sweeper:
        assert str(sweeper) == "exp <6 total, 0 done, 0 skipped, 0 in progress, 6 remaining>"
        sweeper.done(sweeper.get_next())
        sweeper.skip(sweeper.get_next())
        sweeper.get_next()
        assert str(sweeper) == "exp <6 total, 1 done, 1 skipped, 1 in progress, 3 remaining>"
    with ParamSweeper(tmp_path / "my-run", combos(6)) as relaunched:  # named after its dir
        assert str(relaunched) == "my-run <6 total, 1 done, 0 skipped, 1 in progress, 4 remaining>"


# -- execo's state rules across instances and relaunches --------------------------------


def test_done_and_inprogress_persist_across_instances(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as first:
        first.done(first.get_next())
        held = first.get_next()
        first.skip(first.get_next())
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as second:
        assert ids(second.get_done()) == [0]
        assert second.get_inprogress() == [held]  # its lease outlives the instance
        assert second.get_skipped() == []  # skipped does not persist
        assert ids(second.get_remaining()) == [2, 3, 4, 5]
        assert second.get_next() == {"i": 2}


def test_relaunches_continue_where_they_left(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    first = run_driver(directory, 10, [("take", 3), ("done", 0), ("done", 1), ("done", 2)])
    assert first["taken"] == [0, 1, 2]
    second = run_driver(
        directory, 10, [("skip", 3), ("state", 0), ("take", 2), ("done", 4), ("done", 5)]
    )
    assert second["done"] == [0, 1, 2]  # done persists
    assert second["skipped"] == [3]
    assert second["remaining"] == [4, 5, 6, 7, 8, 9]
    assert second["taken"] == [4, 5]  # continues where the first left
    third = run_driver(directory, 10, [("state", 0), ("take", 1)])
    assert third["skipped"] == []  # skipped does not persist: retried...
    assert third["done"] == [0, 1, 2, 4, 5]
    assert third["remaining"] == [3, 6, 7, 8, 9]
    assert third["taken"] == [3]  # ...first
    with ParamSweeper(directory, combos(10)) as here:
        assert ids(here.get_done()) == [0, 1, 2, 4, 5]


@pytest.mark.usefixtures("no_leftover_processes")
def test_inprogress_of_a_live_process_persists_across_relaunches(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    with holder(directory, 6, take=2, lease=60.0) as (process, taken):
        assert taken == [0, 1]
        relaunch = run_driver(directory, 6, [("state", 0), ("take", 2), ("done", 2)])
        assert relaunch["inprogress"] == [0, 1]
        assert relaunch["remaining"] == [2, 3, 4, 5]
        assert relaunch["taken"] == [2, 3]  # not the held ones
        with ParamSweeper(directory, combos(6)) as here:
            assert ids(here.get_inprogress())[:2] == [0, 1]
            assert ids(here.get_done()) == [2]
            assert ids(here.get_next_batch(10))[-2:] == [4, 5]
            assert 0 not in ids(here.get_remaining()) and 1 not in ids(here.get_remaining())
        assert process.poll() is None


def test_save_sweeps_then_reload_them_in_order(tmp_path: Path) -> None:
    order = [HashableDict(i=i) for i in (7, 2, 9, 0, 5)]
    with ParamSweeper(tmp_path / "sweeps", order, save_sweeps=True) as saver:
        saver.done(HashableDict(i=9))
    with ParamSweeper(tmp_path / "sweeps") as reloaded:  # sweeps=None: the saved ones
        assert reloaded.get_sweeps() == order
        assert ids(reloaded.get_done()) == [9]
        assert ids(reloaded.get_next_batch(10)) == [7, 2, 0, 5]
    elsewhere = run_driver(tmp_path / "sweeps", -1, [("state", 0)])
    assert elsewhere["sweeps"] == [7, 2, 9, 0, 5]
    assert elsewhere["done"] == [9]


def test_set_sweeps_saves_and_reloads(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(3), save_sweeps=True) as sweeper:
        sweeper.set_sweeps(combos(2, start=10), save_sweeps=True)  # replaces the saved ones
        sweeper.set_sweeps(combos(5))  # not saved: the saved ones stay
        assert ids(sweeper.get_sweeps()) == [0, 1, 2, 3, 4]
        sweeper.set_sweeps(None)
        assert ids(sweeper.get_sweeps()) == [10, 11]
    with ParamSweeper(tmp_path / "sweeps") as reloaded:
        assert ids(reloaded.get_sweeps()) == [10, 11]


def test_saved_sweeps_reload_in_the_order_saved(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", [HashableDict(i=i) for i in (3, 2, 1)]):
        pass  # an earlier run with the same combinations in another order, not saved
    order = combos(3, start=1)
    with ParamSweeper(tmp_path / "sweeps", order, save_sweeps=True) as saver:
        assert saver.get_sweeps() == order
    with ParamSweeper(tmp_path / "sweeps") as reloaded:
        assert reloaded.get_sweeps() == order


# -- against execo_engine's ParamSweeper, step by step --------------------------------


def play(
    sweeper_class: Any, combination_class: Any, directory: str, ops: list[Any], fresh: bool
) -> list[Any]:
    """Run ``ops`` on ParamSweepers of ``sweeper_class`` sharing ``directory``.

    Returns, for each op, what it returned (or the type of what it raised) and
    the state every instance reports (stats() as sorted ids, and str()). With
    ``fresh``, every instance re-reads the shared state (full_update) before each
    op and each report: execo's views are otherwise those of its own last
    operation (ours always read the database). Self-contained: its source is
    run in the process that imports execo_engine.
    """

    def combination(i: Any) -> Any:
        return combination_class(i=i)

    def ids(part: Any) -> list[Any]:
        return sorted(c["i"] for c in part)

    def first(remaining: Any) -> list[Any]:  # both pick the same ones: the smallest
        return sorted(remaining, key=lambda c: c["i"])

    instances: dict[int, Any] = {}
    steps: list[Any] = []
    for op in ops:
        name, k, *args = op
        if fresh:
            for instance in instances.values():
                instance.full_update()
        try:
            result: Any = None
            if name == "new":
                sweeps = None if args[0] is None else [combination(i) for i in args[0]]
                instances[k] = sweeper_class(directory, sweeps, args[1])
            elif name == "set_sweeps":
                sweeps = None if args[0] is None else [combination(i) for i in args[0]]
                instances[k].set_sweeps(sweeps, args[1])
            elif name == "get_next":
                got = instances[k].get_next(first)
                result = None if got is None else got["i"]
            elif name == "get_next_batch":
                result = [c["i"] for c in instances[k].get_next_batch(args[0], first)]
            elif name in ("done", "skip", "cancel"):
                getattr(instances[k], name)(combination(args[0]))
            elif name in ("done_batch", "skip_batch", "cancel_batch"):
                getattr(instances[k], name)([combination(i) for i in args[0]])
            elif name in ("done_held", "skip_held", "cancel_held"):  # one it was handed
                held = ids(instances[k].get_inprogress())
                if held:
                    getattr(instances[k], name[: -len("_held")])(combination(held[0]))
            elif name == "reset":
                instances[k].reset(args[0])
            else:  # update, full_update
                getattr(instances[k], name)()
            outcome = ["returned", result]
        except Exception as exc:
            outcome = ["raised", type(exc).__name__]
        if fresh:
            for instance in instances.values():
                instance.full_update()
        names = ("sweeps", "remaining", "skipped", "inprogress", "done")
        state = {
            str(key): {
                **{n: ids(part) for n, part in zip(names, instance.stats(), strict=True)},
                "str": str(instance),
            }
            for key, instance in sorted(instances.items())
        }
        steps.append([op, outcome, state])
    for instance in instances.values():
        if hasattr(instance, "close"):  # execo's has none
            instance.close()
    return steps


EXECO_PLAYER = """
from __future__ import annotations
import json, sys, warnings
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from execo_engine import HashableDict, ParamSweeper

{source}

with open(sys.argv[1]) as source:
    plans = json.load(source)
print(json.dumps([play(ParamSweeper, HashableDict, *plan) for plan in plans]))
"""


def random_ops(rng: random.Random, count: int = 40) -> list[Any]:
    """Any operation on any combination, by one or two instances: odd uses included
    (skipping or cancelling what was not handed out, 1.0 and True for 1, ...)."""
    size = 8
    values: list[Any] = [*range(size + 2), 1.0, True, 2.0]

    def some() -> list[Any]:
        return rng.sample(values, rng.randint(0, size))

    ops: list[Any] = [["new", 0, list(range(size)), rng.random() < 0.3]]
    if rng.random() < 0.5:
        ops.append(["new", 1, some() or [0], False])
    instances = sorted({op[1] for op in ops})
    kinds = ["get_next"] * 4 + ["get_next_batch", "done", "skip", "cancel", "reset"]
    kinds += ["done_batch", "skip_batch", "cancel_batch", "set_sweeps", "update", "full_update"]
    for _ in range(count):
        k, kind = rng.choice(instances), rng.choice(kinds)
        if kind == "get_next_batch":
            ops.append([kind, k, rng.randint(0, 3)])
        elif kind.endswith("_batch"):
            ops.append([kind, k, rng.sample(values, rng.randint(0, 3))])
        elif kind in ("done", "skip", "cancel"):
            ops.append([kind, k, rng.choice(values)])
        elif kind == "reset":
            ops.append([kind, k, rng.random() < 0.5])
        elif kind == "set_sweeps":
            ops.append([kind, k, rng.choice([some(), some(), None, []]), rng.random() < 0.3])
        else:
            ops.append([kind, k])
    return ops


def natural_ops(rng: random.Random, count: int = 40) -> list[Any]:
    """One instance used as execo's docs say: mark what get_next handed out."""
    ops: list[Any] = [["new", 0, list(range(10)), False]]
    kinds = [["get_next", 0], ["get_next", 0], ["get_next_batch", 0, 2], ["reset", 0, False]]
    kinds += [["done_held", 0], ["skip_held", 0], ["cancel_held", 0]]
    for _ in range(count):
        if rng.random() < 0.1:
            ops.append(["set_sweeps", 0, sorted(rng.sample(range(12), 9)), False])
        else:
            ops.append(rng.choice(kinds))
    return ops


# name -> (ops, fresh, directory suffix)
PLANS: dict[str, tuple[list[Any], bool, str]] = {
    "set_sweeps keeps what was skipped": (
        [
            ["new", 0, [0, 1, 2, 3, 4, 5], False],
            ["get_next_batch", 0, 2],
            ["skip", 0, 0],  # handed out, then skipped
            ["skip", 0, 7],  # outside the sweeps
            ["skip_batch", 0, [8]],
            ["set_sweeps", 0, [2, 3, 4], False],
            ["set_sweeps", 0, [0, 1, 2, 3, 4, 5, 6, 7, 8], False],
            ["get_next_batch", 0, 10],
            ["reset", 0, False],
            ["get_next_batch", 0, 10],
        ],
        False,
        "",
    ),
    "done after skip stays skipped": (
        [
            ["new", 0, [0, 1, 2, 3], False],
            ["get_next", 0],
            ["skip", 0, 0],
            ["done", 0, 0],
            ["get_next_batch", 0, 10],
        ],
        False,
        "",
    ),
    "equal combinations are one": (
        [
            ["new", 0, [0, 1, 1.0, True, 2, 2.0, 3, 4], False],
            ["done", 0, 1.0],
            ["get_next_batch", 0, 3],
            ["skip", 0, 2.0],
            ["cancel", 0, 3.0],
            ["done_batch", 0, [0.0]],
            ["get_next_batch", 0, 10],
        ],
        False,
        "",
    ),
    "empty sweeps load the saved ones": (
        [
            ["new", 0, [0, 1, 2, 3], True],
            ["set_sweeps", 0, [5, 6], False],
            ["set_sweeps", 0, [], False],
            ["new", 1, [], False],
            ["set_sweeps", 1, [7], True],
            ["set_sweeps", 0, None, False],
        ],
        False,
        "",
    ),
    "no saved sweeps: nothing changes": (
        [
            ["new", 0, [0, 1, 2], False],
            ["get_next", 0],
            ["set_sweeps", 0, [], False],
            ["set_sweeps", 0, None, True],
            ["get_next", 0],
        ],
        False,
        "",
    ),
    "named after the directory as given": (
        [["new", 0, [0, 1], False], ["get_next", 0]],
        False,
        "/",
    ),
}
PLANS.update({f"random {seed}": (random_ops(random.Random(seed)), True, "") for seed in range(25)})
PLANS.update(
    {f"natural {seed}": (natural_ops(random.Random(seed)), False, "") for seed in range(10)}
)


@pytest.fixture(scope="module")
def execo_plays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """What execo_engine's ParamSweeper does for every plan of PLANS, in one subprocess."""
    root = tmp_path_factory.mktemp("execo-plays")
    plans = [
        [f"{root / str(n) / 'sw'}{suffix}", ops, fresh]
        for n, (ops, fresh, suffix) in enumerate(PLANS.values())
    ]
    (root / "plans.json").write_text(json.dumps(plans))
    code = EXECO_PLAYER.format(source=inspect.getsource(play))
    done = subprocess.run(
        [sys.executable, "-c", code, str(root / "plans.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return dict(zip(PLANS, json.loads(done.stdout), strict=True))


def same_steps(ours: list[Any], theirs: list[Any]) -> None:
    """Step by step, the same results and states; errors need only be errors in both."""
    assert len(ours) == len(theirs)
    for (op, outcome, state), (_, expected_outcome, expected_state) in zip(
        ours, theirs, strict=True
    ):
        if outcome[0] == expected_outcome[0] == "raised":
            expected_outcome = outcome  # execo: EOFError for no saved sweeps; ours SweeperError
        assert (outcome, state) == (expected_outcome, expected_state), op


def play_ours(name: str, tmp_path: Path) -> list[Any]:
    ops, fresh, suffix = PLANS[name]
    directory = f"{tmp_path / 'sw'}{suffix}"
    # JSON round trip: the same values as execo's player got (tuples become lists).
    return list(json.loads(json.dumps(play(ParamSweeper, HashableDict, directory, ops, fresh))))


@pytest.mark.parametrize("name", [n for n in PLANS if not n.startswith(("random", "natural"))])
def test_scenarios_as_execo(name: str, tmp_path: Path, execo_plays: dict[str, Any]) -> None:
    same_steps(play_ours(name, tmp_path), execo_plays[name])


def test_set_sweeps_keeps_what_was_skipped(tmp_path: Path) -> None:
    # What test_scenarios_as_execo checks against execo, spelled out.
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as sweeper:
        assert ids(sweeper.get_next_batch(2)) == [0, 1]
        sweeper.skip(HashableDict(i=0))
        sweeper.skip(HashableDict(i=7))  # not in the sweeps: not listed, but remembered
        assert ids(sweeper.get_skipped()) == [0]
        sweeper.set_sweeps(combos(3, start=2))
        assert sweeper.get_skipped() == []
        sweeper.set_sweeps(combos(9))
        assert ids(sweeper.get_skipped()) == [0, 7]
        assert ids(sweeper.get_next_batch(10)) == [2, 3, 4, 5, 6, 8]
        sweeper.done(HashableDict(i=7))  # done after skipped: listed in both, as execo
        assert ids(sweeper.get_skipped()) == [0, 7] and ids(sweeper.get_done()) == [7]
        assert str(sweeper) == "sweeps <9 total, 1 done, 2 skipped, 7 in progress, 0 remaining>"
        sweeper.reset()
        assert ids(sweeper.get_remaining()) == [0]


@pytest.mark.parametrize("seed", range(25))
def test_random_operations_as_execo(seed: int, tmp_path: Path, execo_plays: dict[str, Any]) -> None:
    # Any operation, by one or two instances, odd uses included; execo re-reads the
    # shared state before each step (see play).
    same_steps(play_ours(f"random {seed}", tmp_path), execo_plays[f"random {seed}"])


@pytest.mark.parametrize("seed", range(10))
def test_natural_use_as_execo(seed: int, tmp_path: Path, execo_plays: dict[str, Any]) -> None:
    # One instance used as execo's docs say; execo as it is, with no full_update.
    same_steps(play_ours(f"natural {seed}", tmp_path), execo_plays[f"natural {seed}"])


class Point(NamedTuple):
    x: int
    y: int


class Color(str, enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 2


@pytest.mark.parametrize(
    ("given", "equal"),
    [
        pytest.param(1, 1.0, id="int-float"),
        pytest.param(1, True, id="int-bool"),
        pytest.param(0.5, fractions.Fraction(1, 2), id="float-fraction"),
        pytest.param(0.5, decimal.Decimal("0.5"), id="float-decimal"),
        pytest.param(2, Size.BIG, id="int-intenum"),
        pytest.param("red", Color.RED, id="str-strenum"),
        pytest.param((1, 2), Point(1, 2), id="tuple-namedtuple"),
        pytest.param(frozenset({1, 2}), frozenset({1.0, 2}), id="frozensets"),
        pytest.param((1, (2.0, "x")), (1.0, (2, "x")), id="nested"),
    ],
)
def test_equal_combinations_are_one(tmp_path: Path, given: Any, equal: Any) -> None:
    # execo keeps combinations in sets: == and the same hash make them one.
    assert HashableDict(a=given) == HashableDict(a=equal)
    assert hash(HashableDict(a=given)) == hash(HashableDict(a=equal))
    with ParamSweeper(tmp_path / "sweeps", [HashableDict(a=given), HashableDict(a=equal)]) as s:
        assert s.get_sweeps() == [HashableDict(a=given)]
        s.done(HashableDict(a=equal))
        assert s.get_done() == [HashableDict(a=given)] and s.get_next() is None
    assert Point(1, 2) != (1, 3) and decimal.Decimal("0.1") != 0.1  # unequal stay apart
    with ParamSweeper(tmp_path / "other", [HashableDict(a=0.1), HashableDict(a=(1, 3))]) as s:
        s.done_batch([HashableDict(a=decimal.Decimal("0.1")), HashableDict(a=Point(1, 2))])
        assert s.get_done() == [] and len(s.get_remaining()) == 2


def format_1_key(combination: Any) -> str:
    """The key format 1 gave a combination (exact types, a namedtuple's own name)."""

    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return ("__dict__", tuple(sorted((repr(k), canonical(v)) for k, v in value.items())))
        if isinstance(value, (set, frozenset)):
            return ("__set__", tuple(sorted(repr(canonical(v)) for v in value)))
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(canonical(v) for v in value))
        return value

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.fast = True
    pickler.dump(canonical(combination))
    return hashlib.blake2b(buffer.getvalue(), digest_size=16).hexdigest()


def test_a_format_1_database_is_migrated(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    old = [HashableDict(x=1.0), HashableDict(x=2), HashableDict(x=True), HashableDict(x=3.5)]
    with ParamSweeper(directory, old, save_sweeps=True) as sweeper:
        sweeper.done(HashableDict(x=1.0))
        assert sweeper.get_next() == {"x": 2}  # held
    # As format 1 stored it: x=1.0 and x=True were two rows, with keys of their own.
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db, db:
        rows = db.execute("SELECT key, data FROM items").fetchall()
        for key, data in rows:
            db.execute(
                "UPDATE items SET key = ? WHERE key = ?", (format_1_key(pickle.loads(data)), key)
            )
        db.execute(
            "INSERT INTO items (key, seq, data, status, saved) VALUES (?, 10, ?, 'todo', 9)",
            (format_1_key(HashableDict(x=True)), pickle.dumps(HashableDict(x=True))),
        )
        db.execute("UPDATE meta SET value = 'asyncexec-paramsweeper-1' WHERE key = 'format'")
        assert db.execute("SELECT COUNT(*) FROM items").fetchone() == (4,)
    with ParamSweeper(directory) as sweeper:
        assert sweeper.get_sweeps() == [{"x": 1.0}, {"x": 2}, {"x": 3.5}]  # True is 1.0
        assert sweeper.get_done() == [{"x": 1.0}]  # done wins over the todo True row
        assert sweeper.get_inprogress() == [{"x": 2}]
        assert sweeper.get_next() == {"x": 3.5}
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (
            "asyncexec-paramsweeper-3",
        )
        assert db.execute("SELECT COUNT(*) FROM items").fetchone() == (3,)


def test_a_format_1_database_of_strings_keeps_its_rows(tmp_path: Path) -> None:
    # The experiment runner's sweeps are strings: their keys did not change.
    directory = tmp_path / "sweeps"
    names = [f"run-{i}" for i in range(5)]
    with ParamSweeper(directory, names) as sweeper:
        sweeper.done("run-3")
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db, db:
        db.execute("UPDATE meta SET value = 'asyncexec-paramsweeper-1' WHERE key = 'format'")
        rows = db.execute("SELECT * FROM items ORDER BY seq").fetchall()
    with ParamSweeper(directory, names) as sweeper:
        assert sweeper.get_done() == ["run-3"]
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db:
        assert db.execute("SELECT * FROM items ORDER BY seq").fetchall() == rows
        assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (
            "asyncexec-paramsweeper-3",
        )


# Keys that directories written before the fast paths hold: they must not change.
KNOWN_KEYS = [
    ("", "7cf4cad8689986d00e3fdb137d1518a8"),
    ("run-0", "586631fba240937dbdbb492d90a728b6"),
    ("0123456789abcdef01234567", "092033fff314b86840bb3e7d74fb28cf"),
    ("é", "1aa639c013e017bf53b0d2bdb8991620"),
    ("x" * 300, "fde1c747e784c329a99e7d4205bfe5f3"),
    (0, "f23db7432f1256c4cdab552f1c2bffb3"),
    (255, "345b35d6ab163c44c15bc1b9a6f6a7b6"),
    (256, "1713995525f92747c72c4ae3e2fd6a3e"),
    (65536, "a5b279bfb3df3371c4c8d45061f9e4d6"),
    (-1, "cca8871042f801259a3f9c5ed1e953ab"),
    (2**31, "09172bcc8e005ebc5452262cfbfa57db"),
    (True, "79bd330fb990067999f85832500688c4"),
    (1.0, "79bd330fb990067999f85832500688c4"),
]


@pytest.mark.parametrize(("value", "key"), KNOWN_KEYS, ids=[repr(v)[:12] for v, _ in KNOWN_KEYS])
def test_keys_are_those_of_earlier_versions(value: Any, key: str) -> None:
    assert combination_key(value) == key


def general_key(value: Any) -> str:
    """The key as computed without the fast paths."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.fast = True
    pickler.dump(_by_equality(value))
    return hashlib.blake2b(buffer.getvalue(), digest_size=16).hexdigest()


def test_fast_keys_are_the_general_keys() -> None:
    rng = random.Random(7)
    values: list[Any] = ["", "a", "abc", "abcd", "\0", "é" * 127, "é" * 128, "x" * 255]
    values += ["x" * 256, "\U0001f600" * 63, "\U0001f600" * 64, "\ud800", "a\udcffb"]
    values += [
        "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(300)))
        for _ in range(3000)
    ]
    values += [hashlib.blake2b(str(i).encode(), digest_size=12).hexdigest() for i in range(3000)]
    values += [*range(-70_000, 70_000, 7), 0, 255, 256, 65535, 65536]
    values += [2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63, -(2**64)]
    values += [rng.getrandbits(40) - 2**39 for _ in range(3000)]
    for value in values:
        assert combination_key(value) == general_key(value), repr(value)
    keyed = combination_keys([*values, *values[::-1]])
    assert keyed == {general_key(value): value for value in values}
    assert list(keyed.values()) == list(dict.fromkeys(values))  # first kept, in order


def test_equal_values_of_other_types_share_the_fast_keys() -> None:
    assert combination_key(Color.RED) == combination_key("red")
    assert combination_key(Size.BIG) == combination_key(2) == combination_key(2.0)
    assert combination_keys(["red", Color.RED]) == {combination_key("red"): "red"}


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    status TEXT NOT NULL,
    holder TEXT,
    lease_until REAL,
    saved INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX items_status_seq ON items (status, seq);
CREATE INDEX items_status_lease ON items (status, lease_until);
CREATE INDEX items_holder ON items (holder);
CREATE INDEX items_seq ON items (seq);
"""


def write_old_database(directory: Path, version: int, rows: list[tuple[Any, ...]]) -> None:
    """A database as format 1 or 2 wrote it: rows (key, seq, data, status, holder, lease, saved)."""
    directory.mkdir(parents=True)
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db, db:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('format', ?)", (f"asyncexec-paramsweeper-{version}",))
        db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_database_is_migrated_to_format_3(tmp_path: Path, version: int) -> None:
    directory = tmp_path / "sweeps"
    old_key = format_1_key if version == 1 else combination_key
    other = "another-host/boot/ns:1:holder"  # a live lease of another machine's holder
    later = time.time() + 3600
    specs = [  # combination, seq (with gaps), status, holder, lease, saved
        (HashableDict(i=0), 3, "done", None, None, 2),
        (HashableDict(i=1), 5, "inprogress", other, later, 0),
        (HashableDict(i=2), 9, "todo", None, None, 1),
        (HashableDict(i=3), 10, "todo", None, None, 3),
        (HashableDict(i=4), 20, "done", None, None, 0),  # done outside the saved sweeps
    ]
    write_old_database(
        directory,
        version,
        [(old_key(c), seq, pickle.dumps(c, protocol=4), *rest) for c, seq, *rest in specs],
    )
    with ParamSweeper(directory) as sweeper:  # the saved sweeps, in their saved order
        assert ids(sweeper.get_sweeps()) == [2, 0, 3]
        assert ids(sweeper.get_done()) == [0]
        assert ids(sweeper.get_remaining()) == [2, 3]
        assert ids(sweeper.get_next_batch(5)) == [2, 3]
    with ParamSweeper(directory, combos(6)) as sweeper:
        assert ids(sweeper.get_done()) == [0, 4]
        assert ids(sweeper.get_inprogress()) == [1, 2, 3]  # theirs, then the closed instance's
        assert ids(sweeper.get_next_batch(5)) == [5]  # appended after the migrated rows
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (
            "asyncexec-paramsweeper-3",
        )
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert sorted(name for (name,) in indexes if not name.startswith("sqlite_")) == [
            "items_key",
            "items_status",
        ]
        assert db.execute("SELECT seq, key FROM items ORDER BY seq").fetchall()[:5] == [
            (seq, combination_key(c)) for c, seq, *_ in specs
        ]


def test_a_first_store_of_many_is_one_transaction_with_its_indexes(tmp_path: Path) -> None:
    directory, count = tmp_path / "sweeps", 30_000
    names = [f"run-{i}" for i in range(count)]
    with ParamSweeper(directory, names) as sweeper:
        assert sweeper.get_next_batch(2) == ["run-0", "run-1"]
        sweeper.done("run-1")
    with ParamSweeper(directory, names) as sweeper:  # recognised: nothing written again
        assert sweeper.get_next() == "run-2"
        assert len(sweeper.get_remaining()) == count - 3
        sweeper.set_sweeps([*names[:10], "extra-0", "extra-1"])  # into a non-empty database
        assert sweeper.get_next_batch(20) == [*names[3:10], "extra-0", "extra-1"]
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM items WHERE key = ?", ("x",)
        ).fetchall()
        assert "items_key" in str(plan)
        assert db.execute("SELECT COUNT(*) FROM items").fetchone() == (count + 2,)


def test_rows_of_other_sweeps_ahead_are_passed_over(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    with ParamSweeper(directory, combos(20_000)):
        pass
    with ParamSweeper(directory, combos(3, start=19_999)) as sweeper:
        sweeper.skip(HashableDict(i=20_000))
        started = time.monotonic()
        assert ids(sweeper.get_next_batch(5)) == [19_999, 20_001]
        assert time.monotonic() - started < 5  # not one query per row passed over


def test_done_reuses_the_key_of_what_was_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncexec.sweep._sweeper as module

    calls: list[Any] = []

    def counting_key(combination: Any) -> str:
        calls.append(combination)
        return combination_key(combination)

    monkeypatch.setattr(module, "combination_key", counting_key)
    with ParamSweeper(tmp_path / "sweeps", combos(4)) as sweeper:
        first, second, third = sweeper.get_next_batch(3)
        sweeper.done(first)
        sweeper.cancel(second)
        sweeper.skip(third)
        assert calls == []  # the very objects handed out: their keys were known
        sweeper.done(HashableDict(i=3))  # an equal object: its key is computed
        assert calls == [{"i": 3}]
        assert ids(sweeper.get_done()) == [0, 3]
        assert sweeper.get_next() is second  # handed out again after cancel
        sweeper.done(second)
        assert ids(sweeper.get_done()) == [0, 1, 3] and sweeper.get_next() is None


# -- leases -----------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [0, -1.0])
def test_lease_must_be_positive(tmp_path: Path, lease: float) -> None:
    with pytest.raises(ValueError, match="lease"):
        ParamSweeper(tmp_path / "sweeps", combos(1), lease=lease)


@pytest.mark.usefixtures("no_leftover_processes")
def test_killed_holder_leases_come_back_by_themselves(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    with (
        holder(directory, 8, take=4, lease=1.0) as (process, taken),
        ParamSweeper(directory, combos(8), lease=1.0) as survivor,
    ):
        assert taken == [0, 1, 2, 3]
        assert ids(survivor.get_inprogress()) == [0, 1, 2, 3]
        assert ids(survivor.get_next_batch(10)) == [4, 5, 6, 7]  # not the held ones
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL

        eventually(
            lambda: ids(survivor.get_remaining()) == [0, 1, 2, 3],
            "the dead holder's combinations come back as todo",
        )
        got: list[int] = []

        def all_back() -> bool:
            got.extend(ids(survivor.get_next_batch(10)))
            return sorted(got) == [0, 1, 2, 3]

        eventually(all_back, "get_next hands them out again")
        assert sorted(got) == [0, 1, 2, 3]  # each once
        assert ids(survivor.get_inprogress()) == list(range(8))  # all ours now, kept alive
        assert survivor.get_remaining() == []


@pytest.mark.usefixtures("no_leftover_processes")
def test_live_holder_keeps_its_leases_for_many_lease_periods(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    lease = 1.0
    with (
        holder(directory, 4, take=4, lease=lease) as (process, taken),
        ParamSweeper(directory, combos(4), lease=lease) as other,
    ):
        assert taken == [0, 1, 2, 3]
        checks = 0
        until = time.monotonic() + 4 * lease
        while time.monotonic() < until or checks < 10:
            assert other.get_next() is None
            assert other.get_remaining() == []
            assert ids(other.get_inprogress()) == [0, 1, 2, 3]
            checks += 1
            time.sleep(0.1)
        assert process.poll() is None


def test_closed_instance_keeps_leases_until_they_expire(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    with ParamSweeper(directory, combos(6), lease=1.0) as first:
        assert ids(first.get_next_batch(3)) == [0, 1, 2]
        first.cancel(HashableDict(i=2))  # handed back at once
    with ParamSweeper(directory, combos(6), lease=1.0) as second:
        assert ids(second.get_inprogress()) == [0, 1]
        assert ids(second.get_next_batch(10)) == [2, 3, 4, 5]
        got: list[int] = []

        def expired() -> bool:
            got.extend(ids(second.get_next_batch(10)))
            return sorted(got) == [0, 1]

        eventually(expired, "the closed instance's leases expire")


# -- many processes, many threads, many tasks ------------------------------------------

WORKER = r"""
import os, sys, time
from asyncexec.sweep import HashableDict, ParamSweeper

directory, count, start, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
got = []
with ParamSweeper(directory, [HashableDict(i=i) for i in range(count)]) as sweeper:
    open(out + ".ready", "w").close()
    while not os.path.exists(start):
        time.sleep(0.005)
    while (combination := sweeper.get_next()) is not None:
        got.append(combination["i"])
        sweeper.done(combination)
with open(out + ".tmp", "w") as target:
    target.write("\n".join(map(str, got)))
os.replace(out + ".tmp", out)
"""


@pytest.mark.usefixtures("no_leftover_processes")
def test_four_processes_share_one_directory(tmp_path: Path) -> None:
    count, directory, start = 10_000, tmp_path / "sweeps", tmp_path / "start"
    outs = [tmp_path / f"got-{n}.txt" for n in range(4)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory), str(count), str(start), str(out)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    try:
        eventually(
            lambda: all(
                Path(f"{out}.ready").exists() or p.poll() is not None
                for out, p in zip(outs, processes, strict=True)
            ),
            "every worker is ready",
            timeout=120,
        )
        start.touch()  # all start together, for real contention
        for process in processes:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    got = [[int(line) for line in out.read_text().split()] for out in outs]
    everything = [i for part in got for i in part]
    assert len(everything) == count  # none handed out twice...
    assert set(everything) == set(range(count))  # ...and every one handed out
    assert sum(1 for part in got if part) >= 2  # the processes did share the work
    with ParamSweeper(directory, combos(count)) as sweeper:
        assert len(sweeper.get_done()) == count
        assert sweeper.get_remaining() == [] and sweeper.get_inprogress() == []


def test_threads_share_one_instance(tmp_path: Path) -> None:
    count, workers = 2_000, 8
    got: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)
    before = set(threading.enumerate())

    def work(sweeper: ParamSweeper, mine: list[int], batched: bool) -> None:
        try:
            barrier.wait()
            while True:
                if batched:
                    batch = sweeper.get_next_batch(3)
                    if not batch:
                        return
                    mine.extend(ids(batch))
                    sweeper.done_batch(batch)
                else:
                    combination = sweeper.get_next()
                    if combination is None:
                        return
                    mine.append(combination["i"])
                    sweeper.done(combination)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    with ParamSweeper(tmp_path / "sweeps", combos(count)) as sweeper:
        threads = [
            threading.Thread(target=work, args=(sweeper, got[n], n % 2 == 1))
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        everything = [i for part in got for i in part]
        assert len(everything) == count
        assert set(everything) == set(range(count))
        assert len(sweeper.get_done()) == count
        assert sweeper.get_inprogress() == [] and sweeper.get_remaining() == []
    for thread in new_threads(before):  # none should be left but let a straggler finish
        thread.join(timeout=10)
    assert new_threads(before) == []


async def test_async_methods(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", combos(6)) as sweeper:
        first = await sweeper.aget_next()
        assert first == {"i": 0}
        batch = await sweeper.aget_next_batch(2)
        assert ids(batch) == [1, 2]
        await sweeper.adone(first)
        await sweeper.askip(batch[0])
        await sweeper.acancel(batch[1])
        assert ids(sweeper.get_done()) == [0]
        assert ids(sweeper.get_skipped()) == [1]
        assert sweeper.get_inprogress() == []
        assert ids(sweeper.get_remaining()) == [2, 3, 4, 5]
        assert await sweeper.aget_next(lambda r: [c for c in r if c["i"] == 4]) == {"i": 4}
        assert ids(await sweeper.aget_next_batch(10, lambda r: list(r)[::-1])) == [5, 3, 2]
        assert await sweeper.aget_next() is None
        assert await sweeper.aget_next_batch(3) == []


async def test_async_tasks_share_one_instance(tmp_path: Path) -> None:
    count = 400
    got: list[int] = []

    async def work(sweeper: ParamSweeper) -> None:
        while (combination := await sweeper.aget_next()) is not None:
            got.append(combination["i"])
            await sweeper.adone(combination)

    with ParamSweeper(tmp_path / "sweeps", combos(count)) as sweeper:
        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(work, sweeper)
        assert len(got) == count
        assert set(got) == set(range(count))
        assert len(sweeper.get_done()) == count


# -- directories ------------------------------------------------------------------------

EXECO_RUN = r"""
import json, sys, warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from execo_engine import HashableDict, ParamSweeper

directory, count, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
sweeper = ParamSweeper(directory, [HashableDict(i=i) for i in range(count)], save_sweeps=True)
for op, times in plan:
    for _ in range(times):
        combination = sweeper.get_next()
        if op == "done":
            sweeper.done(combination)
names = ("sweeps", "remaining", "skipped", "inprogress", "done")
print(json.dumps({n: sorted(c["i"] for c in part) for n, part in zip(names, sweeper.stats())}))
"""


def run_execo(directory: Path, count: int, plan: Plan) -> dict[str, list[int]]:
    """execo_engine's ParamSweeper on ``directory``: ``plan`` is ("done" | "hold", times)."""
    done = subprocess.run(
        [sys.executable, "-c", EXECO_RUN, str(directory), str(count), json.dumps(plan)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    state: dict[str, list[int]] = json.loads(done.stdout)
    return state


def execo_files(directory: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(directory).items() if not k.startswith("sweeper.sqlite")}


def test_execo_directory_is_continued_and_left_alone(tmp_path: Path) -> None:
    # A port of an execo script, run on the directory of an execo run, goes on
    # from where execo left; the directory also holds other files (execo uses it).
    directory = tmp_path / "execo"
    directory.mkdir()
    (directory / "notes.txt").write_bytes(b"my notes")
    first = run_execo(directory, 8, [("done", 3), ("hold", 1)])
    assert len(first["done"]) == 3 and len(first["inprogress"]) == 1
    before = execo_files(directory)
    assert {"done", "inprogress", "sweeps", "notes.txt"} <= set(before)

    with ParamSweeper(directory, combos(8)) as sweeper:
        assert sorted(ids(sweeper.get_done())) == first["done"]
        # execo's inprogress: no lease tells whether its holder lives; todo again.
        assert ids(sweeper.get_remaining()) == sorted(first["remaining"] + first["inprogress"])
        mine = sweeper.get_next()["i"]
        sweeper.done(HashableDict(i=mine))
    with ParamSweeper(directory) as loaded:  # no sweeps: execo's saved ones
        assert sorted(ids(loaded.get_sweeps())) == list(range(8))
        assert len(loaded.get_done()) == 4
    assert execo_files(directory) == before  # execo's files are only read

    # execo goes on there (it knows nothing of ours), then the port again: it sees
    # what execo appended, and what it did itself.
    second = run_execo(directory, 8, [("done", 2)])
    assert len(second["done"]) == 5
    with open(directory / "done", "ab") as done_file:
        done_file.write(b"\x80\x04\x95\x00")  # a half-written last entry (a crash)
    expected = sorted({*second["done"], mine})
    with ParamSweeper(directory, combos(8)) as sweeper:
        assert sorted(ids(sweeper.get_done())) == expected
    with ParamSweeper(directory, combos(8)) as again:  # read from where it stopped
        assert sorted(ids(again.get_done())) == expected


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"notes.txt": b"my notes"}, id="other-file"),
        pytest.param({"results/out.csv": b"a,b\n"}, id="sub-directory"),
        pytest.param({"stdout": b"log\n", "stderr": b""}, id="execo-engine-outputs"),
        pytest.param({"done": b"not a pickle", "sweeps": b""}, id="not-execo-files"),
    ],
)
def test_directory_with_other_files_is_used(tmp_path: Path, files: dict[str, bytes]) -> None:
    directory = tmp_path / "sweeps"
    for name, content in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(content)
    with ParamSweeper(directory, combos(3)) as sweeper:
        sweeper.done(sweeper.get_next())
    with ParamSweeper(directory, combos(3)) as again:
        assert ids(again.get_done()) == [0]
        assert ids(again.get_next_batch(5)) == [1, 2]
    with pytest.raises(SweeperError, match="no saved sweeps"):
        ParamSweeper(directory)
    assert execo_files(directory) == files


def test_directory_with_only_hidden_files_is_accepted(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    directory.mkdir()
    (directory / ".keep").write_bytes(b"")
    with ParamSweeper(directory, combos(2)) as sweeper:
        assert sweeper.get_next() == {"i": 0}
    assert (directory / ".keep").read_bytes() == b""


def test_missing_directories_are_created(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "sweeps"
    with ParamSweeper(directory, combos(2)) as sweeper:
        assert sweeper.get_next() == {"i": 0}
    assert (directory / "sweeper.sqlite").is_file()


@pytest.mark.parametrize(
    "prefix", [pytest.param(b"", id="garbage"), pytest.param(b"SQLite format 3\x00", id="header")]
)
def test_corrupted_database_is_refused_and_left_alone(tmp_path: Path, prefix: bytes) -> None:
    directory = tmp_path / "sweeps"
    directory.mkdir()
    garbage = prefix + random.Random(3).randbytes(16384)
    (directory / "sweeper.sqlite").write_bytes(garbage)
    with pytest.raises(SweeperError, match=r"sweeper\.sqlite"):
        ParamSweeper(directory, combos(3))
    assert snapshot(directory) == {"sweeper.sqlite": garbage}


def test_database_of_another_format_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps"
    with ParamSweeper(directory, combos(3)) as sweeper:
        sweeper.done(sweeper.get_next())
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db, db:
        db.execute("UPDATE meta SET value = 'someone-else-7' WHERE key = 'format'")
    with pytest.raises(SweeperError, match="someone-else-7"):
        ParamSweeper(directory, combos(3))
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db, db:
        db.execute("DELETE FROM meta")
    with pytest.raises(SweeperError, match="format"):
        ParamSweeper(directory, combos(3))
    with closing(sqlite3.connect(directory / "sweeper.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM items WHERE status = 'done'").fetchone() == (1,)


def test_a_failed_constructor_leaves_nothing_behind(tmp_path: Path) -> None:
    # Nothing may go wrong later either, when the half-built instance is collected.
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "sweeper.sqlite").write_bytes(b"not a database" * 1000)
    problems: list[str] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        problems.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")

    sys.unraisablehook = hook
    try:
        attempts: list[tuple[Path, list[HashableDict] | None, float]] = [
            (tmp_path / "damaged", combos(1), 60),
            (tmp_path / "nothing-saved", None, 60),  # fails with its database open
            (tmp_path / "fine", combos(1), 0),
        ]
        for directory, sweeps, lease in attempts:
            with pytest.raises((SweeperError, ValueError)):
                ParamSweeper(directory, sweeps, lease=lease)
            gc.collect()
    finally:
        sys.unraisablehook = previous
    assert problems == []


# -- the heartbeat thread ---------------------------------------------------------------


def test_close_stops_the_heartbeat(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    sweeper = ParamSweeper(tmp_path / "sweeps", combos(3), lease=0.3)
    sweeper.get_next()
    assert len(new_threads(before)) == 1  # the heartbeat
    sweeper.close()
    assert new_threads(before) == []
    with ParamSweeper(tmp_path / "sweeps", combos(3), lease=0.3) as again:
        assert again.get_next() == {"i": 1}
        assert len(new_threads(before)) == 1
    assert new_threads(before) == []


def test_no_heartbeat_before_anything_is_held(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with ParamSweeper(tmp_path / "sweeps", combos(3)) as sweeper:
        sweeper.done(HashableDict(i=0))
        sweeper.stats()
        assert new_threads(before) == []


def test_a_dropped_instance_stops_its_heartbeat(tmp_path: Path) -> None:
    # execo's ParamSweeper has no close(): code written for it just drops the instance.
    before = set(threading.enumerate())
    sweeper = ParamSweeper(tmp_path / "sweeps", combos(3))
    sweeper.get_next()
    (heartbeat,) = new_threads(before)
    del sweeper
    gc.collect()
    heartbeat.join(timeout=2)
    assert not heartbeat.is_alive()
