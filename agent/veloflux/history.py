"""The observation journal, and the per-interval rates the model learns from.

The journal is the agent's memory: one row per server per observation, appended to a
local SQLite file in WAL mode, so that training (another thread or process) can read
while the loop keeps writing, and no server is needed to run the agent. HAProxy hands
out cumulative counters and moving averages, not what happened in an interval;
``derive_rates`` recovers that from consecutive samples, and refuses to invent a
number across a reload or a counter reset.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from veloflux.errors import VelofluxError
from veloflux.events import Events
from veloflux.observation import COLUMN_NAMES, EXTERNAL_PREFIX, Observation

# 2: the ``external`` column (operator-defined features); a version 1 journal gains it.
SCHEMA_VERSION = 2
# HAProxy 2.6 averages qtime/ctime/rtime/ttime over the last 512 requests (TIME_STATS_SAMPLES),
# a plain running mean until a server's 512th request; measured on HAProxy 2.6.12.
EMA_SAMPLES = 512
PRUNE_EVERY_SECONDS = 3600.0
# SQLite's page cache per connection, in KiB. Its default (2 MiB) fills as the journal
# grows, one tick's pages at a time: the daemon's resident memory crept by ~1 MB per
# 10 minutes for over an hour at a 1 s interval before levelling off (measured). The
# daemon's connection appends a tick's rows and rarely reads, so a small cache costs
# it nothing; a training reads the journal once, sequentially, through the index.
CACHE_KIB = 256

_TEXT = ("source", "pool", "server", "state")
_REAL = (
    "weight", "initial_weight", "sessions", "queue", "session_rate", "sessions_total",
    "requests_total", "responses_5xx_total", "response_errors_total", "connect_errors_total",
    "queue_time", "connect_time", "response_time", "total_time",
)  # fmt: skip
STORED_COLUMNS: tuple[str, ...] = (
    "time", *_TEXT, "backup", *_REAL, "problem", "proxy_pid", "proxy_started",
)  # fmt: skip
_COUNTERS = (
    "requests_total", "responses_5xx_total", "response_errors_total", "connect_errors_total",
    "sessions_total",
)  # fmt: skip
_IDENTITY = ("time", "pool", "server", "state", "weight", "backup", "proxy_pid")
_CURRENT = ("sessions", "queue", "response_time", "total_time")
_NEEDED = (*_IDENTITY, *_COUNTERS, *_CURRENT)
RATE_COLUMNS: tuple[str, ...] = (
    *_IDENTITY, "reset", "interval_seconds", "requests", "request_rate", "errors",
    "error_rate", "sessions", "queue", "response_time", "total_time",
    "interval_response_time", "interval_total_time",
)  # fmt: skip

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples (time REAL NOT NULL, "
    + ", ".join(f"{c} TEXT NOT NULL" for c in _TEXT)
    + ", backup INTEGER NOT NULL, "
    + ", ".join(f"{c} REAL" for c in _REAL)
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
_NULLABLE = frozenset((*_REAL, "proxy_started"))
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
        if found is not None and found[0] == 1:  # what version 2 added: one nullable column
            with _transaction(conn):
                conn.execute("ALTER TABLE samples ADD COLUMN external TEXT")
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
            now = _epoch(observation.taken_at)
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
                params.append(_epoch(moment))
        if pools is not None:
            names = [pools] if isinstance(pools, str) else list(pools)
            clauses.append(f"pool IN ({', '.join('?' * len(names))})")
            params.extend(names)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {', '.join(_ALL_COLUMNS)} FROM samples{where} ORDER BY pool, server, time"
        rows = self._query("reading", sql, params)
        return _frame(rows)

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
        cutoff = _epoch(now) - self.retention_seconds
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    deleted = self._delete_before(conn, cutoff)
            except sqlite3.Error as exc:
                raise self._error("history_write_failed", "pruning", exc) from exc
            self._last_prune = _epoch(now)
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


class RecentWindow:
    """The last ``span_seconds`` of history as per-interval rates, kept in memory.

    Every tick needs the last few intervals (rates, trends, realized error). Deriving
    them afresh from 9,000 samples of a 1,000-server pool cost tens of milliseconds a
    tick, for intervals whose rates had not changed: a rate depends only on a sample
    and the one before it. So the window keeps the rates of the intervals in the span
    and each server's last sample; a new observation costs the derivation of its own
    rows. It is read from the journal once (on first use, or after it emptied), then
    fed by the agent with what it records (``journal_frame`` rows, exactly what the
    journal would give back). The rates it returns are those ``derive_rates`` gives on
    the span's samples, in no particular order.
    """

    def __init__(self, journal: Journal, span_seconds: float) -> None:
        self._journal = journal
        self._span = timedelta(seconds=span_seconds)
        self._last: pd.DataFrame | None = None  # each server's newest sample in the span
        # The span's rates, a frame per derivation, with when each row's interval began.
        self._rates: list[tuple[pd.DataFrame, np.ndarray]] = []
        self._pending: tuple[pd.DataFrame, pd.DataFrame] | None = None

    def rates(self, now: datetime, current: pd.DataFrame) -> tuple[pd.DataFrame, datetime | None]:
        """Rates over ``now - span <= time`` with ``current``'s appended (``current`` is
        not kept until ``add``), and the time of the newest sample before ``current``."""
        since = now - self._span
        if self._last is None or self._last.empty:
            self._load(since)
        self._trim(since)
        assert self._last is not None
        newest = None
        if len(self._last):
            newest = pd.Timestamp(self._last["time"].max()).to_pydatetime()
        fresh = self._derive(current)
        self._pending = (current, fresh)
        parts = [p for p in (*(r for r, _ in self._rates), fresh) if len(p)]
        if not parts:
            return fresh, newest
        return (pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]), newest

    def add(self, current: pd.DataFrame) -> None:
        """Keep ``current`` (the rows just recorded); a window never read stays empty,
        since its first read takes everything from the journal."""
        if self._last is None or current.empty:
            return
        pending, self._pending = self._pending, None
        fresh = pending[1] if pending is not None and pending[0] is current else None
        self._keep(self._derive(current) if fresh is None else fresh)
        if self._follows(current):  # the same servers as last time: all replaced
            self._last = current
            return
        replaced = server_keys(self._last).isin(server_keys(current))
        self._last = pd.concat([self._last[~replaced], current], ignore_index=True)

    def _keep(self, rates: pd.DataFrame) -> None:
        step = np.rint(rates["interval_seconds"].to_numpy(dtype=float) * 1e9)
        self._rates.append((rates, instants(rates) - step.astype("timedelta64[ns]")))

    def _load(self, since: datetime) -> None:
        samples = self._journal.read(since=since)
        self._rates = []
        if len(samples):
            self._keep(derive_rates(samples))
        newest = samples.sort_values("time", kind="stable").drop_duplicates(
            ["pool", "server"], keep="last"
        )
        self._last = newest.reset_index(drop=True)

    def _trim(self, since: datetime) -> None:
        """Drop what the span no longer holds: samples before ``since``, and rates
        whose first sample is before it (a fresh derivation would not see them)."""
        cutoff = np.datetime64(round(_epoch(since) * 1e6), "us")
        assert self._last is not None
        if len(self._last):
            inside = instants(self._last) >= cutoff
            if not inside.all():
                self._last = self._last[inside].reset_index(drop=True)
        kept = []
        for rates, begins in self._rates:
            inside = begins >= cutoff
            if inside.all():
                kept.append((rates, begins))
            elif inside.any():
                kept.append((rates[inside].reset_index(drop=True), begins[inside]))
        self._rates = kept

    def _follows(self, current: pd.DataFrame) -> bool:
        """True when ``current`` has the last samples' servers, in the same order, each
        later than its last sample: then each row's previous sample is the row at the
        same position (the common case: a proxy lists its servers in a stable order)."""
        last = self._last
        assert last is not None
        return (
            len(last) == len(current)
            and np.array_equal(
                last["server"].to_numpy(dtype=object), current["server"].to_numpy(dtype=object)
            )
            and np.array_equal(
                last["pool"].to_numpy(dtype=object), current["pool"].to_numpy(dtype=object)
            )
            and bool((instants(last) < instants(current)).all())
        )

    def _derive(self, current: pd.DataFrame) -> pd.DataFrame:
        """Rates of ``current``'s samples from each server's last sample."""
        assert self._last is not None
        if self._last.empty:
            return derive_rates(current)
        if self._follows(current):
            positions = np.arange(len(current))
            return _rates_between(self._last, positions, current, positions)
        return derive_rates(pd.concat([self._last, current], ignore_index=True))


def instants(frame: pd.DataFrame) -> np.ndarray:
    """The ``time`` column as plain UTC datetime64 values, cheap to compare and sort.

    A timezone-aware column would otherwise come out as an array of Python objects,
    a hundred times slower to work with.
    """
    times: np.ndarray = frame["time"].to_numpy(dtype="datetime64[ns]")
    return times


def server_keys(frame: pd.DataFrame, positions: np.ndarray | None = None) -> pd.Index:
    """One hashable key per row (per row at ``positions``) naming its server within its
    pool."""
    pools = frame["pool"].to_numpy(dtype=object)
    servers = frame["server"].to_numpy(dtype=object)
    if positions is not None:
        pools, servers = pools[positions], servers[positions]
    keys: pd.Index = pd.Index(pools + "\x00" + servers)
    return keys


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


def _epoch(moment: datetime) -> float:
    """Epoch seconds; a naive datetime is refused because its zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone; VeloFlux times are timezone-aware")
    return moment.timestamp()


def journal_frame(observation: Observation) -> pd.DataFrame:
    """The observation as the journal stores it and ``read`` gives it back: the stored
    columns with the proxy's identity, and the same dtypes (time to the microsecond).

    Built from the rows a column at a time with each column's dtype given, not through
    ``Observation.frame``: inferring 25 dtypes from 1,000 row tuples is most of what a
    frame costs, and a tick builds this one every time.
    """
    rows = observation.rows
    n = len(rows)
    values_by_column = zip(*rows, strict=True) if n else [()] * len(COLUMN_NAMES)
    by_name = dict(zip(COLUMN_NAMES, values_by_column, strict=True))
    columns: dict[str, Any] = {"time": _utc_micros(by_name["time"])}
    for column in STORED_COLUMNS[1:-2]:
        values = by_name[column]
        if column in _TEXT or column == "problem":
            columns[column] = pd.array(values, dtype="str")
        else:
            columns[column] = np.array(values, dtype=bool if column == "backup" else float)
    columns["proxy_pid"] = np.full(n, observation.proxy.pid, dtype="int64")
    columns["proxy_started"] = np.full(n, observation.proxy.started_at_epoch, dtype=float)
    if observation.external is not None:
        for column, values in observation.external.values:
            columns[column] = np.array(values, dtype=float)
    return _typed(pd.DataFrame(columns))


def samples_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """Samples from another store (Prometheus's history) in the journal's own format:
    the stored columns with their dtypes (a text column it lacks is empty, a number
    NaN), plus any operator-defined feature columns. ``time`` must be UTC."""
    n = len(columns["time"])
    full: dict[str, Any] = {}
    for column in STORED_COLUMNS:
        if column in columns:
            full[column] = columns[column]
        elif column in _TEXT or column == "problem":
            full[column] = [""] * n
        else:
            full[column] = np.zeros(n) if column in ("backup", "proxy_pid") else np.full(n, np.nan)
    full |= {c: v for c, v in columns.items() if c.startswith(EXTERNAL_PREFIX)}
    frame = pd.DataFrame(full)
    frame["time"] = pd.to_datetime(frame["time"], utc=True).dt.as_unit("us")
    return _typed(frame)


def _utc_micros(times: tuple[datetime, ...]) -> pd.Series:
    """Times as a UTC column to the microsecond; one conversion when all are the same
    moment (a source stamps every row of an observation with its own reading time)."""
    if times and all(t == times[0] for t in times):
        moment = pd.to_datetime([times[0]], utc=True).as_unit("us")
        return pd.Series(moment.repeat(len(times)))
    return pd.Series(pd.to_datetime(list(times), utc=True)).dt.as_unit("us")


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


def external_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The operator-defined feature columns ``frame`` carries, in a stable order."""
    return tuple(sorted(c for c in frame.columns if str(c).startswith(EXTERNAL_PREFIX)))


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
    return _typed(frame)


def _external_values(texts: list[object]) -> dict[str, np.ndarray]:
    """The ``external`` column back as a float column per feature (NaN where absent;
    pandas has made SQLite's NULLs NaN)."""
    parsed = [json.loads(t) if isinstance(t, str) else {} for t in texts]
    names = sorted({name for p in parsed for name in p if str(name).startswith(EXTERNAL_PREFIX)})
    return {
        name: np.array([float(p.get(name, math.nan)) for p in parsed], dtype=float)
        for name in names
    }


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The stored columns' dtypes; a column that has its dtype already is left alone
    (converting 20 columns that need nothing cost 5 ms a tick for 1,000 servers)."""
    targets: list[tuple[str, Any]] = [(c, "str") for c in (*_TEXT, "problem")]
    targets += [(c, "float64") for c in (*_REAL, "proxy_started")]
    targets += [("backup", "bool"), ("proxy_pid", "int64")]
    for column, dtype in targets:
        if frame[column].dtype != dtype:
            frame[column] = frame[column].astype(dtype)
    return frame


def derive_rates(samples: pd.DataFrame) -> pd.DataFrame:
    """What happened in each interval between consecutive samples of one server.

    One row per sample that has a predecessor (same pool and server), with the later
    sample's identity (``time`` ... ``proxy_pid``), ``interval_seconds``, the count and
    rate of ``requests``, ``errors`` (5xx + response + connect errors) and
    ``error_rate = errors / max(requests, errors)`` (NaN without traffic: no traffic
    is not "no errors"), current ``sessions``/``queue``, HAProxy's moving averages
    ``response_time``/``total_time``, and the mean of the requests completed *in the
    interval*, ``interval_response_time``/``interval_total_time`` (seconds).

    A reload (``proxy_pid`` or ``proxy_started`` changed) or any counter going down
    marks the row ``reset``; its deltas, rates and interval means are NaN, never a
    negative number or a spike. NaN in, NaN out.

    The interval mean inverts HAProxy's average (see ``interval_mean``). HAProxy
    reports the average in whole milliseconds (2.6 rounds up), so each reading carries
    up to 1 ms of rounding that the inversion multiplies by about N/k (N = EMA_SAMPLES,
    or the request count while it is below N): roughly ±0.5 ms·N/k, ±5 ms at k = 50.
    ``requests`` (k) is returned so that consumers can weight or filter by it.
    Envoy rows (``source == "envoy"``) carry an interval figure already (the cluster's
    median over Envoy's last stats flush), used as it is.
    """
    missing = [c for c in _NEEDED if c not in samples]
    if missing:
        raise ValueError(f"derive_rates needs the journal's columns; missing {missing}")
    optional = [c for c in ("proxy_started", "source") if c in samples]
    optional += external_columns(samples)
    ordered, later = _series_order(samples[[*_NEEDED, *optional]])
    return _rates_between(ordered, later - 1, ordered, later)


def _rates_between(
    before: pd.DataFrame, earlier: np.ndarray, after: pd.DataFrame, later: np.ndarray
) -> pd.DataFrame:
    """``derive_rates``'s rows for the pairs (``before`` row ``earlier[i]``, ``after``
    row ``later[i]``): two samples of one server, the first one earlier."""

    def before_after(column: str) -> tuple[np.ndarray, np.ndarray]:
        old = before[column].to_numpy(dtype=float, na_value=np.nan)[earlier]
        return old, after[column].to_numpy(dtype=float, na_value=np.nan)[later]

    reset = _changed(*before_after("proxy_pid"))
    if "proxy_started" in after and "proxy_started" in before:
        reset |= _changed(*before_after("proxy_started"))
    deltas: dict[str, np.ndarray] = {}
    for counter in _COUNTERS:
        old, new = before_after(counter)
        reset |= new < old
        deltas[counter] = new - old
    for delta in deltas.values():
        delta[reset] = np.nan
    # Exact nanoseconds, then seconds: the same figure however the pairs were found.
    step = instants(after)[later] - instants(before)[earlier]
    interval = step.astype("int64") / 1e9
    requests = deltas["requests_total"]
    errors = sum(deltas[c] for c in _COUNTERS[1:4])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        request_rate = np.where(interval > 0, requests / interval, np.nan)
        most = np.maximum(requests, errors)
        error_rate = np.where(most > 0, errors / most, np.nan)
    out = after[list(_IDENTITY)]
    if not np.array_equal(later, np.arange(len(after))):
        out = out.iloc[later]
    derived = {"reset": reset, "interval_seconds": interval, "requests": requests}
    derived |= {"request_rate": request_rate, "errors": errors, "error_rate": error_rate}
    derived |= {column: before_after(column)[1] for column in _CURRENT}
    count_before = before_after("requests_total")[0]
    # Envoy's figure is already the interval's (the cluster's median over its last stats
    # flush), not a moving average to invert: taken as it is.
    direct = np.zeros(len(later), dtype=bool)
    if "source" in after:
        direct = after["source"].to_numpy(dtype=object)[later] == "envoy"
    for column in ("response_time", "total_time"):
        old, new = before_after(column)
        inverted = interval_mean(old, new, count_before, requests)
        derived[f"interval_{column}"] = np.where(direct, new, inverted)
    external = external_columns(after)
    for column in external:  # an operator-defined feature: its value at the interval's end
        derived[column] = after[column].to_numpy(dtype=float, na_value=np.nan)[later]
    return out.reset_index(drop=True).assign(**derived)[[*RATE_COLUMNS, *external]]


def _series_order(samples: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Samples sorted by (pool, server, time), and the positions of rows whose previous
    row is the same server."""
    order, series = series_order(samples)
    later = np.flatnonzero(series[1:] == series[:-1]) + 1
    return samples.iloc[order].reset_index(drop=True), later


@overload
def series_order(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def series_order(
    frame: pd.DataFrame, with_pools: Literal[True]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def series_order(
    frame: pd.DataFrame, with_pools: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions that sort ``frame`` by (pool, server, time), and each sorted row's
    series number (one per server): "the previous interval of this server" is then
    the row before, when its series number is the same. Integer codes and a lexsort
    beat a sort or a group-by over the string keys by far, from one tick's rows to
    millions of training rows. ``with_pools`` adds each sorted row's pool code."""
    pool_codes, _ = pd.factorize(frame["pool"], sort=True)
    server_codes, _ = pd.factorize(frame["server"], sort=True)
    order = np.lexsort((instants(frame), server_codes, pool_codes))
    pool_codes, server_codes = pool_codes[order], server_codes[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (pool_codes[1:] != pool_codes[:-1]) | (server_codes[1:] != server_codes[:-1])
    series = np.cumsum(starts)
    return (order, series, pool_codes) if with_pools else (order, series)


def _changed(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A known value that differs; unknown on either side is not evidence of a reload."""
    return np.asarray((old != new) & ~np.isnan(old) & ~np.isnan(new), dtype=bool)


def interval_mean(
    avg_old: np.ndarray, avg_new: np.ndarray, count_before: np.ndarray, requests: np.ndarray
) -> np.ndarray:
    """The mean of the ``requests`` (k) values that moved HAProxy's average from
    ``avg_old`` to ``avg_new``, given the server's request counter before them.

    Past its first N = EMA_SAMPLES requests, HAProxy 2.6 updates the average per
    request as an EMA of weight 1/N, so k requests of mean v give
    ``avg_new = v + (avg_old - v) * a**k`` with ``a = 1 - 1/N``, hence
    ``v = (avg_new - avg_old * a**k) / (1 - a**k)``. Before that (a fresh process,
    e.g. after every reload) it is a plain running mean over the requests so far
    (measured: 100 requests at 42 ms then 100 at 6 ms read 24 ms, not the EMA's 36);
    the general form below covers both and an interval straddling the switch.
    NaN when k is 0 (the average froze: no information) or unknown; clipped at 0.
    """
    n = float(EMA_SAMPLES)
    with np.errstate(all="ignore"):
        warm = np.clip(n - count_before, 0.0, requests)  # requests before the EMA starts
        ema_steps = requests - warm
        log_a = math.log1p(-1.0 / n)
        decay = np.exp(ema_steps * log_a)
        window = np.minimum(count_before + warm, n)  # divisor of the average at the switch
        old_share = avg_old * (np.minimum(count_before, n) / window) * decay
        value = (avg_new - old_share) / (-np.expm1(ema_steps * log_a) + decay * warm / window)
    return np.where(requests > 0, np.maximum(value, 0.0), np.nan)
