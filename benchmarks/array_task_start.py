"""What one Slurm array task costs to start: asyncexec's runner against a hand-written one.

Every array task is a fresh interpreter, so what it imports before its first
task is paid once per array task, hundreds of times an array, on the cluster's
CPUs. This measures, outside Slurm (the scheduler's own cost is the same for
every way), the wall time of one array task's process running 10 trivial tasks
(``x + 1``), each way alternating with the others, median of ``--repeats``:

* ``python -c pass``: the interpreter alone, the floor;
* by hand: ``python -c`` reading 10 inputs from JSON and writing 10 outputs as JSON
  (what ``benchmarks/slurm.py``'s hand-written array runs);
* asyncexec: the one-shot runner exactly as a job script starts it (``BOOT``), on a
  batch file made by the Slurm launcher, the function sent by value;
* the pool worker's start (``python -m asyncexec.worker version``), for reference:
  its imports (msgspec, argparse, the package; cloudpickle too before commit
  baba60b) are about what array tasks paid before the runner existed.

``--python`` picks the interpreter (by default this one; give the cluster venv's to
measure what the nodes run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asyncexec._codec import dumps_call
from asyncexec._messages import TaskSpec
from asyncexec._runtime import BOOT, MODULE_FILE
from asyncexec.launchers.slurm import _RUNNER_SOURCE, batch_file, read_outcome

TASKS = 10


def add_one(x: int) -> int:
    return x + 1


def prepare(root: Path) -> dict[str, list[str]]:
    """The array task's directory and the command of each way."""
    for sub in ("in", "out", "cancel"):
        (root / sub).mkdir(parents=True)
    (root / MODULE_FILE).write_bytes(_RUNNER_SOURCE)
    tasks = []
    for i in range(TASKS):
        fn, args, _ = dumps_call(add_one, (i,), {})  # __main__'s function: sent by value
        tasks.append(TaskSpec(task_id=f"t{i}", fn=fn, args=args, capture_output=True))
    (root / "in" / "0.bin").write_bytes(batch_file(tasks))
    (root / "in" / "0.json").write_text(json.dumps(list(range(TASKS))))
    hand = (
        f"import json; xs = json.load(open({str(root / 'in' / '0.json')!r})); "
        f"json.dump([x + 1 for x in xs], open({str(root / 'out' / '0.json')!r}, 'w'))"
    )
    return {
        "python -c pass": ["-c", "pass"],
        "by hand (json)": ["-c", hand],
        "asyncexec runner": [
            "-c",
            BOOT,
            str(root),
            str(root / "in" / "0.bin"),
            str(root / "out"),
            str(root / "cancel"),
        ],
        "pool worker's start": ["-m", "asyncexec.worker", "version"],
    }


def check(root: Path) -> None:
    """Every way did its work: the runner's outcomes hold the right values."""
    import cloudpickle

    values = {}
    for path in (root / "out").glob("t*.bin"):
        outcome = read_outcome(path.read_bytes())
        assert outcome.status == "ok", outcome.error
        values[outcome.task_id] = cloudpickle.loads(outcome.value or b"")
    assert values == {f"t{i}": i + 1 for i in range(TASKS)}, values
    assert json.loads((root / "out" / "0.json").read_text()) == [i + 1 for i in range(TASKS)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the nodes' interpreter")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="2 repeats: the harness only")
    options = parser.parse_args()
    repeats = 2 if options.smoke else options.repeats
    # Bytecode is cached as on a cluster (unless the user's environment says otherwise).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    root = Path(tempfile.mkdtemp(prefix="asyncexec-start-"))
    try:
        ways = prepare(root)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for repeat in range(repeats):
            order = list(ways)[repeat % len(ways) :] + list(ways)[: repeat % len(ways)]
            for name in order:
                started = time.perf_counter()
                subprocess.run(
                    [options.python, *ways[name]],
                    check=True,
                    env=env,
                    cwd=root,
                    stdout=subprocess.DEVNULL,
                )
                times[name].append(time.perf_counter() - started)
        check(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    version = subprocess.run(
        [options.python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    hand = statistics.median(times["by hand (json)"])
    print(f"## Array task start: {TASKS} trivial tasks in one process, median of {repeats}\n")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {version} ({options.python}), "
        f"load average {os.getloadavg()[0]:.1f} after\n"
    )
    print("| way | median (ms) | min (ms) | x by hand |")
    print("|---|---:|---:|---:|")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(
            f"| {name} | {median * 1000:.1f} | {min(measured) * 1000:.1f} | {median / hand:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
