"""The worker's one-shot mode and version handshake, run as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec

from asyncexec._codec import dumps, dumps_call, loads, versions
from asyncexec._messages import Batch, Results, TaskSpec, Versions
from asyncexec.testing import add, heartbeat, print_both, raise_value_error


def spec(task_id: str, fn: object, *args: object, **extra: object) -> TaskSpec:
    fn_bytes, args_bytes = dumps_call(fn, args, {})
    return TaskSpec(task_id=task_id, fn=fn_bytes, args=args_bytes, **extra)  # type: ignore[arg-type]


def run_worker(batch: Batch, tmp_path: Path, *, via_files: bool = True) -> tuple[Results, str]:
    data = msgspec.msgpack.encode(batch)
    if via_files:
        source, target = tmp_path / "batch.bin", tmp_path / "results.bin"
        source.write_bytes(data)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "asyncexec.worker",
                "run",
                "--input",
                str(source),
                "--output",
                str(target),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert not list(tmp_path.glob(".tmp-*")), "a temporary file was left behind"
        return msgspec.msgpack.decode(target.read_bytes(), type=Results), done.stderr.decode()
    done = subprocess.run(
        [sys.executable, "-m", "asyncexec.worker", "run"],
        input=data,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return msgspec.msgpack.decode(done.stdout, type=Results), done.stderr.decode()


def test_one_shot_batch_through_files(tmp_path: Path) -> None:
    batch = Batch(
        versions=versions(),
        tasks=[
            spec("ok", add, 2, 3),
            spec("raised", raise_value_error, "one-shot boom"),
            spec("timeout", heartbeat, str(tmp_path / "beat"), time_limit=0.5),
            spec("output", print_both, "shot", capture_output=True),
        ],
    )
    results, _ = run_worker(batch, tmp_path)
    outcomes = {outcome.task_id: outcome for outcome in results.outcomes}
    assert outcomes["ok"].status == "ok" and loads(outcomes["ok"].value or b"") == 5
    raised = outcomes["raised"]
    assert raised.status == "raised" and raised.error is not None
    assert raised.error.type_name == "ValueError" and "one-shot boom" in raised.error.traceback
    assert outcomes["timeout"].status == "timeout"
    assert "out:shot" in outcomes["output"].stdout and "err:shot" in outcomes["output"].stderr
    assert all(outcome.host and outcome.pid for outcome in results.outcomes)


def test_one_shot_stdout_mode_keeps_prints_out_of_the_results(tmp_path: Path) -> None:
    batch = Batch(versions=versions(), tasks=[spec("printer", print_both, "mixed")])
    results, stderr = run_worker(batch, tmp_path, via_files=False)
    assert results.outcomes[0].status == "ok"
    assert "out:mixed" in stderr  # the task's stdout went to stderr, not into the results


def test_one_shot_refuses_a_version_mismatch(tmp_path: Path) -> None:
    current = versions()
    other = Versions(python="2.7", cloudpickle=current.cloudpickle, asyncexec=current.asyncexec)
    results, _ = run_worker(Batch(versions=other, tasks=[spec("x", add, 1, 1)]), tmp_path)
    [outcome] = results.outcomes
    assert outcome.status == "refused"
    assert outcome.error is not None and "python 2.7 on the driver" in outcome.error.message


def test_one_shot_reports_an_unloadable_task(tmp_path: Path) -> None:
    broken = TaskSpec(task_id="broken", fn=b"not a pickle", args=dumps(((), {})))
    results, _ = run_worker(Batch(versions=versions(), tasks=[broken]), tmp_path)
    assert results.outcomes[0].status == "unpicklable"


def test_version_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncexec.worker", "version"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    current = versions()
    assert done.stdout.decode().split() == [
        "python",
        current.python,
        "cloudpickle",
        current.cloudpickle,
        "asyncexec",
        current.asyncexec,
    ]
    via_cli = subprocess.run(
        [sys.executable, "-m", "asyncexec", "worker", "version"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert via_cli.stdout == done.stdout


class SlowToPickle:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        import time

        time.sleep(1.0)
        return (int, (7,))


def returns_slow_to_pickle() -> SlowToPickle:
    import time

    time.sleep(0.6)
    return SlowToPickle()


def test_one_shot_time_limit_stops_at_the_function(tmp_path: Path) -> None:
    # The function returns within its 1 s limit; pickling its result takes longer.
    batch = Batch(
        versions=versions(),
        tasks=[spec("quick", add, 1, 2), spec("slow", returns_slow_to_pickle, time_limit=1.0)],
    )
    results, _ = run_worker(batch, tmp_path)
    assert [(o.task_id, o.status) for o in results.outcomes] == [("quick", "ok"), ("slow", "ok")]
