"""HAProxySource without a socket: replies in, an Observation and events out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from tests.unit.test_haproxy_replies import ROWS, SERVERS_STATE, SHOW_INFO, STAT_COLUMNS, stat_reply
from veloflux.config.schema import PolicySection
from veloflux.decide.planner import plan_weights
from veloflux.domain.observation import COLUMN_NAMES, Observation, ServerRow
from veloflux.errors import SourceUnavailable
from veloflux.haproxy.replies import read_number
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.source import _METRICS, HAProxySource
from veloflux.util.events import Events

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class StubAPI(RuntimeAPI):
    """Answers ``run_many`` with fixed replies, one per command: no socket."""

    replies: tuple[str, ...] = ()

    def run_many(self, commands: Sequence[str]) -> list[str]:
        assert len(commands) == len(self.replies)
        return list(self.replies)


def observe(stat: str, events: Events | None = None, state: str = SERVERS_STATE) -> Observation:
    """One observation of the stub: SHOW_INFO, level admin, then ``stat`` and ``state``."""
    api = StubAPI("unix:///stub.sock", replies=(SHOW_INFO, "admin\n", stat, state))
    return HAProxySource(api, lambda: NOW, events or Events()).observe()


def with_row(**values: str) -> str:
    """The test reply with s1's row changed (s1 is in SERVERS_STATE, as is s2)."""
    return stat_reply(STAT_COLUMNS, (ROWS[0] | values, *ROWS[1:]))


def test_metrics_follow_server_row_field_order() -> None:
    """_server_columns names the metric columns after _METRICS: they must be ServerRow's
    fields, between these, in its order."""
    fields = list(ServerRow._fields)
    assert tuple(fields) == COLUMN_NAMES
    start = fields.index("algorithm") + 1
    assert fields[start : start + len(_METRICS)] == [name for name, _, _ in _METRICS]
    assert fields[start + len(_METRICS) :] == ["check_status", "problem", "max_sessions"]


def test_observation_rows_read_by_column_name() -> None:
    s1, s2 = observe(stat_reply(STAT_COLUMNS)).rows
    assert (s1.pool, s1.server, s1.address, s1.state, s1.backup) == (
        "app",
        "s1",
        "127.0.0.1:8001",
        "UP",
        False,
    )
    assert (s1.weight, s1.initial_weight, s1.algorithm) == (12.0, 10.0, "roundrobin")
    assert (s1.sessions, s1.sessions_total, s1.session_rate) == (3.0, 120.0, 4.0)
    assert s1.requests_total == 120.0  # req_tot empty: stot stands in (TCP mode)
    assert (s1.queue_time, s1.connect_time) == (0.0, 0.001)
    assert (s1.response_time, s1.total_time) == (0.012, 0.015)
    assert (s1.since_state_change, s1.check_status, s1.problem) == (33.0, "L4OK", "")
    assert math.isnan(s2.responses_5xx_total)  # an empty column: NaN, and no problem
    assert math.isnan(s2.queue_time)
    assert (s2.state, s2.backup, s2.problem) == ("MAINT", True, "")


def test_same_text_in_columns_with_different_scales() -> None:
    """A number read once is reused by its text, and scaled per column."""
    (s1, _) = observe(with_row(stot="1500", qtime="2500", rtime="1500", lastchg="2500")).rows
    assert (s1.sessions_total, s1.response_time) == (1500.0, 1.5)  # unscaled first
    assert (s1.queue_time, s1.since_state_change) == (2.5, 2500.0)  # scaled first


@pytest.mark.parametrize("raw", ["-3", "nan", "inf", "abc", "1e999"])
def test_a_bad_value_is_nan_with_a_problem_in_every_row_it_is_in(raw: str) -> None:
    """A bad text is flagged each time it is met, not read once and then trusted."""
    events = Events()
    rows = (ROWS[0] | {"rtime": raw, "scur": raw}, ROWS[1] | {"rtime": raw})
    s1, s2 = observe(stat_reply(STAT_COLUMNS, (*rows, ROWS[2])), events).rows
    scur, rtime = read_number({"scur": raw}, "scur")[1], read_number({"rtime": raw}, "rtime")[1]
    assert math.isnan(s1.sessions)
    assert math.isnan(s1.response_time)
    assert math.isnan(s2.response_time)
    assert s1.problem == f"{scur}; {rtime}"
    assert s2.problem == rtime
    assert events.count("source_bad_row", source="haproxy") == 2


def test_problems_are_listed_in_order_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    state = SERVERS_STATE.replace(
        "3 app 1 s1 127.0.0.1 2 0 12 10", "3 app 1 s1 127.0.0.1 2 0 300 10"
    )
    (s1, _) = observe(with_row(qtime="inf", lastchg="-1"), state=state).rows
    assert s1.problem == (
        "weight is not a number in 0..256; "
        "qtime='inf' is not a finite non-negative number; "
        "lastchg='-1' is not a finite non-negative number"
    )
    assert math.isnan(s1.weight)
    assert f"source_bad_row: app/s1: {s1.problem}" in caplog.text


def test_server_missing_from_servers_state_reads_stat_weight_and_status() -> None:
    state = "\n".join(line for line in SERVERS_STATE.splitlines() if " s2 " not in line)
    (_, s2) = observe(stat_reply(STAT_COLUMNS), state=state).rows
    assert (s2.weight, s2.state, s2.problem) == (20.0, "MAINT", "missing from 'show servers state'")
    assert math.isnan(s2.initial_weight)


def test_a_server_the_state_dump_lacks_is_flagged_by_the_source_and_held_by_the_planner() -> None:
    """The source's own cross-check of ``show stat`` against ``show servers state``
    produces the problem, and the planner then holds the server instead of moving it
    on a weight it could not confirm. Kills: removing the cross-check in
    ``_admin_view`` (the row would carry no problem and s1 would move to its static
    weight, as it does in the control with the full state dump)."""
    rules = PolicySection(static_weights={"app/s1": 1})
    full = observe(stat_reply(STAT_COLUMNS))
    moved = next(s for s in plan_weights(full, rules).servers() if s.server == "s1")
    assert (moved.current_weight, moved.planned_weight) == (12, 6)  # halfway toward 1

    events = Events()
    without_s1 = "\n".join(line for line in SERVERS_STATE.splitlines() if " s1 " not in line)
    lacking = observe(stat_reply(STAT_COLUMNS), events, state=without_s1)
    s1 = lacking.rows[0]
    assert (s1.server, s1.state, s1.weight) == ("s1", "UP", 10.0)  # from show stat
    assert s1.problem == "missing from 'show servers state'"
    assert events.count("source_bad_row", source="haproxy") == 1
    held = next(s for s in plan_weights(lacking, rules).servers() if s.server == "s1")
    assert held.planned_weight == held.current_weight == 10
    assert held.reason == "hold: missing from 'show servers state'"


def test_unsafe_name_is_a_problem() -> None:
    rows = observe(with_row(svname="s1;x")).rows
    assert rows[0].problem.startswith("unsafe name: it will not be written into a command; ")


def test_a_malformed_reply_is_source_malformed() -> None:
    events = Events()
    with pytest.raises(SourceUnavailable, match="lacks column"):
        observe(stat_reply([c for c in STAT_COLUMNS if c != "type"]), events)
    assert events.count("source_malformed", source="haproxy") == 1


def test_a_quoted_reply_gives_the_same_observation() -> None:
    plain = stat_reply(STAT_COLUMNS)
    quoted = plain.replace(",127.0.0.1:8001,", ',"127.0.0.1:8001",')
    assert repr(observe(quoted).rows) == repr(observe(plain).rows)
