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
from collections.abc import Mapping, Sequence
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
    if isinstance(value, dict):  # execo's HashableDict included
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


with open(sys.argv[1], "rb") as source:
    calls = pickle.load(source)
results = [plain(getattr(execo_engine, name)(*args)) for name, args in calls]
with open(sys.argv[2], "wb") as target:
    pickle.dump(results, target)
"""

Call = tuple[str, tuple[Any, ...]]


def execo(calls: list[Call], directory: Path) -> list[Any]:
    """What execo_engine's functions return for ``calls``, computed in a subprocess.

    Combinations come back as plain dicts.
    """
    source, target = directory / "calls.pickle", directory / "results.pickle"
    source.write_bytes(pickle.dumps(calls))
    subprocess.run(
        [sys.executable, "-c", EXECO_RUNNER, str(source), str(target)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    results: list[Any] = pickle.loads(target.read_bytes())
    return results


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
IGEOM_CASES: list[tuple[int, int, int]] = [
    (1, 100, 10),
    (1, 10, 20),
    (1, 1024, 11),
    (2, 1000, 50),
    (5, 5, 3),
    (1, 2, 5),
    (1, 50, 1),
    (3, 1_000_000, 25),
    (1, 3, 7),
]
RANDOM_SEEDS = range(12)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """execo_engine's results for every comparison of this module, in one subprocess."""
    calls: list[Call] = [("sweep", (EXAMPLE_2,)), ("sweep", ({},))]
    calls += [("sweep", (random_parameters(random.Random(s), [], 0),)) for s in RANDOM_SEEDS]
    calls += [("geom", case) for case in GEOM_CASES]
    calls += [("igeom", case) for case in IGEOM_CASES]
    results = execo(calls, tmp_path_factory.mktemp("execo"))
    return {repr(call): result for call, result in zip(calls, results, strict=True)}


def theirs(reference: dict[str, Any], name: str, *args: Any) -> Any:
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


def test_docstring_example_2_in_execo_order(reference: dict[str, Any]) -> None:
    # execo_engine on Python 3 (ordered dicts) also makes the first factor vary slowest.
    assert sweep(EXAMPLE_2) == theirs(reference, "sweep", EXAMPLE_2)


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
def test_same_combinations_as_execo(seed: int, reference: dict[str, Any]) -> None:
    parameters = random_parameters(random.Random(seed), [], 0)
    ours = sweep(parameters)
    expected = theirs(reference, "sweep", parameters)
    assert len(ours) == len(expected)
    assert canonical(ours) == canonical(expected)
    assert set(ours) == {HashableDict(c) for c in expected}


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


def test_no_factor_gives_one_empty_combination(reference: dict[str, Any]) -> None:
    assert sweep({}) == [{}] == theirs(reference, "sweep", {})


def test_sub_sweep_levels_with_empty_sub_sweep() -> None:
    assert sweep({"a": {1: {}, 2: {"b": [True]}}}) == [{"a": 1}, {"a": 2, "b": True}]


# -- sweep(): bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "error", "match"),
    [
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
        pytest.param(
            {"a": {1: {"b": {2: {"a": [3]}}}}}, ValueError, "'a'", id="sub-sub-repeats-outer"
        ),
        pytest.param(
            {"a": [1], "b": {1: {"c": {2: {"a": [3]}}}}},
            ValueError,
            "'a'",
            id="sub-sub-repeats-sibling",
        ),
    ],
)
def test_bad_input(parameters: dict[Any, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        sweep(parameters)


@pytest.mark.parametrize("parameters", [["a", "b"], "a", None, [("a", [1, 2])]])
def test_parameters_must_be_a_dict(parameters: Any) -> None:
    with pytest.raises(TypeError):
        sweep(parameters)


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


# -- geom / igeom -----------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high", "steps"), GEOM_CASES)
def test_geom_matches_execo(low: float, high: float, steps: int, reference: dict[str, Any]) -> None:
    ours = geom(low, high, steps)
    expected = theirs(reference, "geom", low, high, steps)
    assert len(ours) == len(expected) == steps
    assert all(isinstance(value, float) for value in ours)
    for mine, value in zip(ours, expected, strict=True):
        assert math.isclose(mine, value, rel_tol=1e-12)
    assert ours[0] == float(low)
    assert ours[-1] == float(high if steps > 1 else low)


def test_geom_is_geometric() -> None:
    values = geom(1, 1024, 11)
    ratios = [b / a for a, b in itertools.pairwise(values)]
    assert all(math.isclose(ratio, 2.0, rel_tol=1e-12) for ratio in ratios)


@pytest.mark.parametrize(("low", "high", "steps"), IGEOM_CASES)
def test_igeom_matches_execo(low: int, high: int, steps: int, reference: dict[str, Any]) -> None:
    ours = igeom(low, high, steps)
    assert ours == theirs(reference, "igeom", low, high, steps)
    assert all(isinstance(value, int) for value in ours)
    assert len(set(ours)) == len(ours) <= steps
    assert ours == sorted(ours)
    assert ours[0] == low and ours[-1] == (high if steps > 1 else low)


def test_igeom_drops_duplicates(reference: dict[str, Any]) -> None:
    values = igeom(1, 10, 20)  # 20 steps between 1 and 10 round to 10 distinct integers
    assert values == list(range(1, 11))
    assert len(values) < 20
    assert theirs(reference, "igeom", 1, 10, 20) == values
    assert geom(1, 10, 20)[1] < 2  # the duplicates were there before rounding


@pytest.mark.parametrize(
    ("low", "high", "steps"),
    [
        (0, 10, 3),
        (-1, 10, 3),
        (1, 0, 3),
        (1, -10, 3),
        (1, 10, 0),
        (1, 10, -2),
        (1, math.inf, 3),
        (math.nan, 10, 3),
        (1, math.nan, 3),
    ],
)
def test_bad_geometric_ranges(low: float, high: float, steps: int) -> None:
    with pytest.raises(ValueError, match=r"num_steps|positive"):
        geom(low, high, steps)
    if all(math.isfinite(x) for x in (low, high)):
        with pytest.raises(ValueError, match=r"num_steps|positive"):
            igeom(int(low), int(high), steps)


# -- slugify ----------------------------------------------------------------------------


def test_slugify_dict_is_deterministic() -> None:
    forward = HashableDict(size=100, mode="fast", ratio=0.5)
    backward = HashableDict(ratio=0.5, mode="fast", size=100)
    slug = slugify(forward)
    assert slug == slugify(backward) == slugify(dict(backward)) == slugify(forward)
    assert slug == "mode-fast-ratio-0.5-size-100"


def test_slugify_is_file_name_safe() -> None:
    for value in [
        HashableDict(Name="Élan / vital", path="../../etc", x=1.5),
        "Ça va? <yes> | no * maybe",
        ("a b", 3),
        HashableDict(),
    ]:
        slug = slugify(value)
        assert re.fullmatch(r"[a-z0-9._-]*", slug), slug
        assert "/" not in slug and "\\" not in slug


def test_slugify_separator_and_distinct_combinations() -> None:
    assert slugify({"a": 1, "b": "x"}, separator="_") == "a_1_b_x"
    combinations = sweep({"a": [1, 2, 3], "b": ["x", "y"], "c": [0.5, 1.5]})
    assert len({slugify(c) for c in combinations}) == len(combinations)


# -- sweep_stats ------------------------------------------------------------------------


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
    result = sweep_stats(stats)

    assert result["total"] == {"a": {1: 3, 2: 3}, "b": {"x": 2, "y": 2, "z": 2}}
    assert result["done"] == {"a": {1: 2, 2: 0}, "b": {"x": 1, "y": 1, "z": 0}}
    assert result["skipped"] == {"a": {1: 1, 2: 0}, "b": {"x": 0, "y": 0, "z": 1}}
    assert result["inprogress"] == {"a": {1: 0, 2: 1}, "b": {"x": 1, "y": 0, "z": 0}}
    assert result["remaining"] == {"a": {1: 0, 2: 2}, "b": {"x": 0, "y": 1, "z": 1}}
    for state in ("done", "skipped", "inprogress", "remaining"):
        for factor, levels in result["total"].items():
            for level, total in levels.items():
                assert result[f"{state}_ratio"][factor][level] == pytest.approx(
                    result[state][factor][level] / total
                )
    # Every combination is in exactly one state: per level, the four counts add up.
    for factor, levels in result["total"].items():
        for level, total in levels.items():
            states = ("done", "skipped", "inprogress", "remaining")
            assert sum(result[s][factor][level] for s in states) == total
    assert result["done_ratio"]["a"] == {1: pytest.approx(2 / 3), 2: 0.0}

    # execo's sweep_stats agrees on the same stats (it omits the zero counts).
    plain_stats = tuple([dict(c) for c in part] for part in stats)
    (expected,) = execo([("sweep_stats", (plain_stats,))], tmp_path)
    assert set(expected) == set(result)
    for key, value in result.items():
        if key.endswith("_ratio") or key == "total":
            assert value == expected[key], key
        else:
            nonzero = {f: {lv: n for lv, n in ls.items() if n} for f, ls in value.items()}
            assert {f: ls for f, ls in nonzero.items() if ls} == expected[key], key


def test_sweep_stats_all_remaining(tmp_path: Path) -> None:
    with ParamSweeper(tmp_path / "sweeps", sweep({"n": [1, 2, 3, 4]})) as sweeper:
        result = sweep_stats(sweeper.stats())
    assert result["remaining"] == result["total"] == {"n": {1: 1, 2: 1, 3: 1, 4: 1}}
    assert result["remaining_ratio"] == {"n": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}}
    assert result["done_ratio"] == {"n": {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}}
