"""The journal as Parquet files, one per day (or hour) of samples, for offline analysis
and for feeding a training cluster (``veloflux-agent history export``).

The files are laid out Hive-style (``date=2026-12-07/samples.parquet``, with
``hour=13/`` inside when hourly), so pandas, pyarrow, Dask, Spark or DuckDB read the
directory as one table and skip the days a query does not need. Each file holds the
journal's columns as ``Journal.read`` returns them (the operator-defined features
included), sorted by pool, server and time.

One period is read and written at a time, so memory is bounded by the largest period,
not the journal; each file is written to a temporary name and renamed, so a reader
never sees half a file and an export run again replaces what it wrote before.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from veloflux.errors import VelofluxError
from veloflux.history.journal import Journal

if TYPE_CHECKING:
    import pandas as pd

PERIODS = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
FILE_NAME = "samples.parquet"


class ExportError(VelofluxError):
    """The export cannot run (no Parquet library, an output it cannot write)."""


@dataclass(frozen=True)
class ExportedFile:
    path: Path
    start: datetime
    rows: int
    bytes: int


def periods(start: datetime, end: datetime, period: str) -> Iterator[tuple[datetime, datetime]]:
    """Half-open [a, b) ranges aligned to UTC days or hours, covering [start, end]."""
    step = PERIODS[period]
    floor = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if period == "day":
        floor = floor.replace(hour=0)
    while floor <= end:
        yield floor, floor + step
        floor += step


def partition_dir(out: Path, start: datetime, period: str) -> Path:
    """``out/date=YYYY-MM-DD`` (and ``/hour=HH`` when hourly)."""
    directory = out / f"date={start:%Y-%m-%d}"
    return directory / f"hour={start:%H}" if period == "hour" else directory


def export_parquet(
    journal: Journal,
    out: Path,
    period: str = "day",
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ExportedFile]:
    """Write the journal's samples in ``[since, until)`` under ``out``, a file per
    period that has samples; return what was written."""
    if importlib.util.find_spec("pyarrow") is None:  # pandas writes Parquet through it
        raise ExportError("writing Parquet needs pyarrow: pip install 'veloflux[dask]'")
    span = journal.span()
    if span is None:
        return []
    first = max(span[0], since) if since else span[0]
    last = min(span[1], until) if until else span[1]
    written: list[ExportedFile] = []
    for start, end in periods(first, last, period):
        lower = max(start, since) if since else start
        upper = min(end, until) if until else end
        samples = journal.read(since=lower, until=upper)
        if samples.empty:
            continue
        target = partition_dir(out, start, period) / FILE_NAME
        write_parquet(samples, target)
        written.append(ExportedFile(target, start, len(samples), target.stat().st_size))
    return written


def write_parquet(samples: pd.DataFrame, target: Path) -> None:
    """Through a temporary file and a rename: a reader never sees half a file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        samples.to_parquet(temporary, engine="pyarrow", index=False, compression="zstd")
        os.replace(temporary, target)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc}") from None
