"""Opening the SQLite databases asyncexec keeps (sweeper, results store)."""

from __future__ import annotations

import functools
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Transaction", "connect", "holder_gone", "new_holder", "start_heartbeat"]

log = logging.getLogger("asyncexec")

T = TypeVar("T")


def connect(path: str, schema: str, *, timeout: float = 60.0) -> sqlite3.Connection:
    """Open ``path`` in WAL mode (autocommit; we BEGIN ourselves) and apply ``schema``.

    Several processes may open a new database at the same moment. Switching it
    to WAL needs an exclusive lock that SQLite's busy handler does not wait
    for, so "database is locked" is retried here until ``timeout``.

    Raises:
        sqlite3.DatabaseError: not a database, or still locked after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(schema)
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            db.close()
            raise


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK): one writer at a time, across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        if self._db.in_transaction:  # nested (stats): the outer one commits
            self._nested = True
            return self._db
        self._nested = False
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._nested:
            return
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def start_heartbeat(
    owner: T, renew: Callable[[T], object], closed: threading.Event, period: float, what: str
) -> threading.Thread:
    """Start a daemon thread that calls ``renew(owner)`` every ``period`` seconds until
    ``closed`` is set, ``owner`` is dropped (it is held weakly) or its database closed;
    another SQLite error is logged, and tried again next time. (What keeps leases.)"""
    ref = weakref.ref(owner)

    def beat() -> None:
        while not closed.wait(period):
            alive = ref()
            if alive is None:
                return
            try:
                renew(alive)
            except sqlite3.ProgrammingError:
                return  # its database was closed under us
            except sqlite3.Error:
                log.warning("could not renew the leases of %s; trying again", what)
            del alive

    thread = threading.Thread(target=beat, name=f"asyncexec-leases-{what}", daemon=True)
    thread.start()
    return thread


def new_holder() -> str:
    """A name for a holder of leases: its machine (precisely enough to tell, from
    another process, that the holder is gone: same host, same boot, same pid
    namespace), its process, and a nonce of its own."""
    return f"{_machine()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def holder_gone(holder: str) -> bool:
    """Whether ``holder`` (:func:`new_holder`) was a process of this machine that is
    gone (its leases need not expire)."""
    machine, _, pid = holder.rpartition(":")[0].rpartition(":")
    return machine == _machine() and pid.isdigit() and not _alive(int(pid))


@functools.cache
def _machine() -> str:
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
