"""Three ways to forecast a pool's load ``h`` steps past an origin, each evaluated at
many origins at once (a backtest is one call, not a loop).

- ``naive``: the value one season earlier (the same minute last week, or yesterday
  when the history is shorter): the baseline every forecast must beat.
- ``smoother``: the mean of the same minute over the last few seasons (the seasonal
  profile), scaled by how the pool runs against that profile: over the last day (the
  level and the trend since the profile's weeks) and over the last hour (a surge now),
  the hour's weight fading with the horizon (a surge says more about the next
  15 minutes than about tomorrow).
- ``boosted``: XGBoost learning the smoother's error from the calendar and the
  ratios, in log space: it earns its place only where it beats both on held-out
  data (``forecast/select.py``).

Every function reads ``y`` only at or before each origin: a backtest sees what a
forecast made at that origin would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

FLOOR = 1e-3  # requests/s: keeps logs finite on an idle pool
SEASONS = 3  # seasons the profile averages
SHORT_SECONDS = 3600.0  # the surge window, and the horizon over which it fades
METHODS = ("naive", "smoother", "boosted")


@dataclass(frozen=True)
class Grid:
    """The series' geometry: steps per season, per day, per hour."""

    step: float
    season: int
    seasons: int = SEASONS  # how many seasons back the profile averages

    @property
    def day(self) -> int:
        return max(1, round(86400.0 / self.step))

    @property
    def short(self) -> int:
        return max(1, round(SHORT_SECONDS / self.step))


def _at(y: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``y[index]``, NaN where the index falls outside ``y``."""
    inside = (index >= 0) & (index < len(y))
    out = np.full(index.shape, np.nan)
    out[inside] = y[index[inside]]
    return out


def naive(y: np.ndarray, origins: np.ndarray, h: int, grid: Grid) -> np.ndarray:
    return _at(y, origins + h - grid.season)


def profile(y: np.ndarray, targets: np.ndarray, grid: Grid) -> np.ndarray:
    """The mean of ``y`` one, two, ... ``grid.seasons`` seasons before each target
    (those that exist and were recorded)."""
    lags = np.stack([_at(y, targets - k * grid.season) for k in range(1, grid.seasons + 1)])
    known = np.isfinite(lags)
    count = known.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean: np.ndarray = np.where(count > 0, np.where(known, lags, 0).sum(axis=0) / count, np.nan)
    return mean


@dataclass(frozen=True)
class Context:
    """What the smoother and the booster read at each origin, computed for the whole
    series once (running sums make every window O(1))."""

    profile_all: np.ndarray  # profile(y, i) for every step i
    long_ratio: np.ndarray  # per origin: sum y / sum profile over the last day
    short_ratio: np.ndarray  # the same over the last hour

    @staticmethod
    def of(y: np.ndarray, grid: Grid) -> Context:
        every = np.arange(len(y))
        prof = profile(y, every, grid)
        return Context(prof, _ratio(y, prof, grid.day), _ratio(y, prof, grid.short))


def _ratio(y: np.ndarray, prof: np.ndarray, window: int) -> np.ndarray:
    """Per step i: sum(y) / sum(profile) over the steps (i - window, i] where both are
    known; NaN where none are."""
    both = np.isfinite(y) & np.isfinite(prof) & (prof > 0)
    ys = np.concatenate([[0.0], np.cumsum(np.where(both, y, 0.0))])
    ps = np.concatenate([[0.0], np.cumsum(np.where(both, prof, 0.0))])
    hi = np.arange(1, len(y) + 1)
    lo = np.maximum(hi - window, 0)
    num, den = ys[hi] - ys[lo], ps[hi] - ps[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio: np.ndarray = np.where(den > 0, np.maximum(num, 0.0) / den, np.nan)
    return ratio


def smoother(
    y: np.ndarray, origins: np.ndarray, h: int, grid: Grid, context: Context
) -> np.ndarray:
    targets = origins + h
    base = profile(y, targets, grid)  # the target may lie past the series' end
    long = _at(context.long_ratio, origins)
    short = _at(context.short_ratio, origins)
    weight = float(np.exp(-h * grid.step / SHORT_SECONDS))
    long = np.where(np.isfinite(long) & (long > 0), long, 1.0)
    short = np.where(np.isfinite(short) & (short > 0), short, long)
    log_ratio = weight * np.log(short) + (1 - weight) * np.log(long)
    forecast: np.ndarray = base * np.exp(log_ratio)
    return forecast


def features(
    y: np.ndarray,
    start: float,
    origins: np.ndarray,
    h: int,
    grid: Grid,
    context: Context,
) -> np.ndarray:
    """The booster's input at each origin for horizon ``h``: the target's calendar,
    the horizon, the ratios, and where the pool stands against its profile now."""
    targets = origins + h
    seconds = start + grid.step * targets.astype(float)
    day = 2 * np.pi * (seconds % 86400.0) / 86400.0
    week = 2 * np.pi * (seconds % (7 * 86400.0)) / (7 * 86400.0)
    now = _at(y, origins)
    prof_now = _at(context.profile_all, origins)
    prof_then = profile(y, targets, grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = [
            np.sin(day),
            np.cos(day),
            np.sin(week),
            np.cos(week),
            np.full(len(origins), h * grid.step / 3600.0),
            np.log(_at(context.long_ratio, origins)),
            np.log(_at(context.short_ratio, origins)),
            np.log(np.maximum(now, FLOOR) / np.maximum(prof_now, FLOOR)),
            np.log(np.maximum(prof_then, FLOOR) / np.maximum(prof_now, FLOOR)),
        ]
    x = np.column_stack(columns)
    cleaned: np.ndarray = np.where(np.isfinite(x), x, np.nan)
    return cleaned


BOOST_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.1,
    "subsample": 0.8,
    "min_child_weight": 20,
    "seed": 7,
    "nthread": 1,
}
BOOST_ROUNDS = 80


def fit_booster(
    y: np.ndarray,
    start: float,
    targets: np.ndarray,
    horizons: tuple[int, ...],
    grid: Grid,
    context: Context,
) -> xgb.Booster | None:
    """The booster of the smoother's log error, trained on forecasts of ``targets``
    from every horizon (so no training outcome lies past the last target); None when
    fewer than 200 have a known outcome."""
    xs, labels = [], []
    for h in horizons:
        origins = targets - h
        base = smoother(y, origins, h, grid, context)
        actual = _at(y, origins + h)
        ok = np.isfinite(base) & np.isfinite(actual) & (base > 0)
        xs.append(features(y, start, origins[ok], h, grid, context))
        labels.append(np.log(np.maximum(actual[ok], FLOOR)) - np.log(np.maximum(base[ok], FLOOR)))
    label = np.concatenate(labels)
    if len(label) < 200:
        return None
    matrix = xgb.DMatrix(np.vstack(xs), label=label, missing=np.nan)
    booster: xgb.Booster = xgb.train(BOOST_PARAMS, matrix, num_boost_round=BOOST_ROUNDS)
    return booster


def boosted(
    y: np.ndarray,
    start: float,
    origins: np.ndarray,
    h: int,
    grid: Grid,
    context: Context,
    booster: xgb.Booster,
) -> np.ndarray:
    base = smoother(y, origins, h, grid, context)
    correction = booster.inplace_predict(features(y, start, origins, h, grid, context))
    forecast: np.ndarray = base * np.exp(np.asarray(correction, dtype=float))
    return forecast
