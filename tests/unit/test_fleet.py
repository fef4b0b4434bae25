"""A Fleet drives HAProxy and Envoy from one config: each proxy's plan goes to its own
sink, one summary line covers the tick, a proxy that fails is held and named while the
other is driven, and only a tick where every proxy fails fails as a whole.
(Against real HAProxy and Envoy: tests/integration/test_both_proxies.py.)"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import pytest

from tests.unit.factories import PROXY, Pool, Server, observation
from veloflux.agent.build import proxy_view
from veloflux.agent.fleet import Fleet
from veloflux.agent.ports import ProxyFailure
from veloflux.agent.tick import Agent
from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.domain.observation import Observation
from veloflux.domain.weightplan import ApplyReport, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, SourceUnavailable
from veloflux.util.events import Events

CONFIG = validate_config(
    {
        "haproxy": {"socket": "unix:///haproxy.sock", "backends": ["web"]},
        "envoy": {
            "admin": "http://127.0.0.1:9901",
            "eds_dir": "/tmp/eds",
            "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 8081}]}],
        },
        "ai": {"enabled": False},
        "policy": {"max_step_ratio": 10},
    }
)
WEB = observation([Pool("web", [Server("w1", weight=5, initial=10)])])
APP = dataclasses.replace(
    observation([Pool("app", [Server("127.0.0.1:8081", weight=3, initial=1)])]),
    proxy=dataclasses.replace(PROXY, address="http://127.0.0.1:9901", pid=77),
)


class StubSource:
    """Returns the next of its observations (the last one again when they run out), or
    raises the exception it was given."""

    def __init__(self, *readings: Observation | Exception) -> None:
        self._readings: Iterator[Observation | Exception] = iter(readings)
        self._last = readings[-1]

    def observe(self) -> Observation:
        self._last = next(self._readings, self._last)
        if isinstance(self._last, Exception):
            raise self._last
        return self._last


class RecordingSink:
    """Writes every change (or refuses the whole plan) and keeps the plans it was given."""

    def __init__(self, refuse: str = "") -> None:
        self.plans: list[WeightPlan] = []
        self._refuse = refuse

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport:
        if self._refuse:
            raise SinkRejected(self._refuse)
        self.plans.append(plan)
        return ApplyReport(
            tuple(
                WriteResult(
                    s.backend,
                    s.server,
                    s.current_weight,
                    s.planned_weight or 0,
                    s.planned_weight,
                    "",
                )
                for s in plan.changes()
            )
        )


def fleet(
    haproxy: StubSource, envoy: StubSource, sinks: tuple[RecordingSink, RecordingSink]
) -> tuple[Fleet, Events]:
    events = Events()

    def agent(kind: str, source: StubSource, sink: RecordingSink) -> Agent:
        view: Config = proxy_view(CONFIG, kind)
        return Agent(view, source, sink, events, log_summary=False)

    agents = {
        "haproxy": agent("haproxy", haproxy, sinks[0]),
        "envoy": agent("envoy", envoy, sinks[1]),
    }
    return Fleet(agents, events), events


def test_each_proxy_gets_its_own_plan_and_one_line_sums_up_the_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sinks = (RecordingSink(), RecordingSink())
    driver, _ = fleet(StubSource(WEB), StubSource(APP), sinks)
    with caplog.at_level(logging.INFO, logger="veloflux.tick"):
        result = driver.tick(write=True)
    assert [[p.backend for p in s.plans[0].pools] for s in sinks] == [["web"], ["app"]]
    assert [p.backend for p in result.plan.pools] == ["web", "app"]
    assert result.report is not None
    assert [(w.backend, w.new_weight) for w in result.report.results] == [("web", 10), ("app", 1)]
    assert [p.name for p in result.observation.pools] == ["web", "app"]
    assert result.failures == ()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tick ")]
    assert "pools[fallback=2] servers=2 written=2 failed=0" in line


def test_a_proxy_whose_source_fails_is_held_while_the_other_is_driven(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sinks = (RecordingSink(), RecordingSink())
    down = SourceUnavailable("Envoy admin API http://127.0.0.1:9901 is unreachable")
    driver, events = fleet(StubSource(WEB), StubSource(down), sinks)
    with caplog.at_level(logging.INFO, logger="veloflux.tick"):
        result = driver.tick(write=True)
    assert result.failures == (ProxyFailure("envoy", "source", str(down)),)
    assert [p.backend for p in result.plan.pools] == ["web"]
    assert sinks[1].plans == []  # nothing written to the proxy that could not be read
    assert events.count("proxy_failed_source", proxy="envoy") == 1
    assert any("proxies_failed=envoy(source)" in r.getMessage() for r in caplog.records)


def test_a_proxy_whose_sink_refuses_is_named_and_the_other_written() -> None:
    sinks = (RecordingSink(refuse="HAProxy runtime API is at level operator"), RecordingSink())
    driver, events = fleet(StubSource(WEB), StubSource(APP), sinks)
    result = driver.tick(write=True)
    assert [(f.proxy, f.reason) for f in result.failures] == [("haproxy", "sink")]
    assert result.report is not None
    assert [w.backend for w in result.report.results] == ["app"]
    assert events.count("proxy_failed_sink", proxy="haproxy") == 1


def test_when_every_proxy_fails_the_tick_fails_with_the_first_failure() -> None:
    first = SourceUnavailable("HAProxy runtime API unix:///haproxy.sock: no such socket file")
    second = SourceUnavailable("Envoy admin API http://127.0.0.1:9901 is unreachable")
    driver, _ = fleet(StubSource(first), StubSource(second), (RecordingSink(), RecordingSink()))
    with pytest.raises(SourceUnavailable) as caught:
        driver.tick(write=True)
    assert caught.value is first


def test_a_reload_is_detected_per_proxy() -> None:
    """Envoy restarting (a new pid) is a reload of Envoy alone: comparing one identity
    for both proxies would see a reload at every tick, or never."""
    restarted = dataclasses.replace(APP, proxy=dataclasses.replace(APP.proxy, pid=78))
    driver, _ = fleet(
        StubSource(WEB), StubSource(APP, APP, restarted), (RecordingSink(), RecordingSink())
    )
    assert [driver.tick(write=True).proxy_reloaded for _ in range(4)] == [
        False,
        False,
        True,
        False,
    ]


def test_a_dry_run_has_no_report_and_writes_nothing() -> None:
    sinks = (RecordingSink(), RecordingSink())
    driver, _ = fleet(StubSource(WEB), StubSource(APP), sinks)
    result = driver.tick(write=False)
    assert result.report is None
    assert [s.plans for s in sinks] == [[], []]
    assert len(result.plan.changes()) == 2
