"""Journal-format history as HAProxy's Prometheus exporter would have shown it.

Tests and benchmarks need weeks of Prometheus history in seconds: they make journal
samples (``integration.synthetic``), turn each server's columns into the exporter's
series here (``haproxy_server_*`` with ``proxy``/``server`` labels, counters as
``_total`` series, the moving-average times in seconds, one ``status`` series per
state), and backfill them with ``integration.prometheus_proc.backfill``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from integration.prometheus_proc import Series

INSTANCE = "haproxy:8405"
# Journal column -> exporter series name.
_GAUGES = {
    "sessions": "haproxy_server_current_sessions",
    "queue": "haproxy_server_current_queue",
    "queue_time": "haproxy_server_queue_time_average_seconds",
    "connect_time": "haproxy_server_connect_time_average_seconds",
    "response_time": "haproxy_server_response_time_average_seconds",
    "total_time": "haproxy_server_total_time_average_seconds",
    "weight": "haproxy_server_weight",
}
_COUNTERS = {
    "sessions_total": "haproxy_server_sessions_total",
    "response_errors_total": "haproxy_server_response_errors_total",
    "connect_errors_total": "haproxy_server_connection_errors_total",
}
_STATES = ("UP", "DOWN", "MAINT", "DRAIN")
METRIC_TYPES: Mapping[str, str] = {
    **dict.fromkeys(_COUNTERS.values(), "counter"),
    "haproxy_server_http_responses_total": "counter",
}


def _micros(times: pd.Series) -> pd.Series:
    """Microseconds since the epoch, whatever the column's unit."""
    micros: pd.Series = times.dt.as_unit("us").astype("int64")
    return micros


def shifted(samples: pd.DataFrame, end_epoch: float) -> pd.DataFrame:
    """``samples`` moved in time so that the newest is at ``end_epoch`` (whole seconds
    kept whole): Prometheus drops blocks older than its retention."""
    times = _micros(samples["time"])
    newest = int(times.max())
    offset_us = round(end_epoch) * 1_000_000 - newest
    out = samples.copy()
    out["time"] = pd.to_datetime(times + offset_us, unit="us", utc=True)
    if "proxy_started" in out:
        out["proxy_started"] = out["proxy_started"] + offset_us / 1e6
    return out


def exporter_series(samples: pd.DataFrame, instance: str = INSTANCE) -> Iterator[Series]:
    """The exporter's series for journal ``samples`` (one HAProxy, ``instance``)."""
    epoch = _micros(samples["time"]) / 1e6
    for (pool, server), rows in samples.groupby(["pool", "server"], sort=True):
        at = epoch.loc[rows.index].to_numpy()
        labels = {"proxy": str(pool), "server": str(server), "instance": instance}

        def points(values: np.ndarray, at: np.ndarray = at) -> np.ndarray:
            return np.column_stack([at, values.astype(float)])

        total = rows["requests_total"].to_numpy(dtype=float)
        failed = rows["responses_5xx_total"].to_numpy(dtype=float)
        responses = "haproxy_server_http_responses_total"
        yield responses, {**labels, "code": "2xx"}, points(total - failed)
        yield responses, {**labels, "code": "5xx"}, points(failed)
        for column, name in (*_GAUGES.items(), *_COUNTERS.items()):
            yield name, labels, points(rows[column].to_numpy(dtype=float))
        state = rows["state"].to_numpy(dtype=object)
        for name in _STATES:
            yield "haproxy_server_status", {**labels, "state": name}, points(state == name)
    if "proxy_started" in samples:
        started = samples.drop_duplicates("time")
        at = _micros(started["time"]).to_numpy() / 1e6
        values = started["proxy_started"].to_numpy(dtype=float)
        yield (
            "haproxy_process_start_time_seconds",
            {"instance": instance},
            np.column_stack([at, values]),
        )
