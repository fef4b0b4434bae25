"""The advisor: turns a model's predictions into per-pool advice for the planner.

For each managed pool it decides whether the model may act (a model exists, it is
fresh, the pool has traffic, and the pool's confidence clears the threshold), which
servers are confident enough to be driven by the model, what share of traffic the
optimizer wants for each of them, and which servers stand out as outliers (the
outlier guard, ``decide/outlier_guard.py``, asked for every pool, model or not).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

import numpy as np
import pandas as pd

from veloflux.config.schema import Config, OutlierSection
from veloflux.decide.optimize import STATUS_QUO, rate_grid, total_cost, water_fill
from veloflux.decide.outlier_guard import OutlierFindings, outlier_findings
from veloflux.domain.advice import NO_CUTS, Advice, PoolAdvice, ServerAdvice, blocked_pool
from veloflux.domain.observation import Observation
from veloflux.history.frames import instants
from veloflux.model.features import at_status_quo, newest_rows
from veloflux.model.predict import Predictor

_FORECAST_INTERVALS = 3


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
    cuts_before: Mapping[str, Mapping[str, int]] = MappingProxyType({}),
) -> Advice:
    """Advice for every managed pool. ``blocked_reason`` explains a missing predictor;
    ``cuts_before`` holds the previous tick's latency cuts per pool (``PoolAdvice``'s
    ``latency_cuts``), which the outlier guard carries on."""
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
        outliers = outlier_findings(
            observation,
            pool.name,
            pool_features,
            settings.outlier,
            cuts_before.get(pool.name, NO_CUTS),
        )
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
    outliers: OutlierFindings,
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
    found, deepen, cuts, errors = outliers
    servers = {
        name: ServerAdvice(
            name, value, parts, share, found.get(name, ""), name in deepen, name in errors
        )
        for name, value, parts, share in zip(
            now["server"].tolist(),
            confidence.value.tolist(),
            confidence.all_parts(),
            shares,
            strict=True,
        )
    }
    return PoolAdvice(
        pool, pool_confidence, reason, servers, forecast, hold, cost=cost, latency_cuts=cuts
    )


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
