"""What the commands print: cells and plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def factor_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The parameters of the runs, in the order they first appear."""
    factors: list[str] = []
    for row in rows:
        factors.extend(name for name in row["params"] if name not in factors)
    return factors


def hashable(params: dict[str, Any]) -> Any:
    """Parameters as a combination ``sweep_stats`` counts."""
    from ..sweep import HashableDict

    return HashableDict(params)


def text(value: Any) -> str:
    """A value as a table cell: floats to 6 digits, long text cut at 40 characters."""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )
    return "\n".join(line.rstrip() for line in lines)
