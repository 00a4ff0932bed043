"""A 100,000-run experiment as index-addressed arrays on the test cluster.

``Experiment(asyncexec.testing.add, {"x": range(N / 2), "y": [0, 1]})`` run by
``Experiment.run`` on a ``SlurmExecutor`` over SSH (the project's single-node
cluster, ``scripts/slurm-up.sh``): as indexed arrays (one payload per array,
each array task works out its runs from its index and appends their outcomes to
one file), the default for 5,000 runs or more (``indexed=True`` below that).
Measured, in this one driver process:

* ``sbatch`` calls (the launcher's counters) and the arrays sacct knows by the
  run's job name;
* files per array task on the cluster (``out/`` and ``log/`` of each array's
  directory, kept for the count, then removed);
* time to the first ``sbatch``, from the process's start and from the call of
  ``Experiment.run`` (the log record of the submission);
* the driver's peak RSS (``ru_maxrss``);
* the run detached (``detach=True``, as ``asyncexec run --detach``; its arrays
  submitted held, so that they do not load this one-node cluster's cores while
  detach and status are timed, and released after), then
  ``asyncexec status DIR`` (a fresh process, asking ``squeue`` once for the
  runs left running), then a new driver following them to the end (as
  ``asyncexec attach``), and ``status`` once more;
* the total time, and the scheduler's and read commands.

    python benchmarks/indexed.py                  # 100,000 runs
    python benchmarks/indexed.py --runs 2000      # smaller (CI: --smoke)

The report (Markdown) goes to stdout, progress to stderr. Exit status: 0, 1 when
the experiment did not complete with every value right.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from asyncexec import SlurmConfig, SlurmExecutor, SSHShell
from asyncexec.config import save_config
from asyncexec.experiment import Experiment, ResultsStore
from asyncexec.testing import add

CLUSTER_DIR = Path(os.environ.get("ASYNCEXEC_CLUSTER_DIR", "/var/tmp/asyncexec-cluster"))


class Submissions(logging.Handler):
    """When the indexed arrays were submitted (their log records)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "as indexed array" in record.getMessage():
            self.times.append(time.monotonic())


def status_seconds(directory: str) -> float:
    """Wall time of ``asyncexec status DIR`` in a fresh process."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "asyncexec", "status", directory],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"asyncexec status failed: {done.stderr}")
    return elapsed


def release_held(name: str) -> None:
    """``scontrol release`` the arrays of the job called ``name``."""
    arrays = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%F"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["scontrol", "release", *sorted(set(arrays))], check=True)


def files_per_task(staging: str) -> tuple[int, float, int]:
    """Array tasks, files per array task under out/ and log/, other files per array."""
    tasks = files = other = 0
    for name in os.listdir(staging):
        workdir = os.path.join(staging, name)
        out = len(os.listdir(os.path.join(workdir, "out")))
        tasks += out
        files += out + len(os.listdir(os.path.join(workdir, "log")))
        for _, _dirs, names in os.walk(workdir):
            other += len(names)
        other -= out + len(os.listdir(os.path.join(workdir, "log")))
    return tasks, files / max(1, tasks), other


async def main(args: argparse.Namespace) -> int:
    process_started = psutil.Process().create_time()
    cluster = json.loads((CLUSTER_DIR / "cluster.json").read_text())
    python = cluster["pythons"][f"{sys.version_info[0]}.{sys.version_info[1]}"]
    name = f"ae-bench-indexed-{os.getpid()}"
    staging = f"{cluster['home']}/.asyncexec/{name}"
    directory = args.dir or f"/tmp/{name}"  # absolute (asyncexec status reads it)
    shutil.rmtree(directory, ignore_errors=True)
    submissions = Submissions()
    logger = logging.getLogger("asyncexec")
    logger.addHandler(submissions)
    logger.setLevel(logging.DEBUG)
    shell = SSHShell(
        cluster["host"],
        port=cluster["port"],
        username=cluster["user"],
        connect_options={
            "client_keys": [cluster["client_key"]],
            "known_hosts": cluster["known_hosts"],
        },
    )
    config = SlurmConfig(python=python, job_name=name, max_poll_interval=2.0)
    # The arrays are submitted held: on this one-node cluster, running them would load
    # the driver's own two cores while detach and status are timed (a real cluster
    # runs them elsewhere); they are released once status has been asked.
    held = SlurmConfig(
        python=python, job_name=name, max_poll_interval=2.0, extra_sbatch=("--hold",)
    )
    half = args.runs // 2
    built = time.monotonic()
    experiment = Experiment(add, {"x": range(half), "y": [0, 1]})
    # Detached as `asyncexec run --detach` does: submitted, the JobRefs stored, the
    # executor recorded (for `asyncexec status` and `attach`); then followed to the end.
    async with SlurmExecutor(shell, held, staging_dir=staging, keep_staging=True) as ex:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        save_config(directory, ex.to_dict())
        called = time.monotonic()
        detached = await experiment.run(
            ex,
            directory,
            progress=False,
            indexed=True if args.runs < 5000 else None,  # the default from 5,000 runs on
            runs_per_task=args.runs_per_task,
            detach=True,
        )
        calls = dict(ex.slurm.calls)
    submitted = time.monotonic()
    detach_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mid_status = status_seconds(directory)  # with the backend's one query
    release_held(name)
    async with SlurmExecutor(shell, config, staging_dir=staging, keep_staging=True) as ex:
        summary = await experiment.run(
            ex, directory, progress=False, runs_per_task=args.runs_per_task
        )
        ended = time.monotonic()
        for command, count in ex.slurm.calls.items():
            calls[command] = calls.get(command, 0) + count
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    end_status = status_seconds(directory)
    tasks, per_task, other = files_per_task(staging)
    shutil.rmtree(staging, ignore_errors=True)
    with ResultsStore(directory, create=False) as store:
        wrong = [
            row
            for row in store.iter_rows()
            if row["status"] != "done" or row["value"] != row["params"]["x"] + row["params"]["y"]
        ]
    first = submissions.times[0] if submissions.times else float("nan")
    monotonic_at_start = time.monotonic() - (time.time() - process_started)
    print(f"## indexed: {args.runs:,} runs of `asyncexec.testing.add` on the test cluster\n")
    print(
        f"- machine: {platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
    )
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"- complete: {summary.complete} ({summary.done:,} done, {len(wrong)} wrong or missing)\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| `sbatch` calls | {calls.get('sbatch', 0)} |")
    print(f"| array tasks | {tasks:,} ({len(experiment.runs) / max(1, tasks):.0f} runs each) |")
    print(f"| files per array task on the cluster (out/ + log/) | {per_task:.2f} |")
    print(f"| other files, all arrays (payload, job script, runtime, ids, bytecode) | {other} |")
    print(f"| first `sbatch`, from the process's start | {first - monotonic_at_start:.2f} s |")
    print(f"| first `sbatch`, from building the experiment | {first - built:.2f} s |")
    print(f"| first `sbatch`, from `Experiment.run` | {first - called:.2f} s |")
    print(f"| peak RSS of the driver that submitted and detached | {detach_mb:.0f} MB |")
    print(f"| peak RSS at the end (the following driver too, same process) | {peak_mb:.0f} MB |")
    print(f"| runs left running when the driver detached | {detached.detached:,} |")
    print(f"| detach (`Experiment.run(detach=True)`) | {submitted - called:.1f} s |")
    print(f"| `asyncexec status DIR` of the detached runs (asks `squeue`) | {mid_status:.2f} s |")
    print(f"| `asyncexec status DIR`, at the end | {end_status:.2f} s |")
    print(f"| total (detach, then a new driver follows to the end) | {ended - called:.1f} s |")
    print(
        f"| scheduler and read commands | squeue {calls.get('squeue', 0)}, "
        f"sacct {calls.get('sacct', 0)}, read {calls.get('read', 0)} |"
    )
    return 0 if summary.complete and not wrong else 1


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--runs-per-task", type=int, default=None)
    parser.add_argument("--dir", default=None, help="an absolute experiment directory")
    parser.add_argument("--smoke", action="store_true", help="2,000 runs: the harness only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs = 2000
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
