"""Source and sink against a real HAProxy: parsing its own output, reloads, refusals."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from integration.haproxy_proc import BackendSpec, HAProxyProcess
from tests.conftest import StartHAProxy, servers
from tests.integration.helpers import weights
from veloflux.domain.weightplan import PoolPlan, ServerPlan, WeightPlan
from veloflux.haproxy.replies import parse_stat
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.sink import HAProxySink
from veloflux.haproxy.source import HAProxySource
from veloflux.util.events import Events

pytestmark = pytest.mark.integration


def _source(socket: str, events: Events | None = None, **kwargs: object) -> HAProxySource:
    return HAProxySource(
        RuntimeAPI(socket),
        lambda: datetime.now(UTC),
        events or Events(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_show_stat_from_real_haproxy_parses_by_name_in_any_column_order(
    haproxy: HAProxyProcess,
) -> None:
    text = RuntimeAPI(haproxy.admin_socket).run("show stat -1 6 -1")
    rows = parse_stat(text)
    lines = text.splitlines()
    header = lines[0][2:].split(",")
    order = list(range(len(header)))
    random.Random(7).shuffle(order)

    def permute(line: str) -> str:
        fields = line.split(",")
        fields += [""] * (len(header) - len(fields))
        return ",".join(fields[i] for i in order)

    shuffled = "# " + permute(lines[0][2:]) + "\n" + "\n".join(permute(x) for x in lines[1:])
    assert parse_stat(shuffled) == [{k: r.get(k, "") for k in header} for r in rows]
    servers_rows = {(r["pxname"], r["svname"]): r for r in rows if r["type"] == "2"}
    assert servers_rows[("app", "s3")]["weight"] == "30"
    assert {r["algo"] for r in rows if r["type"] == "1"} == {"roundrobin", "static-rr", "source"}


def test_observation_matches_haproxy_state(haproxy: HAProxyProcess) -> None:
    api = RuntimeAPI(haproxy.admin_socket)
    api.run_many(
        [
            "set server app/s1 weight 3",
            "set server app/s2 state maint",
            "set server app/s3 state drain",
        ]
    )
    observation = _source(haproxy.admin_socket).observe()
    frame = observation.frame.set_index(["pool", "server"])
    assert frame.loc[("app", "s1"), "weight"] == 3
    assert frame.loc[("app", "s1"), "initial_weight"] == 10
    assert frame.loc[("app", "s2"), "state"] == "MAINT"
    assert frame.loc[("app", "s3"), "state"] == "DRAIN"
    assert frame.loc[("app", "s4"), "state"] == "UP"
    assert (observation.frame["problem"] == "").all()
    assert observation.proxy.pid == haproxy.pid
    assert observation.proxy.level == "admin"
    assert [(p.name, p.managed) for p in observation.pools] == [
        ("app", True),
        ("legacy", False),
        ("sticky", False),
    ]


def test_consistent_hash_backend_is_managed_only_when_declared(
    start_haproxy: StartHAProxy,
) -> None:
    proc = start_haproxy([BackendSpec("h", servers(2), algorithm="uri", hash_type="consistent")])
    assert not _source(proc.admin_socket).observe().pools[0].managed
    declared = _source(proc.admin_socket, consistent_hash_backends=["h"]).observe()
    assert declared.pools[0].managed


def test_reload_is_detected_and_resets_runtime_weights(haproxy: HAProxyProcess) -> None:
    source = _source(haproxy.admin_socket)
    RuntimeAPI(haproxy.admin_socket).run("set server app/s1 weight 2")
    before = source.observe()
    again = source.observe()
    assert not again.proxy.reloaded_since(before.proxy)
    haproxy.reload()
    after = source.observe()
    assert after.proxy.reloaded_since(before.proxy)
    assert after.frame.set_index("server").loc["s1", "weight"] == 10


def _plan(*servers_: ServerPlan) -> WeightPlan:
    pool = PoolPlan("app", "roundrobin", "fallback", 0.0, "test", tuple(servers_))
    return WeightPlan(datetime.now(UTC), (pool,))


def _change(server: str, current: int, planned: int, backend: str = "app") -> ServerPlan:
    return ServerPlan(backend, server, "UP", current, planned, current, 0.0, "test")


def test_sink_refuses_injected_names_and_writes_the_rest(haproxy: HAProxyProcess) -> None:
    events = Events()
    sink = HAProxySink(RuntimeAPI(haproxy.admin_socket), events)
    plan = _plan(
        _change("s1;set server app/s2 weight 99", 10, 1),
        _change("s3\nset server app/s4 weight 99", 30, 2),
        _change("s1", 10, 11),
    )
    report = sink.apply(plan, "admin")
    assert [r.server for r in report.applied] == ["s1"]
    assert len(report.failures) == 2
    assert all("refusing server name" in f.error for f in report.failures)
    assert events.count("sink_refused_name") == 2
    assert weights(haproxy.admin_socket, ["app/s1", "app/s2", "app/s4"]) == {
        "app/s1": 11,
        "app/s2": 20,
        "app/s4": 40,
    }


def test_a_weight_set_by_hand_after_the_plan_was_made_is_left_alone(
    haproxy: HAProxyProcess,
) -> None:
    """A plan made from s1 at 10 and s2 at 20; an operator sets s2 to 5 before it is
    written (as during a tick slowed by a source). The sink reads app again just before
    writing: s1 is written, s2 keeps the operator's 5, and the result says why."""
    events = Events()
    plan = _plan(_change("s1", 10, 12), _change("s2", 20, 22))
    RuntimeAPI(haproxy.admin_socket).run("set server app/s2 weight 5")
    report = HAProxySink(RuntimeAPI(haproxy.admin_socket), events).apply(plan, "admin")
    assert [r.server for r in report.applied] == ["s1"]
    (left,) = report.failures
    assert left.server == "s2"
    assert left.error.startswith("left alone: its weight became 5 after this tick read 20")
    assert events.count("weight_moved_before_write", sink="haproxy") == 1
    assert weights(haproxy.admin_socket, ["app/s1", "app/s2"]) == {"app/s1": 12, "app/s2": 5}


def test_sink_reports_each_refusal_by_haproxy(haproxy: HAProxyProcess) -> None:
    events = Events()
    sink = HAProxySink(RuntimeAPI(haproxy.admin_socket), events)
    plan = WeightPlan(
        datetime.now(UTC),
        (
            PoolPlan(
                "app",
                "roundrobin",
                "fallback",
                0.0,
                "t",
                (_change("ghost", 1, 2), _change("s2", 20, 21)),
            ),
            PoolPlan("sticky", "source", "fallback", 0.0, "t", (_change("h1", 5, 6, "sticky"),)),
        ),
    )
    report = sink.apply(plan, "admin")
    errors = {f"{f.backend}/{f.server}": f.error for f in report.failures}
    assert "No such server" in errors["app/ghost"]
    assert "static LB algorithm" in errors["sticky/h1"]
    assert [f"{r.backend}/{r.server}" for r in report.applied] == ["app/s2"]
    assert events.count("sink_rejected") == 2
    assert weights(haproxy.admin_socket, ["app/s2", "sticky/h1"]) == {"app/s2": 21, "sticky/h1": 5}


def test_thousand_server_update_is_written_and_verified(start_haproxy: StartHAProxy) -> None:
    proc = start_haproxy([BackendSpec("big", servers(1000, weight=10))])
    observation = _source(proc.admin_socket).observe()
    assert len(observation.frame) == 1000
    changes = tuple(_change(f"s{i}", 10, 11 + i % 200, "big") for i in range(1, 1001))
    plan = WeightPlan(
        datetime.now(UTC), (PoolPlan("big", "roundrobin", "fallback", 0.0, "t", changes),)
    )
    report = HAProxySink(RuntimeAPI(proc.admin_socket), Events()).apply(plan, "admin")
    assert len(report.applied) == 1000
    assert not report.failures
    after = _source(proc.admin_socket).observe().frame.set_index("server")["weight"]
    assert all(after[f"s{i}"] == 11 + i % 200 for i in range(1, 1001))


@dataclass(frozen=True)
class LosingStateAPI(RuntimeAPI):
    """The real runtime API, except that every ``show servers state`` reply loses the
    lines of the server named ``lose``, as a reply cut or garbled on the way would."""

    lose: str = ""

    def run_many(self, commands: Sequence[str]) -> list[str]:
        replies = super().run_many(commands)
        return [
            "\n".join(line for line in reply.splitlines() if f" {self.lose} " not in line)
            if command.startswith("show servers state")
            else reply
            for command, reply in zip(commands, replies, strict=True)
        ]


def test_server_missing_from_servers_state_is_held_not_guessed(haproxy: HAProxyProcess) -> None:
    """A row the source cannot cross-check is flagged by the source itself; the planner
    then holds it. (Unit twin: test_haproxy_source.py, which a removed cross-check fails.)"""
    from veloflux.config.schema import PolicySection
    from veloflux.decide.planner import plan_weights

    events = Events()
    api = LosingStateAPI(haproxy.admin_socket, lose="s2")
    observation = HAProxySource(api, lambda: datetime.now(UTC), events).observe()
    rows = {r.server: r for r in observation.rows if r.pool == "app"}
    assert rows["s2"].problem == "missing from 'show servers state'"
    assert rows["s2"].weight == 20.0  # read from show stat instead
    assert [name for name, row in rows.items() if row.problem] == ["s2"]
    assert events.count("source_bad_row", source="haproxy") == 1
    plan = plan_weights(observation, PolicySection(static_weights={"app/s2": 1}))
    s2 = next(s for s in plan.servers() if s.server == "s2")
    assert s2.planned_weight == s2.current_weight == 20
    assert s2.reason == "hold: missing from 'show servers state'"
