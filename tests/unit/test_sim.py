"""The simulator: queueing theory reproduced, dispatcher semantics, scenario files.

The theory checks are the simulator's calibration: Poisson traffic split at random
over identical single-slot FCFS servers is a set of M/M/1 queues, whose mean time in
system is 1 / (1 - load) service times; a split proportional to speed over servers of
unequal speed at load 0.9 gives 10 n / sum(speeds) fastest-service times. Runs are
kept short (a few seconds each) with a fixed seed; the tolerance is the issue's 5%.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.sim_factories import sim_scenario
from veloflux.errors import ConfigError
from veloflux.sim.dispatchers import make_dispatcher
from veloflux.sim.engine import RunResult, Strategy, _arrivals, _service_times, simulate
from veloflux.sim.scenario import Scenario, load_scenario, scenario_from

SPEEDS = [0.15 + 0.1 * i for i in range(10)]  # 0.15, 0.25, ..., 1.05


EIGHT_SINGLE_SLOT = {
    "duration_s": 1200,
    "warmup_s": 100,
    "interval_s": 50,
    "servers": [{"name": "s", "count": 8, "concurrency": 1}],
}


def scenario(**fields: Any) -> Scenario:
    return sim_scenario(EIGHT_SINGLE_SLOT, **fields)


def mean_in_service_times(result: RunResult, warmup: float, service: float) -> float:
    kept = result.arrival >= warmup
    return float(np.mean(result.latency[kept])) / service


class Proportional(Strategy):
    """Weights proportional to speed, set once."""

    name = "proportional"

    def start(self, scenario: Scenario, names: Any, dispatcher: str) -> list[int]:
        return [round(g.speed * 100) for _, g in scenario.expanded()]


@pytest.mark.parametrize(("load", "expected"), [(0.7, 1 / 0.3), (0.9, 10.0)])
def test_random_split_over_identical_servers_is_mm1(load: float, expected: float) -> None:
    result = simulate(scenario(arrival={"utilization": load}), "random(1)", Strategy())
    assert mean_in_service_times(result, 100, 0.010) == pytest.approx(expected, rel=0.05)


def test_weighted_random_split_over_unequal_servers_matches_theory() -> None:
    servers = [{"name": f"s{i}", "speed": round(v, 2)} for i, v in enumerate(SPEEDS)]
    result = simulate(
        scenario(arrival={"utilization": 0.9}, servers=servers), "random(1)", Proportional()
    )
    expected = 10 * len(SPEEDS) / sum(SPEEDS)  # 16.7 service times of the fastest
    assert expected == pytest.approx(16.67, abs=0.01)
    assert mean_in_service_times(result, 100, 0.010) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(
    ("discipline", "expected"),
    [
        ("ps", 1 / 0.3),  # M/G/1-PS: 1 / (1 - load), whatever the service distribution
        ("fcfs", 1 + 0.7 / (2 * 0.3)),  # M/D/1 (Pollaczek-Khinchine): 2.17
    ],
)
def test_processor_sharing_is_insensitive_to_the_service_distribution(
    discipline: str, expected: float
) -> None:
    """Constant service tells the two apart: FCFS queues behind equal jobs, PS does not
    profit from their regularity."""
    servers = [{"name": "s", "count": 8, "concurrency": 1, "discipline": discipline}]
    result = simulate(
        scenario(servers=servers, service={"distribution": "constant", "mean_ms": 10}),
        "random(1)",
        Strategy(),
    )
    assert mean_in_service_times(result, 100, 0.010) == pytest.approx(expected, rel=0.05)


def test_under_processor_sharing_time_in_system_is_proportional_to_demand() -> None:
    """M/G/1-PS: E[T | S = x] = x / (1 - load), for short and long requests alike, with a
    heavy-tailed demand (under FCFS a short request waits behind the long ones)."""
    service = {"distribution": "pareto", "mean_ms": 10, "scv": 4}
    servers = [{"name": "s", "count": 8, "concurrency": 1, "discipline": "ps"}]
    shape = scenario(servers=servers, service=service)
    result = simulate(shape, "random(1)", Strategy())
    rng = np.random.default_rng(shape.seed)  # the engine's draws, in its order
    demand = _service_times(shape, rng, len(_arrivals(shape, rng)))
    kept = (result.arrival >= 100) & (result.arrival < shape.duration_s - 60)
    short = kept & (demand < np.median(demand))
    for subset in (short, kept & ~short):
        slowdown = float(np.mean(result.latency[subset]) / np.mean(demand[subset]))
        assert slowdown == pytest.approx(1 / 0.3, rel=0.05)


def test_a_slow_down_reaches_the_requests_a_sharing_server_is_already_serving() -> None:
    """A request 100 ms long that starts ``d`` before a slow-down to a tenth of the speed
    has done ``d`` of its work by then and does the rest ten times slower."""
    events = [{"at_s": 30, "until_s": 60, "speed": 0.1}]
    servers = [{"name": "s", "count": 2, "concurrency": 2, "discipline": "ps", "events": events}]
    constant = {"distribution": "constant", "mean_ms": 100}
    run = simulate(
        scenario(duration_s=90, warmup_s=0, servers=servers, service=constant),
        "roundrobin",
        Strategy(),
    )
    started = np.flatnonzero((run.arrival > 29.9) & (run.arrival < 30))
    assert len(started) >= 1
    for i in started.tolist():
        before = 30 - float(run.arrival[i])
        assert run.latency[i] >= before + (0.1 - before) / 0.1 - 1e-9


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    short = scenario(duration_s=60, warmup_s=0)
    a, b = simulate(short, "leastconn", Strategy()), simulate(short, "leastconn", Strategy())
    np.testing.assert_array_equal(a.latency, b.latency)
    np.testing.assert_array_equal(a.server, b.server)
    c = simulate(short, "leastconn", Strategy(), seed=2)
    assert len(c.latency) != len(a.latency) or not np.array_equal(c.latency, a.latency)


def picks(name: str, weights: list[int], count: int, active: list[int] | None = None) -> list[int]:
    loads = active or [0] * len(weights)
    chooser = make_dispatcher(name, loads, random.Random(3))
    chooser.set_weights(weights)
    return [chooser.choose() for _ in range(count)]


def test_roundrobin_spreads_a_4_1_1_cycle() -> None:
    cycle = picks("roundrobin", [4, 1, 1], 6)
    assert cycle == [0, 0, 1, 2, 0, 0]  # each server's picks spread over the cycle
    assert picks("roundrobin", [4, 1, 1], 60) == cycle * 10
    assert picks("roundrobin", [1, 2, 3], 6) == [2, 1, 0, 2, 1, 2]


def test_roundrobin_skips_weight_zero_and_keeps_turning_after_a_change() -> None:
    assert set(picks("roundrobin", [3, 0, 1], 40)) == {0, 2}
    active = [0, 0]
    chooser = make_dispatcher("roundrobin", active, random.Random(1))
    chooser.set_weights([1, 1])
    first = [chooser.choose() for _ in range(3)]
    chooser.set_weights([1, 3])
    later = Counter(chooser.choose() for _ in range(40))
    assert first == [0, 1, 0]
    assert later == {0: 10, 1: 30}


def test_leastconn_takes_the_lowest_load_per_weight_and_turns_among_ties() -> None:
    assert picks("leastconn", [1, 1, 1], 6) == [1, 2, 0, 1, 2, 0]  # ties: round robin
    # (active + 1) / weight: 3 requests on a weight-4 server beat 1 on a weight-1 one.
    assert picks("leastconn", [4, 1], 1, active=[3, 1]) == [0]
    assert picks("leastconn", [4, 1], 1, active=[8, 1]) == [1]


def test_weighted_random_draws_in_proportion_to_weights() -> None:
    counts = Counter(picks("random(1)", [3, 1], 20_000))
    assert counts[0] / 20_000 == pytest.approx(0.75, abs=0.02)
    # random(2): of two draws the one with fewer active requests wins.
    assert Counter(picks("random(2)", [1, 1], 2_000, active=[5, 0]))[1] > 1_400


def test_envoy_least_request_and_jsq_prefer_the_idle_server() -> None:
    assert Counter(picks("least_request", [1, 1], 2_000, active=[4, 0]))[1] > 1_400
    assert set(picks("jsq", [1, 1, 1], 50, active=[2, 0, 2])) == {1}
    # Unequal weights: weight / (active + 1) decides, smoothly.
    counts = Counter(picks("least_request", [2, 1], 3_000))
    assert counts[0] / 3_000 == pytest.approx(2 / 3, abs=0.01)


def test_peak_ewma_moves_traffic_off_a_slow_server() -> None:
    active = [0, 0]
    chooser = make_dispatcher("p2c_peak_ewma", active, random.Random(5))
    chooser.completed(0, 0.5, 1.0)  # a slow answer: the estimate jumps to it
    chooser.completed(1, 0.01, 1.0)
    assert Counter(chooser.choose() for _ in range(400))[1] > 280


def test_an_unknown_dispatcher_is_named() -> None:
    with pytest.raises(ValueError, match="unknown dispatcher 'fastest'"):
        make_dispatcher("fastest", [0], random.Random(1))


def test_a_slow_window_and_fast_errors_happen_when_the_scenario_says() -> None:
    servers = [
        {"name": "a", "concurrency": 2},
        {
            "name": "b",
            "concurrency": 2,
            "events": [
                {"at_s": 100, "until_s": 200, "speed": 0.1},
                {"at_s": 300, "until_s": 400, "error_rate": 0.5, "error_latency_ms": 1},
            ],
        },
    ]
    result = simulate(
        scenario(duration_s=500, warmup_s=0, servers=servers, arrival={"utilization": 0.3}),
        "roundrobin",
        Strategy(),
    )
    on_b = result.server == 1
    slow = on_b & (result.arrival > 120) & (result.arrival < 190)
    calm = on_b & (result.arrival > 20) & (result.arrival < 90)
    assert np.median(result.latency[slow]) > 5 * np.median(result.latency[calm])
    failing = on_b & (result.arrival > 300) & (result.arrival < 400)
    assert result.error[failing].mean() == pytest.approx(0.5, abs=0.05)
    assert not result.error[~failing].any()


def test_a_down_server_refuses_until_health_checks_take_it_out() -> None:
    servers = [
        {"name": "a", "concurrency": 4},
        {"name": "b", "concurrency": 4, "events": [{"at_s": 100, "until_s": 200, "down": True}]},
    ]
    result = simulate(
        scenario(duration_s=300, warmup_s=0, servers=servers, arrival={"utilization": 0.3}),
        "roundrobin",
        Strategy(),
    )
    refused = result.error & (result.server == 1)
    assert refused.any()
    times = result.arrival[refused]
    assert times.min() >= 100
    assert times.max() < 100 + 6 + 0.1  # 3 failed checks 2 s apart, then out of rotation
    back = (result.server == 1) & (result.arrival > 205)
    assert back.any()
    assert not result.error[back].any()


# --- scenario files -------------------------------------------------------------------------

EXAMPLE = """\
name: slow-server
seed: 1
duration_s: 900
warmup_s: 300
interval_s: 5
deadline_ms: 1000
arrival: {process: poisson, utilization: 0.7}
service: {distribution: exponential, mean_ms: 20}
servers:
  - {name: s, count: 8, concurrency: 4, speed: 1.0}
  - name: s9
    concurrency: 4
    speed: 1.0
    events:
      - {at_s: 500, until_s: 700, speed: 0.1}
      - {at_s: 750, until_s: 800, error_rate: 0.3, error_latency_ms: 1}
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(EXAMPLE)
    loaded = load_scenario(path)
    assert [n for n, _ in loaded.expanded()] == [f"s{i}" for i in range(1, 10)]
    assert loaded.capacity_rps() == pytest.approx(9 * 4 * 50)


def test_every_scenario_problem_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        scenario_from(
            {
                "name": "bad",
                "duration_s": 100,
                "warmup_s": 200,
                "arrival": {"utilization": 0.5, "rate_rps": 10},
                "service": {"distribution": "exponential", "mean_ms": 10, "scv": 4},
                "servers": [{"name": "a", "events": [{"at_s": 5, "until_s": 1, "speed": 2}]}],
                "surprise": 1,
            }
        )
    paths = {p.path: p.message for p in caught.value.problems}
    assert "one of them" in paths["arrival"]
    assert "scv 1" in paths["service"]
    assert "until_s must be after at_s" in paths["servers.0.events.0"]
    assert "surprise" in paths


def test_drift_switches_speed_at_random_but_reproducibly() -> None:
    servers = [{"name": "a", "concurrency": 2, "drift": {"speed": 0.1, "period_s": 20}}]
    sc = scenario(duration_s=400, warmup_s=0, servers=servers, arrival={"utilization": 0.05})
    one, two = simulate(sc, "roundrobin", Strategy()), simulate(sc, "roundrobin", Strategy())
    np.testing.assert_array_equal(one.latency, two.latency)
    # Median latency per 10 s window: some windows slow (0.1 speed), some at full speed.
    windows = [
        np.median(one.latency[(one.arrival >= t) & (one.arrival < t + 10)])
        for t in range(0, 400, 10)
    ]
    assert min(windows) < 0.02 < 0.05 < max(windows)
