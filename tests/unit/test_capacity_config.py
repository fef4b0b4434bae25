"""The capacity rung's configuration, and what the agent and its metrics say about an
overloaded pool: ``capacity`` validated against ``prometheus.features``, one
``pool_overload`` event per overload (not per tick of it), and the
``veloflux_pool_overload`` gauge.

Each test's docstring names the break it catches.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_capacity_rung import (
    CAPACITY,
    EVEN,
    OUTLIER,
    POOL,
    Fleet,
    capacity_view,
    on_rung,
    planned,
    pool_at,
)
from tests.unit.test_config import base, problems_of
from tests.unit.test_tick import make_agent
from veloflux.agent.ladder import Ladder
from veloflux.agent.ports import TickResult
from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.daemon.metrics import AgentMetrics
from veloflux.decide.capacity_rung import RungSettings, controller_settings
from veloflux.decide.planner import plan_weights
from veloflux.domain.advice import Advice, PoolAdvice, ServerAdvice
from veloflux.domain.observation import Observation
from veloflux.errors import ConfigError
from veloflux.util.events import Events

QUERY = 'avg by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[1m]))'


def with_capacity(capacity: dict[str, Any], prometheus: dict[str, Any] | None) -> dict[str, Any]:
    """The minimum contract plus a ``capacity`` section and, unless None, ``prometheus``."""
    data = base()
    data["capacity"] = capacity
    if prometheus is not None:
        data["prometheus"] = {"url": "http://127.0.0.1:9090", **prometheus}
    return data


ONE_FEATURE = {"features": {"busy": QUERY}, "default_features": False}

# --- validation ---------------------------------------------------------------------------


def test_a_utilization_feature_without_prometheus_is_refused_by_name() -> None:
    """Catches a rung configured to read a signal nothing will ever supply (it would
    sit silently in fallback forever)."""
    problems = problems_of(with_capacity({"utilization_feature": "busy"}, None))
    assert list(problems) == ["capacity.utilization_feature"]
    assert "'busy' is read from Prometheus" in problems["capacity.utilization_feature"]


@pytest.mark.parametrize("defaults", [False, True])
def test_a_utilization_feature_prometheus_does_not_read_is_refused(defaults: bool) -> None:
    """Catches a misspelt feature name accepted (the column would never appear), with
    the built-in features on or off."""
    prometheus = {"features": {"busy": QUERY}, "default_features": defaults}
    problems = problems_of(with_capacity({"utilization_feature": "bussy"}, prometheus))
    assert list(problems) == ["capacity.utilization_feature"]
    message = problems["capacity.utilization_feature"]
    assert "'bussy' is not in prometheus.features" in message
    assert "busy" in message  # the names it could have meant


def test_a_configured_feature_becomes_the_rungs_utilization_column() -> None:
    """Catches the rung reading another column than the feature's (``prom_`` + name),
    or the section's knobs not reaching the rung and the controller."""
    capacity = {"utilization_feature": "busy", "gain": 0.25, "error_exponent": 3}
    config = validate_config(with_capacity(capacity, ONE_FEATURE))
    settings = RungSettings.from_config(config)
    assert settings.utilization_column == "prom_busy"
    assert settings.error_exponent == 3
    assert controller_settings(config).gain == 0.25


def test_a_disabled_rung_reads_no_column_even_when_one_is_named() -> None:
    """Catches ``capacity.enabled: false`` ignored."""
    capacity = {"utilization_feature": "busy", "enabled": False}
    config = validate_config(with_capacity(capacity, ONE_FEATURE))
    assert RungSettings.from_config(config).utilization_column is None


@pytest.mark.parametrize(("gain", "message"), [(0, "must be > 0"), (1.5, "must be <= 1")])
def test_a_gain_outside_zero_to_one_is_refused(gain: float, message: str) -> None:
    """Catches a gain of 0 (weights never move) or above 1 (each step overshoots, the
    weights oscillate) accepted."""
    problems = problems_of(
        with_capacity({"utilization_feature": "busy", "gain": gain}, ONE_FEATURE)
    )
    assert problems == {"capacity.gain": message}


def test_a_gain_of_one_is_allowed() -> None:
    """The boundary: a gain of 1 jumps to the target in one step, which is allowed."""
    config = validate_config(with_capacity({"gain": 1}, None))
    assert controller_settings(config).gain == 1.0


# --- the agent's overload event -------------------------------------------------------------

AGENT_CONFIG = validate_config(
    {
        "interval": "10s",
        "haproxy": {"socket": "unix:///haproxy.sock", "backends": ["app"]},
        "ai": {"enabled": False},
        "prometheus": {"url": "http://127.0.0.1:9", "features": {"utilization": QUERY}},
        "capacity": {"utilization_feature": "utilization"},
    }
)


def script(fleet: Fleet, *phases: tuple[int, dict[str, Any]]) -> list[Observation]:
    """Readings of ``fleet``: each phase is (ticks, the keywords of ``Fleet.tick``)."""
    return [fleet.tick(**tick) for ticks, tick in phases for _ in range(ticks)]


def test_the_agent_counts_one_pool_overload_when_it_begins_and_not_while_it_lasts() -> None:
    """Catches the event recorded every tick of an overload (a flood in the log and a
    counter that measures duration, not occurrences), or never recorded, or not
    recorded again when a second overload begins after the first ended."""
    calm: dict[str, Any] = {"busy": 0.5}
    overloaded: dict[str, Any] = {"busy": 1.0, "growth": 0.3}  # 130% of capacity offered
    phases = [(8, calm), (5, overloaded), (5, calm), (5, overloaded)]
    readings = script(Fleet(CAPACITY, None), *phases)
    agent, _ = make_agent(*readings, config=AGENT_CONFIG)
    counts, flagged, modes = [], [], []
    for i in range(len(readings)):
        pool = agent.tick(write=False).plan.pools[0]
        counts.append(agent.events.count("pool_overload"))
        modes.append(pool.mode)
        if pool.overload:
            assert pool.mode == "fallback"
            flagged.append(i)
    # The offered load is judged over 3 intervals: each overload shows from its second
    # interval and outlasts it by one (readings 8-12 and 18-22 are overloaded).
    assert flagged == [9, 10, 11, 12, 13, 19, 20, 21, 22]
    assert counts == [0] * 9 + [1] * 10 + [2] * 4
    assert modes[8] == modes[15] == "capacity"  # the rung ran between the overloads


def test_an_overloaded_pool_stands_its_latency_cuts_down_and_keeps_its_error_cuts() -> None:
    """Catches a latency cut acted on in overload. When a pool queues, its smallest
    servers are its slowest, by the pool's fault: cutting them, or refusing to raise
    them back to static weights, piles their load onto servers with no room either
    (the simulator's overload-ramp with round robin timed out more than static weights
    did). A failing server stays cut in overload, and outside it a latency cut stays."""
    slow = "outlier: latency 400 ms (pool median 40 ms)"
    servers = {
        "small": ServerAdvice("small", outlier=slow),
        "mid": ServerAdvice("mid", outlier=OUTLIER, deepen=True, failing=True),
    }
    advice = Advice(
        None, {POOL: PoolAdvice(POOL, 0.0, "no model", servers, latency_cuts={"small": 0})}
    )
    ladder = Ladder(AGENT_CONFIG, Events(), None)
    calm: dict[str, Any] = {"busy": 0.5}
    overloaded: dict[str, Any] = {"busy": 1.0, "growth": 0.3}
    readings = script(Fleet(CAPACITY, None), (8, calm), (5, overloaded))
    joined = [ladder.join(advice, now, AGENT_CONFIG.policy).pools[POOL] for now in readings]
    before, during = joined[7], joined[-1]
    assert before.capacity is not None
    assert not before.capacity.overload
    assert during.capacity is not None
    assert during.capacity.overload
    assert before.servers["small"].outlier == slow
    assert dict(before.latency_cuts) == {"small": 0}
    assert during.servers["small"].outlier == ""
    assert not during.latency_cuts
    assert during.servers["mid"].outlier == OUTLIER
    assert during.servers["mid"].deepen
    # Planned in overload: the slow server climbs back toward its static weight (10),
    # the failing one is cut below it.
    now = pool_at({"small": 5, "mid": 10, "big": 10})
    weights = planned(plan_weights(now, AGENT_CONFIG.policy, Advice(None, {POOL: during})))
    assert weights["small"] > 5
    assert weights["mid"] < 10
    assert weights["big"] == 10


# --- the metric -----------------------------------------------------------------------------


def test_pool_overload_is_one_for_an_overloaded_plan_and_zero_after() -> None:
    """Catches the gauge missing, stuck at 1 once set, or set from the mode (fallback)
    rather than from the overload itself."""
    m = AgentMetrics("1.2.3", Events())
    now = pool_at(EVEN)
    for overload, expected in (("overload: 360.0 req/s offered", 1.0), ("", 0.0)):
        plan = plan_weights(
            now, AGENT_CONFIG.policy, on_rung(capacity_view(CAPACITY, overload=overload))
        )
        m.tick_succeeded(TickResult(now, plan, None, 0.02), 1.0)
        assert m.registry.get_sample_value("veloflux_pool_overload", {"backend": "app"}) == expected
        assert f'veloflux_pool_overload{{backend="app"}} {expected}' in m.render().decode()


def test_a_plain_fallback_pool_is_not_reported_overloaded() -> None:
    """The other side: a pool in fallback for want of estimates shows 0."""
    config: Config = AGENT_CONFIG
    m = AgentMetrics("1.2.3", Events())
    now = pool_at(EVEN)
    plan = plan_weights(now, config.policy, on_rung(capacity_view({})))
    assert plan.pools[0].mode == "fallback"
    m.tick_succeeded(TickResult(now, plan, None, 0.02), 1.0)
    assert m.registry.get_sample_value("veloflux_pool_overload", {"backend": "app"}) == 0.0


def test_an_envoy_default_feature_is_no_utilization_signal_for_an_haproxy_agent() -> None:
    """Validation accepts any built-in feature name of either proxy kind; an HAProxy-only
    agent never reads Envoy's built-ins (agent/build.py picks DEFAULTS[kind]), so the
    rung would stay off without a word."""
    data = with_capacity({"utilization_feature": "cluster_pending_1m"}, {})
    with pytest.raises(ConfigError):
        validate_config(data)
