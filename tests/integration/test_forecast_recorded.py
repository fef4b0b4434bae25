"""A recorded history: five days of a pool's load, each hour played as a quarter of a
second through HAProxy and the demo backends while ``veloflux-agent run`` records it
(``integration.compressed_load``), read back from its journal and put on the story's
clock.

This checks the recording, not the forecast's accuracy: a held-out day of 24 hourly
points cannot tell a good forecast from a lucky one (in memory the smoother beat the
naive forecast on 28 of 40 such days), so the accuracy on a recorded history is
bench/bench_forecast_recorded.py's: four weeks recorded, a week held out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from integration.compressed_load import Compression, record, story_series
from integration.synthetic_load import LoadShape
from veloflux.forecast.select import fit

pytestmark = pytest.mark.integration

STORY = Compression(
    shape=LoadShape(days=5.0, weekend_factor=1.0, seed=7),
    story_step=3600.0,
    wall_step=0.25,
    mean_rps=400.0,
    tick=0.125,
)


def test_the_journal_holds_the_compressed_days_the_load_generator_played(
    tmp_path: Path,
) -> None:
    recording = record(tmp_path, STORY, seed=3)
    assert recording.load.errors == 0
    assert recording.load.dropped == 0
    series = story_series(recording, "app", STORY)
    assert len(series) == STORY.steps == 120
    assert series.step == 3600.0
    known = np.isfinite(series.values)
    assert known.mean() >= 0.95, f"{known.sum()} of {len(known)} steps recorded"

    # Every request the generator completed is in the journal's sums (the last
    # requests of the story complete just after it, hence the tolerance).
    recorded = float(np.nansum(series.values[known]) * STORY.wall_step)
    assert recorded == pytest.approx(recording.load.completed, rel=0.03)

    # Hour by hour the recording follows the curve that was played: Poisson arrivals
    # (about 100 a step) and ticks that do not line up with the steps blur it, the
    # curve's swing (0.6 of the mean, day to night) stands well out of that.
    offered = recording.offered[known]
    assert np.corrcoef(series.values[known], offered)[0, 1] >= 0.8
    assert float(np.median(series.values[known] / offered)) == pytest.approx(1.0, abs=0.1)

    # Forecast like any pool: five days give a daily season of 24 hourly steps.
    model = fit(series, (1, 24))
    assert model.grid.season == 24
    assert {h.method for h in model.horizons} <= {"naive", "smoother", "boosted"}
