"""The history cut into time partitions that a Dask cluster's workers read on their own.

A partition owns the samples of a run of consecutive observation instants. Its
features need a little of what is around it: a rate is the difference of two
samples, a trend looks three intervals back, and the targets are the next
interval's. So each partition also reads a halo of instants before and after the
ones it owns, builds its features from all of them, and keeps only the rows of its
own instants: every row comes out as it would from the whole history at once.

The halo is counted in instants, not seconds, because the journal's rows are
consecutive samples of a server whatever the gap between them; a halo in seconds
would drop the lag across a gap that the in-process path keeps.

The readers are small picklable values (a path), so the tasks that carry them to a
worker stay small; each worker opens the journal (read-only, in SQLite's WAL mode
beside the writing daemon) or the Parquet files itself. The journal therefore has
to be at the same path on every worker (a ``LocalCluster`` on the agent's machine,
or shared storage); the Parquet export (``history export``) is the way to feed a
cluster that cannot see the agent's disk.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from veloflux.history.journal import HistoryError, Journal
from veloflux.util.events import Events

# Instants read before a partition's first one: one for the first rate, three more
# for the trends, one for the probe schedule's previous step.
HALO_BEFORE = 5
# Instants read after its last one: the next interval's rate and targets.
HALO_AFTER = 2
# Instants are whole observations, a second or more apart; every bound is moved this
# much earlier, so that a time's float rounding (the journal keeps epoch seconds, the
# frames nanoseconds) never decides which side of a bound an instant falls on.
EDGE = 5e-4


class SampleReader(Protocol):
    """Journal-format samples of a time range, and the instants the history holds."""

    def instants(self) -> pd.Series:
        """Rows per observation instant (epoch seconds, ascending)."""
        ...

    def read(self, start: float, end: float) -> pd.DataFrame:
        """Samples with ``start <= time < end`` (epoch seconds)."""
        ...


@dataclass(frozen=True)
class JournalReader:
    """The agent's SQLite journal, opened by whoever reads it."""

    path: Path

    def instants(self) -> pd.Series:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            try:
                rows = conn.execute(
                    "SELECT time, COUNT(*) FROM samples GROUP BY time ORDER BY time"
                ).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the journal {self.path}: {exc}") from None
        times = np.array([r[0] for r in rows], dtype=float)
        return pd.Series([r[1] for r in rows], index=times, dtype="int64")

    def read(self, start: float, end: float) -> pd.DataFrame:
        if not self.path.is_file():
            raise HistoryError(f"no journal at {self.path} on this machine")
        with Journal(self.path, Events()) as journal:
            return journal.read(since=_moment(start - EDGE), until=_moment(end - EDGE))


@dataclass(frozen=True)
class ParquetReader:
    """A ``history export --format parquet`` directory: ``date=.../[hour=.../]`` files."""

    root: Path

    def files(self) -> list[Path]:
        found = sorted(self.root.rglob("*.parquet"))
        if not found:
            raise HistoryError(f"no Parquet files under {self.root}")
        return found

    def instants(self) -> pd.Series:
        times = pd.concat(
            [pd.read_parquet(f, columns=["time"])["time"] for f in self.files()],
            ignore_index=True,
        )
        seconds = _epoch(times)
        counts = pd.Series(seconds).value_counts().sort_index()
        return counts.astype("int64")

    def read(self, start: float, end: float) -> pd.DataFrame:
        filters = []
        if not math.isinf(start):
            filters.append(("time", ">=", pd.Timestamp(start - EDGE, unit="s", tz="UTC")))
        if not math.isinf(end):
            filters.append(("time", "<", pd.Timestamp(end - EDGE, unit="s", tz="UTC")))
        parts = []
        for f in self.files():
            part = pd.read_parquet(f, filters=filters or None)
            if not part.empty:
                parts.append(part)
        if not parts:
            return pd.read_parquet(self.files()[0]).iloc[:0]
        frame = pd.concat(parts, ignore_index=True)
        return frame.sort_values(["pool", "server", "time"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Partition:
    """Owns samples in ``[start, end)``; reads ``[read_start, read_end)``."""

    index: int
    start: float
    end: float
    read_start: float
    read_end: float
    rows: int  # samples owned

    def owns(self, times: pd.Series) -> np.ndarray:
        """Which of ``times`` (a frame's time column) are this partition's own."""
        seconds = _epoch(times)
        owned: np.ndarray = (seconds >= self.start - EDGE) & (seconds < self.end - EDGE)
        return owned


def plan_partitions(counts: pd.Series, rows_per_partition: int) -> list[Partition]:
    """Cut the instants (``SampleReader.instants``) into runs of about
    ``rows_per_partition`` samples, never splitting an instant, each with its halo."""
    if rows_per_partition < 1:
        raise ValueError(f"rows_per_partition must be >= 1, got {rows_per_partition}")
    times = counts.index.to_numpy(dtype=float)
    sizes = counts.to_numpy(dtype="int64")
    n = len(times)
    bounds = [0]
    total = 0
    for i, size in enumerate(sizes):
        if total and total + size > rows_per_partition:
            bounds.append(i)
            total = 0
        total += int(size)
    bounds.append(n)
    out = []
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        if a == b:
            continue
        end = float(times[b]) if b < n else math.inf
        read_end = float(times[b + HALO_AFTER]) if b + HALO_AFTER < n else math.inf
        read_start = float(times[max(0, a - HALO_BEFORE)])
        out.append(Partition(k, float(times[a]), end, read_start, read_end, int(sizes[a:b].sum())))
    return out


def _moment(seconds: float) -> datetime | None:
    return None if math.isinf(seconds) else datetime.fromtimestamp(seconds, UTC)


def _epoch(times: pd.Series) -> np.ndarray:
    nanoseconds = pd.to_datetime(times, utc=True).dt.as_unit("ns").astype("int64")
    seconds: np.ndarray = nanoseconds.to_numpy() / 1e9
    return seconds
