"""The capacity rung rebuilt from the journal: a fresh agent (a restarted daemon, a
one-shot dry-run) plans on the capacity rung at once when the journal holds enough
recent intervals with the utilization feature, and warms up from nothing without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_fleet import RecordingSink, StubSource
from veloflux.agent.tick import Agent
from veloflux.config.schema import Config
from veloflux.domain.observation import Observation
from veloflux.history.journal import Journal
from veloflux.history.replay import replay
from veloflux.sim.engine import ServerStats
from veloflux.sim.real_agent import SimSource, agent_config
from veloflux.sim.scenario import scenario_from
from veloflux.util.events import Events

CAPACITY = (50.0, 100.0, 200.0)  # requests per busy second, per server
NAMES = ("small", "mid", "big")
INTERVAL = 5.0


def readings(count: int, seed: int = 3) -> list[Observation]:
    """``count`` observations of three servers of known capacity, each at 40% busy."""
    rng = np.random.default_rng(seed)
    source = SimSource(NAMES, "roundrobin", concurrency=[1, 1, 1])
    done, busy = [0, 0, 0], [0.0, 0.0, 0.0]
    out = []
    for k in range(1, count + 1):
        for i, capacity in enumerate(CAPACITY):
            busy_now = 0.4 * INTERVAL
            busy[i] += busy_now
            done[i] += int(rng.poisson(capacity * busy_now))
        stats = ServerStats(
            list(done), [0] * 3, [0] * 3, [1] * 3, [0] * 3, list(busy), [[]] * 3, [True] * 3
        )
        source.update(k * INTERVAL, stats)
        out.append(source.observe())
    return out


@pytest.fixture
def config(tmp_path: Path) -> Config:
    scenario = scenario_from(
        {
            "name": "replay",
            "duration_s": 600,
            "interval_s": INTERVAL,
            "arrival": {"utilization": 0.4},
            "service": {"mean_ms": 10},
            "servers": [{"name": n} for n in NAMES],
        }
    )
    return agent_config(scenario, tmp_path)


@pytest.fixture
def journal(config: Config) -> Iterator[Journal]:
    with Journal(config.ai.history_path, Events()) as opened:
        yield opened


def fresh_agent(config: Config, now: Observation, journal: Journal | None) -> Agent:
    return Agent(
        config, StubSource(now), RecordingSink(), Events(), journal=journal, log_summary=False
    )


def test_replay_gives_back_one_observation_per_instant_with_the_feature(journal: Journal) -> None:
    """Catches lost instants, rows, counters or the utilization column on the way back."""
    recorded = readings(4)
    for reading in recorded:
        journal.append(reading)
    back = list(replay(journal.read()))
    assert [o.taken_at for o in back] == [o.taken_at for o in recorded]

    def totals(o: Observation) -> dict[str, float]:
        return {r.server: r.requests_total for r in o.rows}

    assert totals(back[-1]) == totals(recorded[-1])
    assert back[-1].external is not None
    assert back[-1].external.columns == ("prom_utilization",)


def test_a_fresh_agent_plans_on_the_capacity_rung_from_the_journal(
    config: Config, journal: Journal
) -> None:
    """Catches a replay that is skipped, or that feeds the rung nothing it can use."""
    recorded = readings(12)
    for reading in recorded[:-1]:
        journal.append(reading)
    plan = fresh_agent(config, recorded[-1], journal).tick(write=False).plan
    (pool,) = plan.pools
    assert pool.mode == "capacity"
    weights = {s.server: s.planned_weight or 0 for s in pool.servers}
    # Damped and step-limited from equal weights, but already ordered by capacity.
    assert weights["small"] < weights["mid"] < weights["big"]


def test_without_a_journal_a_fresh_agent_warms_up_first(config: Config) -> None:
    """The other side: one observation alone is no interval, so no capacity yet."""
    plan = fresh_agent(config, readings(12)[-1], None).tick(write=False).plan
    assert plan.pools[0].mode == "fallback"
