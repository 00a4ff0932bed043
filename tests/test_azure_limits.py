"""The client-side ARM limits: token buckets and sliding-window quotas (no service needed).

Small numbers and short windows (or a ``time_scale``) keep these fast; the
timings are checked from below only (a loaded machine is slower, never faster).
"""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from asyncexec.launchers.azure._limits import ArmLimits, TokenBucket, Window

from .conftest import ASYNCIO, TRIO, UVLOOP, loops

pytestmark = pytest.mark.anyio


@pytest.fixture(params=loops(ASYNCIO, TRIO, UVLOOP))
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """asyncio, trio and uvloop: the package's code is anyio only."""
    return request.param


#: Slack for the clocks' granularity in the lower bounds.
EPS = 0.01


async def in_line(bucket: TokenBucket, n: int) -> None:
    """Return once ``n`` callers are in the bucket's line (trio runs a task started with
    ``start_soon`` at its next batch, in either order with the starter: one checkpoint
    is not enough)."""
    with anyio.fail_after(5):
        while bucket.waiting < n:
            await anyio.lowlevel.checkpoint()


async def test_bucket_passes_a_burst_then_paces_at_its_rate() -> None:
    bucket = TokenBucket(5, 50.0)
    for _ in range(5):
        await bucket.take()
    assert bucket.stats().waits == 0
    started = time.monotonic()
    for _ in range(10):
        await bucket.take()
    # Ten more tokens at 50 a second: 0.2 s at least.
    assert time.monotonic() - started >= 10 / 50 - EPS
    stats = bucket.stats()
    assert stats.taken == 15
    assert stats.waits >= 9
    assert stats.waited > 0


async def test_bucket_refuses_more_than_it_holds() -> None:
    with pytest.raises(ValueError, match="cannot take 3"):
        await TokenBucket(2, 1.0).take(3)


async def test_window_waits_for_the_oldest_take_to_leave() -> None:
    window = Window(3, 0.3)
    started = time.monotonic()
    for _ in range(3):
        await window.take()
    assert window.room == 0
    assert window.stats().waits == 0
    await window.take()
    assert time.monotonic() - started >= 0.3 - EPS
    assert window.stats().waits == 1
    assert window.used <= 3


async def test_limits_take_every_create_window_at_once() -> None:
    # 2 per 100 s and 3 per 1000 s, scaled down to 2 per 0.05 s and 3 per 0.5 s.
    limits = ArmLimits(creates=((2, 100.0), (3, 1000.0)), time_scale=0.0005)
    assert [(w.limit, w.seconds) for w in limits.creates] == [(2, 0.05), (3, 0.5)]
    started = time.monotonic()
    await limits.create()
    await limits.create()
    await limits.create()  # the short window: after 0.05 s
    assert time.monotonic() - started >= 0.05 - EPS
    await limits.create()  # the long one: after 0.5 s
    assert time.monotonic() - started >= 0.5 - EPS
    stats = limits.stats()
    assert (stats["create"].taken, stats["create"].waits) == (4, 2)
    assert stats["remove"].taken == 0  # removals are counted apart
    # Every window holds every create: a place is never taken in one alone.
    assert [w.stats().taken for w in limits.creates] == [4, 4]


async def test_limits_scale_the_buckets_refill() -> None:
    limits = ArmLimits(reads=(2, 1.0), time_scale=0.01)  # 1 a second -> 100 a second
    assert limits.reads.rate == pytest.approx(100.0)
    started = time.monotonic()
    for _ in range(4):
        await limits.take("read")
    assert time.monotonic() - started >= 2 / 100 - EPS
    assert limits.stats()["read"].waits == 2
    assert limits.stats()["write"].taken == 0


@pytest.mark.parametrize("cancelled", ["a", "b"], ids=["holding the turn", "in the line"])
async def test_a_cancelled_waiter_takes_nothing_and_leaves_the_line(cancelled: str) -> None:
    bucket = TokenBucket(1, 20.0)
    await bucket.take()
    done: list[str] = []

    async def take(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await bucket.take()
            done.append(name)

    scopes = {name: anyio.CancelScope() for name in ("a", "b", "c")}
    async with anyio.create_task_group() as tg:
        for n, (name, scope) in enumerate(scopes.items(), 1):
            tg.start_soon(take, name, scope)
            await in_line(bucket, n)  # a holds the turn (sleeping), b and c wait
        scopes[cancelled].cancel()
    assert done == [name for name in ("a", "b", "c") if name != cancelled]
    assert bucket.stats().taken == 3


async def test_waiters_are_served_first_come_first_served() -> None:
    bucket = TokenBucket(1, 10.0)  # slow enough for all to be in line before one is served
    await bucket.take()
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.take()
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(take, i)
            await in_line(bucket, i + 1)  # each in the line before the next comes
    assert order == list(range(8))


async def test_a_big_take_is_not_starved_by_small_ones() -> None:
    bucket = TokenBucket(3, 20.0)
    await bucket.take(3)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await bucket.take(n)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "big", 3)
        await in_line(bucket, 1)
        for i in range(3):
            tg.start_soon(take, f"small{i}", 1)
            await in_line(bucket, i + 2)
    # The small takes had tokens long before the big one, and still waited their turn.
    assert order == ["big", "small0", "small1", "small2"]


def test_shared_limits_are_one_per_place_and_the_strictest_settings_win() -> None:
    key = ("https://arm.example", "sub", f"place-{time.monotonic_ns()}")
    first = ArmLimits.shared(key, reads=(100, 10.0), creates=((50, 300.0),))
    assert ArmLimits.shared(key) is first
    assert (first.reads.capacity, first.reads.rate) == (100, 10.0)  # defaults are looser
    again = ArmLimits.shared(key, reads=(20, 50.0), creates=((10, 600.0), (30, 3600.0)))
    assert again is first
    assert (first.reads.capacity, first.reads.rate) == (20, 10.0)
    assert [(w.limit, w.seconds) for w in first.creates] == [(10, 600.0), (30, 3600.0)]
    assert ArmLimits.shared((*key, "other")) is not first


async def test_shared_limits_serve_successive_event_loops() -> None:
    # The tests of a process run one loop after another (asyncio, trio): one set of
    # limits must serve them all, tied to none.
    limits = ArmLimits.shared(("test_azure_limits", "successive loops"), reads=(1000, 1000.0))
    await limits.take("read")
    assert limits.stats()["read"].taken >= 1


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(0, 1.0)
    with pytest.raises(ValueError, match="limit"):
        Window(5, 0)
    with pytest.raises(ValueError, match="time_scale"):
        ArmLimits(time_scale=0)
    assert "Window(limit=100, seconds=300)" in repr(ArmLimits())
