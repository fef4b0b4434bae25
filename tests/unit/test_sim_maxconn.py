"""Servers with HAProxy's ``maxconn``: the proxy's queue in the simulator, and the busy
signal Little's law gives the capacity rung when no utilization feature exists.

The engine's checks compare against what must hold whatever the seed: one server
behind a proxy with ``maxconn`` equal to its slots serves every request at the same
moment as without it (the queue only moves into the proxy); a full server is never
given another request; the proxy's wait is the queue time HAProxy reports apart from
the response time. The rung's check is the issue's: capacity recovered within 10% on
servers of known capacity, from the proxy's counters and moving averages alone.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from tests.unit.sim_factories import sim_scenario
from veloflux.decide.capacity_rung import CapacityRung, RungSettings
from veloflux.decide.utilization import interval_work
from veloflux.domain.advice import PoolCapacity
from veloflux.domain.observation import Observation
from veloflux.sim.dispatchers import make_dispatcher
from veloflux.sim.engine import ServerStats, Strategy, simulate
from veloflux.sim.real_agent import POOL, SimSource
from veloflux.sim.scenario import Scenario, with_maxconn

RUN = {"duration_s": 300, "warmup_s": 60, "interval_s": 10}
# Requests per second each serves flat out: concurrency x speed x 100 (10 ms demands).
UNEQUAL = [
    {"name": "small", "concurrency": 2, "speed": 0.5},  # 100 req/s
    {"name": "mid", "concurrency": 4, "speed": 0.5},  # 200 req/s
    {"name": "big", "concurrency": 4, "speed": 1.0},  # 400 req/s
]
TRUE_CAPACITY = {"small": 100.0, "mid": 200.0, "big": 400.0}


def scenario(**fields: Any) -> Scenario:
    return sim_scenario(RUN, **fields)


class Watch(Strategy):
    """Static weights; each tick, what a proxy's ``show stat`` would show, read through
    ``SimSource``, fed to a capacity rung with no utilization column; and the most
    requests any server held at a tick."""

    def __init__(self, scenario: Scenario, weights: list[int] | None = None) -> None:
        groups = [g for _, g in scenario.expanded()]
        self.source = SimSource([n for n, _ in scenario.expanded()], "roundrobin", None,
                                [g.maxconn for g in groups])  # fmt: skip
        self.rung = CapacityRung(RungSettings(utilization_column=None))
        self.views: list[dict[str, PoolCapacity]] = []
        self.observations: list[Observation] = []
        self.most = [0] * len(groups)
        self._weights = weights

    def start(self, scenario: Scenario, names: Any, dispatcher: str) -> list[int]:
        return self._weights or super().start(scenario, names, dispatcher)

    def tick(self, now: float, stats: ServerStats) -> tuple[list[int] | None, str]:
        self.source.update(now, stats)
        observation = self.source.observe()
        self.observations.append(observation)
        self.views.append(self.rung.update(observation))
        self.most = [max(m, a) for m, a in zip(self.most, stats.active, strict=True)]
        return None, ""


# --- the engine ---------------------------------------------------------------------------


def test_one_server_with_maxconn_at_its_slots_serves_every_request_as_without_it() -> None:
    """Catches a proxy queue that loses, reorders or delays requests: with one server
    the wait only moves from the server's queue into the proxy's."""
    servers = [{"name": "only", "concurrency": 2}]
    alone = scenario(servers=servers, arrival={"utilization": 0.9})
    plain = simulate(alone, "roundrobin", Strategy())
    limited = simulate(with_maxconn(alone), "roundrobin", Strategy())
    assert len(plain.latency) > 10_000
    np.testing.assert_allclose(limited.latency, plain.latency, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dispatcher", ["roundrobin", "leastconn", "random", "least_request"])
def test_a_full_server_is_never_given_another_request(dispatcher: str) -> None:
    """Catches a dispatcher that ignores ``maxconn`` (the slow server, at 10x the weight
    it deserves, would pile up requests)."""
    servers = [
        {"name": "slow", "concurrency": 1, "speed": 0.2, "maxconn": 1},
        {"name": "fast", "concurrency": 4, "maxconn": 4},
    ]
    case = scenario(servers=servers, arrival={"utilization": 0.8})
    watch = Watch(case, weights=[100, 10])
    result = simulate(case, dispatcher, watch)
    assert watch.most[0] <= 1
    assert watch.most[1] <= 4
    assert watch.most[1] == 4  # the limit is reached, so the check is not idle
    plain = scenario(
        servers=[{**s, "maxconn": None} for s in servers], arrival={"utilization": 0.8}
    )
    unlimited = simulate(plain, dispatcher, Watch(plain, weights=[100, 10]))
    assert np.nanpercentile(result.latency, 99) < np.nanpercentile(unlimited.latency, 99)


def test_the_proxys_wait_is_queue_time_and_the_rest_response_time() -> None:
    """Catches the proxy's wait reported as the server's response time (it would make a
    busy pool's servers look slow, and Little's law count queued requests as busy)."""
    servers = [{"name": "s", "count": 2, "concurrency": 1, "maxconn": 1}]
    case = scenario(
        servers=servers,
        arrival={"utilization": 0.9},
        service={"mean_ms": 10, "distribution": "constant"},
    )
    watch = Watch(case)
    simulate(case, "roundrobin", watch)
    last = watch.observations[-1].rows
    for row in last:
        assert row.max_sessions == 1.0
        assert row.response_time == pytest.approx(0.010, abs=0.0011)  # whole ms, rounded up
        assert row.queue_time > 0.005  # at 90% load, two single-slot servers queue
        assert row.total_time == pytest.approx(row.response_time + row.queue_time, abs=0.002)


def test_choose_open_skips_full_servers_and_says_when_all_are_full() -> None:
    """Catches a pick that lands on a full server, or a request dropped when all are."""
    active = [0, 0, 0]
    for name in ("roundrobin", "leastconn", "random", "least_request"):
        chooser = make_dispatcher(name, active, random.Random(1))
        chooser.set_weights([100, 100, 1])
        assert {chooser.choose_open([True, False, True]) for _ in range(20)} == {1}
        assert chooser.choose_open([True, True, True]) is None


# --- Little's law on the capacity rung -----------------------------------------------------


@pytest.mark.parametrize("load", [0.5, 0.8])
def test_capacity_from_maxconn_and_response_time_is_within_ten_percent(load: float) -> None:
    """Catches a wrong busy share from the proxy's figures (requests x Tr / maxconn):
    capacity off by the proxy's wait, by the moving average, or by the limit."""
    case = with_maxconn(scenario(servers=UNEQUAL, arrival={"utilization": load}))
    watch = Watch(case)
    simulate(case, "leastconn", watch)
    servers = watch.views[-1][POOL].servers
    for name, capacity in TRUE_CAPACITY.items():
        assert servers[name].capacity == pytest.approx(capacity, rel=0.10), name
        assert servers[name].confidence > 0.5


def test_without_maxconn_or_utilization_the_rung_has_nothing_to_estimate() -> None:
    """Catches a busy share invented from response times alone (without a session limit
    the proxy does not know how many requests a server can serve at once)."""
    case = scenario(servers=UNEQUAL)
    watch = Watch(case)
    simulate(case, "leastconn", watch)
    assert all(view == {} for view in watch.views)
    pair = interval_work(watch.observations[-2], watch.observations[-1], None)
    assert pair
    assert all(work.busy_seconds is None for work in pair.values())
