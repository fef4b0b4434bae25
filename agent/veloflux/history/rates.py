"""What happened in each interval, from consecutive samples of one server.

HAProxy hands out cumulative counters and moving averages, not what happened in an
interval; ``derive_rates`` recovers that from consecutive samples (inverting the
moving average: ``interval_mean``), and refuses to invent a number across a reload
or a counter reset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from veloflux.history.ema import EMA_SAMPLES, interval_mean
from veloflux.history.frames import external_columns, instants, series_order

__all__ = ["EMA_SAMPLES", "RATE_COLUMNS", "derive_rates", "interval_mean", "rates_between"]


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
    return rates_between(ordered, later - 1, ordered, later)


def rates_between(
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


def _changed(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A known value that differs; unknown on either side is not evidence of a reload."""
    return np.asarray((old != new) & ~np.isnan(old) & ~np.isnan(new), dtype=bool)
