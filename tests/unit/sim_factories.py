"""A scenario builder for the simulator's tests: Poisson load at 70% of capacity and
10 ms mean demands unless a test says otherwise; each test module states its run's
length and servers once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veloflux.sim.scenario import Scenario, scenario_from


def sim_scenario(defaults: Mapping[str, Any], **fields: Any) -> Scenario:
    """A validated scenario: the common base, then ``defaults``, then ``fields``."""
    base = {"name": "t", "arrival": {"utilization": 0.7}, "service": {"mean_ms": 10}}
    return scenario_from({**base, **defaults, **fields})
