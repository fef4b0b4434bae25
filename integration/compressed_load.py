"""Weeks of a pool's load played in minutes through the real stack, and read back from
the journal the daemon kept, for the forecasts to be judged on a recorded history.

A forecast needs days to weeks of history; a test or a benchmark has minutes. So the
story's clock runs faster than the wall's: each step of the story (an hour, say) is
played as a short stretch of wall time (half a second), at the request rate
``integration.synthetic_load`` gives that hour (the daily curve, weekends, trend,
wander), scaled to what the load generator and the demo backends carry. The daemon
records it as it records any traffic (HAProxy's counters into its journal, one row
per server per tick); the series summed from the journal (``Journal.pool_requests``,
``forecast.series.from_rates``) is put back on the story's clock, one recorded step
per story step, and forecast like any other pool's.

What the recording adds to an in-memory series is everything between the curve and
the journal: Poisson arrivals, the proxy's counters, ticks that do not line up with
the curve's steps, a late or missed tick.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from integration.haproxy_proc import stop_process
from integration.loadgen import LoadResult, run_load
from integration.stack import DemoServer, LocalStack
from integration.synthetic_load import LoadShape, load_series
from veloflux.forecast.series import PoolSeries, from_rates
from veloflux.history.journal import Journal
from veloflux.util.events import Events


@dataclass(frozen=True)
class Compression:
    """How the story's clock maps onto the wall's, and the load it plays."""

    shape: LoadShape = field(default_factory=LoadShape)
    story_step: float = 3600.0  # seconds of the story per step
    wall_step: float = 0.5  # seconds of wall time per step
    mean_rps: float = 200.0  # the curve's mean, as offered to the stack
    tick: float = 0.25  # the daemon's interval, wall seconds

    @property
    def steps(self) -> int:
        return int(self.shape.days * 86400 / self.story_step)

    @property
    def wall_seconds(self) -> float:
        return self.steps * self.wall_step

    def rates(self) -> np.ndarray:
        """Requests/s to offer in each step (wall time)."""
        _, rates = load_series(replace(self.shape, step_seconds=self.story_step))
        scaled: np.ndarray = rates[: self.steps] * (self.mean_rps / float(np.mean(rates)))
        return scaled


def arrivals(rates: np.ndarray, wall_step: float, seed: int) -> list[float]:
    """Poisson arrivals (seconds from the start) at ``rates[i]`` during step ``i``:
    a piecewise-constant rate, drawn step by step (the process forgets, so cutting it
    at each step's end loses nothing)."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    for i, rate in enumerate(rates):
        count = rng.poisson(rate * wall_step)
        out.extend(np.sort(i * wall_step + rng.uniform(0.0, wall_step, count)).tolist())
    return out


@dataclass(frozen=True)
class Recording:
    journal: Path
    began: float  # epoch seconds (wall) of the story's first step, a multiple of wall_step
    offered: np.ndarray  # requests/s per step, as played
    load: LoadResult


def on_story_steps(recorded: np.ndarray, first: int, steps: int) -> np.ndarray:
    """``recorded`` (whose step ``first`` is the story's first) as the story's ``steps``
    steps: NaN where nothing was recorded. The journal may begin after the story (a
    busy machine: ``first`` < 0, the story's first steps NaN) or before it."""
    values = np.full(steps, np.nan)
    offset = max(-first, 0)
    kept = recorded[max(first, 0) : max(first, 0) + max(steps - offset, 0)]
    values[offset : offset + len(kept)] = kept
    return values


def story_series(recording: Recording, pool: str, compression: Compression) -> PoolSeries:
    """The pool's recorded requests/s per wall step from the story's first step, on
    the story's clock (a step nothing was recorded in is NaN)."""
    with Journal(recording.journal, Events()) as journal:
        rates = journal.pool_requests()
    (wall,) = [s for s in from_rates(rates, compression.wall_step) if s.pool == pool]
    # from_rates puts its steps on multiples of the step, as the story's first was.
    first = round((recording.began - wall.start) / compression.wall_step)
    values = on_story_steps(wall.values, first, compression.steps)
    # Requests per wall second stay requests per second: the story plays its load at
    # a fixed scale, so only the clock is changed.
    return PoolSeries(pool, compression.shape.start, compression.story_step, values)


def record(workdir: Path, compression: Compression, seed: int = 1) -> Recording:
    """Play ``compression``'s story through HAProxy and three demo backends while a
    ``veloflux-agent run`` daemon records it, and return where its journal is."""
    servers = tuple(DemoServer(name, weight=10, mean_ms=1.0) for name in ("a", "b", "c"))
    rates = compression.rates()
    offsets = arrivals(rates, compression.wall_step, seed)
    with LocalStack(workdir / "stack", servers) as stack:
        config = stack.write_agent_config(
            workdir / "veloflux.yaml", interval=f"{compression.tick * 1000:g}ms"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
        log = (workdir / "daemon.log").open("ab")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "veloflux", "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        try:
            # A few ticks in before the story, which starts on a step's boundary.
            step = compression.wall_step
            began = step * math.ceil((time.time() + 3 * compression.tick + 1.0) / step)
            time.sleep(max(0.0, began - time.time()))
            load = asyncio.run(
                run_load(
                    stack.url,
                    float(np.max(rates)),
                    compression.wall_seconds,
                    max_requests=len(offsets),
                    max_in_flight=256,
                    seed=seed,
                    offsets=offsets,
                )
            )
            time.sleep(2 * compression.tick)
        finally:
            stop_process(daemon)
            log.close()
    return Recording(stack.workdir / "history.sqlite", began, rates, load)
