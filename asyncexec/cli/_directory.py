"""``asyncexec status``, ``results`` and ``cancel``: an experiment directory read, or told to stop.

Also the summary ``run`` prints when it ends.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from ._exit import UsageError
from ._output import factor_names, format_table, text


def open_store(directory: str) -> Any:
    """The results store of the experiment in ``directory`` (which must exist)."""
    from ..experiment import ResultsStore

    if not os.path.exists(directory):
        raise UsageError(f"no such directory: {directory}")
    if not os.path.isdir(directory):
        raise UsageError(f"not a directory: {directory}")
    return ResultsStore(directory, create=False)


def status(directory: str) -> int:
    """``asyncexec status``: counts by state, overall and per parameter level, and where
    the runs recorded running are (one query of the backend)."""
    import json

    with open_store(directory) as store:
        counts = store.counts()
        name = store.experiment
    total = sum(counts.values())
    print(f"experiment {name!r} in {directory}: {total} runs")
    print("  " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    if counts["running"]:
        levels = _with_backend_states(directory)
    else:
        with open_store(directory) as store:
            levels = store.level_counts()
    table = []
    many = {factor: len(by_level) for factor, by_level in levels.items() if len(by_level) > 40}
    for factor, by_level in levels.items():
        if factor in many:
            continue
        for level, by_status in by_level.items():
            runs = sum(by_status.values())
            done = by_status.get("done", 0)
            pending = by_status.get("pending", 0) + by_status.get("cancelled", 0)
            try:
                shown = text(json.loads(level))
            except ValueError:
                shown = level  # (a parameter JSON cannot hold: its repr)
            table.append(
                [
                    factor,
                    shown,
                    str(runs),
                    str(pending),
                    str(by_status.get("running", 0)),
                    str(done),
                    str(by_status.get("failed", 0)),
                    f"{done / runs:.0%}" if runs else "",
                ]
            )
    if table:
        print()
        headers = ["factor", "level", "runs", "pending", "running", "done", "failed", "done %"]
        print(format_table(headers, table))
    for factor, count in many.items():
        print(f"  ({factor}: {count} levels, not listed: `asyncexec results {directory}`)")
    return 0


def _with_backend_states(directory: str) -> dict[str, dict[str, dict[str, int]]]:
    """Print where the runs recorded running are, asked of the backend in one query (of
    one JobRef per array task, container or group); return the store's counts per
    level, read meanwhile (the backend is reached while the store counts)."""
    import anyio

    from .. import config

    try:
        executor = config.executor_of(directory)
        problem = None if executor is not None else "it was not run from the command line"
    except config.ConfigError as exc:
        executor, problem = None, str(exc)

    def read_levels() -> Any:
        with open_store(directory) as store:
            return store.level_counts()

    def read_places() -> Any:
        with open_store(directory) as store:
            return store.running_places()

    async def ask() -> tuple[Any, Any, list[str]]:
        assert executor is not None
        places_read = anyio.Event()
        box: dict[str, Any] = {}

        async def reader(name: str, read: Any, done: Any = None) -> None:
            box[name] = await anyio.to_thread.run_sync(read)
            if done is not None:
                done.set()

        # Three at once: the counts per level and the places (each a thread of SQLite
        # of its own), and the connection to the backend.
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, "levels", read_levels)
            tg.start_soon(reader, "places", read_places, places_read)
            async with executor as ex:
                await places_read.wait()
                states = await ex.job_states([ref for ref, _ in box["places"]])
        return box["levels"], box["places"], states

    if executor is None:
        print(f"  (the backend is not asked: {problem})")
        return dict(read_levels())
    try:
        levels, places, states = anyio.run(ask)
    except Exception as exc:
        print(f"  (the backend could not be asked: {exc})")
        return dict(read_levels())
    counts = dict.fromkeys(("queued", "running", "ended", "unknown"), 0)
    for (_, runs), state in zip(places, states, strict=True):
        counts[state] = counts.get(state, 0) + runs
    said = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    total = sum(runs for _, runs in places)
    print(f"  on the backend, of the {total} runs recorded running: {said}")
    if counts["ended"]:
        print(f"  (ended ones wait to be collected: asyncexec attach {directory})")
    return dict(levels)


def results(directory: str, form: str) -> int:
    """``asyncexec results``: the runs and their values, as a table, CSV or JSON."""
    with open_store(directory) as store:
        if form == "csv":
            sys.stdout.write(store.to_csv())
            return 0
        if form == "json":
            print(store.to_json())
            return 0
        rows = store.rows()
    factors = factor_names(rows)
    table = [
        [
            *(text(row["params"].get(f, "")) for f in factors),
            str(row["repeat"]),
            row["status"],
            text(row["value"]) if row["status"] == "done" else (row["error_type"] or ""),
            "" if row["duration"] is None else f"{row['duration']:.3f}",
        ]
        for row in rows
    ]
    print(format_table([*factors, "repeat", "status", "value / error", "seconds"], table))
    return 0


def cancel(directory: str, wait: float = 3.0) -> int:
    """``asyncexec cancel``: ask the runner working on ``directory`` to stop; then kill
    the work of the runs still recorded running (detached, or a dead runner's) from
    their stored JobRefs, and confirm with the backend that none of it is left."""
    import time

    with open_store(directory) as store:
        store.request_cancel()
    print(f"cancel requested: a runner working on {directory} stops within a second or two")
    deadline = time.monotonic() + wait
    while True:  # a live runner cancels and records its own runs
        with open_store(directory) as store:
            running = store.running_job_refs()
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not running:
        return 0
    import anyio

    from .. import config

    executor = config.executor_of(directory)
    if executor is None:
        print(
            f"asyncexec: {len(running)} run(s) recorded running, but {directory} does not "
            "record the executor (it was not run from the command line): their work is "
            "left as it is",
            file=sys.stderr,
        )
        return 1
    return int(anyio.run(_cancel_work, executor, directory, running))


async def _cancel_work(executor: Any, directory: str, running: list[tuple[str, Any]]) -> int:
    from .. import LaunchError

    """Kill the work of ``running`` runs: those the executor can follow through
    ``attach`` + ``cancel`` (which cleans up as a follower does), the rest (runs of an
    indexed array) with ``kill``; then ask the backend where it all is."""
    import anyio

    async with executor as ex:
        followed = [(fp, ref) for fp, ref in running if ex.can_attach(ref)]
        others = [(fp, ref) for fp, ref in running if not ex.can_attach(ref)]
        futures = [await ex.attach(ref) for _, ref in followed]
        await ex.cancel(futures)
        try:  # the rest (runs of indexed arrays), and what the work left behind
            await ex.kill([ref for _, ref in running])  # (staging directories)
        except LaunchError:
            if others:  # (a backend whose cancel leaves nothing: Docker's removes)
                raise
        states = await ex.job_states([ref for _, ref in running])
    # Ended where the backend can tell; where it cannot (Azure, once the groups are
    # deleted), the cancel of a followed task returned once the backend confirmed it.
    confirmed = {fp for (fp, _), future in zip(followed, futures, strict=True) if future.ready()}
    gone = [
        fp
        for (fp, _), state in zip(running, states, strict=True)
        if state == "ended" or (state == "unknown" and fp in confirmed)
    ]
    with open_store(directory) as store:
        await anyio.to_thread.run_sync(store.mark_cancelled, gone)
    left = len(running) - len(gone)
    print(f"killed the work of {len(running)} run(s) left running", end="")
    if left:
        print(f"; {left} of them the backend still lists (try again)")
        return 1
    print("; the backend confirms that none of it is left")
    return 0


def print_summary(directory: str) -> None:
    """One line per parameter combination: runs, failures, median value and time."""
    with open_store(directory) as store:
        rows = store.rows()
    factors = factor_names(rows)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(text(row["params"].get(f, "")) for f in factors)
        groups.setdefault(key, []).append(row)
    table = []
    for key, group in groups.items():
        values = [r["value"] for r in group if r["status"] == "done"]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        shown = (
            text(statistics.median(numbers))
            if numbers and len(numbers) == len(values)
            else (text(values[-1]) if values else "")
        )
        seconds = [r["duration"] for r in group if r["duration"] is not None]
        failed = sum(r["status"] == "failed" for r in group)
        table.append(
            [
                *key,
                str(len(group)),
                str(failed),
                shown,
                f"{statistics.median(seconds):.3f}" if seconds else "",
            ]
        )
    print()
    print(format_table([*factors, "runs", "failed", "value (median)", "seconds (median)"], table))
