"""A first look: a CPU-bound job on a process pool, with failures handled.

Run it with `python3 docs/examples/quickstart.py`.
"""

from __future__ import annotations

import random
import time

import anyio

import asyncexec


def estimate_pi(samples: int, seed: int) -> float:
    """Monte Carlo estimate of pi: pure Python, so it needs processes to scale."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def flaky_division(x: int) -> float:
    return 1.0 / (x % 7)  # fails for multiples of 7


def never_ends() -> None:
    while True:
        pass


async def main() -> None:
    async with asyncexec.ProcessExecutor(n_workers=2) as ex:
        started = time.perf_counter()
        futures = [await ex.submit(estimate_pi, 200_000, seed) for seed in range(16)]
        estimates = await ex.wait(futures)
        elapsed = time.perf_counter() - started
        print(f"pi ~ {sum(estimates) / len(estimates):.5f} from 16 tasks in {elapsed:.2f} s")

        futures = [await ex.submit(flaky_division, x) for x in range(15)]
        ok = failed = 0
        while futures:
            for result in await ex.async_get(futures, timeout=5):
                if isinstance(result, asyncexec.AsyncException):
                    failed += 1
                    assert isinstance(result.exception, ZeroDivisionError)
                else:
                    ok += 1
        print(f"{ok} divisions worked, {failed} raised ZeroDivisionError (caught as such)")

        try:
            await ex.with_options(time_limit=0.5).run(never_ends)
        except asyncexec.TaskTimeout as exc:
            print(f"time limit: {exc}")

        print(f"the pool still works: {await ex.run(estimate_pi, 1000, 1):.2f}")


if __name__ == "__main__":
    anyio.run(main)
