"""ParamSweeper: execo_engine's persistent iterator over combinations, on SQLite.

State lives in ``<persistence_dir>/sweeper.sqlite`` (WAL mode; the database
is ``_state.py``'s), shared by any number of threads and processes. ``done``
persists; ``inprogress`` persists as *leases* that the holder renews from a
heartbeat thread, so the combinations of a holder that died come back by
themselves once its lease expires; ``skipped`` is kept by each ParamSweeper
alone (a relaunch retries them). Every operation costs the same whether 10
or 10 million combinations are done.

The directory may hold anything else (execo's does). The combinations that
execo_engine's own ParamSweeper marked done there (its ``done`` file) are done
here too, so a port continues an execo run; execo's files are only read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sized
from typing import Any

import anyio

from .._sqlite import start_heartbeat
from ._execo import load_execo_pickle, new_execo_done
from ._keys import combination_key, combination_keys
from ._state import SweeperError, SweeperState

__all__ = ["ParamSweeper", "SweeperError"]

log = logging.getLogger("asyncexec")

Filter = Callable[[Iterable[Any]], Iterable[Any]]


class ParamSweeper:
    """A persistent, thread- and process-safe iterable over combinations.

    Each element is *todo*, *inprogress*, *done* or *skipped*. ``get_next``
    hands out the next *todo* one (and holds it *inprogress*); mark it with
    ``done``, ``skip`` (retried by a later run) or ``cancel`` (back to *todo*).
    As execo's, *skipped* is this instance's record of what it skipped: an
    element skipped, then marked done, is listed in both.

    Args:
        persistence_dir: where the state lives (created if missing; it may hold
            other files, which are left alone).
        sweeps: the combinations (any hashable, picklable values, typically from
            :func:`sweep`); as execo, None or empty loads the saved ones (see
            :meth:`set_sweeps`).
        save_sweeps: remember ``sweeps`` in ``persistence_dir`` for later loading.
        name: a name for logs and ``str()``; by default, as execo, the last
            component of ``persistence_dir``.
        lease: seconds an *inprogress* element stays held without a heartbeat;
            the holder renews its leases every ``lease / 3`` seconds.

    Raises:
        SweeperError: ``sweeper.sqlite`` in ``persistence_dir`` is damaged or not a
            ParamSweeper's, or ``sweeps`` is empty and none were saved.
    """

    def __init__(
        self,
        persistence_dir: str | os.PathLike[str],
        sweeps: Iterable[Hashable] | None = None,
        save_sweeps: bool = False,
        name: str | None = None,
        *,
        lease: float = 60.0,
    ) -> None:
        self._closed = threading.Event()  # first: __del__ of a half-built instance needs it
        self._heartbeat: threading.Thread | None = None
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease!r}")
        self._dir = os.fspath(persistence_dir)
        self._name = name or os.path.basename(self._dir)
        self._lease = lease
        self._lock = threading.RLock()
        self._sweeps: dict[str, Any] = {}
        # Everything this instance skipped, in or out of its sweeps (execo's
        # __skipped): a later set_sweeps that brings one back finds it skipped.
        self._skipped: dict[str, Any] = {}
        # What this instance holds: key -> the combination it handed out, and
        # id(combination) -> key, so that done() on that very object needs no
        # combination_key (the object stays alive, so its id stays its own).
        self._held: dict[str, Any] = {}
        self._held_ids: dict[int, str] = {}
        self._state = SweeperState(self._dir, lease)
        self._read_execo_done()
        self.set_sweeps(sweeps, save_sweeps)

    @property
    def lease(self) -> float:
        """Seconds an *inprogress* element stays held without a heartbeat."""
        return self._lease

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the heartbeat and close the database. Held elements keep their lease
        until it expires (call ``cancel`` first to hand them back at once)."""
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._lock:
            self._state.close()

    def __enter__(self) -> ParamSweeper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._closed.set()
        state = getattr(self, "_state", None)
        if state is not None:  # execo's users never close: don't leave the file open
            with contextlib.suppress(Exception):
                state.close()

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None:  # (dropping the sweeper ends it)
            self._heartbeat = start_heartbeat(
                self, ParamSweeper._renew, self._closed, self._lease / 3, self._name
            )

    def _renew(self) -> None:
        with self._lock:
            if self._closed.is_set() or not self._held:
                return
            self._state.renew()

    # -- sweeps ---------------------------------------------------------------------

    def set_sweeps(
        self, sweeps: Iterable[Hashable] | None = None, save_sweeps: bool = False
    ) -> None:
        """Change what to iterate on.

        As execo's: ``sweeps`` None or empty loads the sweeps saved with
        ``save_sweeps=True`` (or else those execo_engine's ParamSweeper saved in
        the directory), and ``save_sweeps`` is then ignored; an empty iterator
        (not a sized collection) gives empty sweeps. What was skipped stays
        skipped, also when it comes back after sweeps without it.

        Raises:
            SweeperError: the saved sweeps are wanted and there are none (nothing
                changed).
            TypeError: a combination cannot be persisted (nothing changed).
        """
        with self._lock:
            if sweeps is None or (isinstance(sweeps, Sized) and len(sweeps) == 0):
                chosen = self._saved_sweeps()
            else:
                chosen = combination_keys(sweeps)  # all checked before anything changes
                self._state.store_sweeps(chosen, save_sweeps)
            self._sweeps = chosen

    def _saved_sweeps(self) -> dict[str, Any]:
        saved = self._state.saved_sweeps()
        if not saved:
            for combination in self._read_execo_sweeps():
                saved.setdefault(combination_key(combination), combination)
            if saved:
                self._state.store_sweeps(saved, save=False)
        if not saved:
            raise SweeperError(
                f"{self._dir} has no saved sweeps: pass sweeps=..., "
                "with save_sweeps=True to load them later without"
            )
        return saved

    # -- execo_engine's files (read, never written) -----------------------------------

    def _read_execo_done(self) -> None:
        """Mark done what execo_engine's ParamSweeper marked done in this directory."""
        path = os.path.join(self._dir, "done")
        if not os.path.isfile(path):
            return
        last = self._state.meta("execo-done")
        try:
            with open(path, "rb") as file:
                combinations, reached = new_execo_done(file, last, self._name)
        except OSError as exc:
            log.warning("%s: cannot read execo's done file: %r", self._name, exc)
            return
        if combinations:
            self.done_batch(combinations)
        if reached != last:
            self._state.set_meta("execo-done", reached)

    def _read_execo_sweeps(self) -> list[Any]:
        """The sweeps execo_engine's ParamSweeper saved in this directory (a pickled set)."""
        try:
            with open(os.path.join(self._dir, "sweeps"), "rb") as file:
                saved = load_execo_pickle(file)
        except (FileNotFoundError, EOFError):  # execo leaves an empty file when it found none
            return []
        except Exception as exc:
            log.warning("%s: execo's sweeps file is unreadable: %r", self._name, exc)
            return []
        return list(saved) if isinstance(saved, (set, frozenset, list, tuple)) else []

    def get_sweeps(self) -> list[Any]:
        """All the combinations iterated on, in order."""
        with self._lock:
            return list(self._sweeps.values())

    # -- handing out ----------------------------------------------------------------

    def get_next(self, filtr: Filter | None = None) -> Any:
        """The next *todo* combination, now *inprogress* (held by us), or None.

        ``filtr`` receives the remaining combinations and returns some of them, in
        the order wanted; it costs a scan of all remaining ones. One it returns
        twice is taken once; one that is not remaining (done, held, skipped or
        not in the sweep) is a ``ValueError``.
        """
        batch = self.get_next_batch(1, filtr)
        return batch[0] if batch else None

    def get_next_batch(self, num_combs: int, filtr: Filter | None = None) -> list[Any]:
        """Up to ``num_combs`` *todo* combinations, now *inprogress*."""
        if num_combs <= 0:
            return []
        with self._lock, self._state.transaction():
            now = time.time()
            self._state.reclaim_expired(now)
            if filtr is None:
                keys = self._state.next_todo(num_combs, self._sweeps, self._skipped)
            else:
                todo = self._state.todo_keys(self._sweeps, self._skipped)
                remaining = [self._sweeps[key] for key in todo]
                allowed, keys = set(todo), []
                for combination in filtr(remaining):
                    if len(keys) >= num_combs:
                        break
                    key = combination_key(combination)
                    if key not in allowed:
                        if key in keys:
                            continue  # given twice: taken once
                        raise ValueError(
                            f"the filter returned {combination!r}, which is not one of the "
                            "remaining combinations it was given"
                        )
                    allowed.discard(key)
                    keys.append(key)
            self._state.hold(keys, now)
            combinations = [self._sweeps[key] for key in keys]
            for key, combination in zip(keys, combinations, strict=True):
                self._forget(key)  # the same key handed out again, maybe as another object
                self._held[key] = combination
                self._held_ids[id(combination)] = key
        if keys:
            self._ensure_heartbeat()
        return combinations

    def __iter__(self) -> Iterator[Any]:
        """Hand out combinations with ``get_next`` until none is left."""
        while (combination := self.get_next()) is not None:
            yield combination

    # -- marking --------------------------------------------------------------------

    def done(self, combination: Hashable) -> None:
        """Mark ``combination`` *done* (for good, in every process)."""
        self.done_batch([combination])

    def done_batch(self, combinations: Iterable[Hashable]) -> None:
        with self._lock:
            items = list({self._key(c): c for c in combinations}.items())
            self._state.mark_done(items)
            for key, _ in items:
                self._forget(key)

    def _key(self, combination: Hashable) -> str:
        """``combination_key(combination)``, remembered for the objects we hold."""
        key = self._held_ids.get(id(combination))
        if key is not None and self._held.get(key) is combination:
            return key
        return combination_key(combination)

    def _forget(self, key: str) -> None:
        """We hold ``key`` no more."""
        combination = self._held.pop(key, None)
        if combination is not None:
            self._held_ids.pop(id(combination), None)

    def skip(self, combination: Hashable) -> None:
        """Mark ``combination`` *skipped*: not handed out again by this ParamSweeper.

        As execo's, this is remembered also for a combination outside the sweeps:
        skipped if a later ``set_sweeps`` brings it in.
        """
        self.skip_batch([combination])

    def skip_batch(self, combinations: Iterable[Hashable]) -> None:
        with self._lock:
            items = [(self._key(c), c) for c in combinations]
            self._release([key for key, _ in items])
            for key, combination in items:
                self._skipped.setdefault(key, combination)

    def cancel(self, combination: Hashable) -> None:
        """Give ``combination`` back: it is *todo* again."""
        self.cancel_batch([combination])

    def cancel_batch(self, combinations: Iterable[Hashable]) -> None:
        with self._lock:
            self._release([self._key(c) for c in combinations])

    def _release(self, keys: list[str]) -> None:
        self._state.release(keys)
        for key in keys:
            self._forget(key)

    def reopen_batch(self, combinations: Iterable[Hashable]) -> int:
        """Make *done* combinations *todo* again (their results were lost); return how many.

        Not one of execo's methods: for a caller that keeps its results elsewhere
        and finds some gone.
        """
        keys = [combination_key(combination) for combination in combinations]
        with self._lock:
            return self._state.reopen(keys)

    def reset(self, reset_inprogress: bool = False) -> None:
        """Forget *skipped* (iteration starts over); *done* stays done.

        Args:
            reset_inprogress: also hand back every *inprogress* element, whoever holds it.
        """
        with self._lock:
            self._skipped.clear()
            if reset_inprogress:
                self._state.release_every_held()
                self._held.clear()
                self._held_ids.clear()

    def update(self) -> None:
        """Re-read the shared state. (A no-op: every call reads it from the database.)"""

    def full_update(self) -> None:
        """Re-read the shared state completely. (A no-op, as ``update``.)"""

    # -- reading --------------------------------------------------------------------

    def _with_status(self, status: str) -> list[Any]:
        with self._lock:
            keys = self._state.keys_with_status(status, time.time())
            return [self._sweeps[key] for key in keys if key in self._sweeps]

    def get_done(self) -> list[Any]:
        """The combinations (of our sweeps) done, by anyone."""
        return self._with_status("done")

    def get_inprogress(self) -> list[Any]:
        """The combinations (of our sweeps) held *inprogress*, by anyone, with a live lease."""
        return self._with_status("inprogress")

    def get_skipped(self) -> list[Any]:
        """The combinations (of our sweeps) this ParamSweeper skipped, done or not."""
        with self._lock:
            return [self._sweeps[key] for key in self._skipped if key in self._sweeps]

    def get_remaining(self) -> list[Any]:
        """The *todo* combinations (an expired lease counts as *todo*)."""
        with self._lock:
            return [
                self._sweeps[key]
                for key in self._state.remaining_keys(time.time())
                if key in self._sweeps and key not in self._skipped
            ]

    def stats(self) -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]:
        """``(sweeps, remaining, skipped, inprogress, done)``, read together."""
        with self._lock, self._state.transaction():
            return (
                self.get_sweeps(),
                self.get_remaining(),
                self.get_skipped(),
                self.get_inprogress(),
                self.get_done(),
            )

    def __str__(self) -> str:
        sweeps, remaining, skipped, inprogress, done = self.stats()
        return (
            f"{self._name} <{len(sweeps)} total, {len(done)} done, {len(skipped)} skipped, "
            f"{len(inprogress)} in progress, {len(remaining)} remaining>"
        )

    # -- async ----------------------------------------------------------------------

    async def aget_next(self, filtr: Filter | None = None) -> Any:
        """``get_next`` in a worker thread: the event loop never waits on SQLite.

        Cancellation: the call is not interrupted: either it is not made
        (cancelled before it starts) or it runs to its end in its thread, one
        SQLite transaction, and returns; the caller sees the cancellation at
        its next await. What it returns is held by the caller then: give it
        back with ``acancel`` if it will not run.
        """
        return await anyio.to_thread.run_sync(self.get_next, filtr)

    async def aget_next_batch(self, num_combs: int, filtr: Filter | None = None) -> list[Any]:
        """``get_next_batch`` in a worker thread.

        Cancellation: the call is not interrupted: either it is not made
        (cancelled before it starts) or it runs to its end in its thread, one
        SQLite transaction, and returns; the caller sees the cancellation at
        its next await. What it returns is held by the caller then: give it
        back with ``acancel`` if it will not run.
        """
        return await anyio.to_thread.run_sync(self.get_next_batch, num_combs, filtr)

    async def adone(self, combination: Hashable) -> None:
        """``done`` in a worker thread.

        Cancellation: the call is not interrupted: either it is not made
        (cancelled before it starts) or it runs to its end in its thread, one
        SQLite transaction, and returns; the caller sees the cancellation at
        its next await.
        """
        await anyio.to_thread.run_sync(self.done, combination)

    async def askip(self, combination: Hashable) -> None:
        """``skip`` in a worker thread.

        Cancellation: the call is not interrupted: either it is not made
        (cancelled before it starts) or it runs to its end in its thread, one
        SQLite transaction, and returns; the caller sees the cancellation at
        its next await.
        """
        await anyio.to_thread.run_sync(self.skip, combination)

    async def acancel(self, combination: Hashable) -> None:
        """``cancel`` in a worker thread.

        Cancellation: the call is not interrupted: either it is not made
        (cancelled before it starts) or it runs to its end in its thread, one
        SQLite transaction, and returns; the caller sees the cancellation at
        its next await.
        """
        await anyio.to_thread.run_sync(self.cancel, combination)
