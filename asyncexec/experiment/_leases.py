"""Who runs which run of an experiment: leases in the results store's own rows.

Every runner of an experiment (processes, machines sharing its directory) takes
the runs it will run from ``results.sqlite``: a run is *free* while no runner
holds it (``holder`` NULL) and it is neither ``done`` nor ``failed`` (``failed``
too for a runner that retries failures); taking it writes the runner's name and
when its lease ends into the row, in the transaction that found it free. The
row recording the run's end gives it back. A runner renews its leases from a
heartbeat thread: the runs of a runner that died come back once its lease
expires, or at once if it ran on this machine. One database, one row per run:
the store is the truth about what is done and about who holds what.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from .. import JobRef
from .._sqlite import holder_gone, new_holder, start_heartbeat
from ._store import FREE, ResultsStore, _job_ref

__all__ = ["RunLeases"]


class RunLeases:
    """This runner's leases on the runs of an experiment, in its results store.

    Args:
        store: the experiment's open store (its connection and lock are shared).
        fingerprints: the experiment's runs (the store may hold others: a former
            version's).
        lease: seconds a run we hold stays ours without renewal; renewed every
            ``lease / 3`` seconds while this is open.
        retry_failed: take runs recorded ``failed`` too (each at most once here).
    """

    def __init__(
        self,
        store: ResultsStore,
        fingerprints: Collection[str],
        lease: float,
        retry_failed: bool = False,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease!r}")
        self.lease = lease
        self._store = store
        self._ours = fingerprints
        self._retry_failed = retry_failed
        self._skipped: set[str] = set()  # failed here: not taken again by this runner
        self.holder = new_holder()
        self._reclaimed_at = 0.0
        self._closed = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def close(self) -> None:
        """Stop renewing (what we still hold comes back when its lease expires; give it
        back with :meth:`release` first to hand it over at once)."""
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join()

    # -- taking and giving back -----------------------------------------------------

    def take(self, count: int) -> list[tuple[str, str, JobRef | None]]:
        """Hold up to ``count`` free runs of ours, in order: ``(fingerprint, status,
        JobRef)`` of each, the JobRef where a runner that is gone left it running."""
        if count <= 0:
            return []
        store = self._store
        now = time.time()
        with store.transaction() as db:
            self._reclaim(db, now)
            found = self._free(db, f"{FREE} AND seq > ?", count)
            if self._retry_failed and len(found) < count:
                failed = "holder IS NULL AND status = 'failed' AND seq > ?"
                found += self._free(db, failed, count - len(found))
            db.executemany(
                "UPDATE runs SET holder = ?, lease_until = ? WHERE rowid = ? AND holder IS NULL",
                ((self.holder, now + self.lease, rowid) for rowid, *_ in found),
            )
        if found and self._heartbeat is None:  # (dropping this ends it)
            self._heartbeat = start_heartbeat(
                self, RunLeases._renew, self._closed, self.lease / 3, self.holder
            )
        return [
            (fingerprint, status, _job_ref(ref) if status == "running" else None)
            for _, fingerprint, status, ref in found
        ]

    def _free(self, db: Any, where: str, count: int) -> list[tuple[int, str, str, str | None]]:
        """Up to ``count`` rows of ours matching ``where`` (which ends with ``seq > ?``),
        in order: reads further ahead while rows of others are in the way."""
        found: list[tuple[int, str, str, str | None]] = []
        after, limit = -1, count + len(self._skipped)
        while len(found) < count:
            rows = db.execute(
                f"SELECT seq, rowid, fingerprint, status, job_ref FROM runs WHERE {where} "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            if not rows:
                break
            limit = max(min(4 * limit, 65_536), count - len(found) + len(self._skipped))
            for seq, rowid, fingerprint, status, ref in rows:
                after = seq
                if fingerprint in self._ours and fingerprint not in self._skipped:
                    found.append((rowid, fingerprint, status, ref))
                    if len(found) == count:
                        break
        return found

    def release(self, fingerprints: Iterable[str]) -> None:
        """Give back these runs we hold (taken and not run, or left running where they
        run, for the next runner to follow): free at once."""
        store = self._store
        rows = [(fingerprint, self.holder) for fingerprint in fingerprints]
        if not rows:
            return
        with store.transaction() as db:
            db.executemany(
                "UPDATE runs SET holder = NULL, lease_until = NULL "
                "WHERE fingerprint = ? AND holder = ?",
                rows,
            )

    def skip(self, fingerprints: Iterable[str]) -> None:
        """Never take these runs again here (they failed here)."""
        self._skipped.update(fingerprints)

    # -- leases ---------------------------------------------------------------------

    def _reclaim(self, db: Any, now: float) -> None:
        """Free the runs of expired leases, and those of gone holders on this machine
        (looked for every ``lease / 10`` seconds at most)."""
        if now - self._reclaimed_at <= self.lease / 10:
            return
        self._reclaimed_at = now
        db.execute(
            "UPDATE runs SET holder = NULL, lease_until = NULL "
            "WHERE holder IS NOT NULL AND lease_until < ?",
            (now,),
        )
        holders = db.execute("SELECT DISTINCT holder FROM runs WHERE holder IS NOT NULL").fetchall()
        for (holder,) in holders:
            if holder_gone(str(holder)):
                db.execute(
                    "UPDATE runs SET holder = NULL, lease_until = NULL WHERE holder = ?",
                    (holder,),
                )

    def _renew(self) -> None:
        if self._closed.is_set():
            return
        with self._store.transaction() as db:
            db.execute(
                "UPDATE runs SET lease_until = ? WHERE holder = ?",
                (time.time() + self.lease, self.holder),
            )
