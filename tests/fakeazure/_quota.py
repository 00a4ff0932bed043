"""The fake ARM's throttles: token buckets (ARM per principal) and sliding windows (ACI).

Both answer at once, never wait: a refusal says how long until there is room, which
the fake sends as ``Retry-After``. Times come from ``time.monotonic``.
"""

from __future__ import annotations

import collections
import time


class Bucket:
    """ARM's token bucket: ``capacity`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, capacity: int, rate: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self._tokens = float(capacity)
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> float:
        """Take a token: 0.0, or the seconds until one is there (nothing taken)."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate if self.rate > 0 else float("inf")

    @property
    def remaining(self) -> int:
        """Whole tokens left (``x-ms-ratelimit-remaining-subscription-*``)."""
        self._refill()
        return int(self._tokens)


class Window:
    """A sliding window quota: at most ``limit`` events in any ``seconds``."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._events: collections.deque[float] = collections.deque()

    def _expire(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.seconds:
            self._events.popleft()

    def wait(self) -> float:
        """0.0 if one more event fits now, else the seconds until it does."""
        now = time.monotonic()
        self._expire(now)
        if len(self._events) < self.limit:
            return 0.0
        return self._events[len(self._events) - self.limit] + self.seconds - now

    def record(self) -> None:
        """Count one event now."""
        self._events.append(time.monotonic())

    def __len__(self) -> int:
        self._expire(time.monotonic())
        return len(self._events)
