"""Benchmark: forecast accuracy per horizon against the baselines, and the time to
refresh the forecasts of 100 pools from a week of history.

Reproduce with ``.venv/bin/python bench/bench_forecast.py --write`` from the repository
root (about 5 minutes on 2 cores). ``--quick`` shrinks it for a smoke run and refuses
``--write``; ``--out`` keeps the JSON result.

1. Accuracy: five synthetic pools (``integration.synthetic_load``: a two-bump daily
   curve, quieter weekends, trend, wander and noise, each with other settings: more
   noise, a steeper trend, an earlier peak), four weeks at one minute. Each is fitted
   on its first three weeks (method chosen, intervals measured) and forecast at every
   minute of the fourth (``forecast.select.holdout``). Per horizon: the chosen
   method's MAPE, pinball loss of the 90% bound and 80% coverage, against the seasonal
   naive forecast and the other methods, averaged over the pools, and how often each
   method was chosen.
2. Calibration: 60 pools with every setting drawn at random over wide ranges (noise
   3-12%, wander, trend -5% to +12% a week, peak hour, weekend, amplitude), the same
   holdout: per horizon, how many the chosen forecast beats the naive one on, and how
   many have their 80% coverage in 0.75-0.85. Five pools say little about an
   interval; sixty show its spread.
3. Refresh: a journal of 100 pools of two servers each, a week at a one-minute
   interval (2 M samples); ``forecast_pools`` as the daemon's refresh runs it (the
   requests summed in SQLite, the capacity rung replayed, every pool fitted and
   forecast at 15 min, 1 h and 1 day), timed end to end three times.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_main, median_p95, table_section, yes

MARK_BEGIN, MARK_END = "<!-- bench:forecast -->", "<!-- /bench:forecast -->"
HEADING = "## Forecasts: accuracy per horizon, and refreshing 100 pools"
HORIZONS = {"15m": 15, "1h": 60, "1d": 1440}
SHAPES: tuple[dict[str, float], ...] = (
    {"seed": 31},
    {"seed": 32, "noise": 0.12, "wander": 0.05},
    {"seed": 33, "trend_per_week": 0.1},
    {"seed": 34, "peak_hour": 13.0, "weekend_factor": 0.8},
    {"seed": 35, "daily_amplitude": 0.9, "noise": 0.08},
)


@dataclass(frozen=True)
class Sizes:
    shapes: int
    pools: int
    days: float
    refreshes: int
    random_pools: int  # the calibration study's


FULL = Sizes(5, 100, 7.0, 3, 60)
QUICK = Sizes(2, 10, 4.0, 1, 4)
CALIBRATION_SEED = 700


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def accuracy(shapes: int) -> dict[str, Any]:
    from integration.synthetic_load import LoadShape, load_series
    from veloflux.forecast.select import holdout
    from veloflux.forecast.series import from_samples

    per_horizon: dict[str, list[dict[str, Any]]] = {h: [] for h in HORIZONS}
    for shape in SHAPES[:shapes]:
        times, rates = load_series(LoadShape(days=28.25, **shape))  # type: ignore[arg-type]
        result = holdout(from_samples(times, rates, "app", 60.0), tuple(HORIZONS.values()), 10080)
        for name, steps in HORIZONS.items():
            per_horizon[name].append(result["horizons"][str(steps)])
    out: dict[str, Any] = {}
    for name, runs in per_horizon.items():
        methods = sorted({m for r in runs for m in r["figures"]})
        out[name] = {
            "chosen": [r["chosen"] for r in runs],
            "chosen_figures": {
                k: round(mean(r["figures"][r["chosen"]][k] for r in runs), 4)
                for k in ("mape", "pinball_q90", "coverage_80")
            },
            "coverage_each": [r["figures"][r["chosen"]]["coverage_80"] for r in runs],
            "beats_naive_each": [
                r["figures"][r["chosen"]]["mape"] < r["figures"]["naive"]["mape"]
                and r["figures"][r["chosen"]]["pinball_q90"] < r["figures"]["naive"]["pinball_q90"]
                for r in runs
            ],
            "methods": {
                m: {
                    k: round(mean(r["figures"][m][k] for r in runs if m in r["figures"]), 4)
                    for k in ("mape", "pinball_q90", "coverage_80")
                }
                for m in methods
            },
        }
    return out


def random_shapes(count: int, seed: int) -> list[dict[str, float]]:
    """``count`` pools drawn over wide ranges of every setting of the generator, so that
    the figures speak of pools nobody chose (the seed is the bench's, fixed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {
            "seed": seed + i,
            "noise": float(rng.uniform(0.03, 0.12)),
            "wander": float(rng.uniform(0.01, 0.05)),
            "trend_per_week": float(rng.uniform(-0.05, 0.12)),
            "peak_hour": float(rng.uniform(12.0, 21.0)),
            "weekend_factor": float(rng.uniform(0.5, 1.0)),
            "daily_amplitude": float(rng.uniform(0.3, 0.9)),
        }
        for i in range(count)
    ]


def calibration(count: int) -> dict[str, Any]:
    """The held-out week of ``count`` random pools: per horizon, how many the chosen
    forecast beat the naive one on (MAPE and q90 pinball both), and the spread of the
    80% interval's coverage."""
    import numpy as np

    from integration.synthetic_load import LoadShape, load_series
    from veloflux.forecast.select import holdout
    from veloflux.forecast.series import from_samples

    coverage: dict[str, list[float]] = {h: [] for h in HORIZONS}
    beats: dict[str, list[bool]] = {h: [] for h in HORIZONS}
    for shape in random_shapes(count, CALIBRATION_SEED):
        times, rates = load_series(LoadShape(days=28.25, **shape))  # type: ignore[arg-type]
        result = holdout(from_samples(times, rates, "app", 60.0), tuple(HORIZONS.values()), 10080)
        for name, steps in HORIZONS.items():
            one = result["horizons"][str(steps)]
            chosen, naive = one["figures"][one["chosen"]], one["figures"]["naive"]
            coverage[name].append(chosen["coverage_80"])
            beats[name].append(
                chosen["mape"] < naive["mape"] and chosen["pinball_q90"] < naive["pinball_q90"]
            )
    out: dict[str, Any] = {"pools": count, "seed": CALIBRATION_SEED}
    for name in HORIZONS:
        c = np.array(coverage[name])
        out[name] = {
            "coverage_mean": round(float(c.mean()), 3),
            "coverage_min": round(float(c.min()), 3),
            "coverage_max": round(float(c.max()), 3),
            "in_band": int(((c >= 0.75) & (c <= 0.85)).sum()),
            "beats_naive": int(sum(beats[name])),
        }
    return out


def refresh(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from integration.synthetic import SyntheticPool, synthetic_samples
    from veloflux.agent.forecasting import forecast_pools
    from veloflux.config.load import validate_config
    from veloflux.domain.observation import Observation, PoolInfo, ProxyIdentity
    from veloflux.history.journal import Journal
    from veloflux.util.events import Events

    steps = int(sizes.days * 1440)
    end = pd.Timestamp(datetime.now(UTC)).floor("min")
    times = end - pd.to_timedelta(np.arange(steps)[::-1] + 1, unit="min")
    rng = np.random.default_rng(3)
    pools = [f"pool{p:03d}" for p in range(sizes.pools)]
    base = rng.uniform(20, 200, sizes.pools)
    hours = (times.hour + times.minute / 60).to_numpy()
    daily = 1 + 0.4 * np.sin(2 * np.pi * (hours - 13) / 24)
    # One instant's rows: two servers per pool, the synthetic pool's other columns.
    one = synthetic_samples(SyntheticPool(servers=2, intervals=1))
    frame = pd.concat([one.assign(pool=p) for p in pools], ignore_index=True)
    proxy = ProxyIdentity("unix:///bench.sock", 1, 1_700_000_000.0, 1.0, "2.6", "admin")
    info = tuple(PoolInfo(p, "roundrobin", True) for p in pools)
    started = time.perf_counter()
    path = workdir / "history.sqlite"
    totals = np.zeros(2 * sizes.pools)
    with Journal(path, Events(), retention_seconds=30 * 86400) as journal:
        for i, when in enumerate(times):
            totals += rng.poisson(np.repeat(base * daily[i] * 60 / 2, 2))
            frame["requests_total"] = totals
            frame["sessions_total"] = totals
            frame["time"] = when
            journal.append(Observation.from_frame(when.to_pydatetime(), frame, info, proxy))
    written = time.perf_counter() - started
    config = validate_config(
        {
            "interval": "60s",
            "haproxy": {"socket": "unix:///nonexistent/admin.sock"},
            "ai": {"history_path": str(path), "model_dir": str(workdir / "models")},
        }
    )
    durations = []
    outlooks: list[Any] = []
    for _ in range(sizes.refreshes):
        began = time.perf_counter()
        outlooks = forecast_pools(config, Events(), now=lambda: end.to_pydatetime())
        durations.append(time.perf_counter() - began)
    return {
        "samples": steps * sizes.pools * 2,
        "journal_write_seconds": round(written, 1),
        "refresh_seconds": [round(d, 2) for d in durations],
        "refresh": median_p95([d * 1000 for d in durations]),
        "pools_forecast": sum(1 for o in outlooks if o.forecast is not None),
        "problems": sorted({o.problem for o in outlooks if o.problem})[:3],
    }


def _run(quick: bool, workdir: Path) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    _progress(f"accuracy on {sizes.shapes} synthetic pools")
    acc = accuracy(sizes.shapes)
    _progress(f"coverage over {sizes.random_pools} random pools")
    cal = calibration(sizes.random_pools)
    _progress(f"refresh of {sizes.pools} pools from {sizes.days:g} days")
    return {
        "sizes": sizes.__dict__,
        "accuracy": acc,
        "calibration": cal,
        "refresh": refresh(sizes, workdir),
    }


def _verdicts(r: dict[str, Any]) -> dict[str, bool]:
    acc = r["accuracy"]
    return {
        **{f"beats_naive_{h}": all(a["beats_naive_each"]) for h, a in acc.items()},
        **{
            f"coverage_{h}": all(0.75 <= c <= 0.85 for c in a["coverage_each"])
            for h, a in acc.items()
        },
    }


def _render(r: dict[str, Any]) -> str:
    acc, ref, v = r["accuracy"], r["refresh"], r["verdicts"]
    prose = [
        "What `bench/bench_forecast.py` measures: forecast accuracy on five synthetic pools "
        "(four weeks at one minute, each a different mix of daily curve, weekend, trend, "
        "wander and noise), fitted on three weeks and judged on every minute of the fourth, "
        "per horizon, against the seasonal naive forecast and the other methods (means over "
        "the pools; MAPE, the pinball loss of the 90% bound in req/s, the 80% interval's "
        "coverage). Then the daemon's refresh (`forecast_pools`) for 100 pools of two "
        "servers from a week of journal at one minute: the requests summed in SQLite, the "
        "capacity rung replayed, every pool fitted and forecast at 15 min, 1 h and 1 day.",
        "The coverage of one pool's one held-out week wanders by several points even for a "
        "well measured interval: a day-ahead interval measured on one half of a held-out "
        "week covers the other half in 0.74-0.88 over 40 such pools. So the calibration "
        "rows draw 60 pools at random (seeded) and count how many land in the band, "
        "rather than judging the interval on five.",
    ]
    rows = []
    for h, a in acc.items():
        chosen, naive = a["chosen_figures"], a["methods"]["naive"]
        others = "; ".join(f"{m} {f['mape']:.3f}" for m, f in a["methods"].items() if m != "naive")
        rows.append(
            (
                f"{h}: MAPE chosen; naive (others)",
                f"{chosen['mape']:.3f}; {naive['mape']:.3f} ({others}); chosen: "
                + ", ".join(a["chosen"]),
                "below the naive on every pool",
                yes(v[f"beats_naive_{h}"]),
            )
        )
        rows.append(
            (
                f"{h}: pinball q90 chosen; naive. 80% coverage (each pool)",
                f"{chosen['pinball_q90']:.2f}; {naive['pinball_q90']:.2f}. "
                + ", ".join(f"{c:.3f}" for c in a["coverage_each"]),
                "coverage 0.75-0.85 on every pool",
                yes(v[f"coverage_{h}"]),
            )
        )
    cal = r["calibration"]
    for h in HORIZONS:
        c = cal[h]
        rows.append(
            (
                f"{h}, {cal['pools']} random pools: beat the naive; 80% coverage in 0.75-0.85 "
                "(mean, min-max)",
                f"{c['beats_naive']} of {cal['pools']}; {c['in_band']} of {cal['pools']} "
                f"({c['coverage_mean']:.3f}, {c['coverage_min']:.3f}-{c['coverage_max']:.3f})",
                "(reported)",
                "",
            )
        )
    rows.append(
        (
            "refresh of 100 pools from a week (2 M samples): median [p95]",
            f"{ref['refresh']['median_ms'] / 1000:.1f} s [{ref['refresh']['p95_ms'] / 1000:.1f}]; "
            f"{ref['pools_forecast']} pools forecast",
            "(reported)",
            "",
        )
    )
    return table_section(HEADING, prose, r, rows, (MARK_BEGIN, MARK_END))


def main() -> None:
    bench_main(Path(__file__), _run, _verdicts, _render, HEADING, (MARK_BEGIN, MARK_END))


if __name__ == "__main__":
    main()
