"""How do sorting algorithms scale with input size and shape?

Run it with `asyncexec run examples/sorting.py:experiment` (under a minute on
2 cores). Quadratic algorithms are only tried on small inputs: a sub-sweep.
Each run returns the median time of a few sorts, in milliseconds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from asyncexec.experiment import Experiment


def insertion_sort(items: list[int]) -> list[int]:
    items = list(items)
    for index in range(1, len(items)):
        current, position = items[index], index
        while position > 0 and items[position - 1] > current:
            items[position] = items[position - 1]
            position -= 1
        items[position] = current
    return items


def merge_sort(items: list[int]) -> list[int]:
    if len(items) <= 1:
        return list(items)
    middle = len(items) // 2
    left, right = merge_sort(items[:middle]), merge_sort(items[middle:])
    merged, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    return merged + left[i:] + right[j:]


def quick_sort(items: list[int]) -> list[int]:
    if len(items) <= 1:
        return list(items)
    pivot = items[len(items) // 2]
    return (
        quick_sort([x for x in items if x < pivot])
        + [x for x in items if x == pivot]
        + quick_sort([x for x in items if x > pivot])
    )


ALGORITHMS: dict[str, Callable[[list[int]], list[int]]] = {
    "insertion": insertion_sort,
    "merge": merge_sort,
    "quick": quick_sort,
    "timsort": sorted,
}


def make_input(size: int, shape: str, rng: random.Random) -> list[int]:
    if shape == "random":
        return [rng.randrange(size * 10) for _ in range(size)]
    if shape == "sorted":
        return list(range(size))
    if shape == "reversed":
        return list(range(size, 0, -1))
    return [rng.randrange(4) for _ in range(size)]  # "few-unique"


def time_sort(algorithm: str, size: int, shape: str, repeat: int) -> float:
    """Median milliseconds of 3 sorts of a fresh input (seeded by the repeat)."""
    rng = random.Random(repeat)
    sort = ALGORITHMS[algorithm]
    timings = []
    for _ in range(3):
        data = make_input(size, shape, rng)
        start = time.perf_counter()
        result = sort(data)
        timings.append((time.perf_counter() - start) * 1000)
        assert result == sorted(data)
    return round(statistics.median(timings), 3)


experiment = Experiment(
    time_sort,
    {
        "algorithm": {
            "insertion": {"size": [100, 1000, 3000]},
            "merge": {"size": [100, 1000, 10_000, 100_000]},
            "quick": {"size": [100, 1000, 10_000, 100_000]},
            "timsort": {"size": [100, 1000, 10_000, 100_000, 1_000_000]},
        },
        "shape": ["random", "sorted", "reversed", "few-unique"],
    },
    repeats=3,
    name="sorting",
)
