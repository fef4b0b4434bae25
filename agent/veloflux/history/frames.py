"""Samples as frames: the journal's columns and dtypes, built from an Observation or
from another store, and the cheap keys and orders every consumer of samples needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from veloflux.domain.observation import COLUMN_NAMES, EXTERNAL_PREFIX, Observation

TEXT_COLUMNS = ("source", "pool", "server", "state")

REAL_COLUMNS = (
    "weight", "initial_weight", "sessions", "queue", "session_rate", "sessions_total",
    "requests_total", "responses_5xx_total", "response_errors_total", "connect_errors_total",
    "queue_time", "connect_time", "response_time", "total_time", "max_sessions",
)  # fmt: skip

STORED_COLUMNS: tuple[str, ...] = (
    "time", *TEXT_COLUMNS, "backup", *REAL_COLUMNS, "problem", "proxy_pid", "proxy_started",
)  # fmt: skip


def instants(frame: pd.DataFrame) -> np.ndarray:
    """The ``time`` column as plain UTC datetime64 values, cheap to compare and sort.

    A timezone-aware column would otherwise come out as an array of Python objects,
    compared and sorted one object at a time.
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


def epoch_seconds(moment: datetime) -> float:
    """Epoch seconds; a naive datetime is refused because its zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone; VeloFlux times are timezone-aware")
    return moment.timestamp()


def journal_frame(observation: Observation) -> pd.DataFrame:
    """The observation as the journal stores it and ``read`` gives it back: the stored
    columns with the proxy's identity, and the same dtypes (time to the microsecond).

    Built from the rows a column at a time with each column's dtype given, not through
    ``Observation.frame``: inferring 25 dtypes from 1,000 row tuples is work this frame
    does not need, since every column's dtype is known, and a tick builds it every
    time.
    """
    rows = observation.rows
    n = len(rows)
    values_by_column = zip(*rows, strict=True) if n else [()] * len(COLUMN_NAMES)
    by_name = dict(zip(COLUMN_NAMES, values_by_column, strict=True))
    columns: dict[str, Any] = {"time": _utc_micros(by_name["time"])}
    for column in STORED_COLUMNS[1:-2]:
        values = by_name[column]
        if column in TEXT_COLUMNS or column == "problem":
            columns[column] = pd.array(values, dtype="str")
        else:
            columns[column] = np.array(values, dtype=bool if column == "backup" else float)
    columns["proxy_pid"] = np.full(n, observation.proxy.pid, dtype="int64")
    columns["proxy_started"] = np.full(n, observation.proxy.started_at_epoch, dtype=float)
    if observation.external is not None:
        for column, values in observation.external.values:
            columns[column] = np.array(values, dtype=float)
    return stored_dtypes(pd.DataFrame(columns))


def samples_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """Samples from another store (Prometheus's history) in the journal's own format:
    the stored columns with their dtypes (a text column it lacks is empty, a number
    NaN), plus any operator-defined feature columns. ``time`` must be UTC."""
    n = len(columns["time"])
    full: dict[str, Any] = {}
    for column in STORED_COLUMNS:
        if column in columns:
            full[column] = columns[column]
        elif column in TEXT_COLUMNS or column == "problem":
            full[column] = [""] * n
        else:
            full[column] = np.zeros(n) if column in ("backup", "proxy_pid") else np.full(n, np.nan)
    full |= {c: v for c, v in columns.items() if c.startswith(EXTERNAL_PREFIX)}
    frame = pd.DataFrame(full)
    frame["time"] = pd.to_datetime(frame["time"], utc=True).dt.as_unit("us")
    return stored_dtypes(frame)


def _utc_micros(times: tuple[datetime, ...]) -> pd.Series:
    """Times as a UTC column to the microsecond; one conversion when all are the same
    moment (a source stamps every row of an observation with its own reading time)."""
    if times and all(t == times[0] for t in times):
        moment = pd.to_datetime([times[0]], utc=True).as_unit("us")
        return pd.Series(moment.repeat(len(times)))
    return pd.Series(pd.to_datetime(list(times), utc=True)).dt.as_unit("us")


def external_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The operator-defined feature columns ``frame`` carries, in a stable order."""
    return tuple(sorted(c for c in frame.columns if str(c).startswith(EXTERNAL_PREFIX)))


def stored_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """The stored columns' dtypes; a column that has its dtype already is left alone
    (converting the columns that need nothing would be paid again every tick)."""
    targets: list[tuple[str, Any]] = [(c, "str") for c in (*TEXT_COLUMNS, "problem")]
    targets += [(c, "float64") for c in (*REAL_COLUMNS, "proxy_started")]
    targets += [("backup", "bool"), ("proxy_pid", "int64")]
    for column, dtype in targets:
        if frame[column].dtype != dtype:
            frame[column] = frame[column].astype(dtype)
    return frame


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
