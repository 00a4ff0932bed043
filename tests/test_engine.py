"""Engine: execo_engine's experiment lifecycle, in this process and as real scripts.

The ParamSweeper loop of execo's user guide (its "putting it all together"
engine, ``g5k_tcp_congestion``, with the Grid'5000 reservation and iperf replaced
by a local measurement) runs as a script, is killed, and is continued with
``-c DIR``; the same script runs under execo_engine itself (installed with the
test dependencies, only ever imported in subprocesses: see test_sweep.py) with
``from execo_engine import *`` as its only different line.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncexec.experiment
from asyncexec.experiment import Engine, copy_outputs, logger
from asyncexec.sweep import igeom, sweep

# -- the lifecycle, in this process ---------------------------------------------------


@pytest.fixture(autouse=True)
def engine_logging() -> Iterator[None]:
    """Leave the engine's logger and the package's handlers as they were."""
    package = logging.getLogger("asyncexec")
    level, handlers = logger.level, list(package.handlers)
    yield
    logger.setLevel(level)
    package.handlers[:] = handlers


class Recording(Engine):
    """Records the calls of its hierarchy's ``init`` and ``run``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def init(self) -> None:
        self.calls.append("Recording.init")

    def run(self) -> None:
        self.calls.append("Recording.run")


class Middle(Recording):
    def init(self) -> None:
        # What a generic engine prepared is there, and so is the command line.
        assert self.args is not None and self.result_dir is not None
        self.calls.append("Middle.init")


class Mixin:
    """Not an Engine: execo calls only the methods of Engine classes."""

    def run(self) -> None:
        raise AssertionError("a mixin's run is not the engine's")


class Leaf(Mixin, Middle):
    def init(self) -> None:
        self.calls.append("Leaf.init")

    def run(self) -> None:
        self.calls.append("Leaf.run")


def test_init_then_run_of_every_engine_class_once_ancestors_first(tmp_path: Path) -> None:
    engine = Leaf()
    engine.start(["-c", str(tmp_path / "out")])
    assert engine.calls == [
        "Recording.init",
        "Middle.init",
        "Leaf.init",
        "Recording.run",
        "Leaf.run",
    ]


def test_nothing_is_set_before_start() -> None:
    engine = Recording()
    assert engine.args is None
    assert engine.run_name is None
    assert engine.result_dir is None
    assert engine.engine_dir == str(Path(__file__).resolve().parent)
    assert isinstance(engine.args_parser, argparse.ArgumentParser)


def test_default_run_name_and_result_dir_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = Recording()
    engine.start([])
    assert re.fullmatch(r"Recording_\d{8}_\d{6}_[+-]\d{4}", engine.run_name)
    assert engine.result_dir == str(tmp_path / engine.run_name)
    assert (tmp_path / engine.run_name).is_dir()
    assert engine.calls == ["Recording.init", "Recording.run"]


class Named(Recording):
    """Overrides where its runs go; ``-c`` takes precedence over setup_result_dir."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.args_parser.add_argument("--size", type=int, default=3)
        self.args_parser.add_argument("inputs", nargs="*")

    def setup_run_name(self) -> None:
        self.run_name = f"size-{self.args.size}"

    def setup_result_dir(self) -> None:
        self.calls.append("setup_result_dir")
        self.result_dir = str(self.root / "runs" / self.run_name)


def test_own_options_arguments_run_name_and_result_dir(tmp_path: Path) -> None:
    engine = Named(tmp_path)
    engine.start(["--size", "5", "a", "b"])
    assert (engine.args.size, engine.args.inputs) == (5, ["a", "b"])
    assert engine.run_name == "size-5"
    assert engine.result_dir == str(tmp_path / "runs" / "size-5")
    assert (tmp_path / "runs" / "size-5").is_dir()
    assert engine.calls == ["setup_result_dir", "Recording.init", "Recording.run"]
    # execo's own options are in args too, under execo's names.
    assert vars(engine.args) | {"size": 5, "inputs": ["a", "b"]} == {
        "log_level": None,
        "output_mode": False,
        "merge_outputs": False,
        "use_dir": None,
        "size": 5,
        "inputs": ["a", "b"],
    }


def test_continue_dir_is_used_instead_of_setup_result_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results").write_text("kept\n")
    engine = Named(tmp_path)
    engine.start(["-c", "old"])
    assert engine.result_dir == str(tmp_path / "old")  # made absolute
    assert engine.calls == ["Recording.init", "Recording.run"]
    assert (tmp_path / "old" / "results").read_text() == "kept\n"


@pytest.mark.parametrize(
    ("given", "level"), [("10", logging.DEBUG), ("warning", logging.WARNING), ("5", 5)]
)
def test_log_level_by_number_or_name(tmp_path: Path, given: str, level: int) -> None:
    Recording().start(["-l", given, "-c", str(tmp_path)])
    assert logger.level == level


def test_a_wrong_option_is_argparse_s_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = Recording()
    with pytest.raises(SystemExit) as raised:
        engine.start(["-l", "loud", "-c", str(tmp_path / "never")])
    assert raised.value.code == 2
    assert "'loud' is not a log level" in capsys.readouterr().err
    assert engine.calls == []
    assert not (tmp_path / "never").exists()


def test_every_name_execo_engine_exports_is_in_asyncexec_experiment() -> None:
    """``from execo_engine import *`` -> ``from asyncexec.experiment import *``.

    execo_engine's ``__init__.py`` is read, not imported.
    """
    spec = importlib.util.find_spec("execo_engine")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    exported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {"Engine", "ParamSweeper", "sweep", "logger", "redirect_outputs"} <= exported
    assert exported <= set(asyncexec.experiment.__all__)
    assert asyncexec.experiment.__all__ == sorted(asyncexec.experiment.__all__)
    for name in asyncexec.experiment.__all__:
        assert hasattr(asyncexec.experiment, name), name


# -- execo's user guide example, as a script ------------------------------------------

#: The engine of execo's user guide ("Using execo_engine for experiment
#: development", g5k_tcp_congestion.py): its parameters, its ParamSweeper in the
#: result directory, its results appended to a file there. Grid'5000 and iperf are
#: replaced by a child process (what iperf prints lands where the engine's outputs
#: go) and a computed bandwidth; ``--crash-after N`` kills the engine (SIGKILL)
#: after N combinations. The first line is the only one a port changes.
SCRIPT = """\
{imports}
import json, os, signal, subprocess, sys


class g5k_tcp_congestion(Engine):

    def __init__(self):
        super().__init__()
        self.args_parser.add_argument("--crash-after", type=int, default=0)

    def run(self):
        result_file = self.result_dir + "/results"
        params = {{
            "num_flows": igeom(1, 20, 5),
            "tcp_congestion_control": ["cubic", "reno"],
            "repeat": range(0, 3),
            }}
        combs = sweep(params)
        sweeper = ParamSweeper(self.result_dir + "/sweeper", combs)
        logger.info("experiment plan: %i combinations", len(combs))
        subprocess.run([sys.executable, "-c",
                        "import sys; print('iperf out'); print('iperf err', file=sys.stderr)"],
                       check=True)
        count = 0
        while True:
            comb = sweeper.get_next()
            if not comb:
                break
            factor = 1.0 if comb["tcp_congestion_control"] == "cubic" else 0.9
            bw = factor * 940e6 / comb["num_flows"] * comb["num_flows"] ** 0.5
            with open(result_file, "a") as f:
                f.write(json.dumps({{"params": comb, "bw": bw, "pid": os.getpid()}}) + "\\n")
            logger.info("comb : %s bw = %f" % (comb, bw))
            print("measured", slugify(comb))
            sweeper.done(comb)
            count += 1
            if count == self.args.crash_after:
                os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    engine = g5k_tcp_congestion()
    engine.start()
"""

OURS = "from asyncexec.experiment import *"
EXECO = "from execo_engine import *"
PARAMETERS: dict[str, Any] = {
    "num_flows": igeom(1, 20, 5),
    "tcp_congestion_control": ["cubic", "reno"],
    "repeat": range(0, 3),
}
COMBINATIONS = sweep(PARAMETERS)


def key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(params.items()))


def engine(
    tmp_path: Path, imports: str, *args: str, crash_after: int = 0
) -> subprocess.CompletedProcess[str]:
    """The example run as a script (from ``tmp_path``) with ``args``."""
    script = tmp_path / f"g5k_tcp_congestion_{'execo' if imports == EXECO else 'ours'}.py"
    script.write_text(SCRIPT.format(imports=imports))
    argv = [sys.executable, str(script), *args]
    if crash_after:
        argv += ["--crash-after", str(crash_after)]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    expected = -signal.SIGKILL if crash_after else 0
    assert done.returncode == expected, done
    return done


def results(directory: Path) -> list[dict[str, Any]]:
    lines = (directory / "results").read_text().splitlines()
    return [json.loads(line) for line in lines]


def check_every_combination_ran_once(directory: Path, runs: list[int]) -> list[dict[str, Any]]:
    """Each combination in ``results`` once, by ``len(runs)`` processes doing ``runs``."""
    rows = results(directory)
    assert Counter(key(row["params"]) for row in rows) == Counter(
        key(combination) for combination in COMBINATIONS
    )
    by_process = Counter(row["pid"] for row in rows)
    assert [by_process[pid] for pid in dict.fromkeys(row["pid"] for row in rows)] == runs
    return rows


def test_the_user_guide_engine_killed_and_continued_with_c(tmp_path: Path) -> None:
    """Killed twice, continued twice: every combination ran once, and everything
    every run printed (itself, its logger, its child process) is in the result
    directory, nothing on the terminal."""
    directory = tmp_path / "campaign"
    runs = [
        engine(tmp_path, OURS, "-R", "-c", str(directory), crash_after=7),
        engine(tmp_path, OURS, "-R", "-c", str(directory), crash_after=11),
        engine(tmp_path, OURS, "-R", "-c", str(directory)),
    ]
    check_every_combination_ran_once(directory, [7, 11, 12])
    assert all(run.stdout == run.stderr == "" for run in runs)
    stdout = (directory / "stdout").read_text()
    stderr = (directory / "stderr").read_text()
    assert stdout.count("iperf out") == 3 and stderr.count("iperf err") == 3
    # print() reached the file line by line: a killed run lost none.
    assert stdout.count("measured ") == len(COMBINATIONS)
    assert stdout.count("INFO: comb : ") == len(COMBINATIONS)
    assert stdout.count(f"INFO: result directory: {directory}") == 3


def test_outputs_copied_and_merged_survive_the_kill(tmp_path: Path) -> None:
    """``-L -M``: the terminal and ``stdout+stderr`` both get everything, the last
    lines of a killed engine included; the next run appends."""
    directory = tmp_path / "campaign"
    killed = engine(tmp_path, OURS, "-L", "-M", "-c", str(directory), crash_after=5)
    assert killed.stdout.count("measured ") == 5
    assert "iperf err" in killed.stderr
    merged = (directory / "stdout+stderr").read_text()
    assert merged.count("measured ") == 5
    assert merged.count("iperf out") == merged.count("iperf err") == 1
    engine(tmp_path, OURS, "-L", "-M", "-c", str(directory))
    merged = (directory / "stdout+stderr").read_text()
    assert merged.count("measured ") == len(COMBINATIONS)
    assert merged.count("iperf err") == 2
    check_every_combination_ran_once(directory, [5, len(COMBINATIONS) - 5])


def test_without_c_each_run_has_its_own_directory(tmp_path: Path) -> None:
    engine(tmp_path, OURS)
    (directory,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert re.fullmatch(r"g5k_tcp_congestion_\d{8}_\d{6}_[+-]\d{4}", directory.name)
    check_every_combination_ran_once(directory, [len(COMBINATIONS)])
    assert {path.name for path in directory.iterdir()} == {"results", "sweeper"}


def test_the_same_script_under_execo_engine(tmp_path: Path) -> None:
    """The comparison: execo_engine runs the same script, killed and continued the
    same way, to the same results and the same files of outputs."""
    ours, theirs = tmp_path / "ours", tmp_path / "execo"
    for directory, imports in ((ours, OURS), (theirs, EXECO)):
        engine(tmp_path, imports, "-R", "-c", str(directory), crash_after=7)
        engine(tmp_path, imports, "-R", "-c", str(directory))
    rows = {
        directory: check_every_combination_ran_once(directory, [7, len(COMBINATIONS) - 7])
        for directory in (ours, theirs)
    }
    # (in another order: execo hands combinations out of a set)
    measured = {
        directory: {key(row["params"]): row["bw"] for row in rows[directory]}
        for directory in (ours, theirs)
    }
    assert measured[ours] == measured[theirs]
    for directory in (ours, theirs):
        stdout = (directory / "stdout").read_text()
        assert stdout.count("measured ") == len(COMBINATIONS)
        assert stdout.count(" comb : ") == len(COMBINATIONS)  # the logger's (execo colours it)
        assert (directory / "stderr").read_text().count("iperf err") == 2


def test_an_execo_run_is_continued_by_the_port(tmp_path: Path) -> None:
    """Killed under execo_engine, continued with ``-c DIR`` after the import change:
    what execo finished is not run again."""
    directory = tmp_path / "campaign"
    engine(tmp_path, EXECO, "-c", str(directory), crash_after=9)
    engine(tmp_path, OURS, "-c", str(directory))
    check_every_combination_ran_once(directory, [9, len(COMBINATIONS) - 9])
    assert os.path.isfile(directory / "sweeper" / "done")  # execo's, read and left


def test_copy_outputs_through_a_terminal(tmp_path: Path) -> None:
    """``use_pty``: the engine's stdout and stderr are terminals, copied to the files
    and to the pipes they were before (a terminal ends lines with CR LF)."""
    code = (
        "import os, sys\n"
        "from asyncexec.experiment import copy_outputs\n"
        "copy_outputs(sys.argv[1], sys.argv[2], use_pty=True)\n"
        "print('terminals:', os.isatty(1), os.isatty(2))\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    out, err = tmp_path / "out", tmp_path / "err"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), str(err)],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done
    assert out.read_bytes() == done.stdout == b"terminals: True True\r\n"
    assert err.read_bytes() == done.stderr == b"to stderr\r\n"


def test_a_file_that_cannot_be_opened_changes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "directory"
    stdout_before = os.fstat(1)
    with pytest.raises(FileNotFoundError):
        copy_outputs(str(missing / "stdout"), str(missing / "stderr"))
    assert os.path.samestat(os.fstat(1), stdout_before)
