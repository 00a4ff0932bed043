"""Client-side limits on ARM calls: token buckets and sliding-window quotas.

ARM throttles each principal with token buckets (reads: 250 at most, refilled
at 25 a second; writes and deletes: 200, refilled at 10 a second) and Azure
Container Instances caps container group creates (and deletes) per
subscription and region at 100 in any 5 minutes and 300 in any hour. A client
that waits here before each call never meets the 429 it would otherwise
provoke, and several executors of one process that talk to the same place
share one set of limits (:meth:`ArmLimits.shared`).

* :class:`TokenBucket`: ``capacity`` tokens, refilled at ``rate`` a second.
* :class:`Window`: at most ``limit`` takes in any ``seconds``.
* :class:`ArmLimits`: the buckets of reads, writes and deletes, and the windows
  of creates and removals, with a ``time_scale`` that shrinks every duration
  (tests and the benchmark run the quotas of an hour in seconds).

Waiting is first come, first served: a take that has to wait holds up the
takes that come after it (so a burst cannot starve an earlier caller), and a
cancelled waiter leaves the line without taking anything. Time is read from
``time.monotonic()``, not the event loop's clock, and no state is tied to an
event loop: one set of limits serves the successive loops of a process (one at
a time; it is not thread-safe).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import ClassVar

import anyio

__all__ = ["ArmLimits", "LimitStats", "TokenBucket", "Window"]

#: ARM's default token buckets per principal: (capacity, refill per second).
READS = (250, 25.0)
WRITES = (200, 10.0)
DELETES = (200, 10.0)
#: Container group creates (and deletes) per subscription and region: (limit, seconds).
CREATES = ((100, 300.0), (300, 3600.0))
#: The room of no window at all.
_UNBOUNDED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class LimitStats:
    """What one bucket or window did so far."""

    #: Takes granted.
    taken: int
    #: Of those, the ones that had to wait (for tokens, for room, or behind a waiter).
    waits: int
    #: Seconds spent waiting, all takes together.
    waited: float


class _Line:
    """First come, first served: the turn to take, handed from one waiter to the next."""

    __slots__ = ("_busy", "_waiters")

    def __init__(self) -> None:
        self._busy = False
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    async def enter(self) -> bool:
        """Wait for the turn; return whether it had to wait.

        Cancellation: a waiter cancelled in the line leaves it; one cancelled
        as the turn reached it hands the turn on.
        """
        if not self._busy and not self._waiters:
            self._busy = True
            return False
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # the turn was ours: pass it on
                self.leave()
            else:
                self._waiters.remove(event)
            raise
        return True

    def leave(self) -> None:
        """Hand the turn to the next waiter (the caller holds it)."""
        if self._waiters:
            self._waiters.popleft().set()  # the turn goes on: still busy
        else:
            self._busy = False

    @property
    def waiting(self) -> int:
        """Callers in the line, the one holding the turn included."""
        return len(self._waiters) + self._busy


class _Limit:
    """What buckets and windows share: the line, the counts."""

    def __init__(self) -> None:
        self._line = _Line()
        self._taken = 0
        self._waits = 0
        self._waited = 0.0

    def stats(self) -> LimitStats:
        """What it did so far."""
        return LimitStats(self._taken, self._waits, self._waited)

    @property
    def waiting(self) -> int:
        """Callers in a take now (waiting for their turn, or holding it while they wait)."""
        return self._line.waiting

    def _count(self, started: float, waited: bool) -> None:
        self._taken += 1
        if waited:
            self._waits += 1
            self._waited += time.monotonic() - started


class TokenBucket(_Limit):
    """``capacity`` tokens, refilled continuously at ``rate`` tokens a second.

    It starts full: a burst of ``capacity`` takes passes at once, then one
    every ``1 / rate`` seconds.
    """

    def __init__(self, capacity: float, rate: float) -> None:
        if capacity < 1 or rate <= 0:
            raise ValueError(f"a bucket needs capacity >= 1 and rate > 0, not {capacity}, {rate}")
        super().__init__()
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()

    def __repr__(self) -> str:
        return f"TokenBucket(capacity={self.capacity:g}, rate={self.rate:g})"

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens are in the bucket (0: now)."""
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate)

    async def take(self, n: float = 1) -> None:
        """Take ``n`` tokens, waiting for them (and for earlier callers) first.

        Raises:
            ValueError: ``n`` is more than the bucket holds.

        Cancellation: the caller leaves the line; no token is taken.
        """
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.capacity:g}")
        started = time.monotonic()
        waited = await self._line.enter()
        try:
            while (delay := self.delay(n)) > 0:
                waited = True
                await anyio.sleep(delay)
            self._tokens -= n
            self._count(started, waited)
        finally:
            self._line.leave()

    def tighten(self, capacity: float, rate: float) -> None:
        """Lower the capacity and rate to these when they are smaller."""
        self._refill()
        self.capacity = min(self.capacity, float(capacity))
        self.rate = min(self.rate, float(rate))
        self._tokens = min(self._tokens, self.capacity)


class Window(_Limit):
    """A sliding-window quota: at most ``limit`` takes in any ``seconds``."""

    def __init__(self, limit: int, seconds: float) -> None:
        if limit < 1 or seconds <= 0:
            raise ValueError(f"a window needs limit >= 1 and seconds > 0, not {limit}, {seconds}")
        super().__init__()
        self.limit = int(limit)
        self.seconds = float(seconds)
        self._times: collections.deque[float] = collections.deque()  # of the takes in the window

    def __repr__(self) -> str:
        return f"Window(limit={self.limit}, seconds={self.seconds:g})"

    @property
    def used(self) -> int:
        """Takes in the window now."""
        self._expire()
        return len(self._times)

    @property
    def room(self) -> int:
        """Takes that would pass now."""
        return max(0, self.limit - self.used)

    def _expire(self) -> None:
        horizon = time.monotonic() - self.seconds
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def delay(self) -> float:
        """Seconds until there is room for one take (0: now)."""
        self._expire()
        excess = len(self._times) - self.limit
        if excess < 0:
            return 0.0
        # Room comes when the take that made the window full leaves it.
        return max(0.0, self._times[excess] + self.seconds - time.monotonic())

    def _record(self) -> None:
        self._times.append(time.monotonic())

    async def take(self) -> None:
        """Take a place in the window, waiting for room (and for earlier callers) first.

        Cancellation: the caller leaves the line; nothing is taken.
        """
        await _take_all((self,), self._line, self)

    def tighten(self, limit: int, seconds: float) -> None:
        """Lower the limit to ``limit`` and lengthen the window to ``seconds`` when stricter."""
        self.limit = min(self.limit, int(limit))
        self.seconds = max(self.seconds, float(seconds))


async def _take_all(windows: Sequence[Window], line: _Line, counted: _Limit) -> None:
    """Wait in ``line`` until every window has room, then take a place in each (at once:
    a place taken in one window is never held while waiting for another)."""
    started = time.monotonic()
    waited = await line.enter()
    try:
        while (delay := max((w.delay() for w in windows), default=0.0)) > 0:
            waited = True
            await anyio.sleep(delay)
        for window in windows:
            window._record()
            if window is not counted:
                window._count(started, waited)
        counted._count(started, waited)
    finally:
        line.leave()


class _Windows(_Limit):
    """Several windows taken together (creates: per 5 minutes and per hour)."""

    def __init__(self, windows: Iterable[Window]) -> None:
        super().__init__()
        self.windows = list(windows)

    async def take(self) -> None:
        await _take_all(self.windows, self._line, self)

    def delay(self) -> float:
        return max((w.delay() for w in self.windows), default=0.0)

    @property
    def room(self) -> int:
        return min((w.room for w in self.windows), default=_UNBOUNDED)


class ArmLimits:
    """The limits of one place (ARM endpoint, subscription, region or principal).

    Args:
        reads, writes, deletes: ``(capacity, refill per second)`` of each bucket
            (ARM's defaults: 250 and 25, 200 and 10, 200 and 10).
        creates, removals: ``(limit, seconds)`` of each window of container group
            creates and deletes (ACI's defaults: 100 in 300 s and 300 in 3600 s).
        time_scale: every duration is multiplied by it (refills are divided):
            0.01 makes an hour's quota pass in 36 seconds.

    Attributes:
        reads, writes, deletes (TokenBucket): a request of each kind takes one token.
        creates, removals (list[Window]): a group create or delete takes a place in each.
    """

    _registry: ClassVar[dict[Hashable, ArmLimits]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        reads: tuple[float, float] = READS,
        writes: tuple[float, float] = WRITES,
        deletes: tuple[float, float] = DELETES,
        creates: Sequence[tuple[int, float]] = CREATES,
        removals: Sequence[tuple[int, float]] = CREATES,
        time_scale: float = 1.0,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, not {time_scale}")
        self.time_scale = time_scale
        self.reads = TokenBucket(reads[0], reads[1] / time_scale)
        self.writes = TokenBucket(writes[0], writes[1] / time_scale)
        self.deletes = TokenBucket(deletes[0], deletes[1] / time_scale)
        self._creates = _Windows(Window(n, s * time_scale) for n, s in creates)
        self._removals = _Windows(Window(n, s * time_scale) for n, s in removals)
        self._buckets = {"read": self.reads, "write": self.writes, "delete": self.deletes}

    def __repr__(self) -> str:
        return (
            f"ArmLimits(reads={self.reads!r}, writes={self.writes!r}, deletes={self.deletes!r}, "
            f"creates={self.creates!r}, removals={self.removals!r})"
        )

    @property
    def creates(self) -> list[Window]:
        return self._creates.windows

    @property
    def removals(self) -> list[Window]:
        return self._removals.windows

    @classmethod
    def shared(cls, key: Hashable, **settings: object) -> ArmLimits:
        """The limits of the place ``key``, one per place per process.

        The first caller's ``settings`` (the constructor's keywords) make them; a
        later caller's stricter settings tighten them (smaller buckets, slower
        refills, smaller limits, longer windows): the strictest asked for applies.
        """
        wanted = cls(**settings)  # type: ignore[arg-type]
        with cls._registry_lock:
            limits = cls._registry.setdefault(key, wanted)
        if limits is not wanted:
            limits._tighten(wanted)
        return limits

    def _tighten(self, other: ArmLimits) -> None:
        for kind, mine in self._buckets.items():
            theirs = other._buckets[kind]
            mine.tighten(theirs.capacity, theirs.rate)
        for own, asked in ((self._creates, other._creates), (self._removals, other._removals)):
            for window, stricter in zip(own.windows, asked.windows, strict=False):
                window.tighten(stricter.limit, stricter.seconds)
            own.windows.extend(asked.windows[len(own.windows) :])
        self.time_scale = max(self.time_scale, other.time_scale)

    def bucket(self, kind: str) -> TokenBucket:
        """The bucket of a request kind: ``"read"``, ``"write"`` or ``"delete"``."""
        return self._buckets[kind]

    async def take(self, kind: str) -> None:
        """Take a token from the bucket of ``kind`` (``"read"``, ``"write"``, ``"delete"``).

        Cancellation: nothing is taken.
        """
        await self._buckets[kind].take()

    async def create(self) -> None:
        """Take a place in every creates window, once all have room.

        Cancellation: nothing is taken.
        """
        await self._creates.take()

    async def remove(self) -> None:
        """Take a place in every removals window, once all have room.

        Cancellation: nothing is taken.
        """
        await self._removals.take()

    def create_delay(self) -> float:
        """Seconds until a create would pass (0: now)."""
        return self._creates.delay()

    def remove_delay(self) -> float:
        """Seconds until a delete would pass (0: now)."""
        return self._removals.delay()

    def stats(self) -> dict[str, LimitStats]:
        """What each limit did so far: ``"read"``, ``"write"``, ``"delete"`` (the buckets),
        ``"create"`` and ``"remove"`` (the windows, taken together)."""
        return {
            **{kind: bucket.stats() for kind, bucket in self._buckets.items()},
            "create": self._creates.stats(),
            "remove": self._removals.stats(),
        }
