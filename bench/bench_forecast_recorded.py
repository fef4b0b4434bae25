"""Benchmark: the forecasts on recorded histories, four weeks of load played through the
real stack with the story's clock compressed, a week held out.

Reproduce with ``.venv/bin/python bench/bench_forecast_recorded.py --write`` from the
repository root (about 25 minutes on 2 cores). ``--quick`` shrinks it for a smoke run
and refuses ``--write``; ``--out`` keeps the JSON result.

Each story (``integration.synthetic_load``: the two-bump daily curve, quieter
weekends, trend, wander and noise; two seeds) is four weeks and six hours of
15-minute steps, each played as a quarter of a second at 300 requests/s on average
through HAProxy and three demo backends while ``veloflux-agent run`` ticks every
eighth of a second and keeps its journal (``integration.compressed_load``). The
pool's series is summed from that journal, put back on the story's clock, fitted on
its first three weeks and judged on every step of the fourth
(``forecast.select.holdout``) at 15 min, 1 h and 1 day ahead against the seasonal
naive forecast.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_main, table_section, yes

MARK_BEGIN, MARK_END = "<!-- bench:forecast-recorded -->", "<!-- /bench:forecast-recorded -->"
HEADING = "## Forecasts on recorded histories: four weeks played through the real stack"
STORY_STEP = 900.0  # seconds of the story per step
HORIZONS = {"15m": 1, "1h": 4, "1d": 96}  # in story steps


@dataclass(frozen=True)
class Sizes:
    days: float
    wall_step: float  # wall seconds per story hour
    mean_rps: float
    seeds: tuple[int, ...]


FULL = Sizes(28.25, 0.25, 300.0, (7, 8))
QUICK = Sizes(4.5, 0.25, 300.0, (7,))


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def one_story(sizes: Sizes, seed: int, workdir: Path) -> dict[str, Any]:
    import numpy as np

    from integration.compressed_load import Compression, record, story_series
    from integration.synthetic_load import LoadShape
    from veloflux.forecast.select import holdout

    story = Compression(
        shape=LoadShape(days=sizes.days, seed=seed),
        story_step=STORY_STEP,
        wall_step=sizes.wall_step,
        mean_rps=sizes.mean_rps,
        tick=sizes.wall_step / 2,
    )
    _progress(f"story {seed}: {story.steps} steps in {story.wall_seconds:.0f} s")
    recording = record(workdir / f"story-{seed}", story, seed=seed)
    series = story_series(recording, "app", story)
    known = np.isfinite(series.values)
    day = round(86400 / STORY_STEP)
    span = 7 * day if sizes.days >= 28 else day
    result = holdout(series, tuple(HORIZONS.values()), span)
    return {
        "seed": seed,
        "load": recording.load.to_json(),
        "steps": story.steps,
        "steps_recorded": int(known.sum()),
        "requests_recorded": round(float(np.nansum(series.values) * story.wall_step)),
        "correlation_with_offered": round(
            float(np.corrcoef(series.values[known], recording.offered[known])[0, 1]), 3
        ),
        "season_steps": result["season_steps"],
        "horizons": {name: result["horizons"][str(steps)] for name, steps in HORIZONS.items()},
    }


def _run(quick: bool, workdir: Path) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    stories = [one_story(sizes, seed, workdir) for seed in sizes.seeds]
    return {"sizes": {**sizes.__dict__, "seeds": list(sizes.seeds)}, "stories": stories}


def _beats(h: dict[str, Any]) -> bool:
    chosen, naive = h["figures"][h["chosen"]], h["figures"]["naive"]
    return bool(chosen["mape"] < naive["mape"] and chosen["pinball_q90"] < naive["pinball_q90"])


def _covers(h: dict[str, Any]) -> bool:
    return bool(0.75 <= h["figures"][h["chosen"]]["coverage_80"] <= 0.85)


def _met(h: dict[str, Any]) -> bool:
    return _beats(h) and _covers(h)


def _verdicts(r: dict[str, Any]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for name in HORIZONS:
        runs = [story["horizons"][name] for story in r["stories"]]
        out[f"beats_naive_{name}"] = all(_beats(h) for h in runs)
        out[f"coverage_{name}"] = all(_covers(h) for h in runs)
    return out


def _render(r: dict[str, Any]) -> str:
    prose = [
        "What `bench/bench_forecast_recorded.py` measures: the forecasts on histories the "
        "real stack recorded. A story of four weeks and six hours in 15-minute steps (the "
        "two-bump daily curve, quieter weekends, trend, wander and noise of "
        "`integration.synthetic_load`) is played through HAProxy and three demo backends, "
        "each step as a quarter of a second at 300 requests/s on average (Poisson "
        "arrivals), while `veloflux-agent run` ticks every eighth of a second and keeps its "
        "journal (`integration.compressed_load`). The pool's series is summed from that "
        "journal, put back on the story's clock, fitted on the first three weeks and judged "
        "on every step of the fourth (672), at 15 min, 1 h and 1 day ahead, against the "
        "seasonal naive forecast (the same step last week). Two stories (seeds 7 and 8). "
        "A step holds about 75 requests, so it carries some 12% of Poisson noise on top of "
        "the story's own, and ticks that do not line up with the steps blur it further.",
    ]
    rows = []
    for story in r["stories"]:
        load = story["load"]
        rows.append(
            (
                f"story {story['seed']}: requests completed; in the journal; steps recorded; "
                "correlation with the curve played",
                f"{load['completed']:,}; {story['requests_recorded']:,}; "
                f"{story['steps_recorded']} of {story['steps']}; "
                f"{story['correlation_with_offered']:.3f}",
                "(reported)",
                "",
            )
        )
        for name in HORIZONS:
            h = story["horizons"][name]
            chosen, naive = h["figures"][h["chosen"]], h["figures"]["naive"]
            rows.append(
                (
                    f"story {story['seed']}, {name}: chosen; MAPE chosen vs naive; "
                    "q90 pinball; 80% coverage",
                    f"{h['chosen']}; {chosen['mape']:.3f} vs {naive['mape']:.3f}; "
                    f"{chosen['pinball_q90']:.2f} vs {naive['pinball_q90']:.2f}; "
                    f"{chosen['coverage_80']:.3f}",
                    "beats the naive on both; coverage 0.75-0.85",
                    yes(_met(h)),
                )
            )
    return table_section(HEADING, prose, r, rows, (MARK_BEGIN, MARK_END))


def main() -> None:
    bench_main(Path(__file__), _run, _verdicts, _render, HEADING, (MARK_BEGIN, MARK_END))


if __name__ == "__main__":
    main()
