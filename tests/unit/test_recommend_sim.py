"""A recommendation checked in the simulator: the pool it recommends, run at the
forecast peak, stays at or under the target utilization; one server fewer does not.

The pool: three servers of 40 req/s and three of 80 req/s (known capacities: slots x
speed / service time). The peak comes from a real forecast of eight days of a daily
load curve (its 90% bound over the next day), sized so that the pool is tight at it. The
servers kept are the weakest ones, as the recommendation assumes of an autoscaler;
weights follow capacity, as the capacity rung sets them.
"""

from __future__ import annotations

import numpy as np

from integration.synthetic_load import LoadShape, load_series
from veloflux.forecast.outlook import outlook
from veloflux.forecast.recommend import recommend
from veloflux.forecast.select import fit
from veloflux.forecast.series import from_samples
from veloflux.sim.engine import simulate
from veloflux.sim.scenario import scenario_from
from veloflux.sim.strategies import CapacityOracle

TARGET = 0.7
MEAN_MS = 50.0
SMALL, BIG = ("small", 2), ("big", 4)  # (name, slots): 40 and 80 req/s at 50 ms
POOL = [SMALL] * 3 + [BIG] * 3


def capacity(slots: int) -> float:
    return slots * 1000.0 / MEAN_MS


def utilization(kept: list[tuple[str, int]], rate_rps: float) -> float:
    """The pool's busy share over a simulated 10 minutes at ``rate_rps``."""
    scenario = scenario_from(
        {
            "name": "peak",
            "seed": 5,
            "duration_s": 600,
            "warmup_s": 60,
            "interval_s": 5,
            "arrival": {"rate_rps": rate_rps},
            "service": {"distribution": "exponential", "mean_ms": MEAN_MS},
            "servers": [
                {"name": f"{name}{i}", "concurrency": slots} for i, (name, slots) in enumerate(kept)
            ],
        }
    )
    run = simulate(scenario, "roundrobin", CapacityOracle())
    slots = sum(run.concurrency)
    return float(sum(run.busy_seconds) / (slots * scenario.duration_s))


def test_the_recommended_pool_holds_the_peak_under_the_target_and_one_fewer_does_not() -> None:
    # A load whose forecast peak (about 170 req/s at q90) is tight for the pool.
    times, rates = load_series(LoadShape(days=8, seed=9, base_rps=70.0))
    series = from_samples(times, rates, "app", 60.0)
    forecast = outlook(series, fit(series, (15, 60, 1440)))
    peak = forecast.peak_upper
    assert float(np.nanmax(rates)) < peak  # the bound is above anything seen
    capacities = {f"{name}{i}": capacity(slots) for i, (name, slots) in enumerate(POOL)}
    rec = recommend("app", peak, forecast.peak_at, capacities, TARGET)
    assert rec.servers is not None
    assert 2 <= rec.servers <= len(POOL)
    weakest_first = sorted(POOL, key=lambda server: server[1])
    kept = weakest_first[: rec.servers]
    assert utilization(kept, peak) <= TARGET
    assert utilization(kept[:-1], peak) > TARGET
