"""A pool's request rate over weeks, with the shapes real traffic has: a daily curve
(a morning ramp, an evening peak, a quiet night), quieter weekends, a trend, slow
level wander and noise. Seeded: the same arguments give the same series.

The forecasting tests and ``bench/bench_forecast.py`` forecast it; the shapes are
not those the methods assume (the daily curve is two bumps, not a sine; the weekend
is a step, not a wave), so a method cannot win by matching the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoadShape:
    days: float = 28.0
    step_seconds: float = 60.0
    base_rps: float = 1000.0
    daily_amplitude: float = 0.6  # peak over trough, as a share of the base
    weekend_factor: float = 0.65
    trend_per_week: float = 0.03  # growth per week, as a share
    noise: float = 0.05  # log-normal sigma per step
    wander: float = 0.02  # sigma of the slow level wander per hour (a random walk)
    seed: int = 1
    start: float = 1_790_000_000.0  # epoch seconds, a Monday 00:00 UTC is not assumed
    peak_hour: float = 19.0


def load_series(shape: LoadShape) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests/s): the step starts (epoch seconds) and the rates."""
    rng = np.random.default_rng(shape.seed)
    n = int(shape.days * 86400 / shape.step_seconds)
    times = shape.start + shape.step_seconds * np.arange(n)
    hours = (times % 86400) / 3600.0
    # Two bumps: a morning one at 10:00 and the evening peak, on a night floor.
    morning = np.exp(-0.5 * ((hours - 10.0) / 2.0) ** 2)
    evening = np.exp(-0.5 * ((hours - shape.peak_hour) / 2.5) ** 2)
    daily = 1 - shape.daily_amplitude / 2 + shape.daily_amplitude * (0.6 * morning + evening)
    weekday = ((times // 86400).astype(int) + 3) % 7  # 1970-01-01 was a Thursday
    weekly = np.where(weekday >= 5, shape.weekend_factor, 1.0)
    trend = 1 + shape.trend_per_week * (times - shape.start) / (7 * 86400.0)
    steps_per_hour = 3600.0 / shape.step_seconds
    walk = np.cumsum(rng.normal(0, shape.wander / np.sqrt(steps_per_hour), n))
    day = max(1, round(86400.0 / shape.step_seconds))
    walk -= np.convolve(walk, np.ones(day) / day, mode="same")  # wander, not drift
    noise = rng.lognormal(0.0, shape.noise, n)
    rate = shape.base_rps * daily * weekly * trend * np.exp(walk) * noise
    return times, rate
