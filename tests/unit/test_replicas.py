"""Replicas of one proxy as one pool (``veloflux.agent.replicas``): the merge of their
readings, the identity that marks a reset, and the writes each replica gets.

Readings are built by hand (the factories' Observation), sources and sinks are small
fakes; the same code against two real HAProxy and two real Envoy processes is in
``tests/integration/test_replicas.py``. Each docstring names the break it catches.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.unit.factories import PROXY, Pool, Server, observation
from tests.unit.test_haproxy_replies import SERVERS_STATE, SHOW_INFO, STAT_COLUMNS, stat_reply
from veloflux.agent.replica_merge import _STATE_ORDER, _SUMMED, _TIMES, _disagreement
from veloflux.agent.replicas import ReplicatedSink, ReplicatedSource, ReplicaView, merge
from veloflux.domain.observation import (
    Observation,
    PoolInfo,
    ProxyIdentity,
    ReplicaStatus,
    ServerRow,
)
from veloflux.domain.weightplan import ApplyReport, PoolPlan, ServerPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, SourceUnavailable
from veloflux.haproxy.runtime import PendingReplies, RuntimeAPI
from veloflux.haproxy.sink import HAProxySink
from veloflux.haproxy.source import HAProxySource
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


@dataclass(frozen=True)
class LoggedAPI(RuntimeAPI):
    """A runtime API answering as the unit tests' HAProxy does, that logs (in ``log``,
    shared by the replicas) when commands are sent and when their replies are read."""

    log: list[str] = field(default_factory=list)

    def send_many(self, commands: Sequence[str]) -> PendingReplies:
        self.log.append(f"sent {self.address}")

        def answer() -> list[str]:
            self.log.append(f"read {self.address}")
            return [_HAPROXY_REPLIES.get(c.split(" weight ")[0][:10], "") for c in commands]

        return PendingReplies(self, len(commands), answer=answer)


_HAPROXY_REPLIES = {
    "show info": SHOW_INFO,
    "show cli l": "admin",
    "show stat ": stat_reply(STAT_COLUMNS),
    "show serve": SERVERS_STATE,
}


def test_every_haproxy_replica_is_asked_and_written_before_any_reply_is_read() -> None:
    """Kills: replicas read or written one after the other (each HAProxy waiting for the
    previous one's reply to be parsed before it starts on its own)."""
    log: list[str] = []
    apis = {name: LoggedAPI(name, log=log) for name in (A, B)}
    events = Events()
    view = ReplicaView((A, B))
    sources = {name: HAProxySource(api, lambda: PROXY_TIME, events) for name, api in apis.items()}
    seen = ReplicatedSource(sources, view, events).observe()
    assert log == [f"sent {A}", f"sent {B}", f"read {A}", f"read {B}"]
    assert [r.server for r in seen.rows] == ["s1", "s2"]

    log.clear()
    sinks = {name: HAProxySink(api, events) for name, api in apis.items()}
    s1 = ServerPlan("app", "s1", "UP", 12, 7, 10, 1.0, "r")
    plan = WeightPlan(PROXY_TIME, (PoolPlan("app", "roundrobin", "capacity", 1.0, "r", (s1,)),))
    report = ReplicatedSink(sinks, view, events).apply(plan, "admin")
    # Each replica's weights read again just before its writes (both asked at once),
    # then both written before either write's reply is read.
    assert log == [
        *(f"sent {A}", f"sent {B}"),
        *(f"read {A}", f"sent {A}", f"read {B}", f"sent {B}"),
        *(f"read {A}", f"read {B}"),
    ]
    assert [(w.replica, w.server) for w in report.results] == [(A, "s1"), (B, "s1")]


# --- the column-wise merge against the row-wise rule ---------------------------------


def _reference_merge(
    parts: dict[str, Observation],
    statuses: list[ReplicaStatus],
    identity: ProxyIdentity,
    shares: dict[str, dict[tuple[str, str], float]],
) -> Observation:
    """The merge's rule a server at a time, as it was first written: the oracle that
    ``merge`` (a column at a time) must match bit for bit."""
    infos: dict[str, PoolInfo] = {}
    for part in parts.values():
        for info in part.pools:
            infos.setdefault(info.name, info)
    pools: list[PoolInfo] = []
    rows: list[ServerRow] = []
    for name, info in infos.items():
        servers = {
            replica: {r.server: r for r in part.servers_of(name)}
            for replica, part in parts.items()
            if any(p.name == name for p in part.pools)
        }
        disagreement = _disagreement(name, servers, list(parts))
        pools.append(
            replace(info, managed=False, unmanaged_reason=disagreement) if disagreement else info
        )
        holders = list(servers)
        for server, row in servers[holders[0]].items():
            copies = [(r, servers[r][server]) for r in holders if server in servers[r]]
            rows.append(_reference_row(row, copies, shares))
    everywhere = set.intersection(*(set(part.missing_pools) for part in parts.values()))
    missing = tuple(p for p in next(iter(parts.values())).missing_pools if p in everywhere)
    return Observation(
        taken_at=max(part.taken_at for part in parts.values()),
        rows=tuple(rows),
        pools=tuple(pools),
        proxy=identity,
        missing_pools=missing,
        replicas=tuple(statuses),
    )


def _reference_row(
    first: ServerRow,
    copies: list[tuple[str, ServerRow]],
    shares: dict[str, dict[tuple[str, str], float]],
) -> ServerRow:
    if len(copies) == 1:
        return first
    rows = [row for _, row in copies]
    values = first._asdict()
    for column in _SUMMED:
        values[column] = sum(getattr(row, column) for row in rows)
    key = (first.pool, first.server)
    weights = [shares.get(name, {}).get(key, math.nan) for name, _ in copies]
    if not all(w >= 0 for w in weights) or not sum(weights):
        weights = [1.0] * len(rows)
    for column in _TIMES:
        total = weight_sum = 0.0
        for row, w in zip(rows, weights, strict=True):
            value = getattr(row, column)
            if w > 0 and value == value and value not in (math.inf, -math.inf):
                total += value * w
                weight_sum += w
        values[column] = total / weight_sum if weight_sum else math.nan
    states = {row.state for row in rows}
    if len(states) > 1:
        values["state"] = min(states, key=lambda s: _STATE_ORDER.get(s, 2))
    if any(row.problem for row in rows):
        values["problem"] = "; ".join(dict.fromkeys(row.problem for row in rows if row.problem))
    changes = [row.since_state_change for row in rows if row.since_state_change >= 0]
    values["since_state_change"] = min(changes) if changes else math.nan
    return ServerRow(**values)


_FLOATS = (0.0, -0.0, 1.0, 2.0, 2.5, 7.0, 0.1, 0.3, 1e-300, 1e308, -1.0, math.nan, math.inf)
_SHARES = (0.0, 1.0, 3.0, 0.5, 1e308, -2.0, math.nan, math.inf, 7.0, 7.0, 7.0)


def _random_row(
    rng: random.Random, pool: str, server: str, palette: tuple[float, ...]
) -> ServerRow:
    def number() -> float:
        if palette:
            return rng.choice(palette)
        return rng.choice(_FLOATS) if rng.random() < 0.3 else float(rng.randint(0, 90)) / 3

    metrics = [number() for _ in range(13)]  # sessions .. since_state_change
    return ServerRow._make((
        PROXY_TIME, "haproxy", pool, server, "127.0.0.1:9",
        rng.choice(("UP", "UP", "UP", "DOWN", "MAINT", "DRAIN", "NOLB")),
        rng.random() < 0.1, number(), number(), "roundrobin", *metrics, "",
        rng.choice(("", "", "", "p1", "p2")), number(),
    ))  # fmt: skip


def _random_parts(
    rng: random.Random,
) -> tuple[dict[str, Observation], dict[str, dict[tuple[str, str], float]]]:
    """Readings of two or three replicas (sometimes one), alike half of the time; else
    with pools or servers lacking, extra, listed twice or in another order."""
    replicas = (A, B, "unix:///c.sock")[: rng.choice((1, 2, 2, 2, 3))]
    pools = rng.sample(("web", "api", "db"), rng.randint(1, 3))
    servers = {pool: [f"s{i}" for i in range(rng.randint(0, 6))] for pool in pools}
    alike = rng.random() < 0.5
    # A few values only, now and then: a -0.0 or a NaN on every replica at once.
    palette = rng.choice(((), (), (), (0.0, -0.0, 1.0), (-0.0, 2.0, math.nan), (0.0, math.inf)))
    parts: dict[str, Observation] = {}
    shares: dict[str, dict[tuple[str, str], float]] = {}
    for replica in replicas:
        held = pools if alike else [p for p in pools if rng.random() < 0.85]
        rows = []
        for pool in held:
            names = list(servers[pool])
            if not alike:
                if names and rng.random() < 0.15:
                    names.pop(rng.randrange(len(names)))
                if rng.random() < 0.1:
                    names.append("extra")
                if names and rng.random() < 0.1:
                    names.append(rng.choice(names))
                if rng.random() < 0.1:
                    rng.shuffle(names)
            rows += [_random_row(rng, pool, name, palette) for name in names]
        if not alike and rng.random() < 0.1:
            rng.shuffle(rows)
        infos = tuple(PoolInfo(p, "roundrobin", True) for p in held)
        missing = tuple(p for p in ("gone", *pools) if p not in held)
        parts[replica] = Observation(PROXY_TIME, tuple(rows), infos, PROXY, missing)
        shares[replica] = {
            (r.pool, r.server): rng.choice(_SHARES) for r in rows if rng.random() < 0.95
        }
    return parts, shares


def _bits(seen: Observation) -> tuple[Any, ...]:
    """Everything in ``seen``, each float as its bytes (NaN included, -0.0 apart)."""

    def cell(value: object) -> object:
        return struct.pack("<d", value) if isinstance(value, float) else value

    rows = tuple(tuple(cell(value) for value in row) for row in seen.rows)
    return (seen.taken_at, rows, seen.pools, seen.proxy, seen.missing_pools, seen.replicas)


def test_the_column_wise_merge_is_the_row_wise_rule_bit_for_bit() -> None:
    """Kills: any difference between the merge a column at a time and its rule a row at
    a time (a sum in another order, a NaN or an infinity weighed, -0.0 for 0.0, a row
    out of order, a held pool's reason), on 400 random sets of readings."""
    rng = random.Random(20261207)
    for _ in range(400):
        parts, shares = _random_parts(rng)
        statuses = [ReplicaStatus(name, True) for name in parts]
        expected = _reference_merge(parts, statuses, PROXY, shares)
        assert _bits(merge(parts, statuses, PROXY, shares)) == _bits(expected)
