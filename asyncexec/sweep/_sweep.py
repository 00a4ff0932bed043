"""Full factorial sweeps (execo_engine's semantics) and their helpers."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["HashableDict", "geom", "igeom", "slugify", "sweep", "sweep_stats"]


class HashableDict(dict[str, Any]):
    """A dict usable as a dict key or set member: one parameter combination.

    Hashing is by content (sorted items), so equal combinations hash alike
    whatever their key order. Do not change one after using it as a key.
    """

    def _key(self) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(self.items(), key=lambda item: item[0]))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._key())

    def __repr__(self) -> str:
        return f"HashableDict({dict.__repr__(self)})"


def sweep(parameters: Mapping[str, Any]) -> list[HashableDict]:
    """All combinations of the levels of each factor (a full factorial design).

    ``parameters`` maps each factor to its levels: a sequence, or a dict whose
    keys are the levels and whose values are sub-sweeps (dicts of factors)
    explored only with that level. Combinations come in a fixed order: the
    first factor varies slowest.

    >>> sweep({"param 1": ["a", "b"], "param 2": [1, 2]})  # doctest: +NORMALIZE_WHITESPACE
    [HashableDict({'param 1': 'a', 'param 2': 1}), HashableDict({'param 1': 'a', 'param 2': 2}),
     HashableDict({'param 1': 'b', 'param 2': 1}), HashableDict({'param 1': 'b', 'param 2': 2})]

    Raises:
        TypeError: a factor is not a string, its levels are not a sequence or
            dict, a level is unhashable, or a sub-sweep is not a dict.
        ValueError: a factor has no level, or a level appears twice.
    """
    if not isinstance(parameters, Mapping):
        raise TypeError(
            f"sweep() takes a dict of factor -> levels, got {type(parameters).__name__}"
        )
    combinations = [HashableDict()]
    for factor, levels in parameters.items():
        if not isinstance(factor, str):
            raise TypeError(f"factor names must be strings, got {factor!r}")
        expanded: list[HashableDict] = []
        if isinstance(levels, Mapping):
            _check_levels(factor, list(levels))
            branches: list[tuple[Any, list[HashableDict]]] = []
            for level, sub_parameters in levels.items():
                if not isinstance(sub_parameters, Mapping):
                    raise TypeError(
                        f"the sub-sweep of level {level!r} of factor {factor!r} must be a dict "
                        f"of factor -> levels, got {type(sub_parameters).__name__}"
                    )
                branches.append((level, sweep(sub_parameters)))
            # As execo: each combination so far, then each level with its sub-sweep.
            for combination in combinations:
                for level, sub_combinations in branches:
                    for sub in sub_combinations:
                        expanded.append(_merge(combination, factor, level, sub))
        elif isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
            raise TypeError(
                f"the levels of factor {factor!r} must be a list (or a dict of sub-sweeps), "
                f"got {type(levels).__name__}"
            )
        else:
            values = list(levels)
            _check_levels(factor, values)
            for combination in combinations:
                for value in values:
                    expanded.append(_merge(combination, factor, value, {}))
        combinations = expanded
    return combinations


def _merge(
    combination: Mapping[str, Any], factor: str, level: Any, sub: Mapping[str, Any]
) -> HashableDict:
    merged = HashableDict(combination)
    for name, value in ((factor, level), *sub.items()):
        if name in merged:
            raise ValueError(
                f"factor {name!r} is given twice (a sub-sweep repeats a factor of the sweep)"
            )
        merged[name] = value
    return merged


def _check_levels(factor: str, levels: Sequence[Any]) -> None:
    if not levels:
        raise ValueError(f"factor {factor!r} has no level: give at least one")
    seen: set[Any] = set()
    for level in levels:
        if not isinstance(level, Hashable):
            raise TypeError(
                f"level {level!r} of factor {factor!r} is unhashable ({type(level).__name__}); "
                "use a tuple instead of a list, or a HashableDict"
            )
        try:
            hash(level)
        except TypeError as exc:
            raise TypeError(f"level {level!r} of factor {factor!r} is unhashable: {exc}") from exc
        if level in seen:
            raise ValueError(f"level {level!r} of factor {factor!r} is given twice")
        seen.add(level)


def geom(range_min: float, range_max: float, num_steps: int) -> list[float]:
    """``num_steps`` floats from ``range_min`` to ``range_max``, evenly spaced in log scale."""
    _check_range(range_min, range_max, num_steps)
    if num_steps == 1:
        return [float(range_min)]
    ratio = (range_max / range_min) ** (1.0 / (num_steps - 1))
    return [range_min * ratio**step for step in range(num_steps - 1)] + [float(range_max)]


def igeom(range_min: int, range_max: int, num_steps: int) -> list[int]:
    """Integers from ``range_min`` to ``range_max`` in a geometric progression.

    Rounding can make neighbours equal; duplicates are dropped, so fewer than
    ``num_steps`` values may come back.
    """
    values: list[int] = []
    for value in geom(range_min, range_max, num_steps):
        rounded = round(value)
        if not values or rounded != values[-1]:
            values.append(rounded)
    return values


def _check_range(range_min: float, range_max: float, num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if (
        range_min <= 0
        or range_max <= 0
        or not (math.isfinite(range_min) and math.isfinite(range_max))
    ):
        raise ValueError("a geometric range needs finite positive bounds")


def slugify(value: object, separator: str = "-") -> str:
    """A file-name-safe, lower-case ASCII rendering of ``value``.

    Dicts (combinations) become ``key-value`` pairs in key order, so the same
    combination always gives the same slug.
    """
    if isinstance(value, Mapping):
        text = separator.join(f"{key}{separator}{value[key]}" for key in sorted(value))
    else:
        text = str(value)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s.-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", separator, text)


def sweep_stats(
    stats: tuple[
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
    ],
) -> dict[str, dict[str, dict[Any, float]]]:
    """Per factor and level: how many combinations are in each state, and the ratios.

    Takes what :meth:`ParamSweeper.stats` returns, ``(sweeps, remaining,
    skipped, inprogress, done)``, and returns a dict with the keys ``total``,
    ``remaining``, ``skipped``, ``inprogress``, ``done`` (counts) and
    ``remaining_ratio``, ``skipped_ratio``, ``inprogress_ratio``,
    ``done_ratio``, each mapping factor -> level -> number.
    """
    names = ("remaining", "skipped", "inprogress", "done")
    sweeps, *states = stats
    total = _count(sweeps)
    result: dict[str, dict[str, dict[Any, float]]] = {"total": total}
    for name, combinations in zip(names, states, strict=True):
        counts = _count(combinations)
        result[name] = {
            factor: {level: counts.get(factor, {}).get(level, 0) for level in levels}
            for factor, levels in total.items()
        }
        result[f"{name}_ratio"] = {
            factor: {level: result[name][factor][level] / levels[level] for level in levels}
            for factor, levels in total.items()
        }
    return result


def _count(combinations: Iterable[Mapping[str, Any]]) -> dict[str, dict[Any, float]]:
    counts: dict[str, dict[Any, float]] = {}
    for combination in combinations:
        for factor, level in combination.items():
            per_level = counts.setdefault(factor, {})
            per_level[level] = per_level.get(level, 0) + 1
    return counts
