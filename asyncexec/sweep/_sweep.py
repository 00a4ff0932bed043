"""Full factorial sweeps and their helpers, with execo_engine 2.8's semantics exactly.

Each function returns what ``execo_engine``'s function of the same name returns
for the same input (a port of an execo script runs unchanged and finds its
files). Where execo accepts dubious input silently, ``strict=True`` refuses it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["HashableDict", "geom", "igeom", "slugify", "sweep", "sweep_stats"]


class HashableDict(dict[str, Any]):
    """A dict usable as a dict key or set member: one parameter combination.

    Hashing is by content (the items sorted by key, as execo's), so equal
    combinations hash alike whatever their key order. It prints as a plain
    dict. Do not change one after using it as a key.
    """

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple((key, self[key]) for key in sorted(self)))


def sweep(parameters: Mapping[str, Any], *, strict: bool = False) -> list[HashableDict]:
    """All combinations of the levels of each factor (a full factorial design).

    ``parameters`` maps each factor to its levels: a sequence, or a dict whose
    keys are the levels and whose values are sub-sweeps (dicts of factors)
    explored only with that level. Combinations come in a fixed order: the
    first factor varies slowest; a level's sub-sweep factors come after it.

    >>> sweep({"param 1": ["a", "b"], "param 2": [1, 2]})  # doctest: +NORMALIZE_WHITESPACE
    [{'param 1': 'a', 'param 2': 1}, {'param 1': 'a', 'param 2': 2},
     {'param 1': 'b', 'param 2': 1}, {'param 1': 'b', 'param 2': 2}]

    As execo's: a factor with no level is left out, a level given twice gives
    its combinations twice, a sub-sweep's factor overrides a factor of the same
    name (in place, as ``dict.update``), a string's characters are its levels,
    and factors need not be strings. Unlike execo's, levels may also be any
    iterable (a generator).

    Args:
        parameters: factor -> levels (a sequence, or a dict of level -> sub-sweep).
        strict: refuse, instead of execo's silent handling, a factor that is not
            a string, levels that are a string or not a list or dict, no level,
            an unhashable level, a level given twice, and a factor given twice
            (in a sub-sweep and outside it).

    Raises:
        TypeError: ``parameters`` or a sub-sweep is not a dict, or levels are
            not iterable; with ``strict``, also a bad factor, levels or level.
        ValueError: with ``strict`` only: no level, a level given twice, or a
            factor given twice.
    """
    if not isinstance(parameters, Mapping):
        raise TypeError(
            f"sweep() takes a dict of factor -> levels, got {type(parameters).__name__}"
        )
    return _expand(parameters, strict)


_NO_SUB_SWEEP: list[Mapping[str, Any]] = [{}]


def _expand(parameters: Mapping[str, Any], strict: bool) -> list[HashableDict]:
    combinations = [HashableDict()]
    for factor, levels in parameters.items():
        if strict and not isinstance(factor, str):
            raise TypeError(f"factor names must be strings, got {factor!r}")
        branches: list[tuple[Any, Sequence[Mapping[str, Any]]]] = []
        if isinstance(levels, dict):
            if strict:
                _check_levels(factor, list(levels))
            for level, sub_parameters in levels.items():
                if not isinstance(sub_parameters, Mapping):
                    raise TypeError(
                        f"the sub-sweep of level {level!r} of factor {factor!r} must be a dict "
                        f"of factor -> levels, got {type(sub_parameters).__name__}"
                    )
                branches.append((level, _expand(sub_parameters, strict)))
        else:
            if not isinstance(levels, Iterable) or (
                strict and isinstance(levels, (str, bytes, Mapping))
            ):
                raise TypeError(
                    f"the levels of factor {factor!r} must be a list (or a dict of sub-sweeps), "
                    f"got {type(levels).__name__}"
                )
            values = list(levels)
            if strict:
                _check_levels(factor, values)
            branches = [(value, _NO_SUB_SWEEP) for value in values]
        if not branches:
            continue  # as execo: a factor with no level is left out
        # As execo: each combination so far, then each level with its sub-sweep.
        combinations = [
            _merge(combination, factor, level, sub, strict)
            for combination in combinations
            for level, sub_combinations in branches
            for sub in sub_combinations
        ]
    return combinations


def _merge(
    combination: Mapping[str, Any],
    factor: str,
    level: Any,
    sub: Mapping[str, Any],
    strict: bool,
) -> HashableDict:
    merged = HashableDict(combination)
    for name, value in ((factor, level), *sub.items()):
        if strict and name in merged:
            raise ValueError(
                f"factor {name!r} is given twice (a sub-sweep repeats a factor of the sweep)"
            )
        merged[name] = value  # as execo's dict.update: the later one wins
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


def geom(
    range_min: float, range_max: float, num_steps: int, *, strict: bool = False
) -> list[float]:
    """``num_steps`` floats from ``range_min`` to ``range_max``, evenly spaced in log scale.

    As execo's, to the last bit: ``[]`` for 0 steps, ``[float(range_min)]`` for
    1, and both bounds exactly (as floats) otherwise.

    Args:
        range_min: the first value.
        range_max: the last value (it may be below ``range_min``).
        num_steps: how many values.
        strict: refuse what execo takes silently (and answers with nonsense or
            an arithmetic error): ``num_steps`` not an integer or negative,
            bounds that are zero, not finite, or of opposite signs.

    Raises:
        ValueError: with ``strict``, a bad range or ``num_steps``.
        ZeroDivisionError: (without ``strict``) a zero ``range_min``, as execo.
    """
    if strict:
        _check_range(range_min, range_max, num_steps)
    if num_steps == 0:
        return []
    if num_steps == 1:
        return [float(range_min)]
    steps = int(num_steps)
    low = float(range_min)
    middle: list[float] = []
    if steps > 0:  # execo computes the ratio only when it has a step to compute
        ratio = math.pow(float(range_max) / low, 1.0 / (steps - 1))
        middle = [low * math.pow(ratio, step) for step in range(steps)][1:-1]
    return [low, *middle, float(range_max)]


def igeom(range_min: float, range_max: float, num_steps: int, *, strict: bool = False) -> list[int]:
    """Integers from ``range_min`` to ``range_max`` in a geometric progression, sorted.

    As execo's: the values of :func:`geom` rounded, with the bounds truncated
    to integers (``int(range_min)``, ``int(range_max)``) always included, each
    value once, in increasing order (even when ``range_max < range_min``); so
    fewer than ``num_steps`` values may come back, or more when a bound is
    not an integer (``igeom(1.7, 10, 3) == [1, 2, 4, 10]``). ``[]`` for 0
    steps, ``[int(range_min)]`` for 1.

    Args:
        strict: as for :func:`geom`.

    Raises:
        ValueError: with ``strict``, a bad range or ``num_steps``.
    """
    if strict:
        _check_range(range_min, range_max, num_steps)
    if num_steps == 0:
        return []
    if num_steps == 1:
        return [int(range_min)]
    rounded = {round(value) for value in geom(range_min, range_max, num_steps)}
    return sorted({int(range_min), *rounded, int(range_max)})


def _check_range(range_min: float, range_max: float, num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    if not (math.isfinite(range_min) and math.isfinite(range_max)):
        raise ValueError(f"a geometric range needs finite bounds, got {range_min!r}, {range_max!r}")
    if range_min == 0 or range_max == 0 or (range_min < 0) != (range_max < 0):
        raise ValueError(
            "a geometric range needs nonzero bounds of the same sign, "
            f"got {range_min!r}, {range_max!r}"
        )


def slugify(value: object, separator: str = "-") -> str:
    """A file-name-safe, lower-case ASCII rendering of ``str(value)``, as execo's.

    Accents are stripped, then every character but letters, digits, ``_``,
    ``-`` and whitespace is dropped (``3.14`` gives ``314``; a dict gives its
    keys and values in its own order: ``{'a': 1, 'b': 'x'}`` gives ``a-1-b-x``),
    and runs of whitespace and ``separator`` become one ``separator`` (with
    ``separator="_"``, a ``-`` stays).

    Args:
        value: anything; its ``str()`` is slugified.
        separator: as execo's, it goes into a regular expression's character
            class as it is: use one character with no special meaning there.
    """
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("", text).strip().lower()
    if separator == "-":
        return _DASHES.sub("-", text)
    return re.sub("[" + separator + r"\s]+", separator, text)


_UNSAFE = re.compile(r"[^\w\s-]")
_DASHES = re.compile(r"[-\s]+")


def sweep_stats(
    stats: tuple[
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
        Iterable[Mapping[str, Any]],
    ],
    *,
    all_levels: bool = False,
) -> dict[str, dict[str, dict[Any, float]]]:
    """Per factor and level: how many combinations are in each state, and the ratios.

    Takes what :meth:`ParamSweeper.stats` returns, ``(sweeps, remaining,
    skipped, inprogress, done)``, and returns a dict with the keys ``total``,
    ``remaining``, ``skipped``, ``inprogress``, ``done`` (counts) and
    ``remaining_ratio``, ``skipped_ratio``, ``inprogress_ratio``,
    ``done_ratio``, each mapping factor -> level -> number.

    As execo's, a count lists only the factors and levels seen in that state;
    a ratio lists every level of ``total``.

    Args:
        stats: ``(sweeps, remaining, skipped, inprogress, done)``.
        all_levels: list every factor and level of ``total`` in every count,
            with 0 for those not seen in that state.
    """
    names = ("remaining", "skipped", "inprogress", "done")
    sweeps, *states = stats
    total = _count(sweeps)
    result: dict[str, dict[str, dict[Any, float]]] = {"total": total}
    for name, combinations in zip(names, states, strict=True):
        counts = _count(combinations)
        if all_levels:
            counts = {
                factor: {level: counts.get(factor, {}).get(level, 0) for level in levels}
                for factor, levels in total.items()
            }
        result[name] = counts
        result[f"{name}_ratio"] = {
            factor: {
                level: counts.get(factor, {}).get(level, 0) / float(count)
                for level, count in levels.items()
            }
            for factor, levels in total.items()
        }
    return result


def _count(combinations: Iterable[Mapping[str, Any]]) -> dict[str, dict[Any, float]]:
    counts: dict[str, dict[Any, float]] = {}
    for combination in combinations:
        for factor in combination:
            per_level = counts.setdefault(factor, {})
            level = combination[factor]
            per_level[level] = per_level.get(level, 0) + 1
    return counts
