"""The advisor: turns a model's predictions into per-pool advice for the planner.

For each managed pool it decides whether the model may act (a model exists, it is
fresh, the pool has traffic, and the pool's confidence clears the threshold), which
servers are confident enough to be driven by the model, what share of traffic the
optimizer wants for each of them, and which servers stand out as outliers. The
outlier guard runs whether or not there is a model: a server that has just degraded is
exactly where the model is least sure, and fallback must not be blind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from veloflux.config.schema import Config, OutlierSection
from veloflux.decide.optimize import STATUS_QUO, rate_grid, total_cost, water_fill
from veloflux.decide.outliers import latency_outliers, moving_average_outliers
from veloflux.domain.advice import Advice, PoolAdvice, ServerAdvice, blocked_pool
from veloflux.domain.observation import Observation
from veloflux.history.frames import instants
from veloflux.model.features import at_status_quo, newest_rows
from veloflux.model.predict import Predictor

_FORECAST_INTERVALS = 3
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


@dataclass(frozen=True)
class AdvisorSettings:
    """The knobs of the advisor, taken from ``ai`` and ``policy`` in the config."""

    confidence_threshold: float
    error_penalty_seconds: float
    stale_after_seconds: float
    max_model_age_seconds: float
    outlier: OutlierSection
    min_gain: float  # the smallest predicted fall in a pool's cost worth a move

    @classmethod
    def from_config(cls, config: Config) -> AdvisorSettings:
        """The one place the advisor's knobs are read from a config (the tick, the
        simulator and the benchmarks all build them here)."""
        ai = config.ai
        return cls(
            confidence_threshold=ai.confidence_threshold,
            error_penalty_seconds=ai.error_penalty_seconds,
            stale_after_seconds=config.stale_after_seconds,
            max_model_age_seconds=ai.max_model_age_seconds,
            outlier=config.policy.outlier,
            min_gain=ai.min_gain,
        )


def advise(
    observation: Observation,
    features: pd.DataFrame,
    predictor: Predictor | None,
    settings: AdvisorSettings,
    blocked_reason: str,
    last_sample_at: datetime | None,
) -> Advice:
    """Advice for every managed pool. ``blocked_reason`` explains a missing predictor."""
    fresh_model = predictor is not None and (
        (observation.taken_at - predictor.trained_at).total_seconds()
        <= settings.max_model_age_seconds
    )
    fresh_data = last_sample_at is not None and (
        (observation.taken_at - last_sample_at).total_seconds() <= settings.stale_after_seconds
    )
    pools = {}
    for pool in observation.pools:
        if not pool.managed:
            continue
        pool_features = _rows_of(features, pool.name)
        outliers = outlier_findings(observation, pool.name, pool_features, settings.outlier)
        if predictor is None:
            advice = blocked_pool(pool.name, blocked_reason, *outliers)
        elif not fresh_model:
            advice = blocked_pool(
                pool.name, f"model {predictor.version} is older than max_model_age", *outliers
            )
        elif not fresh_data:
            advice = blocked_pool(pool.name, "no recent history (stale observations)", *outliers)
        else:
            advice = _pool_advice(pool.name, pool_features, predictor, settings, outliers)
        pools[pool.name] = advice
    return Advice(model_version=predictor.version if predictor else None, pools=pools)


def _rows_of(features: pd.DataFrame, pool: str) -> pd.DataFrame:
    """The rows of one pool; the frame itself when it holds that pool alone (a copy of
    every column for nothing, otherwise, on the most common setup)."""
    if features.empty:
        return features
    mine = features["pool"].to_numpy(dtype=object) == pool
    return features if mine.all() else features[mine]


def _pool_advice(
    pool: str,
    features: pd.DataFrame,
    predictor: Predictor,
    settings: AdvisorSettings,
    outliers: tuple[dict[str, str], frozenset[str]],
) -> PoolAdvice:
    now = newest_rows(features)
    if now.empty:
        return blocked_pool(pool, "no recent history for this pool", *outliers)
    forecast = _forecast_rate(features)
    if not np.isfinite(forecast) or forecast <= 0:
        return blocked_pool(pool, "idle pool: no traffic to learn from", *outliers)
    cost = measured_cost(now, settings.error_penalty_seconds)
    status_quo = at_status_quo(now)
    confidence = predictor.confidence(status_quo, features, fresh=True)
    pool_confidence = float(np.median(confidence.value))
    shares: list[float | None] = [None] * len(now)
    reason = hold = ""
    if pool_confidence < settings.confidence_threshold:
        reason = (
            f"confidence {pool_confidence:.2f} < {settings.confidence_threshold:.2f} "
            f"(weakest: {confidence.most_common_weakest(settings.confidence_threshold)})"
        )
    else:
        confident = np.flatnonzero(confidence.value >= settings.confidence_threshold)
        rows = now if len(confident) == len(now) else now.iloc[confident]
        wanted, gain = _shares(
            rows, predictor, settings, forecast, float(now["request_rate"].sum())
        )
        # Below the bar the model keeps the weights where they are: between servers
        # predicted alike, its small differences are noise, and acting on them herds
        # traffic onto whichever looked best a moment ago.
        if gain < settings.min_gain:
            hold = f"predicted gain {gain:.0%} < {settings.min_gain:.0%}"
        for i, share in zip(confident.tolist(), wanted, strict=True):
            shares[i] = share
    found, deepen = outliers
    servers = {
        name: ServerAdvice(name, value, parts, share, found.get(name, ""), name in deepen)
        for name, value, parts, share in zip(
            now["server"].tolist(),
            confidence.value.tolist(),
            confidence.all_parts(),
            shares,
            strict=True,
        )
    }
    return PoolAdvice(pool, pool_confidence, reason, servers, forecast, hold, cost=cost)


def measured_cost(now: pd.DataFrame, error_penalty_seconds: float) -> float | None:
    """The pool's cost over the newest interval, per request: the mean of each server's
    interval latency plus the error penalty times its error ratio, weighted by its
    requests (the same terms the optimizer predicts); None without a known figure."""
    requests = now["requests"].to_numpy(dtype=float, na_value=np.nan)
    latency = now["latency"].to_numpy(dtype=float, na_value=np.nan)
    errors = np.nan_to_num(now["error_rate"].to_numpy(dtype=float, na_value=np.nan))
    known = np.isfinite(requests) & np.isfinite(latency) & (requests > 0)
    if not known.any():
        return None
    weights = requests[known]
    each = latency[known] + error_penalty_seconds * errors[known]
    return float(np.sum(weights * each) / np.sum(weights))


def _forecast_rate(features: pd.DataFrame) -> float:
    """Next interval's pool rate: the mean of the last few intervals' totals.

    An instant whose rates are all unknown (just after a reload) has no total and is
    skipped, rather than counted as an idle one.
    """
    times, slot = np.unique(instants(features), return_inverse=True)
    rates = features["request_rate"].to_numpy(dtype=float)
    known = np.isfinite(rates)
    totals = np.bincount(slot[known], weights=rates[known], minlength=len(times))
    counted = np.bincount(slot[known], minlength=len(times)) > 0
    recent = totals[counted][-_FORECAST_INTERVALS:]
    return float(recent.mean()) if len(recent) else float("nan")


def _shares(
    rows: pd.DataFrame,
    predictor: Predictor,
    settings: AdvisorSettings,
    forecast: float,
    current_total: float,
) -> tuple[Sequence[float], float]:
    """Water-fill the confident servers' part of the forecast; their shares sum to 1.

    Also returns the predicted gain: the fall in the pool's total cost from the status
    quo split to the water-filled one, as a share of the status quo's (infinite when
    the status quo's cost is unknown, so the split is taken as before).
    """
    current = rows["request_rate"].to_numpy(dtype=float)
    # The confident servers split the part of the forecast they carry today.
    total = forecast * (current.sum() / current_total if current_total > 0 else 1.0)
    if total <= 0:
        return [1.0 / len(rows)] * len(rows), math.inf
    grid = rate_grid(current * (total / current.sum()) if current.sum() > 0 else current, total)
    curves = predictor.curves(rows, grid, with_median=False)
    cost = curves.latency_p90 + settings.error_penalty_seconds * curves.error_rate
    assigned = water_fill(grid, cost, total)
    shares: list[float] = (assigned / assigned.sum()).tolist()
    before = total_cost(grid, cost, grid[:, STATUS_QUO])
    if not (math.isfinite(before) and before > 0) or current.sum() <= 0:
        return shares, math.inf
    return shares, 1.0 - total_cost(grid, cost, assigned) / before


def outlier_findings(
    observation: Observation, pool: str, features: pd.DataFrame, rules: OutlierSection
) -> tuple[dict[str, str], frozenset[str]]:
    """The outliers with their reasons, and those whose cut must deepen.

    With history, each of the last ``OUTLIER_MEMORY_INTERVALS`` intervals is judged and
    a server flagged in any of them stays flagged: once its cut takes traffic off it,
    its queue drains and it can look fine for one interval while still being slow, and
    releasing it then would give it its traffic back only to cut it again. It is
    released after that many clean intervals; for latency, over the features' whole
    span, clean means below ``RELEASE_SHARE`` of the threshold (``_latency_flagged``).
    Without history (no counter deltas, so no error rates) HAProxy's moving-average
    response time is all there is.

    A cut deepens (the planner cuts below the current weight again) while the newest
    interval shows the fault the cut has not cured: a server still failing requests,
    or a slow one whose latency is still climbing (``_overloaded``), the sign of a queue
    growing without bound. A server that is merely slower, steady at its own pace,
    keeps one bounded cut and does not starve.
    """
    if not rules.enabled:
        return {}, frozenset()
    if features.empty:
        return moving_average_outliers(observation, pool, rules), frozenset()
    times = instants(features)
    recent = np.unique(times)[-OUTLIER_MEMORY_INTERVALS:]
    busy = features["requests"].fillna(0).to_numpy(dtype=float) >= rules.min_requests
    columns = _OutlierColumns(
        features["server"].to_numpy(dtype=object),
        features["error_rate"].to_numpy(dtype=float, na_value=np.nan),
        features["latency"].to_numpy(dtype=float, na_value=np.nan),
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
    held = f"released below {_release(rules):.1f}x the median"
    latency = _latency_flagged(columns, times, busy, rules)
    for server, (reason, age) in latency.items():
        if server not in findings or age < findings[server][1]:
            findings[server] = (f"{reason}{_ago(age, held)}", age)
    found = {server: reason for server, (reason, _) in findings.items()}
    slow = [s for s, (_, age) in latency.items() if age == 0 and s not in failing]
    return found, frozenset(failing | _overloaded(columns, times, recent, busy, slow))


def _ago(age: int, release: str) -> str:
    """The suffix of a finding ``age`` intervals old (none for the newest)."""
    return "" if age == 0 else f"; {age} interval(s) ago, {release}"


def _release(rules: OutlierSection) -> float:
    """The latency ratio to the median below which a cut server's interval is clean."""
    return max(1.0, RELEASE_SHARE * rules.latency_ratio)


def _latency_flagged(
    columns: _OutlierColumns, times: np.ndarray, busy: np.ndarray, rules: OutlierSection
) -> dict[str, tuple[str, int]]:
    """The servers cut for latency at the newest instant, each with its newest slow
    finding and how many intervals ago it was.

    The features' intervals are walked oldest first. A cut begins where a server is
    slow (``latency_ratio`` x the median) in ``LATENCY_PERSISTENCE`` of the last
    ``OUTLIER_MEMORY_INTERVALS`` intervals: a server whose speed flickers faster than
    the tick is slow in one interval and fine in the next, and cutting it then only
    moves load onto whichever server flickers slow next. A cut ends after
    ``OUTLIER_MEMORY_INTERVALS`` clean intervals in a row, clean meaning below
    ``RELEASE_SHARE`` of the threshold, so that a server steadily near the threshold
    keeps one cut instead of flapping around it.
    """
    history = np.unique(times)
    persistent = min(LATENCY_PERSISTENCE, len(history))
    release = _release(rules)
    slow_runs: dict[str, list[int]] = {}  # server -> the positions it was slow at
    newest: dict[str, tuple[str, int]] = {}  # server -> (reason, position)
    clean: dict[str, int] = {}  # cut servers -> clean intervals in a row
    for position, instant in enumerate(history):
        rows = np.flatnonzero(busy & (times == instant))
        pairs = list(
            zip(columns.servers[rows].tolist(), columns.latencies[rows].tolist(), strict=True)
        )
        slow = latency_outliers(pairs, rules)
        elevated = latency_outliers(pairs, rules, release) if clean else {}
        for server in list(clean):
            clean[server] = 0 if server in elevated else clean[server] + 1
            if clean[server] >= OUTLIER_MEMORY_INTERVALS:
                del clean[server]
        for server, reason in slow.items():
            newest[server] = (reason, position)
            runs = slow_runs.setdefault(server, [])
            runs.append(position)
            recent = [p for p in runs if p > position - OUTLIER_MEMORY_INTERVALS]
            if len(recent) >= persistent:
                clean[server] = 0
    last = len(history) - 1
    return {server: (newest[server][0], last - newest[server][1]) for server in clean}


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
