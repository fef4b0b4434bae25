"""The HAProxy sink's read-back, on replies a real HAProxy would not give on cue: a
state dump that lacks a server, one that is garbage, a weight that did not take; and
its two refusals before anything is sent: a socket below level admin, and a name that
could smuggle a command into the CLI.
(Real-HAProxy writes and refusals: tests/integration/test_haproxy_source_sink.py.)"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from tests.unit.test_haproxy_replies import SERVERS_STATE
from veloflux.domain.weightplan import ApplyReport, PoolPlan, ServerPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected
from veloflux.haproxy.runtime import RuntimeAPI, RuntimeAPIError
from veloflux.haproxy.sink import HAProxySink
from veloflux.util.events import Events

# The weights as the plans below were made from (s1 at 10, s2 at 18): what the sink's
# read just before writing finds when nobody set a weight meanwhile.
BEFORE = SERVERS_STATE.replace(" s1 127.0.0.1 2 0 12 10 ", " s1 127.0.0.1 2 0 10 10 ").replace(
    " s2 127.0.0.1 2 1 20 20 ", " s2 127.0.0.1 2 1 18 20 "
)


def _rereading(commands: Sequence[str]) -> bool:
    """The sink's read just before it writes: state dumps alone (a write batch has sets)."""
    return all(c.startswith("show servers state ") for c in commands)


@dataclass(frozen=True)
class RecordingAPI(RuntimeAPI):
    """Answers the read before the writes with ``before`` and the writes with fixed
    replies, and keeps the commands it was sent."""

    replies: tuple[str, ...] = ()
    before: str = BEFORE
    sent: list[list[str]] = field(default_factory=list)

    def run_many(self, commands: Sequence[str]) -> list[str]:
        self.sent.append(list(commands))
        if _rereading(commands):
            return [self.before] * len(commands)
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
        ["show servers state app"],
        ["set server app/s1 weight 12", "set server app/s2 weight 20", "show servers state app"],
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


@dataclass(frozen=True)
class AnsweringAPI(RuntimeAPI):
    """Answers any pipeline as HAProxy would (a ``set`` accepted silently, every state
    dump SERVERS_STATE) and keeps each command it was sent."""

    sent: list[str] = field(default_factory=list)

    def run_many(self, commands: Sequence[str]) -> list[str]:
        self.sent.extend(commands)
        if _rereading(commands):
            return [BEFORE] * len(commands)
        return ["" if c.startswith("set server ") else SERVERS_STATE for c in commands]


def s1_plan(*more: ServerPlan) -> WeightPlan:
    """s1 10 -> 12 in backend app (SERVERS_STATE shows s1 at 12), then ``more``."""
    servers = (ServerPlan("app", "s1", "UP", 10, 12, 10, 0.9, "model"), *more)
    return WeightPlan(
        datetime(2026, 1, 1, tzinfo=UTC),
        (PoolPlan("app", "roundrobin", "model", 0.9, "model", servers),),
    )


@pytest.mark.parametrize("level", ["operator", "user"])
def test_a_socket_below_level_admin_is_refused_before_any_write(level: str) -> None:
    """Kills: refusing only a ``user``-level socket (``proxy_level == "user"``), which
    would let an ``operator``-level socket through to a write HAProxy refuses one by one."""
    api = AnsweringAPI("unix:///stub.sock")
    events = Events()
    with pytest.raises(SinkRejected, match=f"at level {level}: .*level admin"):
        HAProxySink(api, events).apply(s1_plan(), level)
    assert api.sent == []
    assert events.count("sink_rejected", sink="haproxy") == 1


@pytest.mark.parametrize("level", ["operator", "user"])
def test_a_socket_below_level_admin_is_refused_even_with_nothing_to_write(level: str) -> None:
    """Kills: checking the level only after the early return for an empty plan, so a
    misconfigured socket goes unnoticed until the first real change."""
    empty = WeightPlan(datetime(2026, 1, 1, tzinfo=UTC), ())
    with pytest.raises(SinkRejected):
        HAProxySink(AnsweringAPI("unix:///stub.sock"), Events()).apply(empty, level)


@pytest.mark.parametrize("level", ["admin", "unknown"])
def test_an_admin_or_unknown_level_socket_is_written(level: str) -> None:
    """The control for the two tests above: the same plan and API, a level that may write."""
    api = AnsweringAPI("unix:///stub.sock")
    report = HAProxySink(api, Events()).apply(s1_plan(), level)
    assert api.sent == [
        "show servers state app",
        "set server app/s1 weight 12",
        "show servers state app",
    ]
    assert [(r.server, r.confirmed_weight, r.error) for r in report.results] == [("s1", 12, "")]


@pytest.mark.parametrize(
    ("backend", "server", "kind"),
    [
        ("app", "s2;disable server app/s1", "server"),
        ("app", "s2\nshutdown sessions server app/s1", "server"),
        ("app;disable frontend fe", "s2", "backend"),
        ("app\nshow info", "s2", "backend"),
    ],
)
def test_a_name_that_could_inject_a_command_is_refused_before_any_command_is_composed(
    backend: str, server: str, kind: str
) -> None:
    """Kills: deleting the ``check_name`` call for the backend or the server in
    ``_commands``, which would pipe ``;`` or a newline into HAProxy's CLI."""
    api = AnsweringAPI("unix:///stub.sock")
    events = Events()
    hostile = ServerPlan(backend, server, "UP", 18, 20, 20, 0.9, "model")
    report = HAProxySink(api, events).apply(s1_plan(hostile), "admin")
    assert api.sent == [
        "show servers state app",
        "set server app/s1 weight 12",
        "show servers state app",
    ]
    assert [(r.backend, r.server, r.confirmed_weight) for r in report.failures] == [
        (backend, server, None)
    ]
    assert report.failures[0].error.startswith(f"refusing {kind} name ")
    assert [r.server for r in report.applied] == ["s1"]
    assert events.count("sink_refused_name", sink="haproxy") == 1


# --- refusals and failures, each counted and logged (mutants of haproxy/sink.py) ---------------

UNSAFE = "only letters, digits and '-_.:' are allowed"


@dataclass(frozen=True)
class DownAPI(RuntimeAPI):
    """A runtime API that cannot be reached; keeps each batch it was asked to send."""

    asked: list[list[str]] = field(default_factory=list)

    def run_many(self, commands: Sequence[str]) -> list[str]:
        self.asked.append(list(commands))
        raise RuntimeAPIError(f"{self.address}: connection refused")


def one_change_plan(*servers: ServerPlan) -> WeightPlan:
    return WeightPlan(
        datetime(2026, 1, 1, tzinfo=UTC),
        tuple(
            PoolPlan(s.backend, "roundrobin", "fallback", 0.0, "no model", (s,)) for s in servers
        ),
    )


@pytest.mark.parametrize("level", ["user", "operator"])
def test_a_refused_socket_level_is_named_counted_and_logged(
    level: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Kills: the refused levels misspelt, the message, the event's name or label altered."""
    api = RecordingAPI("unix:///stub.sock")
    events = Events()
    expected = (
        f"HAProxy runtime API unix:///stub.sock is at level {level}: "
        "setting weights needs 'stats socket ... level admin'"
    )
    with caplog.at_level(logging.WARNING), pytest.raises(SinkRejected) as refused:
        HAProxySink(api, events).apply(one_change_plan(), level)
    assert str(refused.value) == expected
    assert events.totals() == {("sink_rejected", (("sink", "haproxy"),)): 1}
    assert caplog.messages == [f"sink_rejected: {expected}"]
    assert api.sent == []


def test_a_plan_without_changes_sends_nothing() -> None:
    """Kills: the empty report made ``ApplyReport(None)``."""
    unchanged = ServerPlan("app", "s1", "UP", 10, 10, 10, 0.0, "no model")
    api = RecordingAPI("unix:///stub.sock")
    assert HAProxySink(api, Events()).apply(one_change_plan(unchanged), "admin") == ApplyReport(())
    assert api.sent == []


def test_an_unsafe_name_is_refused_alone_and_every_other_change_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A name that could inject a runtime command is never sent; the refusal is reported
    and counted, and the safe changes after it are written all the same. Kills: the
    refusal's result or message altered, ``continue`` made ``break``, the refusals
    dropped from the report, the event's name or label altered."""
    plan = one_change_plan(
        ServerPlan("app", "s 1", "UP", 10, 11, 10, 0.0, "no model"),
        ServerPlan("a;p", "s9", "UP", 3, 4, 3, 0.0, "no model"),
        ServerPlan("app", "s1", "UP", 10, 12, 10, 0.0, "no model"),
    )
    api = RecordingAPI("unix:///stub.sock", replies=("", SERVERS_STATE))
    events = Events()
    with caplog.at_level(logging.WARNING):
        report = HAProxySink(api, events).apply(plan, "admin")
    server_error = f"refusing server name 's 1': {UNSAFE}"
    backend_error = f"refusing backend name 'a;p': {UNSAFE}"
    assert [r[:5] for r in report.results] == [
        ("app", "s 1", 10, 11, None),
        ("a;p", "s9", 3, 4, None),
        ("app", "s1", 10, 12, 12),
    ]
    assert report.results[0].error.startswith(server_error)
    assert report.results[1].error.startswith(backend_error)
    assert report.results[2].error == ""
    assert api.sent == [
        ["show servers state app"],
        ["set server app/s1 weight 12", "show servers state app"],
    ]
    assert events.totals() == {("sink_refused_name", (("sink", "haproxy"),)): 2}
    assert [m.partition(" (")[0] for m in caplog.messages] == [
        f"sink_refused_name: {server_error}",
        f"sink_refused_name: {backend_error}",
    ]


def test_an_unreachable_runtime_api_fails_the_whole_apply(caplog: pytest.LogCaptureFixture) -> None:
    """Kills: the unavailable event's name, message or label altered, the raised message
    dropped, the writes still sent after the read before them went unanswered (a second
    wait for a proxy that just failed to answer)."""
    events = Events()
    change = ServerPlan("app", "s1", "UP", 10, 12, 10, 0.0, "no model")
    api = DownAPI("unix:///stub.sock")
    with caplog.at_level(logging.WARNING), pytest.raises(SinkRejected) as refused:
        HAProxySink(api, events).apply(one_change_plan(change), "admin")
    assert api.asked == [["show servers state app"]]
    assert str(refused.value) == "HAProxy runtime API unix:///stub.sock: connection refused"
    assert events.totals() == {("sink_unavailable", (("sink", "haproxy"),)): 1}
    assert caplog.messages == ["sink_unavailable: unix:///stub.sock: connection refused"]


def test_a_failed_write_is_reported_whole_and_logged_naming_its_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kills: the failed result's backend or weights dropped, its message altered, the
    event's message or label altered."""
    without_s2 = "".join(line + "\n" for line in SERVERS_STATE.splitlines() if " s2 " not in line)
    with caplog.at_level(logging.WARNING):
        report, events = apply(without_s2)
    error = "read-back failed: the server is not in 'show servers state'"
    assert report.failures == (WriteResult("app", "s2", 18, 20, None, error),)
    assert events.totals() == {("sink_rejected", (("sink", "haproxy"),)): 1}
    assert caplog.messages == [f"sink_rejected: app/s2: {error}"]


# --- a weight set by hand between the tick's read and its write ---------------------------------


def two_changes() -> WeightPlan:
    """s1 10 -> 12 and s2 18 -> 20 in backend app, as ``apply`` above."""
    return one_change_plan(
        ServerPlan("app", "s1", "UP", 10, 12, 10, 0.9, "model"),
        ServerPlan("app", "s2", "UP", 18, 20, 20, 0.9, "model"),
    )


def test_a_weight_set_after_the_tick_read_it_is_left_alone_and_the_others_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HAProxy has no compare-and-set, so the sink reads the backend again just before
    writing. Kills: that read dropped (s2's hand-set 3 overwritten with 20), s2 written
    anyway, its result or its counted event dropped, s1's write held back with it."""
    hand_set = BEFORE.replace(" s2 127.0.0.1 2 1 18 20 ", " s2 127.0.0.1 2 1 3 20 ")
    api = RecordingAPI("unix:///stub.sock", replies=("", SERVERS_STATE), before=hand_set)
    events = Events()
    with caplog.at_level(logging.WARNING):
        report = HAProxySink(api, events).apply(two_changes(), "admin")
    assert api.sent == [
        ["show servers state app"],
        ["set server app/s1 weight 12", "show servers state app"],
    ]
    error = "left alone: its weight became 3 after this tick read 18 (set outside VeloFlux?)"
    assert [r[:6] for r in report.results] == [
        ("app", "s2", 18, 20, None, error),
        ("app", "s1", 10, 12, 12, ""),
    ]
    assert events.totals() == {("weight_moved_before_write", (("sink", "haproxy"),)): 1}
    assert [m.partition(" (")[0] for m in caplog.messages] == [
        "weight_moved_before_write: app/s2: left alone: its weight became 3 after this tick read 18"
    ]


def test_when_every_weight_moved_nothing_is_written() -> None:
    """Kills: an empty batch of writes sent after the read (a read-back of nothing)."""
    moved = BEFORE.replace(" 2 0 10 10 ", " 2 0 1 10 ").replace(" 2 1 18 20 ", " 2 1 2 20 ")
    api = RecordingAPI("unix:///stub.sock", before=moved)
    report = HAProxySink(api, Events()).apply(two_changes(), "admin")
    assert api.sent == [["show servers state app"]]
    assert [(r.server, r.confirmed_weight) for r in report.failures] == [("s1", None), ("s2", None)]
    assert not report.applied


def test_a_read_before_the_writes_that_cannot_be_parsed_leaves_the_writes_to_go() -> None:
    """Nothing to compare with is no reason to hold every weight: the writes go and their
    own read-back judges them. Kills: an unreadable state dump taken for moved weights."""
    api = RecordingAPI("unix:///stub.sock", replies=("", "", SERVERS_STATE), before="garbage\n")
    report = HAProxySink(api, Events()).apply(two_changes(), "admin")
    assert [r.server for r in report.applied] == ["s1", "s2"]
    assert len(api.sent) == 2
