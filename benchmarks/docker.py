"""Docker: asyncexec's DockerExecutor against a shell loop of ``docker run --rm``, in one run.

Runs ``--tasks`` trivial tasks (default 100; each adds two numbers) three ways,
on the same engine and image, in one run:

* ``docker run loop``: a bash loop of ``docker run --rm --network none IMAGE
  python3 -c ...``, one container after the other: what a hand-written script does;
* ``oneshot``: ``DockerExecutor(IMAGE, n_workers=--concurrency)``, a fresh
  container per task, several at once;
* ``warm``: ``DockerExecutor(IMAGE, n_workers=2, mode="warm")``, two long-lived
  containers (their start is included in the time).

Each figure is the median of ``--repeats`` runs (interleaved); the ratios are
against the loop. The report (Markdown) goes to stdout, progress to stderr.

    python benchmarks/docker.py                     # 100 tasks, 3 repeats
    python benchmarks/docker.py --smoke             # 4 tasks, 1 repeat: the harness only (CI)
    python benchmarks/docker.py --image my-tasks --tasks 200 --concurrency 16

The image defaults to ``asyncexec-test:pyX.Y``, built by ``scripts/docker-up.sh``.
Exit status: 0, 1 when a measurement failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

DEFAULT_IMAGE = "asyncexec-test:py{}.{}".format(*sys.version_info[:2])
WAYS = ("docker run loop", "oneshot", "warm")


def add(x: int, y: int) -> int:
    return x + y


def docker_run_loop(image: str, tasks: int) -> float:
    """Seconds for a bash loop of ``docker run --rm`` doing the same work."""
    script = (
        f'for i in $(seq {tasks}); do docker run --rm --network none "$0" '
        f'python3 -c "import sys; print(int(sys.argv[1]) + 1)" $i >/dev/null || exit 1; done'
    )
    started = time.perf_counter()
    subprocess.run(["bash", "-c", script, image], check=True)
    return time.perf_counter() - started


async def executor_run(image: str, tasks: int, mode: str, workers: int) -> float:
    """Seconds from opening a DockerExecutor to holding every result."""
    from asyncexec import DockerExecutor

    started = time.perf_counter()
    async with DockerExecutor(image, n_workers=workers, mode=mode) as ex:  # type: ignore[arg-type]
        futures = [await ex.submit(add, i, 1) for i in range(tasks)]
        values = await ex.wait(futures)
    elapsed = time.perf_counter() - started
    if values != [i + 1 for i in range(tasks)]:
        raise AssertionError(f"{mode}: wrong results")
    return elapsed


def measure(image: str, tasks: int, way: str, concurrency: int) -> float:
    if way == "docker run loop":
        return docker_run_loop(image, tasks)
    run: Callable[[], Coroutine[Any, Any, float]]
    if way == "oneshot":

        def run() -> Coroutine[Any, Any, float]:
            return executor_run(image, tasks, "oneshot", concurrency)
    else:

        def run() -> Coroutine[Any, Any, float]:
            return executor_run(image, tasks, "warm", 2)

    return asyncio.run(run())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="docker.py", description=__doc__.split("\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--tasks", type=int, help="trivial tasks per run (100; smoke: 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="one-shot containers at once")
    parser.add_argument("--repeats", type=int, help="runs per figure (3; smoke: 1)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run: the harness only")
    options = parser.parse_args(argv)
    tasks = options.tasks or (4 if options.smoke else 100)
    repeats = options.repeats or (1 if options.smoke else 3)
    if tasks < 1 or repeats < 1 or options.concurrency < 1:
        parser.error("--tasks, --repeats and --concurrency must be positive")
    # The image cannot import this file: its functions travel by value.
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for repeat in range(repeats):
        for way in WAYS:
            try:
                seconds = measure(options.image, tasks, way, options.concurrency)
            except Exception as exc:
                print(f"{way} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            times[way].append(seconds)
            print(f"repeat {repeat + 1}/{repeats} {way}: {seconds:.2f} s", file=sys.stderr)

    medians = {way: statistics.median(values) for way, values in times.items()}
    baseline = medians["docker run loop"]
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"## docker: {tasks} trivial tasks, median of {repeats}\n")
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Docker Engine {engine}, image {options.image}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| way | total (s) | tasks/s | x the docker run loop |")
    print("|---|---:|---:|---:|")
    labels = {
        "docker run loop": "`docker run --rm` loop",
        "oneshot": f"oneshot, {options.concurrency} at once",
        "warm": "warm, 2 containers",
    }
    for way in WAYS:
        seconds = medians[way]
        print(
            f"| {labels[way]} | {seconds:.2f} | {tasks / seconds:,.1f} | {baseline / seconds:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
