"""The asyncexec command, run as users run it: in a subprocess."""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from asyncexec.experiment import ResultsStore

EXPERIMENT = """
import os, time
from asyncexec.experiment import Experiment

def slow_square(x: int, log: str, seconds: float) -> int:
    with open(log, "a") as out:
        out.write(f"start {x}\\n")
    time.sleep(seconds)
    with open(log, "a") as out:
        out.write(f"end {x}\\n")
    return x * x

def flaky(x: int) -> int:
    if x == 2:
        raise RuntimeError("two fails")
    return x

LOG = os.environ["AE_TEST_LOG"]
SECONDS = float(os.environ.get("AE_TEST_SECONDS", "0.3"))
squares = Experiment(slow_square, {"x": list(range(12)), "log": [LOG], "seconds": [SECONDS]})
flakes = Experiment(flaky, {"x": [1, 2, 3]})
"""


@pytest.fixture
def experiment_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT)
    return path


def asyncexec(
    *args: str, log: Path, seconds: float = 0.3, **kwargs: object
) -> subprocess.Popen[str]:
    env = {**os.environ, "AE_TEST_LOG": str(log), "AE_TEST_SECONDS": str(seconds)}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen(  # type: ignore[no-any-return,call-overload]
        [sys.executable, "-m", "asyncexec", *args],
        env=env,
        text=True,
        **streams,
    )


def test_the_console_script_and_python_m_run_the_same_command() -> None:
    """The ``asyncexec`` script pyproject declares is ``asyncexec.cli:main``, as
    ``python -m asyncexec`` is."""
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="asyncexec")
    assert script.value == "asyncexec.cli:main"
    entry = f"import sys; from {script.module} import {script.attr}; sys.exit({script.attr}())"
    outputs = [
        subprocess.run(
            [sys.executable, *how, "--version"], capture_output=True, text=True, check=True
        ).stdout
        for how in (["-c", entry], ["-m", "asyncexec"])
    ]
    assert outputs[0] == outputs[1] and outputs[0].startswith("asyncexec ")


def run_squares(
    experiment_file: Path,
    directory: Path,
    log: Path,
    seconds: float,
    *extra: str,
    **streams: object,
) -> subprocess.Popen[str]:
    """``asyncexec run`` of the squares experiment on 2 workers, each run ``seconds`` long
    (``extra``: more options)."""
    return asyncexec(
        "run",
        f"{experiment_file}:squares",
        "--dir",
        str(directory),
        "--workers",
        "2",
        *extra,
        log=log,
        seconds=seconds,
        **streams,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for_lines(log: Path, word: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            log.exists()
            and sum(line.startswith(word) for line in log.read_text().splitlines()) >= count
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw {count} {word!r} lines in {log}")


def wait_for_done_rows(directory: Path, count: int, timeout: float = 60) -> None:
    """Wait until the experiment store in ``directory`` holds ``count`` finished runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (directory / "results.sqlite").exists():
            with ResultsStore(directory, create=False) as store:
                if len(store.rows(status="done")) >= count:
                    return
        time.sleep(0.05)
    raise AssertionError(f"never saw {count} finished runs in {directory}")


def test_run_status_results_and_continue(experiment_file: Path, tmp_path: Path) -> None:
    log, directory = tmp_path / "log", tmp_path / "runs"
    code, out, err = finish(run_squares(experiment_file, directory, log, 0.0))
    assert code == 0, err
    assert "12 done, 0 failed of 12 runs" in out
    assert "value (median)" in out  # the summary table
    assert "[slow_square] 12/12 finished" in err  # plain progress lines when not a terminal

    code, out, err = finish(
        asyncexec("run", f"{experiment_file}:squares", "--dir", str(directory), log=log)
    )
    assert code == 2 and "--continue" in err

    code, out, _ = finish(
        asyncexec(
            "run",
            f"{experiment_file}:squares",
            "--dir",
            str(directory),
            "--continue",
            log=log,
            seconds=0.0,
        )
    )
    assert code == 0 and "12 done, 0 failed of 12 runs (0 run now" in out

    code, out, _ = finish(asyncexec("status", str(directory), log=log))
    assert code == 0 and "12 done" in out and "factor" in out

    code, out, _ = finish(asyncexec("results", str(directory), "--format", "json", log=log))
    assert sorted(row["value"] for row in json.loads(out)) == sorted(x * x for x in range(12))
    code, out, _ = finish(asyncexec("results", str(directory), "--format", "csv", log=log))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12 and {row["status"] for row in rows} == {"done"}
    code, out, _ = finish(asyncexec("results", str(directory), log=log))
    assert code == 0 and "value / error" in out


def test_failures_give_status_one(experiment_file: Path, tmp_path: Path) -> None:
    code, out, _ = finish(
        asyncexec(
            "run",
            f"{experiment_file}:flakes",
            "--dir",
            str(tmp_path / "r"),
            "--backend",
            "thread",
            log=tmp_path / "log",
        )
    )
    assert code == 1 and "2 done, 1 failed" in out


def test_bad_targets_and_directories(experiment_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    for target in ("nocolon", f"{experiment_file}:missing", "no_such_module_ae:x"):
        code, _, err = finish(asyncexec("run", target, "--dir", str(tmp_path / "d"), log=log))
        assert code == 2 and err.startswith("asyncexec: "), err
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data.csv").write_text("precious")
    code, _, err = finish(
        asyncexec("run", f"{experiment_file}:flakes", "--dir", str(tmp_path / "theirs"), log=log)
    )
    assert code == 2 and "not an asyncexec experiment directory" in err
    assert (tmp_path / "theirs" / "data.csv").read_text() == "precious"
    code, _, err = finish(asyncexec("status", str(tmp_path / "nowhere"), log=log))
    assert code == 2


def test_driver_killed_then_resumed_loses_nothing_and_repeats_nothing_finished(
    experiment_file: Path, tmp_path: Path
) -> None:
    log, directory = tmp_path / "log", tmp_path / "runs"
    driver = run_squares(experiment_file, directory, log, 0.5)
    try:
        wait_for_lines(log, "end", 4)
        wait_for_done_rows(directory, 1)  # the driver recorded some of what ended
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    with ResultsStore(directory, create=False) as store:
        finished_before = {row["params"]["x"] for row in store.rows(status="done")}
    assert finished_before, "nothing was recorded before the kill"

    code, _out, err = finish(run_squares(experiment_file, directory, log, 0.5, "--continue"))
    assert code == 0, err
    with ResultsStore(directory, create=False) as store:
        rows = store.rows()
    assert sorted(row["params"]["x"] for row in rows if row["status"] == "done") == list(range(12))
    starts = [
        int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start")
    ]
    for x in finished_before:
        assert starts.count(x) == 1, f"run {x} was finished before the kill but ran again"


@pytest.mark.parametrize("how", ["sigint", "cancel-command"])
def test_interrupting_a_run_stops_it_cleanly(
    experiment_file: Path, tmp_path: Path, how: str
) -> None:
    log, directory = tmp_path / "log", tmp_path / "runs"
    driver = run_squares(experiment_file, directory, log, 30)
    wait_for_lines(log, "start", 2)
    # The dispatch window (2 x 2 workers) fills while the first two run: wait until all
    # four are recorded as submitted, or one may still be in the dispatcher's hands
    # (then it goes back to pending rather than cancelled).
    deadline = time.monotonic() + 30
    while True:
        with ResultsStore(directory, create=False) as store:
            if store.counts()["running"] == 4:
                break
        assert time.monotonic() < deadline, "the dispatch window never filled"
        time.sleep(0.05)
    if how == "sigint":
        driver.send_signal(signal.SIGINT)
    else:
        code, out, _ = finish(asyncexec("cancel", str(directory), log=log))
        assert code == 0 and "cancel requested" in out
    code, _, err = finish(driver, timeout=60)
    assert code == 130, err
    lines = [line for line in err.splitlines() if not line.startswith("[slow_square]")]
    stopped = [f"asyncexec: SIGINT: {STOPPING}"] if how == "sigint" else []
    assert lines == [
        *stopped,
        "asyncexec: slow_square: interrupted with 0 done and 0 failed of 12 runs; "
        "run it again with --continue to finish",
    ], err
    with ResultsStore(directory, create=False) as store:
        counts = store.counts()
    # The two running and the two queued in the dispatch window were cancelled.
    assert counts["running"] == 0 and counts["cancelled"] == 4, counts
    assert counts["cancelled"] + counts["pending"] == 12


@pytest.mark.parametrize("resume", [False, True])
def test_deleted_results_run_everything_again(
    experiment_file: Path, tmp_path: Path, resume: bool
) -> None:
    """Deleting results.sqlite to start over runs everything again (with the store the
    truth about who runs what too, nothing else remembers them done)."""
    log, directory = tmp_path / "log", tmp_path / "runs"
    run = ("run", f"{experiment_file}:squares", "--dir", str(directory), "--backend", "thread")
    code, _, err = finish(asyncexec(*run, log=log, seconds=0.0), timeout=60)
    assert code == 0, err
    for suffix in ("", "-wal", "-shm"):
        Path(f"{directory / 'results.sqlite'}{suffix}").unlink(missing_ok=True)
    again = (*run, "--continue") if resume else run
    code, out, err = finish(asyncexec(*again, log=log, seconds=0.0), timeout=60)
    assert code == 0, err
    assert "12 done, 0 failed of 12 runs (12 run now" in out
    assert len([line for line in log.read_text().splitlines() if line.startswith("end")]) == 24


def one_error(code: int, err: str, expected: int, *words: str) -> None:
    assert code == expected, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("asyncexec: ")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--lease", "-5"), ("--lease",)),
        (("--lease", "nan"), ("--lease",)),
        (("--dir", "/etc/passwd"), ("/etc/passwd", "not a directory")),
        (("--dir", "/proc/nope"), ("/proc/nope", "cannot make")),
    ],
)
def test_bad_options_are_one_line_and_status_two(
    experiment_file: Path, tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    argv = ["run", f"{experiment_file}:flakes", "--backend", "thread", *args]
    if "--dir" not in args:
        argv += ["--dir", str(tmp_path / "d")]
    code, _, err = finish(asyncexec(*argv, log=tmp_path / "log"), timeout=60)
    one_error(code, err, 2, *words)
    code, _, err = finish(asyncexec(*argv, "--debug", log=tmp_path / "log"), timeout=60)
    assert code == 2 and "Traceback" in err, err
    assert not (tmp_path / "d").exists() or "--lease" in args


def test_status_of_a_file_is_one_line(tmp_path: Path) -> None:
    code, _, err = finish(asyncexec("status", "/etc/passwd", log=tmp_path / "log"), timeout=60)
    one_error(code, err, 2, "not a directory", "/etc/passwd")


def test_a_damaged_page_is_one_line_and_status_two(experiment_file: Path, tmp_path: Path) -> None:
    log, directory = tmp_path / "log", tmp_path / "runs"
    run = ("run", f"{experiment_file}:squares", "--dir", str(directory), "--backend", "thread")
    code, _, err = finish(asyncexec(*run, log=log, seconds=0.0), timeout=60)
    assert code == 0, err
    path = directory / "results.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:  # many pages, checkpointed
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    assert pages >= 3
    for page in range(1, pages):  # every page header but the first: the tables' b-trees
        data[page * 4096 : page * 4096 + 12] = b"\xde\xad\xbe\xef" * 3
    path.write_bytes(bytes(data))
    for argv in (("status", str(directory)), ("results", str(directory)), (*run, "--continue")):
        code, _, err = finish(asyncexec(*argv, log=log, seconds=0.0), timeout=60)
        one_error(code, err, 2, "damaged")
    code, _, err = finish(asyncexec("status", str(directory), log=log), timeout=60)
    env_debug = subprocess.run(
        [sys.executable, "-m", "asyncexec", "status", str(directory)],
        env={**os.environ, "ASYNCEXEC_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_debug.returncode == 2 and "Traceback" in env_debug.stderr


@pytest.mark.skipif(
    (not hasattr(os, "geteuid") or os.geteuid() != 0) and os.environ.get("CI") != "true",
    reason="mounts a tmpfs: root only (in CI this runs, and fails without it)",
)
def test_a_full_disk_is_one_line_and_status_three(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)]).returncode:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs a tmpfs mounted for the full-disk case")
        pytest.skip("cannot mount a tmpfs here")
    try:
        script = tmp_path / "big.py"
        script.write_text(
            "from asyncexec.experiment import Experiment\n"
            "def big(x: int) -> str:\n"
            "    return 'v' * 100_000 + str(x)\n"
            "bigs = Experiment(big, {'x': list(range(40))})\n"
        )
        argv = ("run", f"{script}:bigs", "--dir", str(mount / "d"), "--backend", "thread")
        code, _, err = finish(asyncexec(*argv, log=tmp_path / "log"), timeout=120)
        one_error(code, err, 3, "full")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


STOPPING = "stopping, cancelling running tasks (again to exit at once)"


def wait_for_stderr(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"never saw {text!r} on stderr: {path.read_text()}"
        time.sleep(0.02)


@pytest.mark.parametrize("debug", [False, True])
def test_a_second_ctrl_c_exits_at_once_with_one_line(
    experiment_file: Path, tmp_path: Path, debug: bool
) -> None:
    log, directory, stderr = tmp_path / "log", tmp_path / "runs", tmp_path / "stderr"
    with stderr.open("w") as err_file:
        driver = run_squares(
            experiment_file,
            directory,
            log,
            30,
            "--no-progress",
            *(["--debug"] if debug else []),
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    wait_for_lines(log, "start", 2)
    workers = psutil.Process(driver.pid).children(recursive=True)
    assert len(workers) >= 2, workers
    # Another process holds the results' write lock: the runner's stop, which records
    # the cancelled runs, takes as long as it holds it. Meanwhile a second Ctrl-C comes.
    holder = sqlite3.connect(directory / "results.sqlite", timeout=60, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        driver.send_signal(signal.SIGINT)
        wait_for_stderr(stderr, STOPPING)  # the first was received
        driver.send_signal(signal.SIGINT)
        code = driver.wait(timeout=60)
    finally:
        holder.close()
    lines = stderr.read_text().splitlines()
    assert code == 130, lines
    expected = [
        f"asyncexec: SIGINT: {STOPPING}",
        "asyncexec: SIGINT again: exiting now; `asyncexec run --continue` takes up what was left",
    ]
    if debug:  # where it was when told to stop: every thread's stack, then the line
        assert lines[0] == expected[0] and lines[-1] == expected[1], lines
        assert any(line.startswith("Thread 0x") for line in lines), lines
    else:
        assert lines == expected
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], alive  # the workers died with the runner
    code, _, err = finish(
        run_squares(experiment_file, directory, log, 0.0, "--continue"), timeout=120
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["run"], ["run: ", "required: target", "`asyncexec run --help`"]),
        (["run", "x.py:y", "--workers", "two"], ["run: ", "--workers", "'two'"]),
        (["bogus"], ["invalid choice: 'bogus'", "`asyncexec --help`"]),
        (["docker", "prune"], ["docker prune: ", "--executor --all"]),
        ([], ["required: command"]),
    ],
)
def test_a_usage_error_is_one_line_and_status_2(
    tmp_path: Path, argv: list[str], words: list[str]
) -> None:
    code, out, err = finish(asyncexec(*argv, log=tmp_path / "log"))
    assert code == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncexec: "), err
    for word in words:
        assert word in lines[0], err
