"""The experiment runner at executor speed: ``Experiment.run`` against the raw executor and peers.

    python benchmarks/experiment.py             # the full run (15-20 minutes on 2 cores)
    python benchmarks/experiment.py --smoke     # a tiny run (a minute): checks the harness only
    python benchmarks/experiment.py --only raw,runner --sizes 5000 --repeats 5

Runs per second of one-factor experiments, ``fn(x)`` for ``x`` in ``range(N)``, with
``fn`` a no-op (``noop``) or a 1 ms sleep (``sleep``), on 2 worker processes:

* ``raw``: asyncexec's executor as its docs use it, every run submitted at once, then
  all awaited: ``async with ProcessExecutor(2) as ex:
  await ex.wait([await ex.submit(fn, x) for x in range(N)])`` (no window);
* ``runner``: ``await Experiment(fn, {"x": list(range(N))}).run(ex, DIR,
  progress=False)`` on a fresh directory and a fresh ``ProcessExecutor(2)``;
* ``futures``: ``concurrent.futures.ProcessPoolExecutor(2)``, every run submitted, a
  JSON line appended to one file per result in ``as_completed`` order (by hand);
* ``hydra``: a Hydra app (``@hydra.main``, a config whose launcher is joblib with
  ``n_jobs=2``) run as a command, ``app.py --multirun x=range(0,N) work=...``, each job
  writing ``result.json`` to its output directory; the whole command is timed. Hydra
  composes every job's config in the parent before it launches the first (about
  0.1 s a job here): N is capped by ``--hydra-runs`` (its cells say "on the first K
  runs"), and one measurement serves every size above that;
* ``execo``: execo_engine's ``ParamSweeper`` over ``sweep({"x": range(N)})``, an
  engine loop of ``get_next``, submit to a ``ProcessPoolExecutor(2)`` (4 in flight),
  a JSON line and ``done`` on each completion.

The timed region starts with the first run handed over (for the runner: with
``Experiment(...)``; for execo: with ``sweep`` and ``ParamSweeper(...)``), the pool
started and warm; it ends with the last result recorded (hydra: the command's start
and end). Each measurement is capped by time: ``--time-cap`` (30 s), or 1.5 x the
runs' own sleep over the 2 workers when that is more (75 s for 100,000 ``sleep``
runs), ``--hydra-cap`` for Hydra. A measurement stopped at its cap is reported as
``< N/T (capped at T s: K done, K/T/s)``: a bound on the rate of the whole run and
what was done in the window, never a figure extrapolated from it; a capped cell is
not measured again in the later repeats (they would hit the same cap). Ratios with
a capped side give the bound (``<`` or ``>``) and the ratio of what each did per
second (``in the window``).

``pending`` measures the runner opening an N-run experiment whose runs block (a
fresh ``ProcessExecutor(2)``, started and warm): the seconds from ``Experiment(...)``
to the first run started in a worker (the run writes its ``time.time()``): building
the ``Experiment``, opening its store and sweeper, registering the runs, the first
``get_next`` and submission; and the parent's RSS growth from before ``Experiment(...)``
to one second after that start (and its peak), per run: the parameter list, the
``RunSpec`` objects, the store and the sweeper. ``--pending-cap`` (150 s) bounds it.

Every measurement runs in a fresh process (``experiment.py --one SPEC`` prints one
JSON line); libraries alternate in each repeat (reversed every other repeat); each
figure is the median (min-max) of the repeats. The report (Markdown) goes to
stdout, progress to stderr. Exit status: 0, or 1 when a measurement failed (an
error, a missing peer outside ``--smoke``, a wrong result), 2 for bad arguments.
"""

# asyncexec's and the pools' workers import this module to unpickle the task functions
# (as `experiment.noop`, ...): keep its top level cheap and free of side effects.
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

WORKERS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ("raw", "runner", "futures", "hydra", "execo")
PARTS = (*PEERS, "pending")
WORKLOADS = ("noop", "sleep")
LABELS = {
    "raw": "raw executor",
    "runner": "runner",
    "futures": "futures + JSON lines",
    "hydra": "Hydra joblib",
    "execo": "execo ParamSweeper",
}
# The modules each part needs beyond the standard library and asyncexec.
MODULES = {
    "hydra": ("hydra", "hydra_plugins.hydra_joblib_launcher"),
    "execo": ("execo_engine",),
}
BLOCK_DIR = "ASYNCEXEC_BENCH_BLOCK_DIR"  # where `block` announces itself and waits
GRACE = 90.0  # seconds a measurement's process may take beyond its cap
TARGETS = {"noop": 0.5, "sleep": 0.9}  # runner / raw, issue 21
MEMORY_TARGET = 2048  # bytes per pending run
OPEN_TARGET = 5.0  # seconds to the first run of a 1,000,000-run experiment

HYDRA_APP = """\
import json
import os
import time

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    if cfg.work == "sleep":
        time.sleep(0.001)
    result = cfg.x
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "result.json"), "w") as out:
        json.dump({"x": cfg.x, "result": result}, out)
    return result


if __name__ == "__main__":
    main()
"""
HYDRA_CONFIG = """\
defaults:
  - override hydra/launcher: joblib
  - _self_
x: 0
work: noop
hydra:
  launcher:
    n_jobs: 2
"""


# -- the run functions (top level: every pool's workers import them) -------------------


def noop(x: int) -> int:
    return x


def sleep(x: int) -> int:
    time.sleep(0.001)
    return x


def block(x: int) -> int:
    """Announce the start (its ``time.time()``), then hold the worker until released."""
    directory = os.environ[BLOCK_DIR]
    stamp = os.path.join(directory, f".started-{x}")
    with open(stamp, "w") as out:
        out.write(repr(time.time()))
    os.replace(stamp, os.path.join(directory, f"started-{x}"))  # never read half-written
    release = os.path.join(directory, "release")
    deadline = time.monotonic() + 600
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return x


FUNCTIONS = {"noop": noop, "sleep": sleep}


# -- one measurement, in a fresh process -----------------------------------------------


def outcome(n: int, seconds: float, done: int, cap: float) -> dict[str, Any]:
    """What a throughput measurement reports: the whole run's, or the capped window's."""
    if done >= n:
        return {"status": "ok", "seconds": seconds, "done": done, "rate": n / seconds}
    return {"status": "capped", "seconds": seconds, "done": done, "cap": cap}


async def measure_raw(workload: str, n: int, cap: float) -> dict[str, Any]:
    import anyio

    from asyncexec import ProcessExecutor

    fn = FUNCTIONS[workload]
    async with ProcessExecutor(WORKERS) as ex:
        await ex.wait([await ex.submit(noop, i) for i in range(WORKERS)])  # warm
        futures: list[Any] = []
        start = time.perf_counter()
        with anyio.move_on_after(cap):
            for x in range(n):
                futures.append(await ex.submit(fn, x))
            values = await ex.wait(futures)
            seconds = time.perf_counter() - start
            if values != list(range(n)):
                return {"status": "error", "reason": "wrong results"}
            return outcome(n, seconds, n, cap)
        done = sum(1 for future in futures if future.ready())
        await ex.aclose(cancel_pending=True)
        return outcome(n, time.perf_counter() - start, done, cap)


async def measure_runner(workload: str, n: int, cap: float, scratch: str) -> dict[str, Any]:
    import anyio

    from asyncexec import ProcessExecutor
    from asyncexec.experiment import Experiment, ResultsStore

    directory = os.path.join(scratch, "experiment")
    async with ProcessExecutor(WORKERS) as ex:
        await ex.wait([await ex.submit(noop, i) for i in range(WORKERS)])  # warm
        start = time.perf_counter()
        with anyio.move_on_after(cap):
            summary = await Experiment(FUNCTIONS[workload], {"x": list(range(n))}).run(
                ex, directory, progress=False
            )
            seconds = time.perf_counter() - start
            if summary.done != n or summary.failed:
                return {"status": "error", "reason": f"summary: {summary}"}
            return outcome(n, seconds, n, cap)
        seconds = time.perf_counter() - start
    store = ResultsStore(directory)  # cancelled at the cap: what it recorded done
    try:
        done = store.counts()["done"]
    finally:
        store.close()
    return outcome(n, seconds, done, cap)


def measure_futures(workload: str, n: int, cap: float, scratch: str) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    fn = FUNCTIONS[workload]
    done = 0
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(noop, range(WORKERS)))  # warm
        start = time.perf_counter()
        with open(os.path.join(scratch, "results.jsonl"), "a") as out:
            futures = {pool.submit(fn, x): x for x in range(n)}
            try:
                for future in as_completed(futures, timeout=cap - (time.perf_counter() - start)):
                    out.write(json.dumps({"x": futures[future], "result": future.result()}) + "\n")
                    done += 1
            except TimeoutError:
                for future in futures:
                    future.cancel()
        seconds = time.perf_counter() - start
    return outcome(n, seconds, done, cap)


def measure_execo(workload: str, n: int, cap: float, scratch: str) -> dict[str, Any]:
    import warnings
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with warnings.catch_warnings():  # execo calls the deprecated Thread.setDaemon
        warnings.simplefilter("ignore")
        from execo_engine import ParamSweeper, sweep  # type: ignore[import-untyped]

    fn = FUNCTIONS[workload]
    done = 0
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(noop, range(WORKERS)))  # warm
        start = time.perf_counter()
        deadline = start + cap
        sweeper = ParamSweeper(
            os.path.join(scratch, "sweeps"), sweeps=sweep({"x": range(n)}), save_sweeps=True
        )
        with open(os.path.join(scratch, "results.jsonl"), "a") as out:
            pending: dict[Any, Any] = {}
            while time.perf_counter() < deadline:
                while len(pending) < 2 * WORKERS:
                    combination = sweeper.get_next()
                    if combination is None:
                        break
                    pending[pool.submit(fn, **combination)] = combination
                if not pending:
                    break
                finished, _ = wait(
                    pending, timeout=deadline - time.perf_counter(), return_when=FIRST_COMPLETED
                )
                for future in finished:
                    combination = pending.pop(future)
                    out.write(json.dumps({**combination, "result": future.result()}) + "\n")
                    sweeper.done(combination)
                    done += 1
            for future in pending:
                future.cancel()
        seconds = time.perf_counter() - start
    return outcome(n, seconds, done, cap)


def measure_hydra(workload: str, n: int, cap: float, scratch: str) -> dict[str, Any]:
    import signal
    import subprocess

    with open(os.path.join(scratch, "app.py"), "w") as out:
        out.write(HYDRA_APP)
    with open(os.path.join(scratch, "config.yaml"), "w") as out:
        out.write(HYDRA_CONFIG)
    sweep_dir = os.path.join(scratch, "multirun")
    command = [sys.executable, "app.py", "--multirun", f"x=range(0,{n})", f"work={workload}"]
    command.append(f"hydra.sweep.dir={sweep_dir}")
    with open(os.path.join(scratch, "hydra.log"), "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=scratch, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = process.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(process.pid, signal.SIGKILL)  # the app and its joblib workers
            process.wait()
        seconds = time.perf_counter() - start
    stamps = []
    if os.path.isdir(sweep_dir):
        for entry in os.scandir(sweep_dir):
            result = os.path.join(entry.path, "result.json")
            if entry.is_dir() and os.path.exists(result):
                stamps.append(os.stat(result).st_mtime)
    if code not in (0, None):
        with open(os.path.join(scratch, "hydra.log")) as log:
            return {"status": "error", "reason": f"exit {code}: {log.read()[-1500:]}"}
    found = outcome(n, seconds, len(stamps), cap)
    if len(stamps) > 1:  # between the first result and the last: the cost of a job
        found["steady_rate"] = (len(stamps) - 1) / (max(stamps) - min(stamps))
    if code == 0 and len(stamps) != n:
        return {"status": "error", "reason": f"{len(stamps)} results of {n}"}
    return found


def memory() -> tuple[int, int]:
    """This process's resident set and its peak (VmHWM) now, in bytes (Linux)."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def reset_peak() -> None:
    """Make VmHWM the resident set now (Linux >= 4.0; elsewhere the peak stays)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def first_start(held: str) -> float | None:
    """When the first ``block`` run started (its ``time.time()``), if one has."""
    started = [name for name in os.listdir(held) if name.startswith("started-")]
    if not started:
        return None
    with open(os.path.join(held, started[0])) as stamp:
        return float(stamp.read())


def release(held: str) -> None:
    with open(os.path.join(held, "release"), "w"):
        pass


async def measure_pending(n: int, cap: float, scratch: str) -> dict[str, Any]:
    import asyncio
    import gc

    from asyncexec import ProcessExecutor
    from asyncexec.experiment import Experiment

    held = os.path.join(scratch, "held")
    os.makedirs(held)
    os.environ[BLOCK_DIR] = held  # the workers inherit it
    async with ProcessExecutor(WORKERS) as ex:
        await ex.wait([await ex.submit(noop, i) for i in range(WORKERS)])  # warm
        gc.collect()
        rss_before, _ = memory()
        reset_peak()
        began = time.time()
        experiment = Experiment(block, {"x": list(range(n))})
        built = time.time()
        task = asyncio.ensure_future(
            experiment.run(ex, os.path.join(scratch, "experiment"), progress=False)
        )
        first = None
        try:
            while first is None and time.time() - began < cap and not task.done():
                first = first_start(held)
                if first is None:
                    await asyncio.sleep(0.002)
            if first is None and not task.done():
                return {"status": "capped", "cap": cap}
            if first is None:
                return {"status": "error", "reason": "the run ended before any run started"}
            await asyncio.sleep(1.0)  # settled: the window full, both workers held
            rss_after, peak = memory()
        finally:
            release(held)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return {
        "status": "ok",
        "to_first": first - began,
        "build": built - began,
        "rss_per_run": (rss_after - rss_before) / n,
        "peak_per_run": (peak - rss_before) / n,
        "rss_growth": rss_after - rss_before,
    }


def one_main(spec_text: str) -> int:
    """Run one measurement (a JSON spec), print its outcome as one JSON line."""
    import asyncio
    import shutil
    import tempfile

    spec = json.loads(spec_text)
    part, workload, n, cap = spec["part"], spec.get("workload", ""), spec["runs"], spec["cap"]
    scratch = tempfile.mkdtemp(prefix=f"experiment-bench-{part}-")
    try:
        if part == "raw":
            found = asyncio.run(measure_raw(workload, n, cap))
        elif part == "runner":
            found = asyncio.run(measure_runner(workload, n, cap, scratch))
        elif part == "futures":
            found = measure_futures(workload, n, cap, scratch)
        elif part == "execo":
            found = measure_execo(workload, n, cap, scratch)
        elif part == "hydra":
            found = measure_hydra(workload, n, cap, scratch)
        else:
            found = asyncio.run(measure_pending(n, cap, scratch))
    except Exception as exc:
        found = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(found), flush=True)
    return 0


# -- the parent: plan, measure in fresh processes, report --------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import subprocess

    try:
        completed = subprocess.run(
            [sys.executable, os.path.join(HERE, "experiment.py"), "--one", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=spec["cap"] + GRACE,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"no outcome within {spec['cap'] + GRACE:.0f} s"}
    lines = completed.stdout.strip().splitlines()
    try:
        return dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {
            "status": "error",
            "reason": f"exit {completed.returncode}: {completed.stderr[-1500:]}",
        }


def missing(part: str) -> str | None:
    """None if the part's modules are installed, else which one is missing."""
    import importlib.util

    for module in MODULES.get(part, ()):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return f"{module} is not installed"
    return None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def spread(values: list[float], show: Any = fmt_rate) -> str:
    import statistics

    median = show(statistics.median(values))
    return median if len(values) == 1 else f"{median} ({show(min(values))}-{show(max(values))})"


class Cell:
    """The outcomes of one (peer, workload, size): rates, or a capped window, or an error."""

    def __init__(self, runs: int) -> None:
        self.runs = runs  # what was run: Hydra's are capped by --hydra-runs
        self.rates: list[float] = []
        self.capped: dict[str, Any] | None = None
        self.error: str | None = None
        self.steady: list[float] = []  # hydra: jobs per second between results

    def bound(self) -> float:
        """The most the capped repeat's whole run can have done per second."""
        assert self.capped is not None
        return float(self.runs / self.capped["seconds"])

    def median(self) -> float | None:
        """The median rate of the repeats; a capped repeat ranks below the others when
        its bound is below them (else, or when the median is the capped one: None)."""
        import statistics

        if not self.rates:
            return None
        if self.capped is None:
            return statistics.median(self.rates)
        if self.bound() > min(self.rates):
            return None
        ranked = sorted(self.rates)
        middle = (len(ranked) + 1) // 2  # the capped repeat at index 0
        if (len(ranked) + 1) % 2:
            return ranked[middle - 1]
        return (ranked[middle - 2] + ranked[middle - 1]) / 2 if middle >= 2 else None

    def text(self, n: int) -> str:
        first = f" on the first {self.runs:,} runs" if self.runs < n else ""
        if self.error is not None:
            return f"failed: {self.error}"
        if self.capped is None:
            return spread(self.rates) + first if self.rates else "not measured"
        c = self.capped
        per_second = fmt_rate(c["done"] / c["seconds"])
        window = f"capped at {c['cap']:.3g} s: {c['done']:,} done, {per_second}/s"
        if not self.rates:
            return f"< {fmt_rate(self.bound())}{first} ({window})"
        median = self.median()
        repeats = f"{len(self.rates) + 1} repeats, 1 {window}"
        if median is None:
            return f"{spread(self.rates)} and < {fmt_rate(self.bound())}{first} ({repeats})"
        return (
            f"{fmt_rate(median)}{first} (< {fmt_rate(self.bound())} to "
            f"{fmt_rate(max(self.rates))}; {repeats})"
        )


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def ratio(mine: Cell, theirs: Cell) -> str:
    """runner / peer: a figure; when either was capped, a bound if there is one, and
    the ratio of what each did per second (in its window, if capped)."""
    if mine.error or theirs.error or not (mine.rates or mine.capped):
        return "n/a"
    if not (theirs.rates or theirs.capped):
        return "n/a"
    ours, their = mine.median(), theirs.median()
    if ours is not None and their is not None:
        return fmt_ratio(ours / their)
    if (ours is None and mine.rates) or (their is None and theirs.rates):
        return "n/a (the median is unknown: a repeat was capped)"

    def window(cell: Cell) -> float:
        assert cell.capped is not None
        return float(cell.capped["done"]) / cell.capped["seconds"]

    seen_ours = ours if ours is not None else window(mine)
    seen_their = their if their is not None else window(theirs)
    seen = f"{fmt_ratio(seen_ours / seen_their)} in the window" if seen_their else ""
    if ours is None and their is not None:
        bound = f"< {fmt_ratio(mine.bound() / their)}"
    elif ours is not None and their is None:
        bound = f"> {fmt_ratio(ours / theirs.bound())}"
    else:
        bound = "both capped"
    return f"{bound} ({seen})" if seen else bound


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("asyncexec", "hydra-core", "hydra-joblib-launcher", "joblib", "execo"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def source_digest() -> str:
    """A digest of asyncexec/experiment's sources: which runner was measured."""
    from sweeper import source_digest as digest  # (benchmarks/ is this script's path)

    return digest("asyncexec.experiment")


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def cap_for(workload: str, n: int, time_cap: float) -> float:
    """The time cap of a measurement: ``time_cap``, or more for runs that sleep long."""
    if workload == "sleep":
        return max(time_cap, 1.5 * n * 0.001 / WORKERS)
    return time_cap


def numbers(text: str) -> tuple[int, ...]:
    return tuple(int(item.replace(",", "").replace("_", "")) for item in text.split(",") if item)


def runner_main(argv: list[str]) -> int:
    import argparse
    import datetime
    import platform
    import shlex
    import subprocess

    assert __doc__ is not None
    parser = argparse.ArgumentParser(prog="experiment.py", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run: checks the harness")
    parser.add_argument("--sizes", help="runs per experiment (5000,100000; smoke: 20,3000)")
    parser.add_argument("--pending-sizes", help="runs of `pending` (100000,1000000; smoke: 2000)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (3; smoke: 1)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"of {','.join(PARTS)}")
    parser.add_argument(
        "--time-cap",
        type=float,
        help="seconds per measurement (30; smoke: 2), or 1.5 x the sleep runs' own time "
        "over 2 workers if more",
    )
    parser.add_argument("--pending-cap", type=float, help="seconds per `pending` (150; smoke: 30)")
    parser.add_argument("--hydra-cap", type=float, help="seconds per Hydra command (60; smoke: 20)")
    parser.add_argument(
        "--hydra-runs", type=int, help="runs per Hydra command at most (100; smoke: 10)"
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    try:
        sizes = numbers(args.sizes or ("20,3000" if smoke else "5000,100000"))
        pending_sizes = numbers(args.pending_sizes or ("2000" if smoke else "100000,1000000"))
    except ValueError:
        parser.error("--sizes and --pending-sizes take comma-separated integers")
    repeats = args.repeats if args.repeats is not None else (1 if smoke else 3)
    time_cap = args.time_cap if args.time_cap is not None else (2.0 if smoke else 30.0)
    pending_cap = args.pending_cap if args.pending_cap is not None else (30.0 if smoke else 150.0)
    hydra_cap = args.hydra_cap if args.hydra_cap is not None else (20.0 if smoke else 60.0)
    hydra_runs = args.hydra_runs if args.hydra_runs is not None else (10 if smoke else 100)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    if not only or any(part not in PARTS for part in only) or repeats < 1:
        parser.error(f"--only takes some of {','.join(PARTS)}; --repeats at least 1")
    if (
        min((*sizes, *pending_sizes, hydra_runs), default=0) < 1
        or min(time_cap, hydra_cap, pending_cap) <= 0
    ):
        parser.error("sizes and caps must be positive")

    failed = False
    notes = []
    for part in list(only):
        why = missing(part)
        if why is not None:
            only.remove(part)
            notes.append(f"- not run: {part} ({why})" + ("" if smoke else ": a failure"))
            failed = failed or not smoke
    peers = [peer for peer in PEERS if peer in only]
    started = time.perf_counter()
    load_before = load_average()
    digest_before = source_digest()
    cells: dict[tuple[str, str, int], Cell] = {}  # by size
    shared: dict[tuple[str, str, int], Cell] = {}  # by runs measured: Hydra's sizes share them
    pending: dict[int, list[dict[str, Any]]] = {}
    pending_errors: dict[int, str] = {}
    for repeat in range(repeats):
        order = peers if repeat % 2 == 0 else peers[::-1]
        for n in sizes:
            for workload in WORKLOADS:
                for peer in order:
                    runs = min(n, hydra_runs) if peer == "hydra" else n
                    cell = cells.setdefault((peer, workload, n), shared.get((peer, workload, runs)))
                    if cell is None:
                        cell = cells[peer, workload, n] = shared[peer, workload, runs] = Cell(runs)
                    if cell.capped or cell.error or len(cell.rates) > repeat:
                        continue  # measured in this repeat, or would hit the same cap again
                    cap = hydra_cap if peer == "hydra" else cap_for(workload, n, time_cap)
                    spec = {"part": peer, "workload": workload, "runs": runs, "cap": cap}
                    found = measure(spec)
                    if found["status"] == "ok":
                        cell.rates.append(found["rate"])
                        shown = f"{fmt_rate(found['rate'])} runs/s"
                    elif found["status"] == "capped":
                        cell.capped = found
                        shown = cell.text(n)
                    else:
                        cell.error = str(found.get("reason", "?")).replace("|", "/")
                        cell.error = " ".join(cell.error.split())[:300]
                        shown = f"failed: {cell.error}"
                        failed = True
                    if "steady_rate" in found:
                        cell.steady.append(found["steady_rate"])
                    log(
                        f"[{time.perf_counter() - started:.0f}s] #{repeat + 1} {peer} {workload} "
                        f"{runs:,}: {shown}"
                    )
        if "pending" in only:
            for n in pending_sizes:
                if n in pending_errors:
                    continue
                found = measure({"part": "pending", "runs": n, "cap": pending_cap})
                if found["status"] == "capped":
                    pending_errors[n] = f"> {pending_cap:.0f} (capped: no run started)"
                    log(f"#{repeat + 1} pending {n:,}: {pending_errors[n]}")
                    continue
                if found["status"] != "ok":
                    reason = " ".join(str(found.get("reason")).split())[:300]
                    pending_errors[n] = f"failed: {reason}"
                    failed = True
                    log(f"#{repeat + 1} pending {n:,}: {pending_errors[n]}")
                    continue
                pending.setdefault(n, []).append(found)
                log(
                    f"[{time.perf_counter() - started:.0f}s] #{repeat + 1} pending {n:,}: "
                    f"first run after {found['to_first']:.2f} s, "
                    f"{found['rss_per_run']:,.0f} B/run"
                )

    # -- report -----------------------------------------------------------------------------
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    digest = source_digest()
    if digest != digest_before:
        digest = f"{digest_before}, then {digest} (the code changed during the run!)"
    command = shlex.join(["python", "benchmarks/experiment.py", *argv])
    out = [
        "## Experiment runner vs raw executor and peers"
        + (" (smoke run: not a measurement)" if smoke else ""),
        "",
        f"- command: `{command}`",
        f"- machine: `{uname}`; nproc: {os.cpu_count()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- python {platform.python_version()} ({sys.executable}); {versions()}; "
        f"asyncexec/experiment sources sha256 {digest}",
        f"- load average (1, 5, 15 min) at start: {load_before}; at end: {load_average()}",
        f"- method: {WORKERS} workers everywhere; each measurement in a fresh process; "
        f"median (min-max) of {repeats} repeat(s), libraries alternating; time cap "
        f"{time_cap:.0f} s per measurement (1.5 x the runs' sleep over {WORKERS} workers if "
        f"more), {hydra_cap:.0f} s per Hydra command of at most "
        f"{hydra_runs:,} runs; a capped cell is measured once (see the module docstring for "
        "what is timed)",
        *notes,
        "",
    ]
    if peers:
        out += [
            "| workload | runs | " + " | ".join(f"{LABELS[p]} runs/s" for p in peers) + " |",
            "|---|---:|" + "---:|" * len(peers),
        ]
        for n in sizes:
            for workload in WORKLOADS:
                texts = [cells[peer, workload, n].text(n) for peer in peers]
                out.append(f"| {workload} | {n:,} | " + " | ".join(texts) + " |")
        out.append("")
        steady = [
            f"{workload}, {runs:,} runs: {spread(cell.steady)}"
            for (peer, workload, runs), cell in shared.items()
            if peer == "hydra" and cell.steady
        ]
        if steady:
            out += [
                "Hydra's jobs per second between its first and its last result (its start-up "
                "left out): " + "; ".join(steady),
                "",
            ]
    if "runner" in peers and len(peers) > 1:
        others = [peer for peer in peers if peer != "runner"]
        out += [
            "| workload | runs | " + " | ".join(f"runner / {LABELS[p]}" for p in others) + " |",
            "|---|---:|" + "---:|" * len(others),
        ]
        for n in sizes:
            for workload in WORKLOADS:
                mine = cells["runner", workload, n]
                texts = [ratio(mine, cells[p, workload, n]) for p in others]
                out.append(f"| {workload} | {n:,} | " + " | ".join(texts) + " |")
        out.append("")
        if "raw" in peers:
            for workload, target in TARGETS.items():
                for n in sizes:
                    value = ratio(cells["runner", workload, n], cells["raw", workload, n])
                    out.append(f"- target runner / raw >= {target} ({workload}, {n:,}): {value}")
            out.append("")
    if "pending" in only:
        out += [
            "| runs | Experiment() to the first run started (s) | of which Experiment() (s) "
            "| RSS growth per run (B) | peak RSS growth per run (B) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n in pending_sizes:
            if n in pending_errors or n not in pending:
                out.append(f"| {n:,} | {pending_errors.get(n, 'not measured')} | | | |")
                continue
            found = pending[n]

            def column(key: str, show: Any, found: list[dict[str, Any]] = found) -> str:
                return spread([entry[key] for entry in found], show)

            out.append(
                f"| {n:,} | {column('to_first', lambda x: f'{x:.2f}')} "
                f"| {column('build', lambda x: f'{x:.2f}')} "
                f"| {column('rss_per_run', lambda x: f'{x:,.0f}')} "
                f"| {column('peak_per_run', lambda x: f'{x:,.0f}')} |"
            )
        out += [
            "",
            f"Targets: <= {MEMORY_TARGET:,} B of RSS per pending run; <= {OPEN_TARGET:.0f} s "
            "from Experiment() to the first run of a 1,000,000-run experiment.",
            "",
        ]
    out.append(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    print("\n".join(out))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"] and len(argv) == 2:
        return one_main(argv[1])
    return runner_main(argv)


if __name__ == "__main__":
    # Run the code as the module `experiment`, not `__main__`, so that the run functions
    # pickle by reference (`experiment.noop`) and every pool's workers import them.
    sys.path.insert(0, HERE)
    import experiment

    sys.exit(experiment.main(sys.argv[1:]))
