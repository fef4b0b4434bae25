"""History from Prometheus: HAProxy's exporter series and the configured features,
pulled with range queries and laid out as journal samples.

``train --from-prometheus`` trains on what this returns exactly as on the journal
(``derive_rates`` then ``build_features``): the exporter serves the same per-server
figures as ``show stat`` (counters, and the moving-average times), so the rates, the
interval latencies and the features are computed by the same code. A query may cover
at most ``MAX_POINTS`` steps (Prometheus refuses more than 11,000 points per series),
so a long span is pulled in chunks, each chunk one query per series family.

A (pool, server) that several series claim (two HAProxy instances scraped under the
same names) cannot be told apart: its rows are left out, counted and named. Envoy's
``/stats/prometheus`` has no per-endpoint series, so Envoy clusters are trained from
the journal only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from veloflux.domain.observation import EXTERNAL_PREFIX
from veloflux.history.frames import samples_frame
from veloflux.prometheus.api import PrometheusAPI, RangeSeries
from veloflux.prometheus.features import ServerIndex
from veloflux.prometheus.promql import FeatureQuery, any_of, fill
from veloflux.util.events import Events

MAX_POINTS = 11_000  # Prometheus's limit per series per range query
Progress = Callable[[str, float], None]

# Journal column -> the exporter's series (``{SEL}``: the proxy selector).
_BASE: tuple[tuple[str, str], ...] = (
    (
        "requests_total",
        "sum by (instance, proxy, server) (haproxy_server_http_responses_total{SEL})",
    ),
    (
        "responses_5xx_total",
        'sum by (instance, proxy, server) (haproxy_server_http_responses_total{SEL,code="5xx"})',
    ),
    ("sessions_total", "haproxy_server_sessions_total{SEL}"),
    ("response_errors_total", "haproxy_server_response_errors_total{SEL}"),
    ("connect_errors_total", "haproxy_server_connection_errors_total{SEL}"),
    ("sessions", "haproxy_server_current_sessions{SEL}"),
    ("queue", "haproxy_server_current_queue{SEL}"),
    ("queue_time", "haproxy_server_queue_time_average_seconds{SEL}"),
    ("connect_time", "haproxy_server_connect_time_average_seconds{SEL}"),
    ("response_time", "haproxy_server_response_time_average_seconds{SEL}"),
    ("total_time", "haproxy_server_total_time_average_seconds{SEL}"),
    ("weight", "haproxy_server_weight{SEL}"),
    ("state", "haproxy_server_status{SEL} == 1"),
)
_STARTED = "haproxy_process_start_time_seconds"


@dataclass(frozen=True)
class PullReport:
    """What a pull read: rows, servers, queries, seconds, and what it left out."""

    rows: int
    servers: int
    queries: int
    seconds: float
    skipped: tuple[str, ...] = ()


def chunks(start: datetime, end: datetime, step_seconds: float) -> list[tuple[datetime, datetime]]:
    """[start, end] cut into spans of at most ``MAX_POINTS`` steps, on one step grid."""
    span = timedelta(seconds=step_seconds * (MAX_POINTS - 1))
    out: list[tuple[datetime, datetime]] = []
    at = start
    while at <= end:
        last = min(at + span, end)
        out.append((at, last))
        at = last + timedelta(seconds=step_seconds)
    return out


def pull_history(
    api: PrometheusAPI,
    pools: Sequence[str] | None,
    features: Sequence[FeatureQuery],
    start: datetime,
    end: datetime,
    step_seconds: float,
    events: Events,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, PullReport]:
    """Journal samples for every HAProxy server of ``pools`` (None: every backend the
    exporter shows) from ``start`` to ``end`` every ``step_seconds``, with the features."""
    import time

    began = time.perf_counter()
    report = progress or (lambda _stage, _fraction: None)
    selector = f"proxy=~{any_of(pools)}" if pools else 'proxy!=""'
    spans = chunks(start, end, step_seconds)
    steps = math.floor((end - start).total_seconds() / step_seconds + 1e-9) + 1
    grid = _Grid(start, step_seconds, steps)
    done = 0
    total = len(spans) * (len(_BASE) + 1 + len(features))

    def pull(what: str, query: str, lo: datetime, hi: datetime) -> list[RangeSeries]:
        nonlocal done
        report(f"pulling {what}", done / total)
        done += 1
        return api.range(query, lo, hi, step_seconds)

    # The request counters first: they say which servers there are. Every other family
    # then goes straight into its (servers x steps) array, chunk by chunk, so that a
    # week of answers is never held at once.
    (first, first_template), *others = _BASE
    counters = [
        s for lo, hi in spans for s in pull(first, first_template.replace("SEL", selector), lo, hi)
    ]
    keys, skipped = _servers(counters, events)
    index = ServerIndex(keys)
    slot = {key: i for i, key in enumerate(keys)}
    columns: dict[str, np.ndarray] = {first: _layout(counters, slot, grid)}
    columns |= {c: np.full((len(keys), grid.size), np.nan) for c, _ in others if c != "state"}
    columns["state_code"] = np.full((len(keys), grid.size), -1, dtype=np.int64)
    started: dict[str, np.ndarray] = {}
    for lo, hi in spans:
        for column, template in others:
            series = pull(column, template.replace("SEL", selector), lo, hi)
            if column == "state":
                _states(series, slot, grid, columns["state_code"])
            else:
                _layout(series, slot, grid, columns[column])
        _by_instance(pull("HAProxy's start time", _STARTED, lo, hi), grid, started)
    instance_of = _instances(counters, slot)
    columns["proxy_started"] = (
        np.vstack([started.get(instance_of.get(k, ""), np.full(grid.size, np.nan)) for k in keys])
        if keys
        else np.zeros((0, grid.size))
    )
    for feature in features:
        values = np.full((len(keys), grid.size), np.nan)
        for lo, hi in spans:
            for pool, server in _fills(feature, keys):
                query = fill(feature.template, pool, server)
                series = pull(feature.name, query, lo, hi)
                _place(series, feature, index, grid, values, pool, server, events)
        columns[EXTERNAL_PREFIX + feature.name] = values
    report("laying out", 1.0)
    frame = _frame(keys, columns, grid, start)
    seconds = time.perf_counter() - began
    return frame, PullReport(len(frame), len(keys), done, seconds, tuple(skipped))


@dataclass(frozen=True)
class _Grid:
    """The step grid of the pull: sample k is at ``start + k * step``."""

    start: datetime
    step: float
    size: int

    def positions(self, times: np.ndarray) -> np.ndarray:
        offsets = (np.asarray(times, dtype=float) - self.start.timestamp()) / self.step
        return np.rint(offsets).astype(np.int64)


def _servers(
    series: Sequence[RangeSeries], events: Events
) -> tuple[list[tuple[str, str]], list[str]]:
    """The (pool, server) pairs the request counters name; a pair two instances claim
    is left out."""
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in series:
        key = (s.labels.get("proxy", ""), s.labels.get("server", ""))
        if key[0] and key[1]:
            owners[key].add(s.labels.get("instance", ""))
    keys, skipped = [], []
    for key, instances in sorted(owners.items()):
        if len(instances) > 1:
            name = f"{key[0]}/{key[1]}"
            skipped.append(name)
            events.record(
                "prometheus_ambiguous",
                f"{name}: series from {len(instances)} instances ({', '.join(sorted(instances))});"
                " its history is left out",
                feature="requests_total",
            )
            continue
        keys.append(key)
    return keys, skipped


def _layout(
    series: Sequence[RangeSeries],
    slot: dict[tuple[str, str], int],
    grid: _Grid,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(servers, steps) of one exporter family (written into ``out`` when given); NaN
    where a server had no sample."""
    if out is None:
        out = np.full((len(slot), grid.size), np.nan)
    for s in series:
        row = slot.get((s.labels.get("proxy", ""), s.labels.get("server", "")))
        if row is None:
            continue
        at = grid.positions(s.times)
        inside = (at >= 0) & (at < grid.size)
        values = s.values[inside]
        out[row, at[inside]] = np.where(np.isfinite(values), values, np.nan)
    return out


_STATES = ("UP", "DOWN", "MAINT", "DRAIN", "NOLB")
# What each exporter state is in the Observation's terms (NOLB: soft-stopped, draining).
_AS_OBSERVED = ("UP", "DOWN", "MAINT", "DRAIN", "DRAIN")


def _states(
    series: Sequence[RangeSeries], slot: dict[tuple[str, str], int], grid: _Grid, out: np.ndarray
) -> None:
    """Into ``out`` (servers, steps): the code in ``_STATES`` of the state whose status
    series is 1 (-1 stays where none was)."""
    for s in series:
        row = slot.get((s.labels.get("proxy", ""), s.labels.get("server", "")))
        state = s.labels.get("state", "")
        if row is None or state not in _STATES:
            continue
        at = grid.positions(s.times)
        inside = (at >= 0) & (at < grid.size)
        out[row, at[inside]] = _STATES.index(state)


def _by_instance(series: Sequence[RangeSeries], grid: _Grid, out: dict[str, np.ndarray]) -> None:
    """Into ``out``: HAProxy's start time per scraped instance, on the grid (a change
    is a reload)."""
    for s in series:
        values = out.setdefault(s.labels.get("instance", ""), np.full(grid.size, np.nan))
        at = grid.positions(s.times)
        inside = (at >= 0) & (at < grid.size)
        values[at[inside]] = s.values[inside]


def _instances(
    series: Sequence[RangeSeries], slot: dict[tuple[str, str], int]
) -> dict[tuple[str, str], str]:
    return {
        (s.labels.get("proxy", ""), s.labels.get("server", "")): s.labels.get("instance", "")
        for s in series
        if (s.labels.get("proxy", ""), s.labels.get("server", "")) in slot
    }


def _fills(feature: FeatureQuery, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a feature's placeholders are filled with, one query each."""
    if feature.per_server:
        return list(keys)
    if feature.per_backend:
        return [(pool, "") for pool in sorted({p for p, _ in keys})]
    return [("", "")]


def _place(
    series: Sequence[RangeSeries],
    feature: FeatureQuery,
    index: ServerIndex,
    grid: _Grid,
    values: np.ndarray,
    pool: str,
    server: str,
    events: Events,
) -> None:
    """Write one feature query's series into ``values`` (servers x steps). A server
    two series claim at one step gets NaN there, counted once per query."""
    claimed = np.zeros(values.shape, dtype=np.int64)
    for s in series:
        rows, _ = index.rows_for(feature, s.labels, {}, pool, server)
        at = grid.positions(s.times)
        inside = (at >= 0) & (at < grid.size)
        numbers = s.values[inside]
        numbers = np.where(np.isfinite(numbers), numbers, np.nan)
        for row in rows:
            values[row, at[inside]] = numbers
            claimed[row, at[inside]] += 1
    doubled = claimed > 1
    if doubled.any():
        values[doubled] = math.nan
        events.record(
            "prometheus_ambiguous",
            f"feature {feature.name}: several series for one server at {int(doubled.sum())} "
            "step(s); those are missing",
            feature=feature.name,
        )


def _frame(
    keys: Sequence[tuple[str, str]], columns: dict[str, np.ndarray], grid: _Grid, start: datetime
) -> pd.DataFrame:
    """The (servers, steps) arrays as journal samples: one row per server and step at
    which its request counter had a sample."""
    present = np.isfinite(columns["requests_total"]) if keys else np.zeros((0, grid.size), bool)
    rows, steps = np.nonzero(present)
    times = pd.Timestamp(start).as_unit("us") + pd.to_timedelta(steps * grid.step, unit="s")
    codes = columns["state_code"][rows, steps]
    # No status series at a step with a request counter: the exporter did not say; UP.
    state = np.array((*_AS_OBSERVED, "UP"), dtype=object)[np.where(codes >= 0, codes, -1)]
    out: dict[str, object] = {
        "time": times,
        "source": ["haproxy"] * len(rows),
        "pool": [keys[r][0] for r in rows.tolist()],
        "server": [keys[r][1] for r in rows.tolist()],
        "state": state.tolist(),
        "proxy_pid": np.zeros(len(rows), dtype=np.int64),
    }
    for column, values in columns.items():
        if column != "state_code":
            out[column] = values[rows, steps]
    return samples_frame(out)
