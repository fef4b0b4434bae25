"""The HAProxy sink's read-back, on replies a real HAProxy would not give on cue: a
state dump that lacks a server, one that is garbage, a weight that did not take.
(Real-HAProxy writes and refusals: tests/integration/test_haproxy_source_sink.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.unit.test_haproxy_replies import SERVERS_STATE
from veloflux.domain.weightplan import ApplyReport, PoolPlan, ServerPlan, WeightPlan
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.sink import HAProxySink
from veloflux.util.events import Events


@dataclass(frozen=True)
class RecordingAPI(RuntimeAPI):
    """Answers ``run_many`` with fixed replies and keeps the commands it was sent."""

    replies: tuple[str, ...] = ()
    sent: list[list[str]] = field(default_factory=list)

    def run_many(self, commands: Sequence[str]) -> list[str]:
        self.sent.append(list(commands))
        assert len(commands) == len(self.replies)
        return list(self.replies)


def apply(state_reply: str, set_replies: tuple[str, str] = ("", "")) -> tuple[ApplyReport, Events]:
    """s1 10 -> 12 and s2 18 -> 20 in backend app; SERVERS_STATE shows s1 at 12, s2 at 20."""
    servers = (
        ServerPlan("app", "s1", "UP", 10, 12, 10, 0.9, "model"),
        ServerPlan("app", "s2", "UP", 18, 20, 20, 0.9, "model"),
    )
    plan = WeightPlan(
        datetime(2026, 1, 1, tzinfo=UTC),
        (PoolPlan("app", "roundrobin", "model", 0.9, "model", servers),),
    )
    api = RecordingAPI("unix:///stub.sock", replies=(*set_replies, state_reply))
    events = Events()
    report = HAProxySink(api, events).apply(plan, "admin")
    assert api.sent == [
        ["set server app/s1 weight 12", "set server app/s2 weight 20", "show servers state app"]
    ]
    return report, events


def test_writes_confirmed_by_one_state_dump_per_backend() -> None:
    report, _ = apply(SERVERS_STATE)
    assert [(r.server, r.confirmed_weight, r.error) for r in report.results] == [
        ("s1", 12, ""),
        ("s2", 20, ""),
    ]
    assert not report.failures


def test_a_server_missing_from_the_read_back_is_a_failed_write() -> None:
    without_s2 = "".join(line + "\n" for line in SERVERS_STATE.splitlines() if " s2 " not in line)
    report, events = apply(without_s2)
    assert [r.server for r in report.failures] == ["s2"]
    assert "not in 'show servers state'" in report.failures[0].error
    assert events.count("sink_rejected") == 1


def test_a_garbage_read_back_fails_every_write_of_the_backend() -> None:
    report, events = apply("Can't find backend.\n")
    assert [r.server for r in report.failures] == ["s1", "s2"]
    assert all(r.error.startswith("read-back failed:") for r in report.failures)
    assert all(r.confirmed_weight is None for r in report.failures)
    assert events.count("sink_rejected") == 2


def test_a_weight_that_did_not_take_is_reported_with_what_haproxy_shows() -> None:
    moved = SERVERS_STATE.replace(" s1 127.0.0.1 2 0 12 10 ", " s1 127.0.0.1 2 0 11 10 ")
    report, _ = apply(moved)
    assert [(r.server, r.confirmed_weight) for r in report.failures] == [("s1", 11)]
    assert report.failures[0].error == "read-back shows weight 11, not 12"


def test_haproxys_refusal_is_the_reason_given_before_the_read_back() -> None:
    report, _ = apply(SERVERS_STATE, set_replies=("No such server.", ""))
    assert [(r.server, r.error) for r in report.failures] == [
        ("s1", "HAProxy refused: No such server.")
    ]
