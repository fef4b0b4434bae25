"""The outlier guard on history: which servers stand out from their pool, interval by
interval, and which cuts must deepen.

It runs whether or not there is a model (the advisor asks it for every pool): a
server that has just degraded is exactly where the model is least sure, and fallback
must not be blind. Without history it falls back on HAProxy's moving averages
(``decide/outliers.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import pandas as pd

from veloflux.config.schema import OutlierSection
from veloflux.decide.outliers import latency_outliers, moving_average_outliers
from veloflux.decide.utilization import backlog_grew
from veloflux.domain.advice import NO_CUTS
from veloflux.domain.observation import Observation
from veloflux.history.frames import instants

# How many intervals a flagged server stays an outlier for after its last bad one.
OUTLIER_MEMORY_INTERVALS = 3
# In how many of those intervals a server must be slow before its latency cuts it.
LATENCY_PERSISTENCE = 2
# Hysteresis: a server cut for latency counts an interval as clean only below this
# share of ``latency_ratio`` (2x the median at the default 3x). A server about
# three times slower than its peers sits at the threshold once its cut has drained
# its queue; judged against the threshold itself it was released, handed its weight
# back, queued again and cut again, every few ticks.
RELEASE_SHARE = 2 / 3
_HELD = "outlier: latency cut held until its clean intervals"


class OutlierFindings(NamedTuple):
    """What the outlier guard found in one pool: each outlier with its reason, those
    whose cut must deepen, and the servers under a latency cut at the newest interval
    with how many clean intervals each has had since (the next tick carries them on:
    a cut must outlive the history window it began in), and the servers found failing
    requests (the rest were found slow: a finding an overloaded pool stands down)."""

    found: Mapping[str, str]
    deepen: frozenset[str] = frozenset()
    cuts: Mapping[str, int] = NO_CUTS
    errors: frozenset[str] = frozenset()


def outlier_findings(
    observation: Observation,
    pool: str,
    features: pd.DataFrame,
    rules: OutlierSection,
    cuts_before: Mapping[str, int] = NO_CUTS,
) -> OutlierFindings:
    """The outliers with their reasons, those whose cut must deepen, and the latency
    cuts to carry on to the next tick.

    With history, each of the last ``OUTLIER_MEMORY_INTERVALS`` intervals is judged and
    a server flagged in any of them stays flagged: once its cut takes traffic off it,
    its queue drains and it can look fine for one interval while still being slow, and
    releasing it then would give it its traffic back only to cut it again. It is
    released after that many clean intervals; for latency, over the features' whole
    span, clean means below ``RELEASE_SHARE`` of the threshold (``_latency_flagged``).
    A latency cut the previous tick held (``cuts_before``) goes on until it has had its
    clean intervals, even when the slow intervals that began it have left the features'
    span: otherwise a server that stays between the release and the cut thresholds
    was handed its weight back once its cut was a history window old.
    Without history (no counter deltas, so no error rates) HAProxy's moving-average
    response time is all there is.

    A cut deepens (the planner cuts below the current weight again) while the newest
    interval shows the fault the cut has not cured: a server still failing requests,
    or a slow one whose latency is still climbing (``_overloaded``), the sign of a queue
    growing without bound. A server that is merely slower, steady at its own pace,
    keeps one bounded cut and does not starve.
    """
    if not rules.enabled:
        return OutlierFindings({})
    if features.empty:
        return OutlierFindings(moving_average_outliers(observation, pool, rules))
    times = instants(features)
    recent = np.unique(times)[-OUTLIER_MEMORY_INTERVALS:]
    busy = features["requests"].fillna(0).to_numpy(dtype=float) >= rules.min_requests
    columns = _OutlierColumns(
        features["server"].to_numpy(dtype=object),
        features["error_rate"].to_numpy(dtype=float, na_value=np.nan),
        features["latency"].to_numpy(dtype=float, na_value=np.nan),
        _backlog_grew(features, times),
    )
    # Errors cut at once, judged on the last few intervals: a failing server must lose
    # its traffic. Latency cuts as ``_latency_flagged`` says. The newest finding of
    # either kind gives the reason (an error's, at the same interval).
    findings: dict[str, tuple[str, int]] = {}
    failing: set[str] = set()
    for age, instant in enumerate(reversed(recent)):
        errors = _error_outliers_at(columns, np.flatnonzero(busy & (times == instant)), rules)
        for server, reason in errors.items():
            findings.setdefault(server, (f"{reason}{_ago(age, 'released after clean ones')}", age))
        if age == 0:
            failing = set(errors)
    erring = frozenset(findings)  # the error findings, before the latency ones join
    held = f"released below {_release(rules):.1f}x the median"
    latency, cuts = _latency_flagged(columns, times, busy, rules, cuts_before)
    for server, (reason, age) in latency.items():
        if server not in findings or age < findings[server][1]:
            findings[server] = (f"{reason}{_ago(age, held)}", age)
    found = {server: reason for server, (reason, _) in findings.items()}
    slow = [s for s, (_, age) in latency.items() if age == 0 and s not in failing]
    deepen = frozenset(failing | _overloaded(columns, times, recent, busy, slow))
    return OutlierFindings(found, deepen, MappingProxyType(cuts), erring)


def _backlog_grew(features: pd.DataFrame, times: np.ndarray) -> np.ndarray:
    """Per row, whether the server's requests in flight (sessions and queue at the
    interval's end) rose since its previous row by more than a stable server's swing
    (``utilization.backlog_grew``), the expected level by Little's law from HAProxy's
    moving average of response time, which the slowdown behind the backlog has barely
    moved yet (the interval's own mean latency already holds the backlog's wait and
    would raise the bar it is judged by)."""

    def column(name: str) -> np.ndarray:
        if name not in features.columns:
            return np.full(len(features), np.nan)
        return features[name].to_numpy(dtype=float, na_value=np.nan)

    in_flight = column("sessions") + np.nan_to_num(column("queue"), nan=0.0)
    frame = pd.DataFrame(
        {"server": features["server"].to_numpy(dtype=object), "time": times, "n": in_flight}
    )
    ordered = frame.sort_values(["server", "time"], kind="stable")
    before = ordered.groupby("server", sort=False)["n"].shift(1).sort_index().to_numpy(float)
    expected = column("request_rate") * column("latency_ema")
    return backlog_grew(before, in_flight, expected)


def _ago(age: int, release: str) -> str:
    """The suffix of a finding ``age`` intervals old (none for the newest)."""
    return "" if age == 0 else f"; {age} interval(s) ago, {release}"


def _release(rules: OutlierSection) -> float:
    """The latency ratio to the median below which a cut server's interval is clean."""
    return max(1.0, RELEASE_SHARE * rules.latency_ratio)


def _latency_flagged(
    columns: _OutlierColumns,
    times: np.ndarray,
    busy: np.ndarray,
    rules: OutlierSection,
    cuts_before: Mapping[str, int],
) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
    """The servers cut for latency at the newest instant, each with its newest slow
    finding and how many intervals ago it was (a carried cut whose slow intervals have
    left the span gives its last elevated reading), and every cut's clean intervals.

    The features' intervals are walked oldest first. A cut begins where a server is
    slow (``latency_ratio`` x the median) in ``LATENCY_PERSISTENCE`` of the last
    ``OUTLIER_MEMORY_INTERVALS`` intervals: a server whose speed flickers faster than
    the tick is slow in one interval and fine in the next, and cutting it then only
    moves load onto whichever server flickers slow next. One slow interval is enough
    when the server's backlog grew in it by more than chance (``_backlog_grew``): two
    signals that agree, where the persistence rule waits for one to repeat, and a
    server sent more than it can serve builds its queue every tick it is not cut. A cut ends after
    ``OUTLIER_MEMORY_INTERVALS`` clean intervals in a row, clean meaning below
    ``RELEASE_SHARE`` of the threshold, so that a server steadily near the threshold
    keeps one cut instead of flapping around it. The previous tick's cuts join the
    walk before the newest interval, the one that tick had not seen, with the clean
    intervals they had then.
    """
    history = np.unique(times)
    persistent = min(LATENCY_PERSISTENCE, len(history))
    release = _release(rules)
    slow_runs: dict[str, list[int]] = {}  # server -> the positions it was slow at
    newest: dict[str, tuple[str, int]] = {}  # server -> (reason, position)
    clean: dict[str, int] = {}  # cut servers -> clean intervals in a row
    raised: dict[str, tuple[str, int]] = {}  # cut servers' newest elevated readings
    last = len(history) - 1
    for position, instant in enumerate(history):
        if position == last:
            for server, intervals in cuts_before.items():
                clean.setdefault(server, intervals)
        rows = np.flatnonzero(busy & (times == instant))
        pairs = list(
            zip(columns.servers[rows].tolist(), columns.latencies[rows].tolist(), strict=True)
        )
        slow = latency_outliers(pairs, rules)
        growing = set(columns.servers[rows[columns.backlog_grew[rows]]].tolist())
        slow = {s: f"{r}, its backlog growing" if s in growing else r for s, r in slow.items()}
        elevated = latency_outliers(pairs, rules, release) if clean else {}
        for server in list(clean):
            if server in elevated:
                clean[server] = 0
                raised[server] = (elevated[server], position)
            else:
                clean[server] += 1
            if clean[server] >= OUTLIER_MEMORY_INTERVALS:
                del clean[server]
        for server, reason in slow.items():
            newest[server] = (reason, position)
            runs = slow_runs.setdefault(server, [])
            runs.append(position)
            recent = [p for p in runs if p > position - OUTLIER_MEMORY_INTERVALS]
            if len(recent) >= persistent or server in growing:
                clean[server] = 0
    flagged = {}
    for server in clean:
        reason, position = newest.get(server) or raised.get(server) or (_HELD, last)
        flagged[server] = (reason, last - position)
    return flagged, clean


# A slow outlier's cut deepens when its latency rose by at least this factor (or by the
# pool's median latency) in each of the last two intervals: noise in a steady server's
# interval means seldom does so twice.
CLIMB_RATIO = 1.05
# At most this share of a pool's servers (at least one) has its cut deepened for
# latency in one tick: every cut moves load onto the others.
DEEPEN_SHARE = 0.1


def _overloaded(
    columns: _OutlierColumns,
    times: np.ndarray,
    recent: np.ndarray,
    busy: np.ndarray,
    slow: list[str],
) -> set[str]:
    """The slow outliers whose queues still grow: latency up (``_rising``) in each of the
    last two intervals, the worst first, at most ``DEEPEN_SHARE`` of the pool.

    None when the pool's faster servers climb as well (its lower quartile of latency):
    then no server has room to spare, the whole pool is overloaded, moving load between
    its servers cannot cure that, and deeper cuts would only pile the load onto the
    servers left. The median would not do: with unequal capacities and equal weights,
    more than half of a pool can be overloaded while the rest sits half idle.
    """
    if len(recent) < 3 or not slow:
        return set()
    last = recent[-3:]
    pool = [columns.latencies[busy & (times == t)] for t in last]
    if _rising([_quantile(latencies, 0.25) for latencies in pool]):
        return set()
    median = _quantile(pool[-1], 0.5)
    latest: dict[str, float] = {}
    climbing = []
    for server in slow:
        mine = np.flatnonzero(columns.servers == server)
        by_time = dict(zip(times[mine].tolist(), columns.latencies[mine].tolist(), strict=True))
        values = [by_time.get(t, np.nan) for t in last.tolist()]
        if _rising(values, by=median):
            climbing.append(server)
            latest[server] = values[-1]
    pool_size = int((busy & (times == recent[-1])).sum())
    allowed = max(1, int(DEEPEN_SHARE * pool_size))
    return set(sorted(climbing, key=lambda s: -latest[s])[:allowed])


def _quantile(values: np.ndarray, q: float) -> float:
    known = values[np.isfinite(values)]
    return float(np.quantile(known, q)) if len(known) else float("nan")


def _rising(values: list[float], by: float = math.inf) -> bool:
    """Three readings, each at least ``CLIMB_RATIO`` times the one before, or ``by`` above
    it: a queue that grows at a steady pace adds a steady amount of latency, a share of
    its total that shrinks as it grows, so a long-overloaded server climbs by amount."""

    def rose(before: float, after: float) -> bool:
        return after > CLIMB_RATIO * before or after > before + by

    return rose(values[0], values[1]) and rose(values[1], values[2])


@dataclass(frozen=True)
class _OutlierColumns:
    """The columns of a pool's features that the outlier guard reads, as arrays."""

    servers: np.ndarray
    error_rates: np.ndarray
    latencies: np.ndarray
    backlog_grew: np.ndarray  # per row: in flight rose by more than chance (a backlog)


def _error_outliers_at(
    columns: _OutlierColumns, rows: np.ndarray, rules: OutlierSection
) -> dict[str, str]:
    """The servers among ``rows`` (one instant's busy rows, one per server) that fail
    requests, with their reasons."""
    servers = columns.servers[rows].tolist()
    error_rates = columns.error_rates[rows]
    known = np.isfinite(error_rates)
    pool_errors = float(np.median(error_rates[known])) if known.any() else 0.0
    threshold = max(rules.error_rate, 3 * pool_errors)
    return {
        str(servers[i]): f"outlier: error rate {float(error_rates[i]):.0%} "
        f"(pool median {pool_errors:.0%})"
        for i in np.flatnonzero(known & (error_rates >= threshold)).tolist()
    }
