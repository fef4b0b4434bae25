"""A pool's load as a regular series: requests per second, one value per step.

Forecasts need a grid: "the same minute last week" is an index, not a search. The
journal's intervals (10 s by default) are summed into steps (60 s by default) as
requests over seconds; a step the journal did not cover is NaN, never 0, so a gap
in recording is not read as a quiet hour. Prometheus answers on a grid already
(a range query of the pool's request rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from veloflux.history.frames import instants

DEFAULT_STEP_SECONDS = 60.0


@dataclass(frozen=True)
class PoolSeries:
    """``values[i]``: the pool's mean requests/s over ``[start + i*step, start + (i+1)*step)``
    (epoch seconds); NaN where nothing was recorded."""

    pool: str
    start: float
    step: float
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end(self) -> float:
        """The end of the last step."""
        return self.start + self.step * len(self.values)

    def time_of(self, index: np.ndarray | int) -> np.ndarray:
        """The start time of step ``index`` (epoch seconds)."""
        return self.start + self.step * np.asarray(index, dtype=float)

    def known(self) -> int:
        return int(np.isfinite(self.values).sum())


def from_rates(rates: pd.DataFrame, step: float = DEFAULT_STEP_SECONDS) -> list[PoolSeries]:
    """Each pool's series from ``derive_rates`` output: requests of every server summed
    per step, over the seconds the recorded intervals covered in it."""
    if rates.empty:
        return []
    seconds = rates["interval_seconds"].to_numpy(dtype=float)
    # An interval belongs to the step its middle falls in (it ends at its row's time).
    middles = instants(rates).astype("int64") / 1e9 - seconds / 2
    requests = rates["requests"].to_numpy(dtype=float)
    usable = np.isfinite(requests) & np.isfinite(seconds) & (seconds > 0)
    frame = pd.DataFrame(
        {
            "pool": rates["pool"].to_numpy()[usable],
            "middle": middles[usable],
            "requests": requests[usable],
            "seconds": seconds[usable],
        }
    )
    out = []
    for pool, rows in frame.groupby("pool", sort=True):
        first = np.floor(rows["middle"].min() / step) * step
        index = np.floor((rows["middle"].to_numpy() - first) / step).astype(int)
        n = int(index.max()) + 1
        total = np.bincount(index, weights=rows["requests"].to_numpy(), minlength=n)
        # An instant's servers share one interval: its seconds count once per step.
        per_instant = rows.groupby("middle", sort=False)["seconds"].first()
        step_of_instant = np.floor((per_instant.index.to_numpy() - first) / step).astype(int)
        covered = np.bincount(step_of_instant, weights=per_instant.to_numpy(), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(covered > 0, total / covered, np.nan)
        out.append(PoolSeries(str(pool), float(first), step, values))
    return out


def from_samples(times: np.ndarray, values: np.ndarray, pool: str, step: float) -> PoolSeries:
    """A series from (time, value) points on a grid of ``step`` (a range query's answer);
    missing steps are NaN."""
    if len(times) == 0:
        return PoolSeries(pool, 0.0, step, np.zeros(0))
    first = float(np.min(times))
    index = np.rint((np.asarray(times, dtype=float) - first) / step).astype(int)
    out = np.full(int(index.max()) + 1, np.nan)
    out[index] = values
    return PoolSeries(pool, first, step, out)
