"""Forecasting a pool's load: the series, the methods, the choice, the recommendation.

The accuracy figures against the seasonal naive forecast on a real Prometheus are
tests/integration/test_forecast_prometheus.py's; here each piece is checked on its
own, each check with a counterpart that shows it can fail.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from integration.synthetic_load import LoadShape, load_series
from veloflux.forecast.methods import Context, Grid, naive, profile, smoother
from veloflux.forecast.outlook import outlook
from veloflux.forecast.recommend import recommend
from veloflux.forecast.select import (
    TooLittleHistory,
    _better,
    _quantiles,
    fit,
    grid_for,
    holdout,
)
from veloflux.forecast.series import from_rates, from_samples

DAY = 1440  # steps of a minute


def series_of(days: float = 28.0, **shape: float) -> object:
    times, rates = load_series(LoadShape(days=days, **shape))  # type: ignore[arg-type]
    return from_samples(times, rates, "app", 60.0)


def test_journal_rates_become_requests_per_second_per_step() -> None:
    """Six 10 s intervals of 50 requests each are one minute at 5 req/s; a minute the
    journal missed is NaN, not 0."""
    times = pd.to_datetime([1_800_000_010 + 10 * i for i in range(6)] + [1_800_000_190], unit="s")
    rates = pd.DataFrame(
        {
            "time": times.tz_localize("UTC"),
            "pool": "app",
            "requests": 50.0,
            "interval_seconds": 10.0,
        }
    )
    (series,) = from_rates(rates)
    assert series.step == 60.0
    assert series.values[0] == pytest.approx(5.0)
    assert np.isnan(series.values[1])
    assert np.isnan(series.values[2])
    assert series.values[3] == pytest.approx(5.0)


def test_the_naive_forecast_is_one_season_back_and_reads_nothing_after_its_origin() -> None:
    y = np.arange(30.0)
    grid = Grid(60.0, season=10)
    assert naive(y, np.array([15]), 3, grid)[0] == 8.0
    assert np.isnan(naive(y, np.array([2]), 3, grid)[0])
    # The smoother at origin 15 is the same whatever comes after it.
    later = y.copy()
    later[16:] = 1e6
    a = smoother(y, np.array([15]), 3, grid, Context.of(y, grid))
    b = smoother(later, np.array([15]), 3, grid, Context.of(later, grid))
    assert a == pytest.approx(b)


def test_the_profile_averages_the_seasons_that_were_recorded() -> None:
    y = np.array([1.0, 2.0, np.nan, 4.0, 10.0, 20.0, 30.0, 40.0, 0.0, 0.0, 0.0, 0.0])
    grid = Grid(60.0, season=4)
    assert profile(y, np.array([8, 10]), grid) == pytest.approx([5.5, 30.0])


def test_a_week_of_history_forecasts_by_the_day_and_three_weeks_by_the_week() -> None:
    assert grid_for(series_of(days=7)).season == DAY  # type: ignore[arg-type]
    assert grid_for(series_of(days=21)).season == 7 * DAY  # type: ignore[arg-type]
    with pytest.raises(TooLittleHistory, match=r"1\.5 days of history"):
        grid_for(series_of(days=1.5))  # type: ignore[arg-type]


def test_the_chosen_forecast_beats_the_naive_one_on_a_held_out_week() -> None:
    """Seasonal shape, trend and noise: the chosen method's error is lower than the
    naive forecast's at every horizon, and its 80% interval covers 75-85%."""
    result = holdout(series_of(seed=3), (15, 60, DAY), 7 * DAY)  # type: ignore[arg-type]
    for horizon in result["horizons"].values():
        chosen, base = horizon["figures"][horizon["chosen"]], horizon["figures"]["naive"]
        assert chosen["mape"] < base["mape"]
        assert chosen["pinball_q90"] < base["pinball_q90"]
        assert 0.75 <= chosen["coverage_80"] <= 0.85


def test_a_more_complex_method_is_chosen_only_for_a_gain_beyond_doubt() -> None:
    """Seven daily blocks: a steady gain is taken; the same mean gain with as much
    spread as size, or a gain measured on too few blocks, is not."""
    rng = np.random.default_rng(1)
    simple = rng.uniform(1.0, 2.0, 7 * 100)
    assert _better(simple, simple - 0.1, block=100)
    assert not _better(simple, simple, block=100)
    swings = np.repeat([0.6, -0.5, 0.6, -0.5, 0.6, -0.5, 0.4], 100)
    assert not _better(simple, simple - swings, block=100)
    assert not _better(simple[:400], simple[:400] - 0.1, block=100)


def test_a_days_shared_error_widens_the_interval_as_few_draws_should() -> None:
    """Errors that move together for a day are seven draws, not ten thousand: their
    spread is widened (Student's t on seven); errors with no day shift keep their
    plain quantiles, and so do fewer than three days."""
    rng = np.random.default_rng(5)
    day_of = np.repeat(np.arange(7), DAY)
    predicted = np.full(7 * DAY, 100.0)
    scatter = rng.normal(0.0, 0.05, 7 * DAY)
    centred = scatter - np.repeat(scatter.reshape(7, DAY).mean(axis=1), DAY)
    assert _quantiles(100.0 * np.exp(centred), predicted, day_of) == pytest.approx(
        np.quantile(centred, (0.1, 0.9)), abs=1e-3
    )
    shifts = np.repeat(np.array([-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2]), DAY)
    errors = shifts + centred
    lo, hi = _quantiles(100.0 * np.exp(errors), predicted, day_of)
    plain_lo, plain_hi = np.quantile(errors, (0.1, 0.9))
    assert hi - lo > 1.1 * (plain_hi - plain_lo)
    assert lo < plain_lo
    assert hi > plain_hi
    two_days = day_of < 2
    assert _quantiles(
        100.0 * np.exp(errors[two_days]), predicted[two_days], day_of[two_days]
    ) == pytest.approx(np.quantile(errors[two_days], (0.1, 0.9)))


def test_the_outlook_peaks_where_the_evening_does() -> None:
    series = series_of(seed=2)
    model = fit(series, (15, 60, DAY))  # type: ignore[arg-type]
    forecast = outlook(series, model)  # type: ignore[arg-type]
    assert [h.horizon_seconds for h in forecast.horizons] == [900.0, 3600.0, 86400.0]
    for h in forecast.horizons:
        assert h.lower < h.point < h.upper
    assert 17 <= forecast.peak_at.hour <= 21  # the synthetic evening peak is at 19:00
    assert forecast.peak_upper >= max(h.upper for h in forecast.horizons)


PEAK_AT = datetime(2026, 12, 7, 19, 0, tzinfo=UTC)


def test_the_count_carries_the_peak_on_the_weakest_servers() -> None:
    capacities = {"a": 100.0, "b": 100.0, "c": 50.0, "d": 50.0}
    # 140 req/s at 70%: 200 req/s of capacity; the weakest first: 50+50+100.
    rec = recommend("app", 140.0, PEAK_AT, capacities, 0.7)
    assert rec.servers == 3
    assert "3 servers needed at 2026-12-07 19:00 UTC for 140 req/s at q90" in rec.reason
    assert "weakest c at 50" in rec.reason
    # Short of capacity: the rest in servers of the mean capacity (75 req/s).
    assert recommend("app", 350.0, PEAK_AT, capacities, 0.7).servers == 4 + 3
    assert recommend("app", 0.0, PEAK_AT, capacities, 0.7).servers == 1


def test_without_capacity_estimates_no_count_is_made_up() -> None:
    rec = recommend("app", 140.0, PEAK_AT, {"a": float("nan")}, 0.7)
    assert rec.servers is None
    assert "no server has a capacity estimate" in rec.reason
    with pytest.raises(ValueError, match="target_utilization"):
        recommend("app", 1.0, PEAK_AT, {"a": 1.0}, 0.0)
