"""Replicas of one proxy as one pool (``veloflux.agent.replicas``): the merge of their
readings, the identity that marks a reset, and the writes each replica gets.

Readings are built by hand (the factories' Observation), sources and sinks are small
fakes; the same code against two real HAProxy and two real Envoy processes is in
``tests/integration/test_replicas.py``. Each docstring names the break it catches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.unit.factories import PROXY, Pool, Server, observation
from veloflux.agent.replicas import ReplicatedSink, ReplicatedSource, ReplicaView, merge
from veloflux.domain.observation import Observation, ReplicaStatus
from veloflux.domain.weightplan import ApplyReport, PoolPlan, ServerPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, SourceUnavailable
from veloflux.util.events import Events

A, B = "unix:///a.sock", "unix:///b.sock"


def reading(servers: dict[str, dict[str, Any]], pid: int = 1, pool: str = "web") -> Observation:
    """One replica's reading of ``pool``: per server, the columns to set."""
    seen = observation([Pool(pool, [Server(name) for name in servers])])
    rows = tuple(row._replace(**servers[row.server]) for row in seen.rows)
    return replace(seen, rows=rows, proxy=replace(PROXY, pid=pid))


def merged(
    a: Observation, b: Observation, shares: dict[str, dict[Any, float]] | None = None
) -> Observation:
    statuses = [ReplicaStatus(A, True), ReplicaStatus(B, True)]
    return merge({A: a, B: b}, statuses, PROXY, shares or {})


def test_counters_are_summed_times_weighted_by_requests_and_the_worst_state_wins() -> None:
    """Kills: a pool judged on one replica's traffic, a slow replica's latency averaged
    as if it carried as much as the busy one, or a server down on one replica treated
    as up."""
    a = reading({"s1": {"requests_total": 300.0, "response_time": 0.010, "sessions": 2.0},
                 "s2": {"requests_total": 10.0, "state": "UP"}})  # fmt: skip
    b = reading({"s1": {"requests_total": 100.0, "response_time": 0.050, "sessions": 1.0},
                 "s2": {"requests_total": 5.0, "state": "DOWN"}})  # fmt: skip
    shares = {A: {("web", "s1"): 300.0, ("web", "s2"): 1.0},
              B: {("web", "s1"): 100.0, ("web", "s2"): 1.0}}  # fmt: skip
    rows = {r.server: r for r in merged(a, b, shares).rows}
    assert rows["s1"].requests_total == 400.0
    assert rows["s1"].sessions == 3.0
    assert rows["s1"].response_time == pytest.approx((300 * 0.010 + 100 * 0.050) / 400)
    assert rows["s2"].state == "DOWN"


def test_an_operators_maint_on_one_replica_holds_the_server() -> None:
    """Kills: a server in maintenance on one replica planned (and written) as if up."""
    a = reading({"s1": {"state": "MAINT"}, "s2": {}})
    b = reading({"s1": {"state": "DOWN"}, "s2": {}})
    assert {r.server: r.state for r in merged(a, b).rows} == {"s1": "MAINT", "s2": "UP"}


def test_without_measured_traffic_times_are_averaged_alike_and_nan_is_skipped() -> None:
    """Kills: a NaN time on one replica poisoning the merged figure, or a first reading
    (no request counts yet) dividing by zero."""
    a = reading({"s1": {"response_time": 0.02}})
    b = reading({"s1": {"response_time": math.nan}})
    assert merged(a, b).rows[0].response_time == pytest.approx(0.02)


def test_replicas_that_disagree_on_servers_hold_the_pool_with_the_difference() -> None:
    """Kills: two different server lists merged into one plan (the extra server would be
    written to a replica that lacks it), or held without saying why."""
    a = reading({"s1": {}, "s2": {}})
    b = reading({"s1": {}, "s3": {}})
    pool = merged(a, b).pools[0]
    assert not pool.managed
    assert "replicas disagree on the servers of 'web'" in pool.unmanaged_reason
    assert "lacks s2" in pool.unmanaged_reason
    assert "has s3" in pool.unmanaged_reason


@dataclass
class FakeSource:
    readings: list[Observation | Exception]

    def observe(self) -> Observation:
        value = self.readings.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


def test_a_replica_down_is_named_and_the_identity_marks_every_change_of_the_set() -> None:
    """Kills: a dead replica failing the whole tick, or summed counters jumping when a
    replica leaves, restarts or returns without the history seeing a reset (a
    generation change of the merged identity)."""
    view = ReplicaView((A, B))
    one = reading({"s1": {"requests_total": 10.0}})
    sources = {
        A: FakeSource([one, one, one, one]),
        B: FakeSource([one, SourceUnavailable("connection refused"), one, reading({}, pid=2)]),
    }
    source = ReplicatedSource(sources, view, Events(), monotonic=lambda: 5.0)
    first = source.observe()
    down = source.observe()
    assert [(r.name, r.up) for r in down.replicas] == [(A, True), (B, False)]
    assert "connection refused" in down.replicas[1].problem
    assert view.up == {A: True, B: False}
    back = source.observe()
    restarted = source.observe()
    generations = [o.proxy.pid for o in (first, down, back, restarted)]
    assert generations == [0, 1, 2, 3]
    assert not back.proxy.reloaded_since(back.proxy)


def test_no_replica_answering_fails_the_reading() -> None:
    view = ReplicaView((A, B))
    dead = {name: FakeSource([SourceUnavailable("gone")]) for name in (A, B)}
    with pytest.raises(SourceUnavailable, match="no replica answered"):
        ReplicatedSource(dead, view, Events()).observe()


@dataclass
class FakeSink:
    fail: bool = False
    plans: list[WeightPlan] = field(default_factory=list)

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport:
        if self.fail:
            raise SinkRejected("socket gone")
        self.plans.append(plan)
        return ApplyReport(
            tuple(
                WriteResult(s.backend, s.server, s.current_weight, s.planned_weight or 0,
                            s.planned_weight, "")
                for s in plan.changes()
            )
        )  # fmt: skip


def plan_of(*servers: tuple[str, str, int, int]) -> WeightPlan:
    rows = tuple(
        ServerPlan("web", name, state, cur, new, 10, 1.0, "r") for name, state, cur, new in servers
    )
    return WeightPlan(PROXY_TIME, (PoolPlan("web", "roundrobin", "capacity", 1.0, "r", rows),))


PROXY_TIME = observation([]).taken_at


def test_each_replica_is_written_what_it_lacks_and_each_write_names_it() -> None:
    """Kills: a replica that came back with its configured weights left there (it would
    serve another split), a write to a replica that already has the weight, a server in
    MAINT written, or a write not saying which replica it went to."""
    view = ReplicaView((A, B), up={A: True, B: True})
    view.weights = {
        A: {("web", "s1"): 8.0, ("web", "s2"): 10.0, ("web", "s3"): 10.0},
        B: {("web", "s1"): 10.0, ("web", "s2"): 10.0, ("web", "s3"): 7.0},  # restarted
    }
    sinks = {A: FakeSink(), B: FakeSink()}
    plan = plan_of(("s1", "UP", 8, 8), ("s2", "UP", 10, 6), ("s3", "MAINT", 10, 10))
    report = ReplicatedSink(sinks, view, Events()).apply(plan)
    written = sorted((w.replica, w.server, w.new_weight) for w in report.results)
    assert written == [(A, "s2", 6), (B, "s1", 8), (B, "s2", 6)]


def test_a_replica_down_is_skipped_and_one_refusing_is_reported_not_fatal() -> None:
    """Kills: writes sent to a replica that did not answer, or one replica's refusal
    failing the others' writes (or every replica refusing passing as success)."""
    view = ReplicaView((A, B), up={A: True, B: False})
    view.weights = {A: {("web", "s1"): 10.0}, B: {("web", "s1"): 10.0}}
    sinks = {A: FakeSink(), B: FakeSink()}
    plan = plan_of(("s1", "UP", 10, 5))
    report = ReplicatedSink(sinks, view, Events()).apply(plan)
    assert [(w.replica, w.new_weight) for w in report.results] == [(A, 5)]
    assert sinks[B].plans == []

    view.up = {A: True, B: True}
    refusing = {A: FakeSink(), B: FakeSink(fail=True)}
    report = ReplicatedSink(refusing, view, Events()).apply(plan)
    assert [(w.replica, w.ok) for w in report.results] == [(A, True), (B, False)]
    assert "replica unix:///b.sock: socket gone" in report.failures[0].error
    all_refuse = ReplicatedSink({A: FakeSink(fail=True), B: FakeSink(fail=True)}, view, Events())
    with pytest.raises(SinkRejected, match="every replica refused"):
        all_refuse.apply(plan)


def test_a_pool_one_replica_lacks_is_held_not_missing_and_one_all_lack_is_missing() -> None:
    """Kills: a pool only one replica lacks reported as missing from the proxy (a config
    error at the first tick) or planned for a replica that does not have it."""
    a = replace(reading({"s1": {}}), missing_pools=("gone",))
    b = replace(reading({}, pool="other"), missing_pools=("gone", "web"))
    seen = merged(a, b)
    web = next(p for p in seen.pools if p.name == "web")
    assert not web.managed
    assert web.unmanaged_reason == f"replicas disagree: {B} has no pool 'web'; held"
    assert seen.missing_pools == ("gone",)
