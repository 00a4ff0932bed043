"""ParamSweeper: execo_engine's persistent iterator over combinations, on SQLite.

State lives in ``<persistence_dir>/sweeper.sqlite`` (WAL mode), shared by any
number of threads and processes. ``done`` persists; ``inprogress`` persists as
*leases* that the holder renews from a heartbeat thread, so the combinations
of a holder that died come back by themselves once its lease expires;
``skipped`` is kept by each ParamSweeper alone (a relaunch retries them).
Every operation costs the same whether 10 or 10 million combinations are done.

The directory may hold anything else (execo's does). The combinations that
execo_engine's own ParamSweeper marked done there (its ``done`` file) are done
here too, so a port continues an execo run; execo's files are only read.
"""

from __future__ import annotations

import contextlib
import decimal
import fractions
import hashlib
import io
import logging
import numbers
import os
import pickle
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence, Sized
from typing import IO, Any

import anyio

from .. import AsyncExecError
from .._sqlite import Transaction, connect
from ._sweep import HashableDict

__all__ = ["ParamSweeper", "SweeperError"]

log = logging.getLogger("asyncexec")

_FORMAT = "asyncexec-paramsweeper-2"
# Format 1 told 1, 1.0 and True apart (and a namedtuple from its tuple): opened,
# its keys are computed again (see _migrate_from_format_1).
_FORMAT_1 = "asyncexec-paramsweeper-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    status TEXT NOT NULL,            -- todo | inprogress | done
    holder TEXT,
    lease_until REAL,
    saved INTEGER NOT NULL DEFAULT 0 -- part of the sweeps saved with save_sweeps
);
CREATE INDEX IF NOT EXISTS items_status_seq ON items (status, seq);
CREATE INDEX IF NOT EXISTS items_status_lease ON items (status, lease_until);
CREATE INDEX IF NOT EXISTS items_holder ON items (holder);
CREATE INDEX IF NOT EXISTS items_seq ON items (seq);
"""

Filter = Callable[[Iterable[Any]], Iterable[Any]]
_CHUNK = 10_000  # combinations written per transaction


class SweeperError(AsyncExecError):
    """The persistence database is not a ParamSweeper's or is damaged, or no sweeps were saved."""


def _by_equality(value: Any) -> Any:
    """``value`` in a form that pickles alike exactly when values compare equal.

    execo keeps combinations in sets: one is another when they are ``==``. So
    1, 1.0, True, ``Fraction(1)`` and ``numpy.int64(1)`` are one level, a
    namedtuple is its tuple, a ``StrEnum`` member is its string. (Format 1 keys
    came from the experiment runner's ``_canonical``, which its fingerprints still use.)
    """
    if isinstance(value, dict):
        items = ((repr(_by_equality(k)), _by_equality(v)) for k, v in value.items())
        return ("__dict__", tuple(sorted(items, key=lambda item: item[0])))
    if isinstance(value, (set, frozenset)):
        return ("__set__", tuple(sorted(repr(_by_equality(v)) for v in value)))
    if isinstance(value, tuple):
        return ("tuple", tuple(_by_equality(v) for v in value))
    if isinstance(value, list):
        return ("list", tuple(_by_equality(v) for v in value))
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass's value, as a plain str
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return _number(value)
    return value


def _number(value: Any) -> Any:
    """One form for all equal numbers: an int if integral, else a float if one is
    equal, else the exact fraction."""
    with contextlib.suppress(Exception):  # NaN, infinities, signalling decimals
        if value == int(value):
            return int(value)
    with contextlib.suppress(Exception):
        if float(value) == value:
            return float(value)
    with contextlib.suppress(Exception):
        exact = fractions.Fraction(value)
        return ("__fraction__", exact.numerator, exact.denominator)
    return value


def combination_key(combination: Hashable) -> str:
    """A stable identity for a combination, the same in every process and run.

    Equal combinations (``==``, as execo's sets see them) have the same key.
    Pickled without the memo: a value used twice must encode like two equal values.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.fast = True  # no memo: equal values, equal bytes
    try:
        pickler.dump(_by_equality(combination))
        pickle.dumps(combination, protocol=4)  # it must also be storable as it is
    except Exception as exc:
        raise TypeError(f"cannot persist the combination {combination!r}: {exc}") from exc
    return hashlib.blake2b(buffer.getvalue(), digest_size=16).hexdigest()


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
        # Whose process this is, precisely enough to tell, from another process,
        # that the holder is gone: same host, same boot, same pid namespace.
        self._machine = _machine_identity()
        self._holder = f"{self._machine}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._lock = threading.RLock()
        self._sweeps: dict[str, Any] = {}
        # Everything this instance skipped, in or out of its sweeps (execo's
        # __skipped): a later set_sweeps that brings one back finds it skipped.
        self._skipped: dict[str, Any] = {}
        self._held: set[str] = set()
        self._reclaimed_at = 0.0  # expired leases are looked for every lease/10 s at most
        self._db = _open(self._dir)
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
            self._db.close()

    def __enter__(self) -> ParamSweeper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._closed.set()
        db = getattr(self, "_db", None)
        if db is not None:  # execo's users never close: don't leave the file open
            with contextlib.suppress(Exception):
                db.close()

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None:
            # The thread holds the sweeper weakly: dropping the sweeper ends it.
            self._heartbeat = threading.Thread(
                target=_beat,
                args=(weakref.ref(self), self._closed, self._lease / 3),
                name=f"asyncexec-sweeper-{self._name}",
                daemon=True,
            )
            self._heartbeat.start()

    def _renew(self) -> None:
        with self._lock:
            if self._closed.is_set() or not self._held:
                return
            self._write(
                "UPDATE items SET lease_until = ? WHERE holder = ? AND status = 'inprogress'",
                (time.time() + self._lease, self._holder),
            )

    # -- database -------------------------------------------------------------------

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._transaction() as db:
            db.execute(sql, params)

    def _transaction(self) -> Transaction:
        return Transaction(self._db)

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
                chosen = {}  # all checked before anything changes
                for combination in sweeps:
                    chosen.setdefault(combination_key(combination), combination)
                self._store_sweeps(chosen, save_sweeps)
            self._sweeps = chosen

    def _saved_sweeps(self) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, data FROM items WHERE saved > 0 ORDER BY saved")
        saved = {key: pickle.loads(data) for key, data in rows}
        if not saved:
            for combination in self._read_execo_sweeps():
                saved.setdefault(combination_key(combination), combination)
            if saved:
                self._store_sweeps(saved, save=False)
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
        row = self._db.execute("SELECT value FROM meta WHERE key = 'execo-done'").fetchone()
        last = None if row is None else str(row[0])
        try:
            with open(path, "rb") as file:
                combinations, reached = _new_execo_done(file, last, self._name)
        except OSError as exc:
            log.warning("%s: cannot read execo's done file: %r", self._name, exc)
            return
        if combinations:
            self.done_batch(combinations)
        if reached != last:
            self._write(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('execo-done', ?)", (reached,)
            )

    def _read_execo_sweeps(self) -> list[Any]:
        """The sweeps execo_engine's ParamSweeper saved in this directory (a pickled set)."""
        try:
            with open(os.path.join(self._dir, "sweeps"), "rb") as file:
                saved = _load_execo_pickle(file)
        except (FileNotFoundError, EOFError):  # execo leaves an empty file when it found none
            return []
        except Exception as exc:
            log.warning("%s: execo's sweeps file is unreadable: %r", self._name, exc)
            return []
        return list(saved) if isinstance(saved, (set, frozenset, list, tuple)) else []

    def _store_sweeps(self, sweeps: dict[str, Any], save: bool) -> None:
        """Add the combinations not stored yet, in short transactions.

        Other processes keep working meanwhile: a million combinations written in
        one transaction would hold the write lock (and their heartbeats) for tens
        of seconds. A sweep already stored whole is recognised by its digest.
        """
        digest = hashlib.blake2b("".join(sweeps).encode(), digest_size=16).hexdigest()
        marker = f"stored:{digest}"
        known = self._db.execute("SELECT 1 FROM meta WHERE key = ?", (marker,)).fetchone()
        if not known:
            items = list(sweeps.items())
            for first in range(0, len(items), _CHUNK):
                rows = [
                    (key, pickle.dumps(combination, protocol=4))
                    for key, combination in items[first : first + _CHUNK]
                ]
                with self._transaction() as db:
                    (start,) = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM items").fetchone()
                    db.executemany(
                        "INSERT OR IGNORE INTO items (key, seq, data, status) "
                        "VALUES (?, ?, ?, 'todo')",
                        ((key, start + i, data) for i, (key, data) in enumerate(rows)),
                    )
            self._write("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '1')", (marker,))
        if save:  # `saved` holds the position in the saved sweeps (0: not saved)
            with self._transaction() as db:
                db.execute("UPDATE items SET saved = 0 WHERE saved > 0")
                db.executemany(
                    "UPDATE items SET saved = ? WHERE key = ?",
                    ((position, key) for position, key in enumerate(sweeps, start=1)),
                )

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
        with self._lock, self._transaction() as db:
            now = time.time()
            if now - self._reclaimed_at > self._lease / 10:
                self._reclaim_expired(db, now)
            if filtr is None:
                keys = self._next_todo(db, num_combs)
            else:
                todo = self._todo_keys(db)
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
            db.executemany(
                "UPDATE items SET status = 'inprogress', holder = ?, lease_until = ? "
                "WHERE key = ? AND status = 'todo'",
                ((self._holder, now + self._lease, key) for key in keys),
            )
            self._held.update(keys)
        if keys:
            self._ensure_heartbeat()
        return [self._sweeps[key] for key in keys]

    def _reclaim_expired(self, db: sqlite3.Connection, now: float) -> None:
        self._reclaimed_at = now
        db.execute(
            "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
            "WHERE status = 'inprogress' AND lease_until < ?",
            (now,),
        )
        # A holder on this host whose process is gone needs no lease to expire.
        holders = db.execute(
            "SELECT DISTINCT holder FROM items WHERE status = 'inprogress' AND holder IS NOT NULL"
        ).fetchall()
        for (holder,) in holders:
            machine, _, pid = str(holder).rpartition(":")[0].rpartition(":")
            if machine == self._machine and pid.isdigit() and not _alive(int(pid)):
                db.execute(
                    "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                    "WHERE holder = ? AND status = 'inprogress'",
                    (holder,),
                )

    def _next_todo(self, db: sqlite3.Connection, count: int) -> list[str]:
        keys: list[str] = []
        after = -1
        while len(keys) < count:
            rows = db.execute(
                "SELECT key, seq FROM items WHERE status = 'todo' AND seq > ? ORDER BY seq LIMIT ?",
                (after, count - len(keys) + len(self._skipped) + 16),
            ).fetchall()
            if not rows:
                break
            for key, seq in rows:
                after = seq
                if key in self._sweeps and key not in self._skipped:
                    keys.append(key)
                    if len(keys) == count:
                        break
        return keys

    def _todo_keys(self, db: sqlite3.Connection) -> list[str]:
        rows = db.execute("SELECT key FROM items WHERE status = 'todo' ORDER BY seq")
        return [key for (key,) in rows if key in self._sweeps and key not in self._skipped]

    def __iter__(self) -> Iterator[Any]:
        """Hand out combinations with ``get_next`` until none is left."""
        while (combination := self.get_next()) is not None:
            yield combination

    # -- marking --------------------------------------------------------------------

    def done(self, combination: Hashable) -> None:
        """Mark ``combination`` *done* (for good, in every process)."""
        self.done_batch([combination])

    def done_batch(self, combinations: Iterable[Hashable]) -> None:
        items = list({combination_key(c): c for c in combinations}.items())
        with self._lock, self._transaction() as db:
            unknown = []
            for key, combination in items:
                cursor = db.execute(
                    "UPDATE items SET status = 'done', holder = NULL, lease_until = NULL "
                    "WHERE key = ?",
                    (key,),
                )
                if cursor.rowcount == 0:  # not in any sweep yet: remember it done all the same
                    unknown.append((key, combination))
                self._held.discard(key)
            if unknown:
                (start,) = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM items").fetchone()
                db.executemany(
                    "INSERT INTO items (key, seq, data, status) VALUES (?, ?, ?, 'done')",
                    (
                        (key, start + i, pickle.dumps(c, protocol=4))
                        for i, (key, c) in enumerate(unknown)
                    ),
                )

    def skip(self, combination: Hashable) -> None:
        """Mark ``combination`` *skipped*: not handed out again by this ParamSweeper.

        As execo's, this is remembered also for a combination outside the sweeps:
        skipped if a later ``set_sweeps`` brings it in.
        """
        self.skip_batch([combination])

    def skip_batch(self, combinations: Iterable[Hashable]) -> None:
        items = [(combination_key(c), c) for c in combinations]
        with self._lock:
            self._release([key for key, _ in items])
            for key, combination in items:
                self._skipped.setdefault(key, combination)

    def cancel(self, combination: Hashable) -> None:
        """Give ``combination`` back: it is *todo* again."""
        self.cancel_batch([combination])

    def cancel_batch(self, combinations: Iterable[Hashable]) -> None:
        with self._lock:
            self._release([combination_key(c) for c in combinations])

    def _release(self, keys: list[str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                "WHERE key = ? AND status = 'inprogress'",
                ((key,) for key in keys),
            )
        self._held.difference_update(keys)

    def reopen_batch(self, combinations: Iterable[Hashable]) -> int:
        """Make *done* combinations *todo* again (their results were lost); return how many.

        Not one of execo's methods: for a caller that keeps its results elsewhere
        and finds some gone (the experiment runner, whose results store is the
        truth about what is done).
        """
        with self._lock, self._transaction() as db:
            reopened = 0
            for combination in combinations:
                reopened += db.execute(
                    "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                    "WHERE key = ? AND status = 'done'",
                    (combination_key(combination),),
                ).rowcount
            return reopened

    def reset(self, reset_inprogress: bool = False) -> None:
        """Forget *skipped* (iteration starts over); *done* stays done.

        Args:
            reset_inprogress: also hand back every *inprogress* element, whoever holds it.
        """
        with self._lock:
            self._skipped.clear()
            if reset_inprogress:
                self._write(
                    "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                    "WHERE status = 'inprogress'"
                )
                self._held.clear()

    def update(self) -> None:
        """Re-read the shared state. (A no-op: every call reads it from the database.)"""

    def full_update(self) -> None:
        """Re-read the shared state completely. (A no-op, as ``update``.)"""

    # -- reading --------------------------------------------------------------------

    def _with_status(self, status: str) -> list[Any]:
        with self._lock:
            now = time.time()
            if status == "inprogress":
                rows = self._db.execute(
                    "SELECT key FROM items WHERE status = 'inprogress' AND lease_until >= ? "
                    "ORDER BY seq",
                    (now,),
                )
            else:
                rows = self._db.execute(
                    "SELECT key FROM items WHERE status = ? ORDER BY seq", (status,)
                )
            return [self._sweeps[key] for (key,) in rows if key in self._sweeps]

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
            rows = self._db.execute(
                "SELECT key FROM items WHERE status = 'todo' "
                "OR (status = 'inprogress' AND lease_until < ?) ORDER BY seq",
                (time.time(),),
            )
            return [
                self._sweeps[key]
                for (key,) in rows
                if key in self._sweeps and key not in self._skipped
            ]

    def stats(self) -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]:
        """``(sweeps, remaining, skipped, inprogress, done)``, read together."""
        with self._lock, self._transaction():
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


def _beat(ref: weakref.ref[ParamSweeper], closed: threading.Event, period: float) -> None:
    while not closed.wait(period):
        sweeper = ref()
        if sweeper is None:
            return
        try:
            sweeper._renew()
        except sqlite3.ProgrammingError:
            return  # its database was closed under us
        except sqlite3.Error:
            log.warning("could not renew the leases of %s; trying again", sweeper._name)
        del sweeper


def _machine_identity() -> str:
    """Host name, boot id and pid namespace: pids mean the same only when all match."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            parts.append(boot.read().strip())
    except OSError:
        parts.append("no-boot-id")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("no-pid-ns")
    return "/".join(part.replace(":", "_") for part in parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


class _ExecoUnpickler(pickle.Unpickler):
    """Reads execo_engine's pickles, also where it is not installed: its HashableDict is ours."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("execo_engine.sweep", "HashableDict"):
            return HashableDict
        return super().find_class(module, name)


def _load_execo_pickle(file: IO[bytes]) -> Any:
    return _ExecoUnpickler(file).load()


def _new_execo_done(file: IO[bytes], last: str | None, name: str) -> tuple[list[Any], str]:
    """The combinations execo appended to its ``done`` file since ``last`` was reached.

    execo appends each one, pickled: the file is read from where the last reading
    stopped (from the start again if it shrank or was replaced) up to the first
    entry that cannot be read (execo's half-written last one). Returns them and
    where the reading stopped (``device:inode:offset``).
    """
    status = os.fstat(file.fileno())
    identity = f"{status.st_dev}:{status.st_ino}:"
    start = 0
    if last is not None and last.startswith(identity):
        start = int(last[len(identity) :])
    if start > status.st_size:
        start = 0
    file.seek(start)
    combinations: list[Any] = []
    end = start
    while end < status.st_size:
        try:
            combinations.append(_load_execo_pickle(file))
        except Exception as exc:
            log.warning("%s: execo's done file is unreadable from byte %d: %r", name, end, exc)
            break
        end = file.tell()
    return combinations, f"{identity}{end}"


_STATUS_RANK = {"todo": 0, "inprogress": 1, "done": 2}


def _migrate_from_format_1(db: sqlite3.Connection) -> None:
    """Compute every key again (format 2's); rows of combinations now equal become one.

    The merged row keeps the first one's place and data, the most advanced
    status (done, then inprogress with its holder, then todo) and the earliest
    place in the saved sweeps. A row whose data cannot be loaded keeps its key.
    """
    with Transaction(db):
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or row[0] != _FORMAT_1:
            return  # another process migrated it meanwhile
        merged: dict[str, list[Any]] = {}
        changed = False
        query = "SELECT key, seq, data, status, holder, lease_until, saved FROM items ORDER BY seq"
        for old, seq, data, status, holder, lease_until, saved in db.execute(query).fetchall():
            key = old
            with contextlib.suppress(Exception):  # its class is gone: it keeps its old key
                key = combination_key(pickle.loads(data))
            changed = changed or key != old or key in merged
            first = merged.setdefault(key, [key, seq, data, status, holder, lease_until, saved])
            if _STATUS_RANK[status] > _STATUS_RANK[first[3]]:
                first[3:6] = [status, holder, lease_until]
            if saved and (not first[6] or saved < first[6]):
                first[6] = saved
        if changed:  # most sweeps (strings, ints, fractional floats) keep every key
            db.execute("DELETE FROM items")
            db.executemany(
                "INSERT INTO items (key, seq, data, status, holder, lease_until, saved) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                merged.values(),
            )
            db.execute("DELETE FROM meta WHERE key LIKE 'stored:%'")  # digests of the old keys
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (_FORMAT,))


def _open(directory: str) -> sqlite3.Connection:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "sweeper.sqlite")
    fresh = not os.path.exists(path)
    try:
        db = connect(path, _SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise SweeperError(f"{path} is damaged or not a ParamSweeper database: {exc}") from exc
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None:
            if not fresh and db.execute("SELECT COUNT(*) FROM items").fetchone()[0]:
                raise SweeperError(f"{path} has no format marker: not a ParamSweeper database")
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (_FORMAT,))
        elif row[0] == _FORMAT_1:
            _migrate_from_format_1(db)
        elif row[0] != _FORMAT:
            raise SweeperError(f"{path} holds format {row[0]!r}, not {_FORMAT!r}")
    except BaseException as exc:
        db.close()  # refused: leave nothing open
        if isinstance(exc, sqlite3.DatabaseError):
            raise SweeperError(f"{path} is damaged: {exc}") from exc
        raise
    os.chmod(path, 0o600)
    return db
