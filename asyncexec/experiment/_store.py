"""The results store: every run of an experiment, in SQLite, in its directory.

``<directory>/results.sqlite`` holds one row per run (parameters, repeat,
fingerprint, status, value, error and remote traceback, timings, host,
attempts, JobRef, output tails). It is the source of truth for resuming: a
run recorded ``done`` is never dispatched again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from .. import AsyncExecError, Future, FutureState, JobRef, RemoteError
from .._sqlite import Transaction, connect

__all__ = ["ResultsStore", "RunResult", "RunSpec", "StoreError", "future_row", "outcome_row"]

_FORMAT = "asyncexec-results-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    fingerprint TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    params_json TEXT NOT NULL,
    params_pickle BLOB NOT NULL,
    repeat INTEGER NOT NULL,
    status TEXT NOT NULL,         -- pending | running | done | failed | cancelled
    value_json TEXT,
    value_pickle BLOB,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    submitted REAL,
    started REAL,
    finished REAL,
    host TEXT,
    worker TEXT,
    attempts INTEGER,
    job_ref TEXT,
    stdout TEXT,
    stderr TEXT,
    updated REAL NOT NULL,
    holder TEXT,                  -- the runner that holds the run (see _leases.py)
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS runs_seq ON runs (seq);
"""
# The runs runners may take (for _leases.py), in order; made after the columns, which
# a store of an earlier version gains when opened (_add_lease_columns). (No index on
# the status, nor on the holder: each would cost every run's writes another b-tree,
# for queries that read every row anyway or run every few seconds.)
#: The runs no runner holds that are neither done nor failed (runs_free's clause).
FREE = "holder IS NULL AND status NOT IN ('done', 'failed')"
_LEASE_INDEXES = (
    "DROP INDEX IF EXISTS runs_status",
    f"CREATE INDEX IF NOT EXISTS runs_free ON runs (seq) WHERE {FREE}",
)
STATUSES = ("pending", "running", "done", "failed", "cancelled")


class StoreError(AsyncExecError):
    """The directory is not an experiment's, or its store is damaged or another's."""


class RunSpec(msgspec.Struct, frozen=True):
    """One run of an experiment: a parameter combination and a repeat number."""

    fingerprint: str
    params: dict[str, Any]
    repeat: int


class RunResult(msgspec.Struct, kw_only=True):
    """What became of one run, for :meth:`ResultsStore.record_results` (the runs of an
    indexed sweep end without futures)."""

    fingerprint: str
    status: str  # done | failed | cancelled
    value: Any = None
    error: BaseException | None = None
    started: float | None = None
    finished: float | None = None
    host: str | None = None
    worker: str | None = None
    attempts: int | None = None
    job_ref: JobRef | None = None
    stdout: str | None = None
    stderr: str | None = None


def _json_or_none(value: Any) -> str | None:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):
        return None


_RUNNING = (
    "UPDATE runs SET status = 'running', submitted = ?, started = NULL, finished = NULL, "
    "value_json = NULL, value_pickle = NULL, error_type = NULL, error_message = NULL, "
    "traceback = NULL, job_ref = ?, updated = ? WHERE fingerprint = ?"
)
_ENDED = (  # (and no runner holds it any more)
    "UPDATE runs SET status = ?, value_json = ?, value_pickle = ?, error_type = ?, "
    "error_message = ?, traceback = ?, submitted = COALESCE(?, submitted), started = ?, "
    "finished = ?, host = ?, worker = ?, attempts = ?, job_ref = COALESCE(?, job_ref), "
    "stdout = ?, stderr = ?, updated = ?, holder = NULL, lease_until = NULL "
    "WHERE fingerprint = ?"
)


def _job_ref(text: str | None) -> JobRef | None:
    """The JobRef stored as ``text`` (None: none, or not one this version reads)."""
    if not text:
        return None
    try:
        return msgspec.json.decode(text, type=JobRef)
    except msgspec.ValidationError:
        return None


def _running_rows(
    refs: Mapping[str, JobRef | None], submitted: float | None, now: float
) -> Iterator[tuple[Any, ...]]:
    for fingerprint, ref in refs.items():
        text = msgspec.json.encode(ref).decode() if ref is not None else None
        yield (submitted, text, now, fingerprint)


_STATUS_OF = {
    FutureState.DONE: "done",
    FutureState.FAILED: "failed",
    FutureState.CANCELLED: "cancelled",
}


def outcome_row(
    fingerprint: str,
    status: str,
    value: Any,
    error: BaseException | None,
    times: tuple[float | None, float | None, float | None],
    host: str | None,
    worker: str | None,
    attempts: int | None,
    job_ref: JobRef | None,
    stdout: str | None,
    stderr: str | None,
) -> tuple[Any, ...]:
    """The row of a run that ended, for :meth:`ResultsStore.commit_turn` (``times``:
    submitted, started, finished; ``fingerprint`` last, where the statement wants it)."""
    value_json: str | None = None
    value_pickle: bytes | None = None
    error_type = error_message = trace = None
    if status == "done":
        value_json = _json_or_none(value)
        if value_json is None:
            value_pickle = pickle.dumps(value, protocol=4)
    elif error is not None:
        if isinstance(error, RemoteError):
            error_type, error_message = error.remote_type, error.remote_message
            trace = error.remote_traceback
        else:
            error_type, error_message = type(error).__name__, str(error)
    return (
        status,
        value_json,
        value_pickle,
        error_type,
        error_message,
        trace,
        *times,
        host,
        worker,
        attempts,
        msgspec.json.encode(job_ref).decode() if job_ref is not None else None,
        stdout,
        stderr,
        fingerprint,
    )


def future_row(fingerprint: str, future: Future[Any]) -> tuple[Any, ...]:
    """The row of a run whose future is ready (:func:`outcome_row`)."""
    info = future.info
    status = _STATUS_OF[future.state]
    return outcome_row(
        fingerprint,
        status,
        future.result() if status == "done" else None,
        None if status == "done" else future.exception(),
        (info.submitted, info.started, info.finished),
        info.host,
        info.worker,
        info.attempts,
        info.job_ref,
        info.stdout,
        info.stderr,
    )


class ResultsStore:
    """Opens (or creates) the results store of an experiment directory.

    Args:
        directory: the experiment directory (created if missing).
        experiment: the experiment's name; an existing store of another
            experiment is refused.
        create: make the store if the directory has none (else StoreError).

    Raises:
        StoreError: the directory holds other things, a damaged database or
            another experiment's results. Nothing is overwritten.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        experiment: str | None = None,
        create: bool = True,
    ) -> None:
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, "results.sqlite")
        self._lock = threading.Lock()
        self._db = self._open(experiment, create)

    def _open(self, experiment: str | None, create: bool) -> sqlite3.Connection:
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise StoreError(f"{self.directory} is not a directory: choose a directory for --dir")
        exists = os.path.exists(self.path)
        if not exists:
            if not create:
                raise StoreError(
                    f"{self.directory} holds no experiment results (no results.sqlite)"
                )
            # Another runner may be creating them; executor.json and target.json are the
            # CLI's record of the executor (asyncexec.config.EXECUTOR_FILE) and of the
            # experiment (for `attach`), kept when results.sqlite is deleted.
            ours = ("results.sqlite", "sweeper", "logs", "executor.json", "target.json")
            if os.path.isdir(self.directory) and any(
                not name.startswith((".", *ours)) for name in os.listdir(self.directory)
            ):
                raise StoreError(
                    f"{self.directory} is not an asyncexec experiment directory: it has files "
                    "but no results.sqlite; choose an empty or new directory"
                )
            try:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot make the experiment directory {self.directory}: {exc.strerror or exc}"
                ) from exc
        try:
            db = connect(self.path, _SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is damaged or not an experiment store: {exc}") from exc
        try:
            self._check(db, exists, experiment)
            _add_lease_columns(db)
        except BaseException as exc:
            db.close()  # refused: leave nothing open
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"{self.path} is damaged: {exc}") from exc
            raise
        os.chmod(self.path, 0o600)
        return db

    def _check(self, db: sqlite3.Connection, exists: bool, experiment: str | None) -> None:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            if exists and db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]:
                raise StoreError(f"{self.path} has no format marker: not an asyncexec store")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (_FORMAT,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (repr(time.time()),))
            if experiment is not None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('experiment', ?)", (experiment,))
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != _FORMAT:
            raise StoreError(f"{self.path} holds format {meta.get('format')!r}, not {_FORMAT!r}")
        stored = meta.get("experiment")
        if experiment is not None and stored is not None and stored != experiment:
            raise StoreError(
                f"{self.directory} holds the results of experiment {stored!r}, not {experiment!r}"
            )

    @property
    def experiment(self) -> str | None:
        return self.meta().get("experiment")

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The store's lock and a write transaction (BEGIN IMMEDIATE ... COMMIT) on its
        connection, for what keeps its state in the store's database (the runners'
        leases, :mod:`._leases`)."""
        with self._lock, Transaction(self._db) as db:
            yield db

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock, Transaction(self._db) as db:
            db.executemany(sql, rows)

    # -- writing --------------------------------------------------------------------

    def register(self, runs: Iterable[RunSpec]) -> None:
        """Add runs not yet known, as ``pending``, keeping the order given."""
        with self._lock:
            (start,) = self._db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM runs").fetchone()
        now = time.time()
        self._write(
            "INSERT OR IGNORE INTO runs (fingerprint, seq, params_json, params_pickle, repeat, "
            "status, updated) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (
                (
                    run.fingerprint,
                    start + index,
                    _json_or_none(run.params)
                    or json.dumps({k: repr(v) for k, v in run.params.items()}),
                    pickle.dumps(run.params, protocol=4),
                    run.repeat,
                    now,
                )
                for index, run in enumerate(runs)
            ),
        )

    def commit_turn(
        self,
        *,
        running: Mapping[str, JobRef | None] | None = None,
        submitted: float | None = None,
        refs: Mapping[str, JobRef] | None = None,
        ended: Sequence[Sequence[Any]] = (),
    ) -> None:
        """What a runner's loop turn saw, in one transaction: runs it started (``running``:
        where each went, or None; ``submitted``: when), where running runs went since
        (``refs``), and the rows of the runs that ended (:func:`outcome_row`), in
        that order (a run started and ended in one turn ends recorded)."""
        now = time.time()
        with self._lock, Transaction(self._db) as db:
            if running:
                db.executemany(_RUNNING, _running_rows(running, submitted, now))
            if refs:
                db.executemany(
                    "UPDATE runs SET job_ref = ?, updated = ? "
                    "WHERE fingerprint = ? AND status = 'running'",
                    ((msgspec.json.encode(ref).decode(), now, fp) for fp, ref in refs.items()),
                )
            if ended:
                db.executemany(_ENDED, ((*row[:-1], now, row[-1]) for row in ended))

    def mark_running_batch(self, refs: Mapping[str, JobRef | None], submitted: float) -> None:
        """Mark many runs ``running`` at once, each with where its work went (or None):
        one transaction (an indexed sweep submits thousands of runs at a time)."""
        self.commit_turn(running=refs, submitted=submitted)

    def set_job_refs(self, refs: Mapping[str, JobRef]) -> None:
        """Keep where many running runs' work went now (submitted again, say)."""
        self.commit_turn(refs=refs)

    def record_results(self, results: Iterable[RunResult]) -> None:
        """Store what became of many runs, in one transaction (see :class:`RunResult`)."""
        rows = [
            outcome_row(
                result.fingerprint,
                result.status,
                result.value,
                result.error,
                (None, result.started, result.finished),
                result.host,
                result.worker,
                result.attempts,
                result.job_ref,
                result.stdout,
                result.stderr,
            )
            for result in results
        ]
        self.commit_turn(ended=rows)

    def job_refs(self, fingerprints: Collection[str]) -> dict[str, JobRef]:
        """Where each of ``fingerprints`` that is ``running`` went, if it was kept."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, job_ref FROM runs WHERE status = 'running' "
                "AND job_ref IS NOT NULL"
            ).fetchall()
        found = {}
        for fingerprint, text in rows:
            ref = _job_ref(text) if fingerprint in fingerprints else None
            if ref is not None:
                found[str(fingerprint)] = ref
        return found

    def running_job_refs(self) -> list[tuple[str, JobRef]]:
        """``(fingerprint, JobRef)`` of every run recorded ``running`` with a JobRef."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, job_ref FROM runs WHERE status = 'running' "
                "AND job_ref IS NOT NULL ORDER BY seq"
            ).fetchall()
        return [(str(fp), ref) for fp, text in rows if (ref := _job_ref(text)) is not None]

    def running_places(self) -> list[tuple[JobRef, int]]:
        """Where the runs recorded ``running`` went, grouped by the work that holds them
        (an array task holds many runs of an indexed sweep): one JobRef of each
        group, and how many runs it holds. Counted by SQLite (``asyncexec status``)."""
        with self._lock:
            rows = self._db.execute(
                # (By the native id alone: one pass of json_extract, 3x quicker than
                # by kind, host and workdir too, which one native id never mixes.)
                "SELECT MIN(job_ref), COUNT(*) FROM runs WHERE status = 'running' "
                "AND job_ref IS NOT NULL GROUP BY json_extract(job_ref, '$.native_id')"
            ).fetchall()
        return [(ref, int(count)) for text, count in rows if (ref := _job_ref(text)) is not None]

    def mark_cancelled(self, fingerprints: Iterable[str]) -> None:
        """Record these runs ``cancelled`` (their work was killed), if still ``running``."""
        now = time.time()
        self._write(
            "UPDATE runs SET status = 'cancelled', updated = ?, holder = NULL, lease_until = NULL "
            "WHERE fingerprint = ? AND status = 'running'",
            [(now, fingerprint) for fingerprint in fingerprints],
        )

    def request_cancel(self) -> None:
        """Ask the runner working on this store (in any process) to stop."""
        self._write(
            "INSERT OR REPLACE INTO meta VALUES ('cancel_requested', ?)", [(repr(time.time()),)]
        )

    def clear_cancel(self) -> None:
        self._write("DELETE FROM meta WHERE key = ?", [("cancel_requested",)])

    def cancel_requested(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM meta WHERE key = 'cancel_requested'").fetchone()
        return row is not None

    # -- reading --------------------------------------------------------------------

    def job_ref(self, fingerprint: str) -> JobRef | None:
        """Where the run's last task went, if it was accepted somewhere."""
        with self._lock:
            row = self._db.execute(
                "SELECT job_ref FROM runs WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else _job_ref(row[0])

    def status(self, fingerprint: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status FROM runs WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else str(row[0])

    def counts(self, fingerprints: Collection[str] | None = None) -> dict[str, int]:
        """How many runs are in each status (of ``fingerprints`` only, if given)."""
        found: dict[str, int] = dict.fromkeys(STATUSES, 0)
        with self._lock:
            if fingerprints is None:
                for status, count in self._db.execute(
                    "SELECT status, COUNT(*) FROM runs GROUP BY status"
                ):
                    found[status] = int(count)
                return found
            rows = self._db.execute("SELECT fingerprint, status FROM runs").fetchall()
        for fingerprint, status in rows:
            if fingerprint in fingerprints:
                found[status] += 1
        return found

    def level_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Runs by status for each level of each parameter, counted by SQLite:
        ``{factor: {level as JSON text: {status: count}}}`` (what ``asyncexec status``
        shows, without loading a row into Python: 100,000 runs of two factors took
        0.7 s on the loaded test machine, where loading the rows takes 2.7 s or more).

        Parameters JSON cannot hold are counted by their ``repr`` (as stored).
        """
        found: dict[str, dict[str, dict[str, int]]] = {}
        with self._lock:
            cursor = self._db.execute(
                "SELECT p.key, p.value, p.type, r.status, COUNT(*) FROM runs AS r, "
                "json_each(r.params_json) AS p GROUP BY p.key, p.value, p.type, r.status"
            )
            for factor, value, kind, status, count in cursor:
                if kind in ("object", "array"):
                    level = str(value)
                elif kind == "text":
                    level = json.dumps(value)
                else:
                    level = json.dumps(value) if value is not None else "null"
                by_status = found.setdefault(str(factor), {}).setdefault(level, {})
                by_status[str(status)] = by_status.get(str(status), 0) + int(count)
        return found

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every run as a dict: params, repeat, status, value, error, timings, host..."""
        return list(self.iter_rows(status))

    def iter_rows(self, status: str | None = None) -> Iterator[dict[str, Any]]:
        query = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY seq"
        with self._lock:
            cursor = self._db.execute(query, (status,) if status else ())
            names = [column[0] for column in cursor.description]
            fetched = cursor.fetchall()
        for raw in fetched:
            record = dict(zip(names, raw, strict=True))
            yield _row(record)

    def to_json(self) -> str:
        """All rows as a JSON array (values that JSON cannot hold as their repr)."""
        return json.dumps(self.rows(), default=repr, indent=2)

    def to_csv(self) -> str:
        """All rows as CSV, one column per parameter."""
        rows = self.rows()
        params: list[str] = []
        for row in rows:
            params.extend(name for name in row["params"] if name not in params)
        columns = [
            "fingerprint",
            *params,
            "repeat",
            "status",
            "value",
            "duration",
            "host",
            "attempts",
            "error_type",
            "error_message",
        ]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            value = row["value"]
            if value is None:
                shown = ""
            else:
                shown = value if isinstance(value, str) else json.dumps(value, default=repr)
            duration = "" if row["duration"] is None else f"{row['duration']:.6f}"
            writer.writerow(
                [
                    row["fingerprint"],
                    *(row["params"].get(name, "") for name in params),
                    row["repeat"],
                    row["status"],
                    shown,
                    duration,
                    row["host"] or "",
                    row["attempts"] or "",
                    row["error_type"] or "",
                    row["error_message"] or "",
                ]
            )
        return out.getvalue()


def _add_lease_columns(db: sqlite3.Connection) -> None:
    """Give a store of an earlier version the columns and indexes of the runners' leases
    (an earlier version's runners kept them in ``sweeper/``: they are not read)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if "holder" not in columns:
        with Transaction(db):
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "holder" not in columns:  # (not added by another process meanwhile)
                db.execute("ALTER TABLE runs ADD COLUMN holder TEXT")
                db.execute("ALTER TABLE runs ADD COLUMN lease_until REAL")
    for statement in _LEASE_INDEXES:
        db.execute(statement)


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    if record["value_json"] is not None:
        value = json.loads(record["value_json"])
    elif record["value_pickle"] is not None:
        value = pickle.loads(record["value_pickle"])
    else:
        value = None
    started, finished = record["started"], record["finished"]
    return {
        "fingerprint": record["fingerprint"],
        "params": pickle.loads(record["params_pickle"]),
        "repeat": record["repeat"],
        "status": record["status"],
        "value": value,
        "error_type": record["error_type"],
        "error_message": record["error_message"],
        "traceback": record["traceback"],
        "submitted": record["submitted"],
        "started": started,
        "finished": finished,
        "duration": finished - started if started is not None and finished is not None else None,
        "host": record["host"],
        "worker": record["worker"],
        "attempts": record["attempts"],
        "job_ref": json.loads(record["job_ref"]) if record["job_ref"] else None,
        "stdout": record["stdout"],
        "stderr": record["stderr"],
    }
