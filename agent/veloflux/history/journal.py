"""The observation journal: the agent's memory, one row per server per observation.

Appended to a local SQLite file in WAL mode, so that training (another thread or
process) can read while the tick keeps writing, and no server is needed to run the
agent. What it stores and gives back is a ``journal_frame`` (``history.frames``).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veloflux.domain.observation import EXTERNAL_PREFIX, Observation
from veloflux.errors import VelofluxError
from veloflux.history.frames import (
    REAL_COLUMNS,
    STORED_COLUMNS,
    TEXT_COLUMNS,
    epoch_seconds,
    external_columns,
    journal_frame,
    stored_dtypes,
)
from veloflux.util.events import Events

# 2: the ``external`` column (operator-defined features); 3: ``max_sessions`` (HAProxy's
# maxconn). An older journal gains what it lacks when it is opened.
SCHEMA_VERSION = 3
_MIGRATIONS = {
    1: "ALTER TABLE samples ADD COLUMN external TEXT",
    2: "ALTER TABLE samples ADD COLUMN max_sessions REAL",
}

PRUNE_EVERY_SECONDS = 3600.0

# SQLite's page cache per connection, in KiB. Its default (2 MiB) fills as the journal
# grows, one tick's pages at a time, and the daemon's resident memory crept up with it
# until the cache was full. The daemon's connection appends a tick's rows and rarely
# reads, so a small cache costs it nothing; a training reads the journal once,
# sequentially, through the index. With this cache, bench/bench_daemon.py's RSS slope
# (docs/benchmarks.md, "The daemon") is flat.
CACHE_KIB = 256

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples (time REAL NOT NULL, "
    + ", ".join(f"{c} TEXT NOT NULL" for c in TEXT_COLUMNS)
    + ", backup INTEGER NOT NULL, "
    + ", ".join(f"{c} REAL" for c in REAL_COLUMNS)
    + ", problem TEXT NOT NULL, proxy_pid INTEGER NOT NULL, proxy_started REAL, external TEXT)",
    "CREATE INDEX IF NOT EXISTS samples_by_server ON samples (pool, server, time)",
    "CREATE INDEX IF NOT EXISTS samples_by_time ON samples (time)",
)

# Operator-defined features of a sample, as one JSON object {column: value} (NULL when
# it had none; a NaN is left out): their set is the operator's, not the schema's.
_ALL_COLUMNS = (*STORED_COLUMNS, "external")

_INSERT = (
    f"INSERT INTO samples ({', '.join(_ALL_COLUMNS)}) VALUES ({', '.join('?' * len(_ALL_COLUMNS))})"
)

_NULLABLE = frozenset((*REAL_COLUMNS, "proxy_started"))

_HINTS = {
    "locked": "another connection held the write lock past the {timeout:g}s busy timeout",
    "full": "free some disk space or shorten the retention",
    "not a database": "the file exists but is not a SQLite database: move it or pick another path",
    "unable to open": "the directory must exist and be writable",
    "readonly": "the file or its directory is read-only",
}


class HistoryError(VelofluxError):
    """The journal cannot be opened, written or read: keep running without history."""


class Journal:
    """An append-only SQLite journal of observations, safe to share between threads."""

    def __init__(
        self,
        path: Path,
        events: Events,
        retention_seconds: float = 14 * 86400,
        busy_timeout_seconds: float = 5.0,
    ) -> None:
        if not (math.isfinite(retention_seconds) and retention_seconds > 0):
            raise ValueError(f"retention_seconds must be > 0, got {retention_seconds!r}")
        if not (math.isfinite(busy_timeout_seconds) and busy_timeout_seconds >= 0):
            raise ValueError(f"busy_timeout_seconds must be >= 0, got {busy_timeout_seconds!r}")
        self.path = Path(path)
        self.retention_seconds = float(retention_seconds)
        self._busy_timeout = float(busy_timeout_seconds)
        self._events = events
        self._lock = threading.Lock()
        self._last_prune = -math.inf
        self._conn: sqlite3.Connection | None = self._open()

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL (readers never block the writer) and check the schema."""
        try:
            if self.path.is_dir():
                raise IsADirectoryError(f"{self.path} is a directory")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
        except (OSError, sqlite3.Error) as exc:
            raise self._error("history_open_failed", "opening", exc) from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")  # a power cut may lose a tick, not the file
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._check_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("history_open_failed", "opening", exc) from exc
        except HistoryError:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables on first use; refuse a foreign database or another version."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "schema_version" not in tables:
            raise self._refuse("a SQLite database, but not a VeloFlux journal")
        if "schema_version" not in tables:
            with _transaction(conn):
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version SELECT ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM schema_version)",
                    (SCHEMA_VERSION,),
                )
        found = conn.execute("SELECT version FROM schema_version").fetchone()
        if found is not None and found[0] in _MIGRATIONS:  # each step adds a nullable column
            with _transaction(conn):
                for version in range(found[0], SCHEMA_VERSION):
                    conn.execute(_MIGRATIONS[version])
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            found = (SCHEMA_VERSION,)
        if found is None or found[0] != SCHEMA_VERSION:
            version = found and found[0]
            raise self._refuse(f"schema version {version}, this VeloFlux reads {SCHEMA_VERSION}")

    def append(self, observation: Observation, samples: pd.DataFrame | None = None) -> int:
        """Write every row of ``observation`` in one transaction; return the row count.

        ``samples`` is ``journal_frame(observation)`` when the caller has made it already.

        Pruning rides along at most once per hour of sample time, so retention costs
        one indexed DELETE an hour rather than one per tick.
        """
        try:
            now = epoch_seconds(observation.taken_at)
            values = _rows(journal_frame(observation) if samples is None else samples)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._error("history_write_failed", "converting the observation", exc) from exc
        if not values:
            return 0
        with self._lock:
            conn = self._connection()
            prune = now - self._last_prune >= PRUNE_EVERY_SECONDS
            try:
                with _transaction(conn):
                    conn.executemany(_INSERT, values)
                    if prune:
                        self._delete_before(conn, now - self.retention_seconds)
            except (sqlite3.Error, OverflowError) as exc:
                raise self._error(
                    "history_write_failed", f"appending {len(values)} rows", exc
                ) from exc
            if prune:
                self._last_prune = now
        return len(values)

    def read(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        pools: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Samples with ``since <= time < until`` (half-open, so ranges tile), sorted by
        (pool, server, time), with the stored column names and a column per
        operator-defined feature any of them had; NULL comes back as NaN."""
        clauses: list[str] = []
        params: list[object] = []
        for condition, moment in (("time >= ?", since), ("time < ?", until)):
            if moment is not None:
                clauses.append(condition)
                params.append(epoch_seconds(moment))
        if pools is not None:
            names = [pools] if isinstance(pools, str) else list(pools)
            clauses.append(f"pool IN ({', '.join('?' * len(names))})")
            params.extend(names)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {', '.join(_ALL_COLUMNS)} FROM samples{where} ORDER BY pool, server, time"
        rows = self._query("reading", sql, params)
        return _frame(rows)

    def pool_requests(self, since: datetime | None = None) -> pd.DataFrame:
        """Per (pool, time): the requests its servers completed in the interval ending
        then, and the interval's seconds, summed in SQLite from each server's counter
        (a fleet's month of samples never comes into memory; a server's first sample,
        a reload or a counter that went back gives no interval)."""
        where = "WHERE time >= ?" if since is not None else ""
        params: list[object] = [epoch_seconds(since)] if since is not None else []
        sql = (
            "SELECT pool, time, SUM(delta), MAX(seconds) FROM ("
            " SELECT pool, time, proxy_pid,"
            "  requests_total - LAG(requests_total) OVER w AS delta,"
            "  time - LAG(time) OVER w AS seconds,"
            "  LAG(proxy_pid) OVER w AS pid_before"
            f" FROM samples {where}"
            " WINDOW w AS (PARTITION BY pool, server ORDER BY time))"
            " WHERE delta >= 0 AND proxy_pid = pid_before GROUP BY pool, time ORDER BY pool, time"
        )
        rows = self._query("summing requests", sql, params)
        return pd.DataFrame(
            {
                "pool": [r[0] for r in rows],
                "time": pd.to_datetime([r[1] for r in rows], unit="s", utc=True),
                "requests": np.array([r[2] for r in rows], dtype=float),
                "interval_seconds": np.array([r[3] for r in rows], dtype=float),
            }
        )

    def count(self) -> int:
        """How many rows the journal holds."""
        return int(self._query("counting", "SELECT COUNT(*) FROM samples", [])[0][0])

    def span(self) -> tuple[datetime, datetime] | None:
        """The first and last sample time, or None while the journal is empty."""
        first, last = self._query(
            "reading the span", "SELECT MIN(time), MAX(time) FROM samples", []
        )[0]
        if first is None:
            return None
        return datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last, UTC)

    def prune(self, now: datetime) -> int:
        """Delete rows older than ``now - retention_seconds``; return how many went."""
        cutoff = epoch_seconds(now) - self.retention_seconds
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    deleted = self._delete_before(conn, cutoff)
            except sqlite3.Error as exc:
                raise self._error("history_write_failed", "pruning", exc) from exc
            self._last_prune = epoch_seconds(now)
        return deleted

    def close(self) -> None:
        """Close the connection; the last one out also folds the WAL into the file."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _delete_before(conn: sqlite3.Connection, cutoff: float) -> int:
        return conn.execute("DELETE FROM samples WHERE time < ?", (cutoff,)).rowcount

    def _query(self, doing: str, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error("history_read_failed", doing, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistoryError(f"history journal {self.path} is closed")
        return self._conn

    def _error(self, kind: str, doing: str, exc: BaseException) -> HistoryError:
        """Count the failure and turn it into a HistoryError that names path and cause."""
        cause = str(exc) or type(exc).__name__
        hint = next((h for key, h in _HINTS.items() if key in cause.lower()), "")
        hint = hint.format(timeout=self._busy_timeout)
        return self._refuse(f"{doing} failed: {cause}" + (f" ({hint})" if hint else ""), kind)

    def _refuse(self, problem: str, kind: str = "history_open_failed") -> HistoryError:
        message = f"history journal {self.path}: {problem}"
        self._events.record(kind, message, path=str(self.path))
        return HistoryError(message)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front (honouring the busy
    timeout) and roll back on any error, so a failed append leaves nothing behind."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):  # the original error is the one worth reporting
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    """A ``journal_frame`` as the tuples of the INSERT, column by column: NaN becomes
    NULL, so "unknown" never reads back as zero."""
    micros = frame["time"].to_numpy(dtype="datetime64[us]").astype("int64")
    columns: list[list[Any]] = [(micros / 1e6).tolist()]
    for column in STORED_COLUMNS[1:]:
        values = frame[column].tolist()
        if column in _NULLABLE:
            values = [None if v != v else v for v in values]  # v != v: NaN
        columns.append(values)
    columns.append(_external_json(frame))
    return list(zip(*columns, strict=True))


def _external_json(frame: pd.DataFrame) -> list[str | None]:
    """Each row's operator-defined features as the ``external`` column's JSON."""
    names = external_columns(frame)
    if not names:
        return [None] * len(frame)
    table = zip(*(frame[c].to_numpy(dtype=float).tolist() for c in names), strict=True)
    out: list[str | None] = []
    for row in table:
        known = {name: v for name, v in zip(names, row, strict=True) if v == v}  # NaN: left out
        out.append(json.dumps(known, allow_nan=False) if known else None)
    return out


def _frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Rows as a frame with fixed dtypes, whatever SQLite's per-value types were."""
    frame = pd.DataFrame.from_records(rows, columns=list(_ALL_COLUMNS))
    micros = np.rint(frame["time"].to_numpy(dtype=float) * 1e6).astype("int64")
    frame["time"] = pd.Series(micros.astype("datetime64[us]")).dt.tz_localize(UTC)
    external = frame.pop("external")
    if external.notna().any():
        for column, values in _external_values(external.tolist()).items():
            frame[column] = values
    return stored_dtypes(frame)


def _external_values(texts: list[object]) -> dict[str, np.ndarray]:
    """The ``external`` column back as a float column per feature (NaN where absent;
    pandas has made SQLite's NULLs NaN)."""
    parsed = [json.loads(t) if isinstance(t, str) else {} for t in texts]
    names = sorted({name for p in parsed for name in p if str(name).startswith(EXTERNAL_PREFIX)})
    return {
        name: np.array([float(p.get(name, math.nan)) for p in parsed], dtype=float)
        for name in names
    }
