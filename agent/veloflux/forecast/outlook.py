"""A pool's forecast from now: each horizon's figure with its 80% interval and the
method that made it, and the peak of the 90% bound over the longest horizon (what a
recommendation is sized on)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from veloflux.forecast.methods import Context
from veloflux.forecast.select import PoolModel, forecast
from veloflux.forecast.series import PoolSeries

PATH_SECONDS = 300.0  # the peak is searched every five minutes of the horizon


@dataclass(frozen=True)
class HorizonForecast:
    horizon_seconds: float
    at: datetime
    method: str
    point: float  # requests/s
    lower: float  # the 80% interval
    upper: float
    validation: dict[str, Any]  # the chosen method's and the naive's figures, last season

    def to_json(self) -> dict[str, Any]:
        return {
            "horizon_seconds": self.horizon_seconds,
            "at": self.at.isoformat(),
            "method": self.method,
            "requests_per_second": _r(self.point),
            "lower_80": _r(self.lower),
            "upper_80": _r(self.upper),
            "validation": self.validation,
        }


def _r(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


@dataclass(frozen=True)
class PoolForecast:
    pool: str
    made_at: datetime  # the end of the history it starts from
    season: str  # "week" or "day"
    horizons: tuple[HorizonForecast, ...]
    peak_upper: float  # the highest 90% bound over the longest horizon, requests/s
    peak_at: datetime


def outlook(series: PoolSeries, model: PoolModel) -> PoolForecast:
    """Forecasts from the last step of ``series`` with what ``model`` chose."""
    y = series.values
    origin = np.array([len(y) - 1])
    context = Context.of(y, model.grid)
    made_at = _moment(series.time_of(len(y)))

    def at(h: int) -> tuple[float, float, float, str]:
        fit = model.horizon(h)
        value = forecast(y, series.start, origin, h, fit.method, model.grid, context, model.booster)
        point = float(value[0])
        return point, point * math.exp(fit.log_lo), point * math.exp(fit.log_hi), fit.method

    horizons = []
    for fit in model.horizons:
        point, lower, upper, method = at(fit.steps)
        chosen, naive = fit.judged.get(method), fit.judged.get("naive")
        validation = {
            "method": chosen.to_json() if chosen else None,
            "naive": naive.to_json() if naive else None,
        }
        horizons.append(
            HorizonForecast(
                fit.steps * series.step,
                _moment(series.time_of(len(y)) + (fit.steps - 1) * series.step),
                method,
                point,
                lower,
                upper,
                validation,
            )
        )
    stride = max(1, round(PATH_SECONDS / series.step))
    longest = model.horizons[-1].steps
    peak, peak_step = -math.inf, longest
    for h in range(1, longest + 1, stride):
        upper = at(h)[2]
        if math.isfinite(upper) and upper > peak:
            peak, peak_step = upper, h
    season = "week" if model.grid.season * series.step >= 7 * 86400 else "day"
    peak_at = _moment(series.time_of(len(y)) + (peak_step - 1) * series.step)
    return PoolForecast(series.pool, made_at, season, tuple(horizons), peak, peak_at)


def _moment(seconds: float | np.ndarray) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)
