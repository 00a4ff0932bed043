"""Index-addressed sweeps: an experiment as indexed arrays on the real Slurm cluster,
and the one-file runtime's records, payloads and blame on this machine."""

from __future__ import annotations

import contextlib
import json
import operator
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncexec import SlurmConfig, SlurmExecutor, TaskOptions, ThreadExecutor, _runtime
from asyncexec._pickle_cache import pickle_function
from asyncexec.experiment import Experiment
from asyncexec.launchers.batch.files import _RUNNER_SOURCE
from asyncexec.launchers.batch.indexed import build_payload, is_indexed_ref

from .cluster import Cluster

# -- the runtime's side, on this machine ---------------------------------------------------


def stage(tmp_path: Path, chunks: list[list[tuple[str, tuple[Any, ...], dict[str, Any]]]]) -> Path:
    """An indexed array's directory, as a node sees it, running ``operator.add``."""
    workdir = tmp_path / "array"
    (workdir / "out").mkdir(parents=True)
    payload = build_payload(pickle_function(operator.add), chunks, TaskOptions())
    (workdir / "payload.bin").write_bytes(payload)
    (workdir / _runtime.MODULE_FILE).write_bytes(_RUNNER_SOURCE)
    return workdir


def run_task(workdir: Path, index: int) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-c", _runtime.BOOT_INDEXED, str(workdir), str(index)]
    return subprocess.run(command, capture_output=True, timeout=60, cwd="/")


def records(workdir: Path, index: int) -> list[dict[str, Any]]:
    data = (workdir / "out" / f"{index}.rec").read_bytes()
    bodies, consumed = _runtime.split_records(data)
    assert consumed == len(data)
    return [_runtime.load_record(body) for body in bodies]


def test_an_array_task_runs_its_section_and_appends_a_record_per_run(tmp_path: Path) -> None:
    chunks: list[list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = [
        [(f"k{i}", (i, 10), {}) for i in range(j * 4, j * 4 + 4)] for j in range(3)
    ]
    workdir = stage(tmp_path, chunks)
    done = run_task(workdir, 1)
    assert done.returncode == 0, done.stderr
    found = records(workdir, 1)
    assert [r["kind"] for r in found] == ["begin"] + ["run"] * 4
    runs = found[1:]
    assert [r["task_id"] for r in runs] == ["k4", "k5", "k6", "k7"]
    assert [pickle.loads(r["value"]) for r in runs] == [14, 15, 16, 17]
    assert sorted(os.listdir(workdir / "out")) == ["1.rec"]  # one file, whatever the runs


def test_a_new_attempt_skips_recorded_runs_and_reads_past_a_torn_record(tmp_path: Path) -> None:
    workdir = stage(tmp_path, [[(f"k{i}", (i, 1), {}) for i in range(3)]])
    path = workdir / "out" / "0.rec"
    first = [
        _runtime.frame_record({"kind": "begin"}),
        _runtime.frame_record({"kind": "run", "task_id": "k0", "status": "ok", "value": b""}),
    ]
    torn = _runtime.frame_record({"kind": "run", "task_id": "k1", "status": "ok"})
    path.write_bytes(b"".join(first) + torn[:21])  # killed while writing k1's record
    bodies, consumed = _runtime.split_records(path.read_bytes())
    assert len(bodies) == 2 and consumed == len(b"".join(first))  # the rest may still come
    assert run_task(workdir, 0).returncode == 0
    found = records(workdir, 0)  # the torn record was padded, then skipped
    assert [(r["kind"], r.get("task_id")) for r in found] == [
        ("begin", None),
        ("run", "k0"),
        ("begin", None),
        ("run", "k1"),
        ("run", "k2"),
    ]


def test_a_run_two_attempts_died_in_is_recorded_lost_not_run_again(tmp_path: Path) -> None:
    workdir = stage(tmp_path, [[(f"k{i}", (i, 1), {}) for i in range(3)]])
    begin = _runtime.frame_record({"kind": "begin"})
    k0 = _runtime.frame_record({"kind": "run", "task_id": "k0", "status": "ok"})
    # Two attempts ended while k1 ran (k0 was recorded by the first).
    (workdir / "out" / "0.rec").write_bytes(begin + k0 + begin)
    assert _runtime.blame([{"kind": "begin"}, {"task_id": "k0"}, {"kind": "begin"}], []) == {}
    found_before = [{"kind": "begin"}, {"task_id": "k0"}, {"kind": "begin"}]
    assert _runtime.blame(found_before, ["k0", "k1", "k2"]) == {"k1": 2}
    assert run_task(workdir, 0).returncode == 0
    runs = [r for r in records(workdir, 0) if r["kind"] == "run"]
    assert [(r["task_id"], r["status"]) for r in runs] == [
        ("k0", "ok"),
        ("k1", "lost"),
        ("k2", "ok"),
    ]
    assert "ended 2 times" in runs[1]["error"]["message"]


def test_records_survive_garbage_between_them() -> None:
    a = _runtime.frame_record({"n": 1})
    b = _runtime.frame_record({"n": 2})
    data = a + b"\0" * 7 + b"AXR1junkjunkjunkjunk" + b
    bodies, consumed = _runtime.split_records(data)
    assert [_runtime.load_record(body)["n"] for body in bodies] == [1, 2]
    assert consumed == len(data)
    # A record still being written is waited for, never skipped.
    bodies, consumed = _runtime.split_records(a + b[:10])
    assert len(bodies) == 1 and consumed == len(a)


@pytest.mark.anyio
async def test_indexed_true_on_an_executor_without_indexed_arrays_is_refused(
    tmp_path: Path,
) -> None:
    experiment = Experiment(operator.add, {"a": [1], "b": [2]})
    async with ThreadExecutor(1) as ex:
        with pytest.raises(ValueError, match="indexed arrays"):
            await experiment.run(ex, tmp_path / "experiment", indexed=True, progress=False)


@pytest.fixture
def anyio_backend() -> str:
    """asyncssh runs on asyncio only."""
    return "asyncio"


# -- on the cluster ---------------------------------------------------------------------------

RUNS_PER_TASK = 100


def counting(scratch: str) -> Any:
    """``x * y + 1``, appending ``x,y`` to ``scratch/ran`` once it is computed (a closure:
    it travels by value)."""

    def multiply(x: int, y: int) -> int:
        value = x * y + 1
        with open(os.path.join(scratch, "ran"), "a") as file:
            file.write(f"{x},{y}\n")
        return value

    return multiply


def executions(scratch: str) -> Counter[str]:
    with open(os.path.join(scratch, "ran")) as file:
        return Counter(file.read().split())


def files_by_array_task(staging: str) -> dict[str, float]:
    """Files under each indexed array's out/ and log/, per array task."""
    found = {}
    for name in os.listdir(staging):
        workdir = os.path.join(staging, name)
        tasks = len(os.listdir(os.path.join(workdir, "out")))
        logs = len(os.listdir(os.path.join(workdir, "log")))
        found[name] = (tasks + logs) / max(1, tasks)
    return found


def sbatch_arrays(name: str) -> set[str]:
    """The arrays sacct knows by this job name."""
    for _ in range(50):  # slurmdbd may lag the submission a little
        listed = subprocess.run(
            ["sacct", "-X", "-n", "-P", f"--name={name}", "-S", "now-1hour", "-o", "JobID"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if listed:
            return {line.split("_")[0] for line in listed}
        time.sleep(0.2)
    return set()


@pytest.mark.infra
@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.anyio
async def test_a_2000_run_experiment_runs_as_two_indexed_arrays(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    name = f"ae-indexed-{os.getpid()}-{time.monotonic_ns()}"
    staging = f"{cluster.home}/.asyncexec/{name}"
    # 20 array tasks of 100 runs; arrays of 15 at most: two arrays, two sbatch calls.
    config = SlurmConfig(
        python=cluster.python,
        poll_interval=0.2,
        max_poll_interval=1.0,
        job_name=name,
        max_array_size=15,
    )
    experiment = Experiment(counting(scratch), {"x": range(1000), "y": [1, 2]})
    try:
        async with SlurmExecutor(
            cluster.shell(), config, staging_dir=staging, keep_staging=True
        ) as ex:
            summary = await experiment.run(
                ex,
                tmp_path / "experiment",
                indexed=True,
                runs_per_task=RUNS_PER_TASK,
                progress=False,
            )
            calls = dict(ex.slurm.calls)
        assert summary.complete and summary.done == 2000 and summary.ran == 2000, summary
        assert calls["sbatch"] == 2, calls
        assert len(sbatch_arrays(name)) == 2
        assert calls.get("read", 0) >= 1
        counts = executions(scratch)
        assert len(counts) == 2000 and set(counts.values()) == {1}
        rows = experiment_rows(tmp_path / "experiment")
        assert {(r["x"], r["y"]): r["value"] for r in rows} == {
            (x, y): x * y + 1 for x in range(1000) for y in (1, 2)
        }
        refs = [r["job_ref"] for r in rows]
        assert all(ref["kind"] == "slurm" and ref["task_id"].startswith("indexed:") for ref in refs)
        assert len({ref["native_id"] for ref in refs}) == 20  # one per array task
        per_task = files_by_array_task(staging)
        assert len(per_task) == 2 and all(n == 2 for n in per_task.values()), per_task
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def experiment_rows(directory: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(directory / "results.sqlite")) as db:
        rows = db.execute("SELECT params_json, value_json, job_ref, status FROM runs").fetchall()
    found = []
    for params, value, ref, status in rows:
        assert status == "done", (params, status)
        row = json.loads(params)
        row["value"] = json.loads(value)
        row["job_ref"] = json.loads(ref)
        found.append(row)
    return found


DRIVER = """
import asyncio, json, os, sys, time
from asyncexec import SSHShell, SlurmConfig, SlurmExecutor
from asyncexec.experiment import Experiment

cluster, directory, scratch, name = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def multiply(x, y):
    time.sleep(0.02)
    value = x * y + 1
    with open(os.path.join(scratch, "ran"), "a") as file:
        file.write(f"{x},{y}\\n")
    return value

async def main():
    shell = SSHShell(cluster["host"], port=cluster["port"], username=cluster["user"],
                     connect_options={"client_keys": [cluster["client_key"]],
                                      "known_hosts": cluster["known_hosts"]})
    config = SlurmConfig(python=cluster["python"], poll_interval=0.2, max_poll_interval=1.0,
                         job_name=name)
    experiment = Experiment(multiply, {"x": range(1000), "y": [1, 2]})
    async with SlurmExecutor(shell, config) as ex:
        summary = await experiment.run(ex, directory, indexed=True, runs_per_task=100,
                                       progress=False, lease=2)
        print(json.dumps({"done": summary.done, "ran": summary.ran,
                          "reattached": summary.reattached, "complete": summary.complete,
                          "sbatch": ex.slurm.calls.get("sbatch", 0)}), flush=True)

asyncio.run(main())
"""


@pytest.mark.infra
@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.anyio
async def test_a_killed_driver_run_again_repeats_no_finished_run(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    name = f"ae-indexed-kill-{os.getpid()}-{time.monotonic_ns()}"
    directory = str(tmp_path / "experiment")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    argv = [sys.executable, str(script), json.dumps(cluster.__dict__), directory, scratch, name]
    driver = await anyio.open_process(argv, start_new_session=True)
    results = os.path.join(directory, "results.sqlite")

    def done() -> int:
        try:
            with contextlib.closing(sqlite3.connect(results)) as db:
                (count,) = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()
        except sqlite3.Error:
            return 0
        return int(count)

    try:
        with anyio.fail_after(120):
            while done() < 50:
                await anyio.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        await driver.aclose()
    done_before = done()
    assert done_before < 2000
    again = await anyio.run_process(argv, check=False)
    assert again.returncode == 0, again.stderr.decode()
    summary = json.loads(again.stdout.decode().splitlines()[-1])
    assert summary["complete"] and summary["done"] == 2000, summary
    assert summary["sbatch"] == 0, summary  # the killed driver's array was followed
    assert summary["reattached"] == 2000 - done_before, summary
    counts = executions(scratch)
    assert len(counts) == 2000
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    with contextlib.closing(sqlite3.connect(results)) as db:
        refs = [json.loads(r) for (r,) in db.execute("SELECT job_ref FROM runs")]
    assert all(is_indexed_ref_json(ref) for ref in refs)
    assert not [ref["workdir"] for ref in refs if os.path.exists(ref["workdir"])]


def is_indexed_ref_json(ref: dict[str, Any]) -> bool:
    from asyncexec import JobRef

    return is_indexed_ref(JobRef(**ref))


def sleepy_counting(scratch: str) -> Any:
    """``counting``'s, taking 50 ms a run."""
    count = counting(scratch)

    def multiply(x: int, y: int) -> int:
        time.sleep(0.05)
        return int(count(x, y))

    return multiply


@pytest.mark.infra
@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.anyio
async def test_a_lost_array_task_runs_only_its_missing_runs_again(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    name = f"ae-indexed-lost-{os.getpid()}-{time.monotonic_ns()}"
    config = SlurmConfig(
        python=cluster.python, poll_interval=0.2, max_poll_interval=1.0, job_name=name
    )
    experiment = Experiment(sleepy_counting(scratch), {"x": range(100), "y": [1, 2]})
    directory = tmp_path / "experiment"
    results = directory / "results.sqlite"

    def started_in_task_1() -> str | None:
        """Array task 1's id once it has recorded two runs (it runs, with runs left)."""
        try:
            with contextlib.closing(sqlite3.connect(results)) as db:
                rows = db.execute("SELECT job_ref FROM runs WHERE job_ref IS NOT NULL").fetchall()
        except sqlite3.Error:
            return None
        refs = [json.loads(text) for (text,) in rows]
        ref = next((ref for ref in refs if ref["native_id"].endswith("_1")), None)
        if ref is None:
            return None
        path = os.path.join(ref["workdir"], "out", "1.rec")
        if not os.path.exists(path):
            return None
        with open(path, "rb") as file:
            bodies, _ = _runtime.split_records(file.read())
        return str(ref["native_id"]) if len(bodies) >= 3 else None  # begin, two runs

    async def kill_task_1() -> None:
        with anyio.fail_after(120):
            while (native_id := started_in_task_1()) is None:
                await anyio.sleep(0.05)
        await anyio.run_process(["scancel", native_id])

    async with SlurmExecutor(cluster.shell(), config) as ex:
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_task_1)
            summary = await experiment.run(
                ex, directory, indexed=True, runs_per_task=50, progress=False
            )
        calls = dict(ex.slurm.calls)
    assert summary.complete and summary.done == 200, summary
    assert calls["sbatch"] == 2, calls  # the array, then array task 1 again
    counts = executions(scratch)
    assert len(counts) == 200
    # Only the run that was running when the task was killed may have run twice.
    assert sum(n - 1 for n in counts.values()) <= 1, counts.most_common(3)
    rows = experiment_rows(directory)
    assert {(r["x"], r["y"]): r["value"] for r in rows} == {
        (x, y): x * y + 1 for x in range(100) for y in (1, 2)
    }
    again = {r["job_ref"]["native_id"] for r in rows if r["job_ref"]["native_id"].endswith("_1")}
    assert len(again) == 2  # task 1's runs: some from the first array, the rest from the second


def test_the_store_counts_runs_per_level_and_records_results_in_bulk(tmp_path: Path) -> None:
    from asyncexec.experiment import ResultsStore
    from asyncexec.experiment._store import RunResult

    experiment = Experiment(operator.add, {"a": [1, 2, 3], "b": ["x", "y"]})
    with ResultsStore(tmp_path / "experiment", experiment=experiment.name) as store:
        store.register(experiment.runs)
        first, second = experiment.runs[:2]
        store.record_results(
            [
                RunResult(fingerprint=first.fingerprint, status="done", value=[1, 2]),
                RunResult(fingerprint=second.fingerprint, status="failed", error=ValueError("no")),
            ]
        )
        levels = store.level_counts()
        rows = {row["fingerprint"]: row for row in store.rows()}
    assert levels["a"]["1"] == {"done": 1, "failed": 1}
    assert levels["a"]["2"] == {"pending": 2}
    assert levels["b"]['"x"'] == {"done": 1, "pending": 2}
    assert rows[first.fingerprint]["value"] == [1, 2]
    assert rows[second.fingerprint]["error_type"] == "ValueError"


def failing_once(marker: str) -> Any:
    """A run that raises the first time it runs (it leaves ``marker``), then adds."""

    def add_after_a_failure(x: int, y: int) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise ConnectionError("the first attempt fails")
        return x + y

    return add_after_a_failure


def test_a_run_that_raises_is_tried_again_in_its_array_task_as_retries_say(
    tmp_path: Path,
) -> None:
    for retries, expected in ((1, ("ok", 2)), (0, ("raised", 1))):
        workdir = tmp_path / f"retries-{retries}"
        (workdir / "out").mkdir(parents=True)
        fn = failing_once(str(workdir / "failed-once"))
        options = TaskOptions(retries=retries, retry_on=(ConnectionError,), retry_backoff=0.01)
        payload = build_payload(pickle_function(fn), [[("k0", (1, 2), {})]], options)
        (workdir / "payload.bin").write_bytes(payload)
        (workdir / _runtime.MODULE_FILE).write_bytes(_RUNNER_SOURCE)
        assert run_task(workdir, 0).returncode == 0
        (run,) = [r for r in records(workdir, 0) if r["kind"] == "run"]
        assert (run["status"], run["attempts"]) == expected


@pytest.mark.infra
@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.anyio
async def test_a_detached_experiment_is_followed_by_the_next_run(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    config = SlurmConfig(python=cluster.python, poll_interval=0.2, max_poll_interval=1.0)
    experiment = Experiment(sleepy_counting(scratch), {"x": range(100), "y": [1, 2]})
    directory = str(tmp_path / "experiment")
    async with SlurmExecutor(cluster.shell(), config) as ex:
        detached = await experiment.run(
            ex, directory, indexed=True, runs_per_task=50, detach=True, progress=False, lease=2
        )
        assert ex.slurm.calls["sbatch"] == 1
    assert detached.detached == 200 - detached.done, detached
    assert not detached.cancelled and detached.done < 200, detached
    async with SlurmExecutor(cluster.shell(), config) as ex:
        # 200 runs take the ordinary path unless asked, or left running in indexed arrays.
        summary = await experiment.run(ex, directory, progress=False, lease=2)
        assert ex.slurm.calls.get("sbatch", 0) == 0
    assert summary.complete and summary.done == 200, summary
    assert summary.reattached == 200 - detached.done, summary
    counts = executions(scratch)
    assert len(counts) == 200 and set(counts.values()) == {1}


def test_each_run_brings_back_what_it_printed_and_nothing_of_the_others(tmp_path: Path) -> None:
    from asyncexec.testing import print_both

    workdir = tmp_path / "array"
    (workdir / "out").mkdir(parents=True)
    chunks: list[list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = [
        [(f"k{i}", (f"run{i}",), {}) for i in range(3)]
    ]
    payload = build_payload(pickle_function(print_both), chunks, TaskOptions())
    (workdir / "payload.bin").write_bytes(payload)
    (workdir / _runtime.MODULE_FILE).write_bytes(_RUNNER_SOURCE)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    command = [sys.executable, "-c", _runtime.BOOT_INDEXED, str(workdir), "0"]
    done = subprocess.run(command, capture_output=True, timeout=60, cwd="/", env=env)
    assert done.returncode == 0, done.stderr
    runs = [r for r in records(workdir, 0) if r["kind"] == "run"]
    assert [(r["stdout"], r["stderr"]) for r in runs] == [
        (f"out:run{i}\n", f"err:run{i}\n") for i in range(3)
    ]
    assert done.stdout == b""  # all of it went to the runs' tails


def logging_hook(path: str, word: str) -> Any:
    def hook() -> None:
        with open(path, "a") as file:
            file.write(word + "\n")

    return hook


def test_each_array_task_runs_the_executors_setup_and_teardown_once(tmp_path: Path) -> None:
    from asyncexec._hooks import make_hooks

    journal = str(tmp_path / "journal")
    hooks = make_hooks(logging_hook(journal, "setup"), logging_hook(journal, "teardown"))
    workdir = tmp_path / "array"
    (workdir / "out").mkdir(parents=True)
    chunks: list[list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = [
        [(f"k{i}", (i, 1), {}) for i in range(3)]
    ]
    payload = build_payload(pickle_function(operator.add), chunks, TaskOptions(), hooks)
    (workdir / "payload.bin").write_bytes(payload)
    (workdir / _runtime.MODULE_FILE).write_bytes(_RUNNER_SOURCE)
    assert run_task(workdir, 0).returncode == 0
    with open(journal) as file:
        assert file.read().split() == ["setup", "teardown"]
    runs = [r for r in records(workdir, 0) if r["kind"] == "run"]
    assert [r["status"] for r in runs] == ["ok"] * 3
