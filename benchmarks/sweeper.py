"""ParamSweeper throughput: asyncexec.sweep against execo_engine, same machine, same run.

    python benchmarks/sweeper.py            # the full run (about 6 to 10 minutes on 2 cores)
    python benchmarks/sweeper.py --smoke    # a tiny run (seconds): checks the harness only

Measures get_next + done pairs per second with 10,000; 100,000 and 1,000,000
combinations (``HashableDict(i=i)`` from each library), with 1 process and with
4 processes sharing one persistence directory, each measurement in fresh
processes (multiprocessing, spawn) on a fresh copy of a prepared directory.
Libraries alternate inside each repeat so that machine noise hits both alike.
Each measurement is capped (pairs and seconds); the rate is the pairs done over
the wall time from the first process's start to the last one's end. Setup (building
the combinations and opening the sweeper in each process) is timed separately.

A second table shows the per-operation cost as ``done`` grows: the rate over the
first and over the last slice of one long run.

Prints a Markdown report on stdout (progress goes to stderr); exits non-zero if
a measurement failed.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from typing import Any

LIBRARIES = ("asyncexec", "execo")


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    processes: tuple[int, ...]
    repeats: int
    pairs: int  # per measurement, over all its processes
    time_cap: float  # seconds of get_next/done per measurement
    setup_cap: float  # seconds allowed to prepare one measurement
    long_size: int
    long_pairs: int
    slice_pairs: int
    long_time_cap: float


FULL = Settings(
    sizes=(10_000, 100_000, 1_000_000),
    processes=(1, 4),
    repeats=3,
    pairs=3_000,
    time_cap=15.0,
    setup_cap=180.0,
    long_size=100_000,
    long_pairs=6_000,
    slice_pairs=1_000,
    long_time_cap=60.0,
)
SMOKE = Settings(
    sizes=(200,),
    processes=(1, 4),
    repeats=1,
    pairs=50,
    time_cap=10.0,
    setup_cap=60.0,
    long_size=200,
    long_pairs=100,
    slice_pairs=25,
    long_time_cap=10.0,
)


def load(library: str) -> tuple[Any, Any]:
    """(HashableDict, ParamSweeper) of ``library``."""
    if library == "execo":
        with warnings.catch_warnings():  # execo calls the deprecated Thread.setDaemon
            warnings.simplefilter("ignore")
            from execo_engine import HashableDict, ParamSweeper  # type: ignore[import-untyped]
    else:
        from asyncexec.sweep import HashableDict, ParamSweeper
    return HashableDict, ParamSweeper


def close(sweeper: Any) -> None:
    if hasattr(sweeper, "close"):  # execo's ParamSweeper has no close()
        sweeper.close()


# -- in the spawned processes ---------------------------------------------------------


def prepare(library: str, directory: str, count: int) -> None:
    """Create the persistence directory holding ``count`` combinations."""
    hashable_dict, param_sweeper = load(library)
    close(param_sweeper(directory, [hashable_dict(i=i) for i in range(count)]))


def work(
    library: str,
    directory: str,
    count: int,
    pairs: int,
    time_cap: float,
    slice_pairs: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Open the sweeper, report ready, wait for go, then get_next + done ``pairs`` times."""
    try:
        began = time.perf_counter()
        hashable_dict, param_sweeper = load(library)
        sweeper = param_sweeper(directory, [hashable_dict(i=i) for i in range(count)])
        ready.put(time.perf_counter() - began)
        go.wait()
        start = time.perf_counter()
        marks = [start]
        done = 0
        while done < pairs:
            combination = sweeper.get_next()
            if combination is None:
                break
            sweeper.done(combination)
            done += 1
            now = time.perf_counter()
            if done % slice_pairs == 0:
                marks.append(now)
            if now - start > time_cap:
                break
        end = time.perf_counter()
        close(sweeper)
        # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes.
        results.put({"start": start, "end": end, "pairs": done, "marks": marks})
    except BaseException as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        ready.put(None)
        raise


# -- in the parent --------------------------------------------------------------------


@dataclass
class Outcome:
    rate: float | None = None  # pairs per second, all processes together
    setup: float | None = None  # seconds until every process was ready
    marks: list[float] = field(default_factory=list)
    pairs: int = 0
    error: str | None = None


def run_spawned(context: SpawnContext, target: Any, args: tuple[Any, ...], timeout: float) -> None:
    process = context.Process(target=target, args=args)
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"{target.__name__} took more than {timeout:.0f} s")
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__} exited with {process.exitcode}")


def measure(
    context: SpawnContext,
    library: str,
    template: str,
    count: int,
    processes: int,
    pairs: int,
    time_cap: float,
    slice_pairs: int,
    setup_cap: float,
) -> Outcome:
    """One measurement: ``processes`` fresh processes on a fresh copy of ``template``."""
    scratch = tempfile.mkdtemp(prefix=f"sweeper-bench-{library}-")
    directory = os.path.join(scratch, "sweeps")
    shutil.copytree(template, directory)
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    share = [pairs // processes + (1 if n < pairs % processes else 0) for n in range(processes)]
    workers = [
        context.Process(
            target=work,
            args=(library, directory, count, n, time_cap, slice_pairs, ready, go, results),
        )
        for n in share
    ]
    began = time.perf_counter()
    for process in workers:
        process.start()
    try:
        setups = []
        try:
            for _ in workers:
                left = setup_cap - (time.perf_counter() - began)
                setup = ready.get(timeout=max(1.0, left))
                if setup is None:
                    break
                setups.append(setup)
        except queue.Empty:
            return Outcome(error=f"setup took more than {setup_cap:.0f} s")
        go.set()
        try:
            reports = [results.get(timeout=time_cap + 120) for _ in workers]
        except queue.Empty:
            return Outcome(error=f"a run took more than {time_cap + 120:.0f} s")
    finally:
        go.set()
        for process in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        ready.close()
        results.close()
        shutil.rmtree(scratch, ignore_errors=True)
    errors = [report["error"] for report in reports if "error" in report]
    if errors:
        return Outcome(error="; ".join(errors))
    total = sum(report["pairs"] for report in reports)
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    marks = reports[0]["marks"] if processes == 1 else []
    return Outcome(rate=total / elapsed, setup=max(setups), marks=marks, pairs=total)


def make_template(context: SpawnContext, library: str, count: int, cap: float) -> str:
    directory = os.path.join(tempfile.mkdtemp(prefix=f"sweeper-template-{library}-"), "sweeps")
    run_spawned(context, prepare, (library, directory, count), cap)
    return directory


def fmt_rate(values: list[float]) -> str:
    if not values:
        return "not measured"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:,.0f}"
    return f"{median:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def fmt_seconds(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "n/a"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def source_digest(package: str = "asyncexec.sweep") -> str:
    """A digest of ``package``'s sources: which version of the code was measured (also
    benchmarks/experiment.py's, for asyncexec.experiment)."""
    import hashlib
    import importlib

    folder = os.path.dirname(importlib.import_module(package).__file__ or "")
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()[:12]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("asyncexec", "execo"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the harness")
    options = parser.parse_args()
    settings = SMOKE if options.smoke else FULL
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    load_before = os.getloadavg()
    digest_before = source_digest()
    failed = False

    # -- throughput table -------------------------------------------------------------
    rates: dict[tuple[str, int, int], list[float]] = {}
    setups: dict[tuple[str, int, int], list[float]] = {}
    notes: dict[tuple[str, int, int], str] = {}
    for count in settings.sizes:
        templates: dict[str, str] = {}
        for library in LIBRARIES:
            log(f"preparing {library} with {count:,} combinations")
            try:
                templates[library] = make_template(context, library, count, settings.setup_cap)
            except Exception as exc:
                for processes in settings.processes:
                    notes[library, count, processes] = f"setup failed: {exc}"
                failed = True
        for repeat in range(settings.repeats):
            for processes in settings.processes:
                for library in LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]:
                    key = (library, count, processes)
                    if library not in templates or key in notes:
                        continue
                    outcome = measure(
                        context,
                        library,
                        templates[library],
                        count,
                        processes,
                        settings.pairs,
                        settings.time_cap,
                        settings.slice_pairs,
                        settings.setup_cap,
                    )
                    if outcome.rate is None:
                        notes[key] = f"not measured: {outcome.error}"
                        failed = failed or options.smoke or "setup took" not in str(outcome.error)
                        log(f"{library} {count:,} x{processes}: {notes[key]}")
                        continue
                    rates.setdefault(key, []).append(outcome.rate)
                    setups.setdefault(key, []).append(outcome.setup or 0.0)
                    log(
                        f"{library} {count:,} x{processes} repeat {repeat + 1}: "
                        f"{outcome.rate:,.0f} pairs/s ({outcome.pairs} pairs), "
                        f"setup {outcome.setup:.2f} s"
                    )
        for template in templates.values():
            shutil.rmtree(os.path.dirname(template), ignore_errors=True)

    # -- cost as done grows -----------------------------------------------------------
    slices: dict[str, list[tuple[float, float, int]]] = {}
    long_notes: dict[str, str] = {}
    templates = {}
    for library in LIBRARIES:
        try:
            templates[library] = make_template(
                context, library, settings.long_size, settings.setup_cap
            )
        except Exception as exc:
            long_notes[library] = f"setup failed: {exc}"
            failed = True
    for repeat in range(settings.repeats):
        for library in LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]:
            if library not in templates:
                continue
            outcome = measure(
                context,
                library,
                templates[library],
                settings.long_size,
                1,
                settings.long_pairs,
                settings.long_time_cap,
                settings.slice_pairs,
                settings.setup_cap,
            )
            if outcome.rate is None or len(outcome.marks) < 3:
                long_notes[library] = f"not measured: {outcome.error or 'too few slices'}"
                failed = True
                continue
            gaps = [b - a for a, b in zip(outcome.marks, outcome.marks[1:], strict=False)]
            first, last = settings.slice_pairs / gaps[0], settings.slice_pairs / gaps[-1]
            slices.setdefault(library, []).append((first, last, outcome.pairs))
            log(f"{library} long run {repeat + 1}: first {first:,.0f}/s, last {last:,.0f}/s")
    for template in templates.values():
        shutil.rmtree(os.path.dirname(template), ignore_errors=True)

    # -- report -----------------------------------------------------------------------
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    found = versions()
    load_after = os.getloadavg()
    digest = source_digest()
    if digest != digest_before:
        digest = f"{digest_before}, then {digest} (the code changed during the run!)"
    command = "python benchmarks/sweeper.py" + (" --smoke" if options.smoke else "")
    out = [
        "## ParamSweeper: asyncexec.sweep vs execo_engine"
        + (" (smoke run: not a measurement)" if options.smoke else ""),
        "",
        f"- command: `{command}`",
        f"- machine: `{uname}`; nproc: {os.cpu_count()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- python: {platform.python_version()} ({sys.executable}); "
        f"asyncexec {found['asyncexec']} (asyncexec/sweep sources sha256 {digest}), "
        f"execo {found['execo']}",
        f"- load average (1, 5, 15 min) at start: "
        f"{', '.join(f'{x:.2f}' for x in load_before)}; at end: "
        f"{', '.join(f'{x:.2f}' for x in load_after)}",
        f"- method: get_next + done pairs per second, all processes together; each "
        f"measurement in fresh spawned processes on a fresh copy of a prepared directory; "
        f"capped at {settings.pairs:,} pairs (split between the processes) or "
        f"{settings.time_cap:.0f} s; median (min-max) of {settings.repeats} repeat(s), "
        f"libraries alternating. Setup: building the combinations and opening the "
        f"sweeper, median of the slowest process per measurement.",
        "",
        "| combinations | processes | asyncexec pairs/s | execo pairs/s | asyncexec/execo "
        "| asyncexec setup (s) | execo setup (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in settings.sizes:
        for processes in settings.processes:
            ours = rates.get(("asyncexec", count, processes), [])
            theirs = rates.get(("execo", count, processes), [])
            ratio = (
                f"{statistics.median(ours) / statistics.median(theirs):.2f}"
                if ours and theirs
                else "n/a"
            )
            cells = [
                notes.get(("asyncexec", count, processes)) or fmt_rate(ours),
                notes.get(("execo", count, processes)) or fmt_rate(theirs),
            ]
            out.append(
                f"| {count:,} | {processes} | {cells[0]} | {cells[1]} | {ratio} "
                f"| {fmt_seconds(setups.get(('asyncexec', count, processes), []))} "
                f"| {fmt_seconds(setups.get(('execo', count, processes), []))} |"
            )
    out += [
        "",
        f"### Per-operation cost as done grows ({settings.long_size:,} combinations, "
        f"1 process, one run of up to {settings.long_pairs:,} pairs)",
        "",
        f"| library | pairs done | first {settings.slice_pairs:,} pairs/s "
        f"| last {settings.slice_pairs:,} pairs/s | last/first |",
        "|---|---:|---:|---:|---:|",
    ]
    for library in LIBRARIES:
        runs = slices.get(library, [])
        if not runs:
            out.append(f"| {library} | {long_notes.get(library, 'not measured')} | | | |")
            continue
        firsts = [first for first, _, _ in runs]
        lasts = [last for _, last, _ in runs]
        ratios = [last / first for first, last, _ in runs]
        out.append(
            f"| {library} | {statistics.median([p for _, _, p in runs]):,.0f} "
            f"| {fmt_rate(firsts)} | {fmt_rate(lasts)} | {statistics.median(ratios):.2f} |"
        )
    out += ["", f"Total benchmark time: {time.perf_counter() - started:.0f} s."]
    print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
