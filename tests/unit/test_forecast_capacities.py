"""The capacities a recommendation is sized with, replayed from the journal: with two
proxies in one config each appends its own observations, and each pool must still get
its servers and their estimates (a rung replaying both proxies' observations in turn
would see every pool come and go, and the last observation holds one proxy only)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pandas as pd

from integration.synthetic import SyntheticPool
from tests.unit.learning_factories import synthetic_observation, synthetic_raw
from veloflux.agent.forecasting import _capacities
from veloflux.config.load import validate_config
from veloflux.history.journal import Journal
from veloflux.util.events import Events


def pool_samples(pool: str, offset_seconds: float) -> pd.DataFrame:
    """Twenty minutes of a two-server pool at 10 s, each server capped at 8 sessions
    (so the rung has a busy signal: Little's law)."""
    spec = SyntheticPool(servers=2, intervals=120, interval_seconds=10.0, seed=4, pool=pool)
    raw = synthetic_raw(spec)
    raw["max_sessions"] = 8.0
    raw["time"] = raw["time"] + pd.Timedelta(seconds=offset_seconds)
    return raw


def test_each_proxys_pool_is_sized_from_its_own_observations(tmp_path: Path) -> None:
    config = validate_config(
        {
            "interval": "10s",
            "haproxy": {"socket": "unix:///nonexistent.sock", "backends": ["app"]},
            "ai": {"history_path": str(tmp_path / "history.sqlite")},
        }
    )
    # HAProxy's pool and another proxy's, observed half a second apart at every tick.
    raw = pd.concat([pool_samples("app", 0.0), pool_samples("edge", 0.5)])
    with Journal(config.ai.history_path, Events(), retention_seconds=1e9) as journal:
        for _, frame in raw.groupby("time", sort=True):
            journal.append(
                synthetic_observation(frame, frame["time"].iloc[0], frame["pool"].iloc[0])
            )
        end = raw["time"].max().to_pydatetime() + timedelta(seconds=1)
        capacities = _capacities(config, journal, end)
    assert set(capacities) == {"app", "edge"}
    for pool, servers in capacities.items():
        assert set(servers) == {"s0", "s1"}, pool
        assert all(math.isfinite(c) and c > 0 for c in servers.values()), (pool, servers)
