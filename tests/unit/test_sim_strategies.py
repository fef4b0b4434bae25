"""Weight strategies in the simulator, the figures a run reports, and ``simulate``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.sim_factories import sim_scenario
from veloflux.sim.engine import RunResult, ServerStats, scaled, simulate
from veloflux.sim.real_agent import SimSource
from veloflux.sim.report import FIGURES, figures, interval
from veloflux.sim.run import make_strategy, run_cell
from veloflux.sim.scenario import Scenario
from veloflux.sim.strategies import CapacityOracle, Heuristic

UNEQUAL = [
    {"name": "fast", "concurrency": 2, "speed": 1.0},
    {"name": "slow", "concurrency": 2, "speed": 0.25},
]


def scenario(**fields: Any) -> Scenario:
    return sim_scenario(
        {"duration_s": 300, "warmup_s": 60, "interval_s": 5, "servers": UNEQUAL}, **fields
    )


def test_scaled_weights_keep_proportions_and_never_reach_zero() -> None:
    assert scaled([2.0, 1.0, 0.001]) == [100, 50, 1]
    assert scaled([0.0, 0.0]) == [100, 100]


def test_the_oracle_weights_by_true_capacity() -> None:
    assert CapacityOracle().start(scenario(), ["fast", "slow"], "roundrobin") == [100, 25]


def test_the_heuristic_learns_the_capacity_split_from_what_servers_report() -> None:
    result = simulate(scenario(), "roundrobin", Heuristic())
    late = [t.weights for t in result.ticks if t.time > 120]
    ratio = np.median([w[1] / w[0] for w in late])
    assert ratio == pytest.approx(0.25, abs=0.08)  # qps / utilization = capacity


def test_the_heuristic_penalises_errors() -> None:
    erring = [
        {"name": "a", "concurrency": 2},
        {
            "name": "b",
            "concurrency": 2,
            "events": [{"at_s": 0, "until_s": 300, "error_rate": 0.5}],
        },
    ]
    result = simulate(scenario(servers=erring), "roundrobin", Heuristic())
    weights = result.ticks[-1].weights
    # Half its answers are fast errors: qps / (utilization + eps / qps) puts it below
    # (with gRPC's default penalty of 1, mildly); without errors the two are equal.
    assert weights[1] < 0.85 * weights[0]
    healthy = [erring[0], {"name": "b", "concurrency": 2}]
    calm = simulate(scenario(servers=healthy), "roundrobin", Heuristic())
    assert calm.ticks[-1].weights[1] > 0.9 * calm.ticks[-1].weights[0]


def test_figures_count_timeouts_at_the_deadline_and_errors_apart() -> None:
    sc = scenario(duration_s=20, warmup_s=0, deadline_ms=100)
    run = RunResult(
        arrival=np.array([1.0, 2.0, 3.0, 4.0, 19.95]),
        latency=np.array([0.01, 0.5, math.nan, 0.001, 0.01]),
        error=np.array([False, False, False, True, False]),
        server=np.array([0, 1, 0, 1, 0]),
        ticks=(),
        names=("fast", "slow"),
        capacity=(200.0, 50.0),
        concurrency=(2, 2),
        busy_seconds=(4.0, 1.0),
        requests_simulated=5,
    )
    got = figures(run, sc, [0.0, 0.0])
    assert got["timeout_rate"] == 0.5  # slow and unfinished, of the 4 counted
    assert got["error_rate"] == 0.25
    assert got["p999_ms"] == pytest.approx(100.0)  # capped at the deadline
    assert got["throughput_rps"] == pytest.approx(1 / 19.9)
    # utilization 4/(2*20)=0.1 and 1/(2*20)=0.025
    assert got["max_over_mean_utilization"] == pytest.approx(0.1 / 0.0625)


def test_intervals_over_seeds() -> None:
    assert interval([1.0]) == {"mean": 1.0, "ci95": [1.0, 1.0]}
    assert interval([math.nan, 2.0]) == {"mean": 2.0, "ci95": [2.0, 2.0]}
    assert interval([math.nan]) == {"mean": None, "ci95": [None, None]}
    got = interval([1.0, 2.0, 3.0])
    assert got["mean"] == 2.0
    assert got["ci95"][0] == pytest.approx(2 - 2.4841, abs=1e-3)  # t(0.975, 2) * 1 / sqrt(3)


def test_the_source_reports_haproxys_moving_average_in_whole_milliseconds() -> None:
    source = SimSource(["a"], "roundrobin")
    stats = ServerStats([3], [0], [0], [2], [0], [0.0], [[0.0101, 0.0203, 0.0305]], [True])
    source.update(5.0, stats)
    row = source.observe().rows[0]
    assert row.response_time == pytest.approx(0.021)  # mean 20.3 ms, rounded up
    assert row.sessions == 2.0
    assert row.requests_total == 3.0
    assert row.time.timestamp() == pytest.approx(1767225600 + 5.0)


def test_veloflux_runs_the_real_agent_and_reports_its_modes() -> None:
    four = [*UNEQUAL, {"name": "fast2", "concurrency": 2}, {"name": "slow2", "speed": 0.5}]
    result = run_cell(
        scenario(duration_s=330, warmup_s=250, servers=four), "leastconn", "veloflux", [1]
    )
    assert set(FIGURES) <= set(result)
    assert result["model_trained"]["mean"] == 1.0  # trained at the end of the warm-up
    modes = ("model", "capacity", "fallback")
    shares = sum(result[f"{mode}_tick_share"]["mean"] for mode in modes)
    assert shares == pytest.approx(1.0)
    # The busy-time signal reaches the agent: the capacity rung drives the pool, alone
    # or with the model's tilt on top (model mode), as its switchback test decides.
    on_capacity = result["capacity_tick_share"]["mean"] + result["model_tick_share"]["mean"]
    assert on_capacity > 0.5
    # Eighty seconds of probes leave the held-out windows too few probe moves to check the
    # model's load response: the gate keeps it a candidate, and it never acts.
    assert result["model_promoted"]["mean"] == 0.0
    assert result["model_tick_share"]["mean"] == 0.0
    assert result["tilt_pairs"]["mean"] == 0.0


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'magic'"):
        make_strategy("magic")


def test_simulate_prints_the_documented_json(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: tiny\nduration_s: 60\nwarmup_s: 10\narrival: {utilization: 0.5}\n"
        "service: {mean_ms: 10}\nservers: [{name: s, count: 3, concurrency: 2}]\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "veloflux", "simulate", str(path), "--dispatcher", "leastconn",
         "--strategy", "static-equal", "--seeds", "2", "--output", "json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert (doc["scenario"], doc["dispatcher"], doc["strategy"], doc["seeds"]) == (
        "tiny", "leastconn", "static-equal", [1, 2],
    )  # fmt: skip
    for name in FIGURES:
        low, high = doc[name]["ci95"]
        assert low <= doc[name]["mean"] <= high
    bad = subprocess.run(
        [sys.executable, "-m", "veloflux", "simulate", str(path), "--dispatcher", "fastest"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "unknown dispatcher 'fastest'" in bad.stderr
