"""HAProxy's runtime API replies, mutated from real ones, through the parsers and the source.

The replies a real HAProxy gave (``tests/fixtures/replies/haproxy_*``: ``show info``,
``show stat -1 6 -1``, ``show servers state``) are broken the way a cut connection, a
version with other columns or a corrupted byte would (``mutations.py``: rows twice or
gone, fields replaced, added or dropped, names HAProxy never had, bytes flipped and
non-UTF-8), decoded as the runtime client decodes them, and parsed. The property: a
result whose names were in the reply and whose numbers are finite, or
``StatsFormatError``; and the column readers agree with the row readers on every
mutant (the same rows or the same error). End to end, ``HAProxySource`` gives an
Observation or ``SourceUnavailable``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.mutations import fixture, fuzz, text_reply
from veloflux.errors import SourceUnavailable
from veloflux.haproxy.replies import (
    StatsFormatError,
    parse_info,
    parse_servers_state,
    parse_servers_state_columns,
    parse_stat,
    parse_stat_columns,
    parse_stat_table,
    read_number,
)
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.source import HAProxySource
from veloflux.util.events import Events

FUZZ = fuzz(200)
INFO = fixture("haproxy_show_info.txt")
STAT = fixture("haproxy_show_stat.txt")
STATE = fixture("haproxy_show_servers_state.txt")
COLUMNS = ("pxname", "svname", "status", "weight", "stot", "rtime", "no_such_column", "type")
NUMBERS = ("weight", "stot", "scur", "qcur", "rtime", "ttime", "hrsp_5xx", "lastchg")

infos = text_reply(INFO, sep=":", first_row=0)
stats = text_reply(STAT, sep=",")
states = text_reply(STATE, sep=None, first_row=2)


def decoded(body: bytes) -> str:
    """As ``RuntimeAPI`` decodes what the socket delivered."""
    return body.decode("utf-8", errors="replace")


def outcome(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except StatsFormatError as exc:
        return f"StatsFormatError: {exc}"


def in_reply(name: str, text: str) -> bool:
    """``name`` is in ``text``, as it was or once CSV quoting is undone."""
    return name in text or name.replace('"', "") in text.replace('"', "")


@FUZZ
@given(infos)
def test_show_info_parses_to_its_own_lines_or_refuses(body: bytes) -> None:
    text = decoded(body)
    info = outcome(lambda: parse_info(text))
    if isinstance(info, str):
        return
    assert "Pid" in info
    for key, value in info.items():
        assert in_reply(key, text)
        assert in_reply(value, text)


@FUZZ
@given(stats)
def test_show_stat_rows_hold_names_from_the_reply_and_read_as_finite_numbers(body: bytes) -> None:
    text = decoded(body)
    rows = outcome(lambda: parse_stat(text))
    if isinstance(rows, str):
        return
    for row in rows:
        assert in_reply(row["pxname"], text)
        assert in_reply(row["svname"], text)
        for column in NUMBERS:
            value, problem = read_number(row, column)
            assert (math.isnan(value) and (problem or row.get(column, "") == "")) or (
                math.isfinite(value) and value >= 0 and not problem
            )


def _transposed(rows: Any, count: int) -> Any:
    if isinstance(rows, str):
        return rows
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * count


@FUZZ
@given(stats, st.permutations(COLUMNS).map(lambda c: c[:5]))
def test_show_stat_column_readers_agree_with_the_row_reader(
    body: bytes, columns: Sequence[str]
) -> None:
    """``parse_stat_columns`` and ``parse_stat_table`` are faster readings of the same
    reply: on any mutant, the same values as ``parse_stat``, or the same error."""
    text = decoded(body)
    rows = outcome(lambda: parse_stat(text))
    by_columns = outcome(lambda: parse_stat_columns(text, columns))
    expected = (
        rows
        if isinstance(rows, str)
        else [tuple(row.get(column, "") for column in columns) for row in rows]
    )
    assert by_columns == expected
    table = outcome(lambda: parse_stat_table(text, columns))
    assert table == _transposed(by_columns, len(columns))


@FUZZ
@given(states)
def test_show_servers_state_gives_known_servers_and_states_or_refuses(body: bytes) -> None:
    text = decoded(body)
    parsed = outcome(lambda: parse_servers_state(text))
    if isinstance(parsed, str):
        return
    for (backend, server), state in parsed.items():
        assert (state.backend, state.server) == (backend, server)
        assert backend in text
        assert server in text
        assert state.state in ("UP", "DOWN", "MAINT", "DRAIN")
        assert all(
            type(n) is int
            for n in (state.op_state, state.admin_state, state.user_weight, state.initial_weight)
        )


@FUZZ
@given(states)
def test_show_servers_state_columns_agree_with_the_row_reader(body: bytes) -> None:
    text = decoded(body)
    parsed = outcome(lambda: parse_servers_state(text))
    columns = outcome(lambda: parse_servers_state_columns(text))
    if isinstance(parsed, str):
        assert columns == parsed
        return
    assert not isinstance(columns, str)
    last = {
        (b, s): (state, uw, iw)
        for b, s, state, uw, iw in zip(*columns, strict=True)  # the later line wins
    }
    assert last == {key: (s.state, s.user_weight, s.initial_weight) for key, s in parsed.items()}


class Replies(RuntimeAPI):
    """A runtime API whose replies to the source's four commands are fixed texts."""

    def __init__(self, replies: Sequence[str]) -> None:
        super().__init__("unix:///nonexistent/fuzz.sock")
        self.replies = list(replies)

    def run_many(self, commands: Sequence[str]) -> list[str]:
        assert len(commands) == len(self.replies)
        return self.replies


@fuzz(150)
@given(infos, stats, states)
def test_the_source_reads_mutated_replies_or_reports_the_source_unavailable(
    info: bytes, stat: bytes, state: bytes
) -> None:
    replies = [decoded(info).rstrip("\n"), "admin", decoded(stat).rstrip("\n"), decoded(state)]
    source = HAProxySource(Replies(replies), lambda: datetime(2026, 1, 1, tzinfo=UTC), Events())
    try:
        observation = source.observe()
    except SourceUnavailable:
        return
    for row in observation.rows:
        assert in_reply(row.pool, replies[2])
        assert in_reply(row.server, replies[2])
        for value in (row.weight, row.sessions, row.requests_total, row.response_time):
            assert math.isnan(value) or (math.isfinite(value) and value >= 0)
