"""sweep() and its helpers, checked against execo_engine's reference implementation.

execo_engine is only ever imported in a subprocess: importing it starts execo's
conductor (an I/O thread, a forked process-group keeper) and takes over
``signal.set_wakeup_fd``, which would make every later trio test in this
process warn (an error here).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import random
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from asyncexec.sweep import HashableDict, ParamSweeper, geom, igeom, slugify, sweep, sweep_stats

# -- the two examples of execo_engine.sweep.sweep's docstring, verbatim ----------------

EXAMPLE_1: dict[str, Any] = {"param 1": ["a", "b"], "param 2": [1, 2]}
EXAMPLE_1_RESULT: list[dict[str, Any]] = [
    {"param 1": "a", "param 2": 1},
    {"param 1": "a", "param 2": 2},
    {"param 1": "b", "param 2": 1},
    {"param 1": "b", "param 2": 2},
]

EXAMPLE_2: dict[str, Any] = {
    "param 1": ["a", "b"],
    "param 2": {
        1: {"param 1 1": ["x", "y"], "param 1 2": [0.0, 1.0]},
        2: {"param 2 1": [-10, 10]},
    },
}
# The docstring's list, as printed (its key order inside each dict is Python 2's).
EXAMPLE_2_RESULT: list[dict[str, Any]] = [
    {"param 1 2": 0.0, "param 1 1": "x", "param 1": "a", "param 2": 1},
    {"param 1 2": 0.0, "param 1 1": "y", "param 1": "a", "param 2": 1},
    {"param 1 2": 1.0, "param 1 1": "x", "param 1": "a", "param 2": 1},
    {"param 1 2": 1.0, "param 1 1": "y", "param 1": "a", "param 2": 1},
    {"param 2 1": -10, "param 1": "a", "param 2": 2},
    {"param 2 1": 10, "param 1": "a", "param 2": 2},
    {"param 1 2": 0.0, "param 1 1": "x", "param 1": "b", "param 2": 1},
    {"param 1 2": 0.0, "param 1 1": "y", "param 1": "b", "param 2": 1},
    {"param 1 2": 1.0, "param 1 1": "x", "param 1": "b", "param 2": 1},
    {"param 1 2": 1.0, "param 1 1": "y", "param 1": "b", "param 2": 1},
    {"param 2 1": -10, "param 1": "b", "param 2": 2},
    {"param 2 1": 10, "param 1": "b", "param 2": 2},
]


def canonical(combinations: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[str, Any], ...]]:
    """The combinations as a sorted list of sorted items: compares multisets of dicts."""
    return sorted((tuple(sorted(c.items())) for c in combinations), key=repr)


EXECO_RUNNER = r"""
import pickle, sys, warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import execo_engine


def plain(value):
    if isinstance(value, dict):  # execo's HashableDict included; the key order is kept
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def call(name, args):
    if name == "slugify_each":  # the slug execo gives each combination its sweep makes
        parameters, separator = args
        return [execo_engine.slugify(c, separator) for c in execo_engine.sweep(parameters)]
    if name == "repr_hashable_dict":
        combination = execo_engine.HashableDict(*args)
        return repr(combination), str(combination)
    return plain(getattr(execo_engine, name)(*args))


def outcome(name, args):
    try:
        return ("returned", call(name, args))
    except Exception as exc:
        return ("raised", type(exc).__name__)


with open(sys.argv[1], "rb") as source:
    calls = pickle.load(source)
results = [outcome(name, args) for name, args in calls]
with open(sys.argv[2], "wb") as target:
    pickle.dump(results, target)
"""

Call = tuple[str, tuple[Any, ...]]
Reference = dict[str, tuple[str, Any]]  # repr(call) -> execo's outcome


def execo_outcomes(calls: list[Call], directory: Path) -> list[tuple[str, Any]]:
    """What execo_engine's functions do for ``calls``, computed in a subprocess:
    ``("returned", value)`` or ``("raised", exception type name)`` for each.

    Combinations come back as plain dicts (their key order kept).
    """
    source, target = directory / "calls.pickle", directory / "results.pickle"
    source.write_bytes(pickle.dumps(calls))
    subprocess.run(
        [sys.executable, "-c", EXECO_RUNNER, str(source), str(target)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    results: list[tuple[str, Any]] = pickle.loads(target.read_bytes())
    return results


def execo(calls: list[Call], directory: Path) -> list[Any]:
    """What execo_engine's functions return for ``calls`` (each must return)."""
    results = execo_outcomes(calls, directory)
    for call, (how, value) in zip(calls, results, strict=True):
        assert how == "returned", f"execo_engine raised {value} for {call!r}"
    return [value for _, value in results]


def outcome(function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What ``function(*args)`` does, in the form of :func:`execo_outcomes`."""
    try:
        return ("returned", function(*args))
    except Exception as exc:
        return ("raised", type(exc).__name__)


def items(combinations: Sequence[Mapping[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Each combination's items in its own key order (the order slugify sees)."""
    return [list(combination.items()) for combination in combinations]


def exact(values: Sequence[float]) -> list[str]:
    """Floats compared to the last bit (repr round-trips)."""
    return [repr(value) for value in values]


GEOM_CASES: list[tuple[float, float, int]] = [
    (1, 100, 5),
    (1, 1000, 7),
    (0.5, 8, 4),
    (2, 3, 10),
    (10, 1, 5),
    (1, 1, 3),
    (3, 3, 1),
    (1e-3, 1e3, 13),
    (7, 7000, 2),
    (1, 2, 1),
]
IGEOM_CASES: list[tuple[float, float, int]] = [
    (1, 100, 10),
    (1, 10, 20),
    (1, 1024, 11),
    (2, 1000, 50),
    (5, 5, 3),
    (1, 2, 5),
    (1, 50, 1),
    (3, 1_000_000, 25),
    (1, 3, 7),
    (100, 1, 5),  # decreasing: execo sorts
    (1000, 3, 12),
    (1.7, 10, 3),  # int(1.7) == 1 is a value of its own
    (0.5, 8.6, 4),
    (2.9, 2.9, 3),
    (9.99, 2.5, 6),
    (7.9, 100, 1),
]
# What execo does with 0 steps, odd steps and odd bounds (values or errors).
GEOMETRIC_EDGE_CASES: list[tuple[float, float, float]] = [
    (1, 100, 0),
    (5, 2, 0),
    (0, 10, 0),
    (1, 100, -1),
    (1, 100, -3),
    (0, 10, -3),
    (-1, 10, -1),
    (1, 10, 2.5),
    (1, 10, 1.5),
    (1, 10, 0.5),
    (2, 1024, 11.0),
    (1, 10, True),
    (0, 10, 1),
    (0, 10, 3),
    (-1, 10, 3),
    (1, 0, 3),
    (1, -10, 3),
    (-1, -100, 4),
    (-2.5, -0.1, 5),
    (1, math.inf, 3),
    (math.nan, 10, 3),
]
# What execo takes without a word: no level, repeated levels, a string as its
# characters, sub-sweeps repeating a factor, non-string factors, unhashable levels.
SWEEP_EDGE_CASES: list[dict[Any, Any]] = [
    {"a": [], "b": [1, 2]},
    {"a": (), "b": {}, "c": ["x"]},
    {"a": [], "b": []},
    {"a": [1, 2, 1]},
    {"a": ["x", "y", "x"], "b": [0.5, 0.5]},
    {"a": {"x": {}, "y": {}}, "b": [3, 3]},
    {"a": {1: {"b": [2, 2]}, 2: {"b": []}}},
    {"a": [1, 1.0, True]},
    {"a": "xyz", "b": [1]},
    {"a": "", "b": [1]},
    {"a": [1], "b": {1: {"a": [2]}}},
    {"b": {1: {"a": [2, 3]}}, "a": [1]},
    {"b": {1: {"b": [2]}, 2: {}}},
    {"a": {1: {"b": {2: {"a": [3]}}}}},
    {"a": [1], "b": {1: {"c": {2: {"a": [3]}}}}},
    {1: [1, 2], ("t",): ["x"], None: [0]},
    {"a": [[1, 2], [3]], "b": [{"x": 1}]},
]
# What strict=True refuses: (parameters, error, message), as pytest params.
BAD_INPUT = [
    pytest.param({"a": [[1, 2], [3]]}, TypeError, "unhashable", id="list-level"),
    pytest.param({"a": [1, {"x": 1}]}, TypeError, "unhashable", id="dict-level"),
    pytest.param({"a": {1: {"b": [[1]]}}}, TypeError, "unhashable", id="list-level-in-sub"),
    pytest.param({"a": []}, ValueError, "'a'", id="empty-levels"),
    pytest.param({"a": ()}, ValueError, "'a'", id="empty-tuple-levels"),
    pytest.param({"a": {}}, ValueError, "'a'", id="empty-sub-sweep-levels"),
    pytest.param({"a": [1, 2, 1]}, ValueError, "twice", id="duplicate-level"),
    pytest.param({"a": ["x", "y", "x"]}, ValueError, "twice", id="duplicate-str-level"),
    pytest.param({"a": {1: {"b": [2, 2]}}}, ValueError, "twice", id="duplicate-in-sub"),
    pytest.param({"a": {1: [1, 2]}}, TypeError, "sub-sweep", id="sub-sweep-list"),
    pytest.param({"a": {1: None}}, TypeError, "sub-sweep", id="sub-sweep-none"),
    pytest.param({"a": {1: "b"}}, TypeError, "sub-sweep", id="sub-sweep-str"),
    pytest.param({"a": "abc"}, TypeError, "'a'", id="str-levels"),
    pytest.param({"a": b"abc"}, TypeError, "'a'", id="bytes-levels"),
    pytest.param({"a": 3}, TypeError, "'a'", id="int-levels"),
    pytest.param({1: [1, 2]}, TypeError, "string", id="int-factor"),
    pytest.param({("a",): [1, 2]}, TypeError, "string", id="tuple-factor"),
    pytest.param({"a": {1: {2: [3]}}}, TypeError, "string", id="int-factor-in-sub"),
    pytest.param({"a": [1], "b": {1: {"a": [2]}}}, ValueError, "'a'", id="sub-repeats-outer"),
    pytest.param({"b": {1: {"a": [2]}}, "a": [1]}, ValueError, "'a'", id="sub-repeats-later"),
    pytest.param({"b": {1: {"b": [2]}}}, ValueError, "'b'", id="sub-repeats-own-factor"),
    pytest.param({"a": {1: {"b": {2: {"a": [3]}}}}}, ValueError, "'a'", id="sub-sub-repeats-outer"),
    pytest.param(
        {"a": [1], "b": {1: {"c": {2: {"a": [3]}}}}},
        ValueError,
        "'a'",
        id="sub-sub-repeats-sibling",
    ),
]
RANDOM_SEEDS = range(12)
WILD_SEEDS = range(40)
SEPARATORS = ["-", "_", "."]


def slugify_cases() -> list[tuple[Any, str]]:
    """Values and separators for slugify: the usual suspects, then random ones."""
    values: list[Any] = [
        3.14,
        -2.5e-07,
        1e21,
        {"size": 100, "mode": "fast", "ratio": 0.5},
        {"ratio": 0.5, "mode": "fast", "size": 100},
        {"a": {"nested": [1, 2.5]}, "b": ("t", None)},
        {"x-y": "a_b", "c d": "e\tf"},
        "A - B _ C -- D __ E",
        "  trailing  - ",
        "Élan / vital: ça va? <yes> | no * maybe",
        "../../etc/passwd",
        ("a b", 3, True),
        "",
        "---___   ",
    ]
    rng = random.Random(2024)
    alphabet = "aZ9 -_.,/\\:;'\"{}()[]\t\nÉéøß€"
    for _ in range(40):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        value: Any = rng.choice(
            [
                text,
                rng.uniform(-1e3, 1e3),
                {text: rng.random(), "k": [text, rng.randint(-5, 5)]},
                (text, rng.random()),
            ]
        )
        values.append(value)
    return [(value, separator) for value in values for separator in SEPARATORS]


SLUGIFY_CASES = slugify_cases()


def wild_parameters(rng: random.Random, depth: int) -> dict[Any, Any]:
    """Random sweeps with everything execo takes silently (see SWEEP_EDGE_CASES)."""
    parameters: dict[Any, Any] = {}
    for _ in range(rng.randint(0, 3)):
        factor = rng.choice(["a", "b", "c", "d", "param 1", 7])  # names recur at every depth
        kind = rng.choice(["list", "list", "empty", "repeated", "str", "sub", "floats"])
        levels: Any
        if kind == "list":
            levels = [rng.randint(0, 9) for _ in range(rng.randint(1, 3))]
        elif kind == "empty":
            levels = rng.choice([[], (), {}, ""])
        elif kind == "repeated":
            level = rng.choice([1, "x", 2.5, (1, "y")])
            levels = [level, rng.randint(0, 3), level]
        elif kind == "str":
            levels = "".join(rng.choice("xyz-_ ") for _ in range(rng.randint(1, 3)))
        elif kind == "floats":
            levels = [rng.choice([0.5, 3.14, 1e-05, 2.0, 1.0, 1]) for _ in range(2)]
        else:
            levels = {
                rng.choice(["u", "v", 1, 2.5]): (
                    wild_parameters(rng, depth + 1) if depth < 2 and rng.random() < 0.8 else {}
                )
                for _ in range(rng.randint(1, 3))
            }
        parameters[factor] = levels
    return parameters


def random_geometric_cases() -> list[tuple[float, float, int]]:
    rng = random.Random(99)
    cases: list[tuple[float, float, int]] = []
    for _ in range(60):
        low: float = rng.choice([rng.randint(1, 1000), rng.uniform(0.01, 1000)])
        high: float = rng.choice([rng.randint(1, 100_000), rng.uniform(0.01, 1e6)])
        if rng.random() < 0.2:
            low, high = -low, -high
        cases.append((low, high, rng.randint(0, 40)))
    return cases


RANDOM_GEOMETRIC_CASES = random_geometric_cases()
HASHABLE_DICT_CASES: list[dict[Any, Any]] = [
    {},
    {"b": 1, "a": (2, "x")},
    {"param 1": "a", "param 2": 0.5, "nested": {"x": [1]}},
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """execo_engine's outcomes for every comparison of this module, in one subprocess."""
    calls: list[Call] = [("sweep", (EXAMPLE_2,)), ("sweep", ({},))]
    calls += [("sweep", (random_parameters(random.Random(s), [], 0),)) for s in RANDOM_SEEDS]
    calls += [("sweep", (parameters,)) for parameters in SWEEP_EDGE_CASES]
    calls += [("sweep", (case.values[0],)) for case in BAD_INPUT]
    for seed in WILD_SEEDS:
        parameters = wild_parameters(random.Random(seed), 0)
        calls += [("sweep", (parameters,)), ("slugify_each", (parameters, "-"))]
    for seed in RANDOM_SEEDS:
        parameters = random_parameters(random.Random(seed), [], 0)
        calls += [("slugify_each", (parameters, separator)) for separator in SEPARATORS]
    calls += [("geom", case) for case in GEOM_CASES]
    calls += [("igeom", case) for case in IGEOM_CASES]
    for case in GEOMETRIC_EDGE_CASES + RANDOM_GEOMETRIC_CASES:
        calls += [("geom", case), ("igeom", case)]
    calls += [("slugify", case) for case in SLUGIFY_CASES]
    calls += [("repr_hashable_dict", (combination,)) for combination in HASHABLE_DICT_CASES]
    calls += [("sweep_stats", (random_stats(seed),)) for seed in STATS_SEEDS]
    outcomes = execo_outcomes(calls, tmp_path_factory.mktemp("execo"))
    return {repr(call): result for call, result in zip(calls, outcomes, strict=True)}


def theirs(reference: Reference, name: str, *args: Any) -> Any:
    """What execo_engine's ``name(*args)`` returned (it must have returned)."""
    how, value = their_outcome(reference, name, *args)
    assert how == "returned", f"execo_engine.{name}{args!r} raised {value}"
    return value


def their_outcome(reference: Reference, name: str, *args: Any) -> tuple[str, Any]:
    return reference[repr((name, args))]


def blocks(values: Sequence[Any]) -> list[Any]:
    """``values`` with runs of equal neighbours collapsed: [a, a, b, b, a] -> [a, b, a]."""
    collapsed: list[Any] = []
    for value in values:
        if not collapsed or collapsed[-1] != value:
            collapsed.append(value)
    return collapsed


# -- sweep(): execo's documented examples -----------------------------------------------


def test_docstring_example_1_exactly() -> None:
    result = sweep(EXAMPLE_1)
    assert result == EXAMPLE_1_RESULT  # same dicts, same order (key order inside ignored)
    assert all(type(combination) is HashableDict for combination in result)


def test_docstring_example_2_same_combinations() -> None:
    result = sweep(EXAMPLE_2)
    assert len(result) == len(EXAMPLE_2_RESULT)
    assert canonical(result) == canonical(EXAMPLE_2_RESULT)
    assert len(set(result)) == len(result)  # every combination once
    assert all(type(combination) is HashableDict for combination in result)


def test_docstring_example_2_exactly_in_order() -> None:
    # The docstring was printed by Python 2, which iterated the sub-sweep of level 1
    # as "param 1 2" then "param 1 1". Given in that order, "first factor varies
    # slowest" yields the docstring's list exactly, in order.
    python2_order = {
        "param 1": ["a", "b"],
        "param 2": {
            1: {"param 1 2": [0.0, 1.0], "param 1 1": ["x", "y"]},
            2: {"param 2 1": [-10, 10]},
        },
    }
    assert sweep(python2_order) == EXAMPLE_2_RESULT


def test_docstring_example_2_in_execo_order(reference: Reference) -> None:
    # execo_engine on Python 3 (ordered dicts) also makes the first factor vary slowest.
    assert items(sweep(EXAMPLE_2)) == items(theirs(reference, "sweep", EXAMPLE_2))


# -- sweep(): order ---------------------------------------------------------------------


def combos(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rows)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        pytest.param(
            {"a": [3, 1], "b": ["y", "x"], "c": [0.5, 0.25]},
            [
                {"a": a, "b": b, "c": c}
                for a in [3, 1]
                for b in ["y", "x"]  # the lists' order, not sorted
                for c in [0.5, 0.25]
            ],
            id="lists",
        ),
        pytest.param(
            {"a": [1, 2], "b": {"x": {}, "y": {"z": [1, 2]}}},
            combos(
                {"a": 1, "b": "x"},
                {"a": 1, "b": "y", "z": 1},
                {"a": 1, "b": "y", "z": 2},
                {"a": 2, "b": "x"},
                {"a": 2, "b": "y", "z": 1},
                {"a": 2, "b": "y", "z": 2},
            ),
            id="sub-sweep-second",
        ),
        pytest.param(
            {"b": {"x": {"z": [1, 2]}, "y": {}}, "a": [2, 1]},
            combos(
                {"b": "x", "z": 1, "a": 2},
                {"b": "x", "z": 1, "a": 1},
                {"b": "x", "z": 2, "a": 2},
                {"b": "x", "z": 2, "a": 1},
                {"b": "y", "a": 2},
                {"b": "y", "a": 1},
            ),
            id="sub-sweep-first",
        ),
        pytest.param(
            {"a": ["p", "q"], "b": {1: {"c": {"u": {"d": [7, 8]}, "v": {}}}, 2: {}}},
            combos(
                {"a": "p", "b": 1, "c": "u", "d": 7},
                {"a": "p", "b": 1, "c": "u", "d": 8},
                {"a": "p", "b": 1, "c": "v"},
                {"a": "p", "b": 2},
                {"a": "q", "b": 1, "c": "u", "d": 7},
                {"a": "q", "b": 1, "c": "u", "d": 8},
                {"a": "q", "b": 1, "c": "v"},
                {"a": "q", "b": 2},
            ),
            id="nested-sub-sweeps",
        ),
    ],
)
def test_first_factor_varies_slowest(
    parameters: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    result = sweep(parameters)
    assert result == expected
    first = next(iter(parameters))
    assert blocks([c[first] for c in result]) == list(parameters[first])


def test_execo_example_2_first_factor_varies_slowest() -> None:
    assert blocks([c["param 1"] for c in sweep(EXAMPLE_2)]) == ["a", "b"]
    for level in ("a", "b"):
        assert blocks([c["param 2"] for c in sweep(EXAMPLE_2) if c["param 1"] == level]) == [1, 2]


def test_order_is_deterministic_across_processes_and_hash_seeds() -> None:
    parameters = {
        "size": [10, 100, 1000],
        "mode": {"fast": {"threads": [1, 2]}, "slow": {"delay": [0.5]}},
        "label": ["x", "y"],
    }
    expected = [sorted(c.items()) for c in sweep(parameters)]
    assert [sorted(c.items()) for c in sweep(parameters)] == expected
    code = (
        "import json, sys\n"
        "from asyncexec.sweep import slugify, sweep\n"
        "result = sweep(json.loads(sys.argv[1]))\n"
        "print(json.dumps([[sorted(c.items()) for c in result], [slugify(c) for c in result]]))\n"
    )
    for seed in ("0", "1", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(parameters)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        items, slugs = json.loads(done.stdout)
        assert [[tuple(pair) for pair in c] for c in items] == [
            [tuple(pair) for pair in c] for c in expected
        ]
        assert slugs == [slugify(c) for c in sweep(parameters)]


# -- sweep(): against execo_engine on random-ish inputs -------------------------------


def random_parameters(rng: random.Random, names: list[str], depth: int) -> dict[str, Any]:
    """1 to 3 factors of 1 to 4 distinct levels; some factors get sub-sweeps."""
    parameters: dict[str, Any] = {}
    for _ in range(rng.randint(1, 3)):
        factor = f"f{len(names)}"
        names.append(factor)
        kind = rng.choice(["int", "str", "float", "tuple"])
        count = rng.randint(1, 4)
        choices: dict[str, list[Any]] = {
            "int": [rng.randint(-50, 50) * 4 + i for i in range(count)],
            "str": [f"level-{rng.randint(0, 99)}-{i}" for i in range(count)],
            "float": [rng.random() + 2 * i + 0.5 for i in range(count)],
            "tuple": [(i, rng.choice("abc")) for i in range(count)],
        }
        levels = choices[kind]
        if depth < 2 and rng.random() < 0.35:
            parameters[factor] = {
                level: (random_parameters(rng, names, depth + 1) if rng.random() < 0.7 else {})
                for level in levels
            }
        else:
            parameters[factor] = levels
    return parameters


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_same_combinations_as_execo(seed: int, reference: Reference) -> None:
    parameters = random_parameters(random.Random(seed), [], 0)
    ours = sweep(parameters)
    expected = theirs(reference, "sweep", parameters)
    assert len(ours) == len(expected)
    assert canonical(ours) == canonical(expected)
    assert set(ours) == {HashableDict(c) for c in expected}
    assert items(ours) == items(expected)  # same order, same key order in each


@pytest.mark.parametrize("parameters", SWEEP_EDGE_CASES, ids=repr)
def test_edge_cases_as_execo(parameters: dict[Any, Any], reference: Reference) -> None:
    # No level: the factor is left out; a level twice: its combinations twice; a
    # string: its characters; a sub-sweep's factor overrides (in place, as dict.update).
    assert items(sweep(parameters)) == items(theirs(reference, "sweep", parameters))


@pytest.mark.parametrize("seed", WILD_SEEDS)
def test_wild_random_sweeps_as_execo(seed: int, reference: Reference) -> None:
    parameters = wild_parameters(random.Random(seed), 0)
    how, expected = their_outcome(reference, "sweep", parameters)
    if how == "raised":  # execo refuses few things (no .items(), no len()): so do we
        with pytest.raises((TypeError, AttributeError)):
            sweep(parameters)
        return
    ours = sweep(parameters)
    assert items(ours) == items(expected)
    assert all(type(combination) is HashableDict for combination in ours)
    assert [slugify(c) for c in ours] == theirs(reference, "slugify_each", parameters, "-")


def test_wild_random_sweeps_cover_the_edge_cases() -> None:
    # Guard for test_wild_random_sweeps_as_execo: its inputs do have the edge cases.
    seen: set[str] = set()

    def visit(parameters: dict[Any, Any], outer: set[Any]) -> None:
        for factor, levels in parameters.items():
            if len(levels) == 0:
                seen.add("no level")
            elif isinstance(levels, str):
                seen.add("string")
            elif isinstance(levels, dict):
                seen.add("sub-sweep")
                for sub in levels.values():
                    if outer & set(sub) or factor in sub:
                        seen.add("override")
                    visit(sub, outer | {factor})
            elif len(set(levels)) < len(levels):
                seen.add("repeated")
            outer = outer | {factor}

    for seed in WILD_SEEDS:
        parameters = wild_parameters(random.Random(seed), 0)
        visit(parameters, set())
    assert seen >= {"no level", "string", "sub-sweep", "override", "repeated"}


def test_random_inputs_include_sub_sweeps() -> None:
    # Guard for test_same_combinations_as_execo: its inputs do exercise sub-sweeps.
    with_sub_sweeps = [
        seed
        for seed in RANDOM_SEEDS
        if any(isinstance(v, dict) for v in random_parameters(random.Random(seed), [], 0).values())
    ]
    assert len(with_sub_sweeps) >= 3


def test_generators_and_tuples_as_levels() -> None:
    assert sweep({"a": (1, 2), "b": (x for x in "xy")}) == sweep({"a": [1, 2], "b": ["x", "y"]})


def test_no_factor_gives_one_empty_combination(reference: Reference) -> None:
    assert sweep({}) == [{}] == theirs(reference, "sweep", {})


def test_sub_sweep_levels_with_empty_sub_sweep() -> None:
    assert sweep({"a": {1: {}, 2: {"b": [True]}}}) == [{"a": 1}, {"a": 2, "b": True}]


# -- sweep(): bad input -----------------------------------------------------------------


@pytest.mark.parametrize(("parameters", "error", "match"), BAD_INPUT)
def test_bad_input_with_strict(
    parameters: dict[Any, Any], error: type[Exception], match: str, reference: Reference
) -> None:
    with pytest.raises(error, match=match):
        sweep(parameters, strict=True)
    # Without strict, execo's way: what execo takes, we take alike; what it refuses, we refuse.
    how, expected = their_outcome(reference, "sweep", parameters)
    if how == "returned":
        assert items(sweep(parameters)) == items(expected)
    else:
        with pytest.raises((TypeError, AttributeError)):
            sweep(parameters)


@pytest.mark.parametrize("parameters", [["a", "b"], "a", None, [("a", [1, 2])]])
@pytest.mark.parametrize("strict", [False, True])
def test_parameters_must_be_a_dict(parameters: Any, strict: bool) -> None:
    with pytest.raises(TypeError):  # execo: AttributeError (no .items())
        sweep(parameters, strict=strict)


def test_strict_takes_what_is_sound_and_gives_the_same(reference: Reference) -> None:
    for seed in RANDOM_SEEDS:
        parameters = random_parameters(random.Random(seed), [], 0)
        assert items(sweep(parameters, strict=True)) == items(sweep(parameters))
    assert sweep(EXAMPLE_2, strict=True) == theirs(reference, "sweep", EXAMPLE_2)


# -- HashableDict -----------------------------------------------------------------------


def test_hashable_dict_hash_ignores_key_order() -> None:
    forward = HashableDict(a=1, b="x", c=(1, 2))
    backward = HashableDict([("c", (1, 2)), ("b", "x"), ("a", 1)])
    assert list(forward) != list(backward)
    assert forward == backward
    assert hash(forward) == hash(backward)
    assert len({forward, backward}) == 1
    assert {forward: "value"}[backward] == "value"
    assert forward == {"b": "x", "a": 1, "c": (1, 2)}


def test_hashable_dict_different_content_differs() -> None:
    combinations = [HashableDict(a=1), HashableDict(a=2), HashableDict(a=1, b=1), HashableDict()]
    assert len(set(combinations)) == 4
    assert HashableDict(a=1) != HashableDict(a=2)


def test_hashable_dicts_in_sets() -> None:
    result = sweep({"a": [1, 2, 3], "b": ["x", "y"]})
    assert len(set(result)) == 6
    shuffled = [HashableDict(reversed(list(c.items()))) for c in result]
    assert set(shuffled) == set(result)
    assert set(result) - {HashableDict(b="x", a=1)} == set(result[1:])


def test_hashable_dict_survives_pickle() -> None:
    combination = HashableDict(a=1, b=("x", 2.5))
    copy = pickle.loads(pickle.dumps(combination))
    assert type(copy) is HashableDict
    assert copy == combination and hash(copy) == hash(combination)


def test_hashable_dict_with_unhashable_value_is_unhashable() -> None:
    with pytest.raises(TypeError):
        hash(HashableDict(a=[1, 2]))


@pytest.mark.parametrize("combination", HASHABLE_DICT_CASES, ids=repr)
def test_hashable_dict_prints_as_execo(combination: dict[Any, Any], reference: Reference) -> None:
    ours = HashableDict(combination)
    assert (repr(ours), str(ours)) == theirs(reference, "repr_hashable_dict", combination)
    assert repr(ours) == repr(combination)  # a plain dict's
    assert repr(sweep({"a": [1]})) == "[{'a': 1}]"


# -- geom / igeom -----------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high", "steps"), GEOM_CASES)
def test_geom_matches_execo(low: float, high: float, steps: int, reference: Reference) -> None:
    ours = geom(low, high, steps)
    expected = theirs(reference, "geom", low, high, steps)
    assert len(ours) == len(expected) == steps
    assert all(isinstance(value, float) for value in ours)
    assert exact(ours) == exact(expected)  # to the last bit
    assert ours[0] == float(low)
    assert ours[-1] == float(high if steps > 1 else low)


def test_geom_is_geometric() -> None:
    values = geom(1, 1024, 11)
    ratios = [b / a for a, b in itertools.pairwise(values)]
    assert all(math.isclose(ratio, 2.0, rel_tol=1e-12) for ratio in ratios)


@pytest.mark.parametrize(("low", "high", "steps"), IGEOM_CASES)
def test_igeom_matches_execo(low: float, high: float, steps: int, reference: Reference) -> None:
    ours = igeom(low, high, steps)
    assert ours == theirs(reference, "igeom", low, high, steps)
    assert all(type(value) is int for value in ours)
    assert len(set(ours)) == len(ours) <= steps + 2  # + 2: bounds that are not integers
    assert ours == sorted(ours)  # also when high < low
    bounds = {int(low), int(high)} if steps > 1 else {int(low)}
    assert bounds <= set(ours)  # the bounds, truncated, are always in


def test_igeom_sorts_and_keeps_the_truncated_bounds(reference: Reference) -> None:
    assert igeom(100, 1, 5) == [1, 3, 10, 32, 100] == theirs(reference, "igeom", 100, 1, 5)
    # geom(1.7, 10, 3) rounds to 2, 4, 10; int(1.7) == 1 comes too.
    assert igeom(1.7, 10, 3) == [1, 2, 4, 10] == theirs(reference, "igeom", 1.7, 10, 3)


@pytest.mark.parametrize(("low", "high", "steps"), GEOMETRIC_EDGE_CASES)
def test_geometric_edge_cases_as_execo(
    low: float, high: float, steps: int, reference: Reference
) -> None:
    # 0 steps: []; and whatever else execo does with odd steps or bounds, value or error.
    for function in (geom, igeom):
        how, expected = their_outcome(reference, function.__name__, low, high, steps)
        how_ours, ours = outcome(function, low, high, steps)
        assert (how_ours, exact(ours) if how == "returned" else ours) == (
            how,
            exact(expected) if how == "returned" else expected,
        ), function.__name__


def test_zero_steps_give_nothing(reference: Reference) -> None:
    assert geom(1, 100, 0) == [] == theirs(reference, "geom", 1, 100, 0)
    assert igeom(1, 100, 0) == [] == theirs(reference, "igeom", 1, 100, 0)
    assert geom(1, 100, 0, strict=True) == [] == igeom(1, 100, 0, strict=True)


@pytest.mark.parametrize("case", RANDOM_GEOMETRIC_CASES, ids=repr)
def test_random_geometric_ranges_as_execo(
    case: tuple[float, float, int], reference: Reference
) -> None:
    assert exact(geom(*case)) == exact(theirs(reference, "geom", *case))
    assert igeom(*case) == theirs(reference, "igeom", *case)
    assert geom(*case, strict=True) == geom(*case)  # sound ranges: strict changes nothing
    assert igeom(*case, strict=True) == igeom(*case)


def test_igeom_drops_duplicates(reference: Reference) -> None:
    values = igeom(1, 10, 20)  # 20 steps between 1 and 10 round to 10 distinct integers
    assert values == list(range(1, 11))
    assert len(values) < 20
    assert theirs(reference, "igeom", 1, 10, 20) == values
    assert geom(1, 10, 20)[1] < 2  # the duplicates were there before rounding


@pytest.mark.parametrize(
    ("low", "high", "steps"),
    [
        (0, 10, 3),
        (0, 10, 1),
        (-1, 10, 3),
        (1, 0, 3),
        (1, -10, 3),
        (1, 10, -2),
        (1, 10, 2.5),
        (1, 10, True),
        (1, math.inf, 3),
        (-math.inf, -1, 3),
        (math.nan, 10, 3),
        (1, math.nan, 3),
    ],
)
def test_bad_geometric_ranges_with_strict(low: float, high: float, steps: float) -> None:
    with pytest.raises(ValueError, match=r"num_steps|bounds"):
        geom(low, high, steps, strict=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_steps|bounds"):
        igeom(low, high, steps, strict=True)  # type: ignore[arg-type]


# -- slugify ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "separator"), SLUGIFY_CASES, ids=repr)
def test_slugify_as_execo(value: Any, separator: str, reference: Reference) -> None:
    assert slugify(value, separator) == theirs(reference, "slugify", value, separator)


def test_slugify_keeps_dict_order_and_drops_dots(reference: Reference) -> None:
    forward = HashableDict(size=100, mode="fast", ratio=0.5)
    backward = HashableDict(ratio=0.5, mode="fast", size=100)
    assert slugify(forward) == "size-100-mode-fast-ratio-05" == slugify(dict(forward))
    assert slugify(backward) == "ratio-05-mode-fast-size-100"
    assert slugify(3.14) == "314" == theirs(reference, "slugify", 3.14, "-")
    assert slugify("x-y z", "_") == "x-y_z"  # a "-" stays when the separator is "_"
    for value in (forward, backward):
        assert slugify(value) == theirs(reference, "slugify", dict(value), "-")


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
@pytest.mark.parametrize("separator", SEPARATORS)
def test_slugs_of_combinations_are_execos_file_names(
    seed: int, separator: str, reference: Reference
) -> None:
    # A port of an execo script names its files from slugify(combination): the
    # same names, so it finds the files an execo run wrote.
    parameters = random_parameters(random.Random(seed), [], 0)
    slugs = [slugify(combination, separator) for combination in sweep(parameters)]
    assert slugs == theirs(reference, "slugify_each", parameters, separator)


def test_slugify_is_file_name_safe() -> None:
    for value in [
        HashableDict(Name="Élan / vital", path="../../etc", x=1.5),
        "Ça va? <yes> | no * maybe",
        ("a b", 3),
        HashableDict(),
    ]:
        slug = slugify(value)
        assert re.fullmatch(r"[a-z0-9_-]*", slug), slug
        assert "/" not in slug and "\\" not in slug


def test_slugify_separator_and_distinct_combinations() -> None:
    assert slugify({"a": 1, "b": "x"}, separator="_") == "a_1_b_x"
    combinations = sweep({"a": [1, 2, 3], "b": ["x", "y"], "c": [0.5, 1.5]})
    assert len({slugify(c) for c in combinations}) == len(combinations)


# -- sweep_stats ------------------------------------------------------------------------


def ordered(value: Any) -> Any:
    """Nested dicts as nested lists of items: compares their key order too."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    return value


Stats = tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]


def random_stats(seed: int) -> Stats:
    """Sweeps and four random (overlapping) parts of them, some from outside the sweeps."""
    rng = random.Random(seed)
    combinations = [dict(c) for c in sweep(random_parameters(rng, [], 0))]
    outside = [{**c, "extra": rng.randint(0, 2)} for c in rng.sample(combinations, 1)]
    outside.append({next(iter(combinations[0])): "a level not in the sweeps"})

    def part() -> list[Any]:
        return rng.sample(combinations + outside, rng.randint(0, len(combinations)))

    return combinations, part(), part(), part(), part()


STATS_SEEDS = range(10)


def test_sweep_stats_counts_and_ratios(tmp_path: Path) -> None:
    combinations = sweep({"a": [1, 2], "b": ["x", "y", "z"]})

    def pick(**wanted: Any) -> Any:
        def only(remaining: Any) -> list[Any]:
            return [c for c in remaining if all(c[k] == v for k, v in wanted.items())]

        return only

    with ParamSweeper(tmp_path / "sweeps", combinations) as sweeper:
        for done in [sweeper.get_next(pick(a=1, b="x")), sweeper.get_next(pick(a=1, b="y"))]:
            sweeper.done(done)
        sweeper.skip(sweeper.get_next(pick(a=1, b="z")))
        assert sweeper.get_next(pick(a=2, b="x")) == {"a": 2, "b": "x"}  # stays in progress
        stats = sweeper.stats()

    # As execo's: a count lists only the levels seen in that state.
    result = sweep_stats(stats)
    assert result["total"] == {"a": {1: 3, 2: 3}, "b": {"x": 2, "y": 2, "z": 2}}
    assert result["done"] == {"a": {1: 2}, "b": {"x": 1, "y": 1}}
    assert result["skipped"] == {"a": {1: 1}, "b": {"z": 1}}
    assert result["inprogress"] == {"a": {2: 1}, "b": {"x": 1}}
    assert result["remaining"] == {"a": {2: 2}, "b": {"y": 1, "z": 1}}
    assert result["done_ratio"]["a"] == {1: pytest.approx(2 / 3), 2: 0.0}
    plain_stats = tuple([dict(c) for c in part] for part in stats)
    (expected,) = execo([("sweep_stats", (plain_stats,))], tmp_path)
    assert ordered(result) == ordered(expected)

    # all_levels: every level of the total in every count, 0 for those not seen.
    full = sweep_stats(stats, all_levels=True)
    assert full["done"] == {"a": {1: 2, 2: 0}, "b": {"x": 1, "y": 1, "z": 0}}
    assert full["skipped"] == {"a": {1: 1, 2: 0}, "b": {"x": 0, "y": 0, "z": 1}}
    assert full["inprogress"] == {"a": {1: 0, 2: 1}, "b": {"x": 1, "y": 0, "z": 0}}
    assert full["remaining"] == {"a": {1: 0, 2: 2}, "b": {"x": 0, "y": 1, "z": 1}}
    states = ("done", "skipped", "inprogress", "remaining")
    for factor, levels in full["total"].items():
        for level, total in levels.items():
            # Every combination is in exactly one state: per level, the counts add up.
            assert sum(full[state][factor][level] for state in states) == total
            for state in states:
                assert full[f"{state}_ratio"][factor][level] == pytest.approx(
                    full[state][factor][level] / total
                )
    assert {k: v for k, v in full.items() if k.endswith("_ratio") or k == "total"} == {
        k: v for k, v in result.items() if k.endswith("_ratio") or k == "total"
    }


@pytest.mark.parametrize("seed", STATS_SEEDS)
def test_sweep_stats_as_execo(seed: int, reference: Reference) -> None:
    stats = random_stats(seed)
    expected = theirs(reference, "sweep_stats", stats)
    assert ordered(sweep_stats(stats)) == ordered(expected)
    assert sweep_stats(tuple([HashableDict(c) for c in part] for part in stats)) == expected  # type: ignore[arg-type]


def test_sweep_stats_all_remaining(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", sweep({"n": [1, 2, 3, 4]})) as sweeper:
        result = sweep_stats(sweeper.stats())
    assert result["remaining"] == result["total"] == {"n": {1: 1, 2: 1, 3: 1, 4: 1}}
    assert result["remaining_ratio"] == {"n": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}}
    assert result["done_ratio"] == {"n": {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}}
    assert result["done"] == result["skipped"] == result["inprogress"] == {}
