"""ONE poller per place: every batch launcher of this process that talks to the same
cluster shares it, and with it one budget of scheduler calls.

* **One question per round.** A round asks the state of every live array of
  every launcher of the place in one call, then hands each launcher its part
  (its outcome files and accounting are its own: its staging directory, its
  connection).
* **Adaptive interval.** Rounds come every ``poll_interval`` seconds while
  something changes (or as soon as new work or a cancel wants a look), and
  the interval grows by half towards ``max_poll_interval`` while nothing does.
  With several launchers, the smallest of their settings applies.
* **Budget.** ``scheduler_calls_per_minute`` bounds the scheduler's commands
  (``squeue``, ``sacct``...) that launchers of the place run in any sixty
  seconds: a call beyond it waits. The smallest budget asked for applies.
* **Who polls.** The rounds run in the background of one launcher at a
  time, the leader; when it closes, the next one in line takes over, so
  closing one executor does not stop the others' polling.

The pollers of a process live per event loop (an anyio ``RunVar``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

import anyio
from anyio.lowlevel import RunVar

from ..._exceptions import BackendUnavailable
from .adapter import Queued

if TYPE_CHECKING:
    from .launcher import BatchLauncher

__all__ = ["Poller", "PollerStats"]

log = logging.getLogger("asyncexec")

#: The budget's window, in seconds.
_MINUTE = 60.0

_POLLERS: RunVar[dict[Hashable, Poller]] = RunVar("asyncexec_batch_pollers")


@dataclasses.dataclass(frozen=True)
class PollerStats:
    """What a :class:`Poller` did so far (:meth:`Poller.stats`)."""

    #: Launchers sharing the poller now.
    launchers: int
    #: Polling rounds that asked the scheduler (one call for every live array).
    rounds: int
    #: Scheduler commands run by the place's launchers (``squeue``, ``sacct``...).
    scheduler_calls: int
    #: Of those, the ones run in the last sixty seconds.
    calls_last_minute: int
    #: Seconds until the next round when nothing asks for one earlier.
    interval: float
    #: The budget of scheduler calls per minute (None: no bound).
    budget: int | None


class Poller:
    """The poller of one place (see the module's docstring). Made by the launchers;
    read it with :meth:`stats`."""

    def __init__(self, place: Hashable) -> None:
        self.place = place
        self._launchers: list[BatchLauncher] = []
        self._lead = anyio.Lock()  # held by the launcher whose background polls
        self._wanted = anyio.Event()
        self._rounds = 0
        self._calls = 0
        self._recent: collections.deque[float] = collections.deque()  # scheduler calls
        self._interval: float | None = None

    def __repr__(self) -> str:
        return f"Poller({self.place!r}, launchers={len(self._launchers)})"

    @classmethod
    def join(cls, place: Hashable, launcher: BatchLauncher) -> Poller:
        """The poller of ``place`` in this event loop (made if none), with ``launcher``."""
        try:
            pollers = _POLLERS.get()
        except LookupError:
            pollers = {}
            _POLLERS.set(pollers)
        poller = pollers.get(place)
        if poller is None:
            poller = pollers[place] = cls(place)
        poller._launchers.append(launcher)
        poller.wake()
        return poller

    def leave(self, launcher: BatchLauncher) -> None:
        """Stop polling for ``launcher``; the poller is forgotten with its last launcher."""
        if launcher in self._launchers:
            self._launchers.remove(launcher)
        if not self._launchers:
            pollers = _POLLERS.get({})
            if pollers.get(self.place) is self:
                del pollers[self.place]
        self.wake()

    def wake(self) -> None:
        """Poll soon: there is new work, or a cancel to confirm."""
        self._wanted.set()

    @property
    def poll_interval(self) -> float:
        return min((launcher.poll_interval for launcher in self._launchers), default=0.25)

    @property
    def max_poll_interval(self) -> float:
        return min((launcher.max_poll_interval for launcher in self._launchers), default=10.0)

    @property
    def budget(self) -> int | None:
        """Scheduler calls per minute at most: the smallest any launcher asks for."""
        asked = [launcher.scheduler_calls_per_minute for launcher in self._launchers]
        return min((n for n in asked if n is not None), default=None)

    def stats(self) -> PollerStats:
        """Counts of what the poller and its launchers asked the scheduler."""
        self._forget_old(time.monotonic())
        return PollerStats(
            launchers=len(self._launchers),
            rounds=self._rounds,
            scheduler_calls=self._calls,
            calls_last_minute=len(self._recent),
            interval=self.poll_interval if self._interval is None else self._interval,
            budget=self.budget,
        )

    def _forget_old(self, now: float) -> None:
        while self._recent and now - self._recent[0] >= _MINUTE:
            self._recent.popleft()

    async def spend(self) -> None:
        """Wait until the budget allows one more scheduler call, and count it.

        Cancellation: nothing is counted.
        """
        while True:
            now = time.monotonic()
            self._forget_old(now)
            budget = self.budget
            if budget is None or len(self._recent) < budget:
                break
            await anyio.sleep(self._recent[0] + _MINUTE - now)
        self._recent.append(now)
        self._calls += 1

    async def serve(self, launcher: BatchLauncher) -> None:
        """Poll for every launcher of the place while ``launcher`` leads; wait for its
        turn before. Runs in ``launcher``'s background until it closes.

        Cancellation: the round under way stops (the next leader starts
        another); nothing is settled twice.
        """
        async with self._lead:
            await self._rounds_of(launcher)

    async def _rounds_of(self, leader: BatchLauncher) -> None:
        interval = self._interval = self.poll_interval
        while True:
            if not any(launcher._needs_poll() for launcher in self._launchers):
                await self._wanted.wait()
                self._wanted = anyio.Event()
                interval = self._interval = self.poll_interval
                continue
            with anyio.move_on_after(interval):
                await self._wanted.wait()
                interval = self.poll_interval  # new work, or a cancel to confirm
            self._wanted = anyio.Event()
            launchers = list(self._launchers)
            plans = {id(launcher): launcher._plan() for launcher in launchers}
            ids = sorted({array for _, arrays in plans.values() for array in arrays})
            asked = time.monotonic()
            queued: dict[str, Queued] | None = {}
            if ids:
                self._rounds += 1
                try:
                    queued = await leader.adapter.states(ids)
                except (BackendUnavailable, OSError, TimeoutError) as exc:
                    log.warning("polling %s failed (%s); trying again", leader.adapter.name, exc)
                    queued = None
                except Exception:
                    log.exception("polling %s failed; trying again", leader.adapter.name)
                    queued = None
            changed = False
            for launcher in launchers:
                if launcher in self._launchers:  # not closed meanwhile
                    live, _ = plans[id(launcher)]
                    changed |= await launcher._after_poll(live, queued, asked)
            if changed:
                interval = self.poll_interval
            else:
                interval = min(interval * 1.5, self.max_poll_interval)
            self._interval = interval
