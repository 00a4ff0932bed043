"""The sweeper's shared state: one SQLite database of combinations, statuses and leases.

``<persistence_dir>/sweeper.sqlite`` (WAL mode) has a row per combination: its
place in the sweeps (the rowid), its key (:func:`~._keys.combination_key`), its
pickle and its status (todo, inprogress, done). An *inprogress* row names its holder
(machine, process, instance) and when its lease ends: a holder that died gives
its combinations back when the lease expires, or at once if it ran on this
machine. Every operation costs the same whether 10 or 10 million
combinations are done.

:class:`SweeperState` holds the connection and this process's holder name;
:class:`~._sweeper.ParamSweeper`, the API, calls it under its own lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sqlite3
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

from .. import AsyncExecError
from .._sqlite import Transaction, connect, holder_gone, new_holder
from ._keys import combination_key

__all__ = ["SweeperError", "SweeperState"]

_FORMAT = "asyncexec-paramsweeper-3"
# Format 1 told 1, 1.0 and True apart (and a namedtuple from its tuple): opened,
# its keys are computed again (see _migrate_from_format_1), then it is format 2.
_FORMAT_1 = "asyncexec-paramsweeper-1"
# Format 2 had the key as primary key and six b-trees per row: a commit wrote
# twice the pages format 3 writes. Opened, it is rebuilt (_migrate_from_format_2).
_FORMAT_2 = "asyncexec-paramsweeper-2"
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
# The rowid is the place in the sweeps: appending is cheap and the (status)
# index is (status, seq). Holder and lease are only looked up among the few
# inprogress rows, which that index finds.
_ITEMS_TABLE = """
CREATE TABLE {name} (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    status TEXT NOT NULL,            -- todo | inprogress | done
    holder TEXT,
    lease_until REAL,
    saved INTEGER NOT NULL DEFAULT 0 -- place in the sweeps saved with save_sweeps
)"""
_ITEMS_INDEXES = (
    "CREATE UNIQUE INDEX items_key ON items (key)",
    "CREATE INDEX items_status ON items (status)",
)
_DROP_ITEMS_INDEXES = ("DROP INDEX items_key", "DROP INDEX items_status")

_CHUNK = 10_000  # combinations written per transaction


class SweeperError(AsyncExecError):
    """The persistence database is not a ParamSweeper's or is damaged, or no sweeps were saved."""


class SweeperState:
    """The database of a sweeper's persistence directory, and who we are in it.

    Args:
        directory: the persistence directory (made if missing).
        lease: seconds an *inprogress* row we take stays ours without renewal.

    Raises:
        SweeperError: ``sweeper.sqlite`` is damaged or not a ParamSweeper's.
    """

    def __init__(self, directory: str, lease: float) -> None:
        self._lease = lease
        self.holder = new_holder()
        self._reclaimed_at = 0.0  # expired leases are looked for every lease/10 s at most
        self._db = _open(directory)

    def close(self) -> None:
        """Close the connection (our leases run on until they expire)."""
        self._db.close()

    def transaction(self) -> Transaction:
        """BEGIN IMMEDIATE ... COMMIT; the methods called inside it join it."""
        return Transaction(self._db)

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.transaction() as db:
            db.execute(sql, params)

    def meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (the format, where execo's done file was read to)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- sweeps ---------------------------------------------------------------------

    def saved_sweeps(self) -> dict[str, Any]:
        """The sweeps saved with ``save_sweeps``, in their order, by key."""
        rows = self._db.execute("SELECT key, data FROM items WHERE saved > 0 ORDER BY saved")
        return {key: pickle.loads(data) for key, data in rows}

    def store_sweeps(self, sweeps: dict[str, Any], save: bool) -> None:
        """Add the combinations not stored yet, in short transactions.

        Other processes keep working meanwhile: a million combinations written in
        one transaction would hold the write lock (and their heartbeats) for tens
        of seconds. A sweep already stored whole is recognised by its digest.
        Into an empty database, all are written in one transaction with the
        indexes built after the rows: no one holds a lease yet that would wait.
        """
        digest = hashlib.blake2b("".join(sweeps).encode(), digest_size=16).hexdigest()
        marker = f"stored:{digest}"
        known = self._db.execute("SELECT 1 FROM meta WHERE key = ?", (marker,)).fetchone()
        if not known and not self._store_into_empty(sweeps, marker):
            items = list(sweeps.items())
            for first in range(0, len(items), _CHUNK):
                rows = [
                    (key, pickle.dumps(combination, protocol=4))
                    for key, combination in items[first : first + _CHUNK]
                ]
                with self.transaction() as db:
                    (start,) = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM items").fetchone()
                    db.executemany(
                        "INSERT OR IGNORE INTO items (seq, key, data, status) "
                        "VALUES (?, ?, ?, 'todo')",
                        ((start + i, key, data) for i, (key, data) in enumerate(rows)),
                    )
            self._write("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '1')", (marker,))
        if save:  # `saved` holds the position in the saved sweeps (0: not saved)
            with self.transaction() as db:
                db.execute("UPDATE items SET saved = 0 WHERE saved > 0")
                db.executemany(
                    "UPDATE items SET saved = ? WHERE key = ?",
                    ((position, key) for position, key in enumerate(sweeps, start=1)),
                )

    def _store_into_empty(self, sweeps: dict[str, Any], marker: str) -> bool:
        """Store ``sweeps`` in one transaction if no combination is stored yet; say if so.

        A sweep that another process stored meanwhile is not stored again.
        """
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = ?", (marker,)).fetchone():
                return True
            if db.execute("SELECT 1 FROM items LIMIT 1").fetchone():
                return False
            # Rows in random key order would each dirty a page of the key index:
            # sorting the keys once, in CREATE INDEX, is 5x quicker.
            for statement in _DROP_ITEMS_INDEXES:
                db.execute(statement)
            db.executemany(
                "INSERT INTO items (seq, key, data, status) VALUES (?, ?, ?, 'todo')",
                (
                    (seq, key, pickle.dumps(combination, protocol=4))
                    for seq, (key, combination) in enumerate(sweeps.items())
                ),
            )
            for statement in _ITEMS_INDEXES:
                db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES (?, '1')", (marker,))
            return True

    # -- handing out ----------------------------------------------------------------

    def reclaim_expired(self, now: float) -> None:
        """Give back expired leases, and those of dead holders on this machine.

        Looked for every ``lease / 10`` seconds at most.
        """
        if now - self._reclaimed_at <= self._lease / 10:
            return
        db = self._db
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
            if holder_gone(str(holder)):
                db.execute(
                    "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                    "WHERE holder = ? AND status = 'inprogress'",
                    (holder,),
                )

    def next_todo(
        self, count: int, sweeps: Container[str], skipped: Mapping[str, Any]
    ) -> list[str]:
        """The keys of up to ``count`` *todo* rows in ``sweeps`` and not ``skipped``, in order."""
        db = self._db
        keys: list[str] = []
        after = -1
        limit = count + len(skipped)  # enough when every todo row is in our sweeps
        while len(keys) < count:
            rows = db.execute(
                "SELECT key, seq FROM items WHERE status = 'todo' AND seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            if not rows:
                break
            # Rows of other sweeps are in the way: read further ahead each time.
            limit = max(min(4 * limit, 65_536), count - len(keys) + len(skipped))
            for key, seq in rows:
                after = seq
                if key in sweeps and key not in skipped:
                    keys.append(key)
                    if len(keys) == count:
                        break
        return keys

    def todo_keys(self, sweeps: Container[str], skipped: Container[str]) -> list[str]:
        """The keys of every *todo* row in ``sweeps`` and not ``skipped``, in order."""
        rows = self._db.execute("SELECT key FROM items WHERE status = 'todo' ORDER BY seq")
        return [key for (key,) in rows if key in sweeps and key not in skipped]

    def hold(self, keys: Iterable[str], now: float) -> None:
        """Make these *todo* rows *inprogress*, ours, leased from ``now``."""
        self._db.executemany(
            "UPDATE items SET status = 'inprogress', holder = ?, lease_until = ? "
            "WHERE key = ? AND status = 'todo'",
            ((self.holder, now + self._lease, key) for key in keys),
        )

    def renew(self) -> None:
        """Extend the lease of every row we hold."""
        self._write(
            "UPDATE items SET lease_until = ? WHERE holder = ? AND status = 'inprogress'",
            (time.time() + self._lease, self.holder),
        )

    # -- marking --------------------------------------------------------------------

    def mark_done(self, items: Sequence[tuple[str, Any]]) -> None:
        """Make these (key, combination) *done*, adding those in no sweep yet."""
        if len(items) == 1 and not self._db.in_transaction:
            # One statement is a transaction of its own (taking the write lock as
            # BEGIN IMMEDIATE does): two statements fewer for the common case.
            cursor = self._db.execute(
                "UPDATE items SET status = 'done', holder = NULL, lease_until = NULL WHERE key = ?",
                items[0][:1],
            )
            if cursor.rowcount:
                return
        with self.transaction() as db:
            marked = db.executemany(
                "UPDATE items SET status = 'done', holder = NULL, lease_until = NULL WHERE key = ?",
                ((key,) for key, _ in items),
            ).rowcount
            if marked == len(items):  # (the keys are distinct: each of them was there)
                return
            # Some are in no sweep yet: remember them done all the same.
            unknown = [
                (key, combination)
                for key, combination in items
                if not db.execute("SELECT 1 FROM items WHERE key = ?", (key,)).fetchone()
            ]
            if unknown:
                (start,) = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM items").fetchone()
                db.executemany(
                    "INSERT INTO items (key, seq, data, status) VALUES (?, ?, ?, 'done')",
                    (
                        (key, start + i, pickle.dumps(c, protocol=4))
                        for i, (key, c) in enumerate(unknown)
                    ),
                )

    def release(self, keys: Iterable[str]) -> None:
        """Make these *inprogress* rows *todo* again, whoever holds them."""
        keys = list(keys)
        with self.transaction() as db:
            if len(keys) < 1000:
                db.executemany(
                    "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                    "WHERE key = ? AND status = 'inprogress'",
                    ((key,) for key in keys),
                )
                return
            # Many (a detached indexed sweep gives 100,000 back): one UPDATE over a
            # temporary table of the keys, 4x quicker than an UPDATE per key.
            db.execute("CREATE TEMP TABLE IF NOT EXISTS releasing (key TEXT PRIMARY KEY)")
            db.execute("DELETE FROM releasing")
            db.executemany("INSERT OR IGNORE INTO releasing VALUES (?)", ((k,) for k in keys))
            db.execute(
                "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                "WHERE status = 'inprogress' AND key IN (SELECT key FROM releasing)"
            )
            db.execute("DELETE FROM releasing")

    def release_every_held(self) -> None:
        """Make every *inprogress* row *todo* again, whoever holds it."""
        self._write(
            "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
            "WHERE status = 'inprogress'"
        )

    def reopen(self, keys: Iterable[str]) -> int:
        """Make these *done* rows *todo* again; return how many were done."""
        with self.transaction() as db:
            reopened = 0
            for key in keys:
                reopened += db.execute(
                    "UPDATE items SET status = 'todo', holder = NULL, lease_until = NULL "
                    "WHERE key = ? AND status = 'done'",
                    (key,),
                ).rowcount
            return reopened

    # -- reading --------------------------------------------------------------------

    def keys_with_status(self, status: str, now: float) -> list[str]:
        """The keys of the rows with ``status`` (*inprogress*: with a live lease), in order."""
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
        return [key for (key,) in rows]

    def remaining_keys(self, now: float) -> list[str]:
        """The keys of the *todo* rows, an expired lease counted as *todo*, in order."""
        rows = self._db.execute(
            "SELECT key FROM items WHERE status = 'todo' "
            "OR (status = 'inprogress' AND lease_until < ?) ORDER BY seq",
            (now,),
        )
        return [key for (key,) in rows]


def _format(db: sqlite3.Connection) -> str | None:
    """The format marker of the database, if any."""
    row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    return None if row is None else str(row[0])


_STATUS_RANK = {"todo": 0, "inprogress": 1, "done": 2}


def _migrate_from_format_1(db: sqlite3.Connection) -> None:
    """Compute every key again (format 2's); rows of combinations now equal become one.

    The table keeps format 2's layout (format 2 is then migrated to 3).

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
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (_FORMAT_2,))


def _migrate_from_format_2(db: sqlite3.Connection) -> None:
    """Rebuild the table in format 3's layout: same rows, keys and places; fewer indexes."""
    with Transaction(db):
        if _format(db) != _FORMAT_2:
            return  # another process migrated it meanwhile
        db.execute(_ITEMS_TABLE.format(name="items_format_3"))
        db.execute(
            "INSERT INTO items_format_3 (seq, key, data, status, holder, lease_until, saved) "
            "SELECT seq, key, data, status, holder, lease_until, saved FROM items ORDER BY seq"
        )
        db.execute("DROP TABLE items")  # and its indexes
        db.execute("ALTER TABLE items_format_3 RENAME TO items")
        for statement in _ITEMS_INDEXES:
            db.execute(statement)
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (_FORMAT,))


def _create(db: sqlite3.Connection, path: str) -> None:
    """Make a database without a format marker format 3's, if it holds no combination."""
    with Transaction(db):
        if _format(db) is not None:
            return  # another process made it meanwhile
        old = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'items'").fetchone()
        if old and db.execute("SELECT 1 FROM items LIMIT 1").fetchone():
            raise SweeperError(f"{path} has no format marker: not a ParamSweeper database")
        if old:
            db.execute("DROP TABLE items")
        db.execute(_ITEMS_TABLE.format(name="items"))
        for statement in _ITEMS_INDEXES:
            db.execute(statement)
        db.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (_FORMAT,))


def _open(directory: str) -> sqlite3.Connection:
    """``sweeper.sqlite`` in ``directory``, made or checked (and migrated from format 1 or 2)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "sweeper.sqlite")
    try:
        db = connect(path, _META_SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise SweeperError(f"{path} is damaged or not a ParamSweeper database: {exc}") from exc
    try:
        # A first store writes its rows in one transaction: its WAL (150 MB for a
        # million) is cut back to this once checkpointed.
        db.execute("PRAGMA journal_size_limit = 67108864")
        if _format(db) is None:
            _create(db, path)
        if _format(db) == _FORMAT_1:
            _migrate_from_format_1(db)
        if _format(db) == _FORMAT_2:
            _migrate_from_format_2(db)
        found = _format(db)
        if found != _FORMAT:
            raise SweeperError(f"{path} holds format {found!r}, not {_FORMAT!r}")
    except BaseException as exc:
        db.close()  # refused: leave nothing open
        if isinstance(exc, sqlite3.DatabaseError):
            raise SweeperError(f"{path} is damaged: {exc}") from exc
        raise
    os.chmod(path, 0o600)
    return db
