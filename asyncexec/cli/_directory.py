"""``asyncexec status``, ``results`` and ``cancel``: an experiment directory read, or told to stop.

Also the summary ``run`` prints when it ends.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from ._exit import UsageError
from ._output import factor_names, format_table, hashable, text


def open_store(directory: str) -> Any:
    """The results store of the experiment in ``directory`` (which must exist)."""
    from ..experiment import ResultsStore

    if not os.path.exists(directory):
        raise UsageError(f"no such directory: {directory}")
    if not os.path.isdir(directory):
        raise UsageError(f"not a directory: {directory}")
    return ResultsStore(directory, create=False)


def status(directory: str) -> int:
    """``asyncexec status``: counts by state, overall and per parameter level."""
    from ..sweep import sweep_stats

    with open_store(directory) as store:
        counts = store.counts()
        rows = store.rows()
        name = store.experiment
    total = sum(counts.values())
    print(f"experiment {name!r} in {directory}: {total} runs")
    print("  " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    by_status: dict[str, list[dict[str, Any]]] = {status: [] for status in counts}
    for row in rows:
        by_status[row["status"]].append(hashable(row["params"]))
    stats = sweep_stats(
        (
            [hashable(row["params"]) for row in rows],
            by_status["pending"] + by_status["cancelled"],
            by_status["failed"],
            by_status["running"],
            by_status["done"],
        ),
        all_levels=True,
    )
    table = [
        [
            factor,
            text(level),
            f"{int(stats['total'][factor][level])}",
            f"{int(stats['done'][factor][level])}",
            f"{int(stats['skipped'][factor][level])}",
            f"{stats['done_ratio'][factor][level]:.0%}",
        ]
        for factor in stats["total"]
        for level in stats["total"][factor]
    ]
    if table:
        print()
        print(format_table(["factor", "level", "runs", "done", "failed", "done %"], table))
    return 0


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


def cancel(directory: str) -> int:
    """``asyncexec cancel``: ask the runner working on ``directory`` to stop."""
    with open_store(directory) as store:
        store.request_cancel()
    print(f"cancel requested: the runner working on {directory} stops within a second or two")
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
