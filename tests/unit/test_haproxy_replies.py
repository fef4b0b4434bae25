"""Parsers for HAProxy 2.6 runtime API replies: by column name, and only StatsFormatError."""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloflux.haproxy.replies import (
    ServerState,
    ServerStates,
    StatsFormatError,
    parse_info,
    parse_servers_state,
    parse_servers_state_columns,
    parse_stat,
    parse_stat_columns,
    parse_stat_table,
    read_number,
)

PROPERTY = settings(max_examples=200, deadline=None)

# HAProxy 2.6's `show stat` columns, in its order, up to the ones VeloFlux reads.
STAT_HEADER_2_6 = (
    "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,"
    "throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
    "check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,"
    "req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
    "lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,"
    "agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,"
    "agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,"
    "intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,"
    "qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,"
    "used_conn_cur,need_conn_est,uweight"
)
STAT_COLUMNS = STAT_HEADER_2_6.split(",")

ROWS = (
    {
        "pxname": "app",
        "svname": "s1",
        "scur": "3",
        "stot": "120",
        "status": "UP",
        "weight": "10",
        "act": "1",
        "bck": "0",
        "type": "2",
        "rate": "4",
        "hrsp_5xx": "2",
        "qtime": "0",
        "ctime": "1",
        "rtime": "12",
        "ttime": "15",
        "addr": "127.0.0.1:8001",
        "mode": "http",
        "uweight": "10",
        "lastchg": "33",
        "check_status": "L4OK",
    },
    {
        "pxname": "app",
        "svname": "s2",
        "scur": "0",
        "stot": "0",
        "status": "MAINT",
        "weight": "20",
        "act": "0",
        "bck": "1",
        "type": "2",
        "rate": "0",
        "hrsp_5xx": "",
        "addr": "127.0.0.1:8002",
        "mode": "http",
        "uweight": "20",
        "lastchg": "5",
        "check_status": "",
    },
    {
        "pxname": "app",
        "svname": "BACKEND",
        "scur": "3",
        "stot": "120",
        "status": "UP",
        "weight": "10",
        "act": "1",
        "bck": "1",
        "type": "1",
        "rate": "4",
        "mode": "http",
        "algo": "roundrobin",
        "uweight": "10",
    },
)


def stat_reply(columns: list[str], rows: tuple[dict[str, str], ...] = ROWS) -> str:
    """A `show stat` reply as HAProxy 2.6 writes it: header and rows end with a comma."""
    lines = ["# " + ",".join(columns) + ","]
    lines += [",".join(r.get(c, "") for c in columns) + "," for r in rows]
    return "\n".join(lines) + "\n"


SERVERS_STATE_HEADER = (
    "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port"
)
SERVERS_STATE = (
    "1\n"
    f"# {SERVERS_STATE_HEADER}\n"
    "3 app 1 s1 127.0.0.1 2 0 12 10 33 6 3 4 6 0 0 0 - 8001 - 0 0 - - 0\n"
    "3 app 2 s2 127.0.0.1 2 1 20 20 5 6 3 4 6 0 0 0 - 8002 - 0 0 - - 0\n"
    "4 web 1 w1 10.0.0.7 0 0 0 5 7 6 3 0 6 0 0 0 - 80 - 0 0 - - 0\n"
)

SHOW_INFO = """\
Name: HAProxy
Version: 2.6.12-1+deb12u1
Release_date: 2023/04/08
Nbthread: 4
Nbproc: 1
Process_num: 1
Pid: 4242
Uptime: 0d 0h01m02s
Uptime_sec: 62
Start_time_sec: 1714564800
Memmax_MB: 0
node: lb-1
description:
"""

# --- show info -------------------------------------------------------------------------


def test_parse_info_reads_key_value_lines() -> None:
    info = parse_info(SHOW_INFO)
    assert info["Pid"] == "4242"
    assert info["Uptime_sec"] == "62"
    assert info["Start_time_sec"] == "1714564800"
    assert info["Version"] == "2.6.12-1+deb12u1"
    assert info["description"] == ""


def test_parse_info_keeps_colons_in_values() -> None:
    assert parse_info("Pid: 1\nUptime: 0d 0h01m02s\nurl: http://x:80/\n")["url"] == "http://x:80/"


@pytest.mark.parametrize(
    "text", ["", "\n", "Name: HAProxy\nUptime_sec: 3\n", "garbage", "Unknown command."]
)
def test_parse_info_without_pid_is_a_format_error(text: str) -> None:
    with pytest.raises(StatsFormatError, match="Pid"):
        parse_info(text)


# --- show stat -------------------------------------------------------------------------


def test_parse_stat_reads_rows_by_column_name() -> None:
    rows = parse_stat(stat_reply(STAT_COLUMNS))
    assert [(r["pxname"], r["svname"], r["type"]) for r in rows] == [
        ("app", "s1", "2"),
        ("app", "s2", "2"),
        ("app", "BACKEND", "1"),
    ]
    s1 = rows[0]
    assert s1["status"] == "UP"
    assert s1["weight"] == "10"
    assert s1["rtime"] == "12"
    assert s1["addr"] == "127.0.0.1:8001"
    assert rows[1]["hrsp_5xx"] == ""
    assert rows[2]["algo"] == "roundrobin"


def test_parse_stat_shuffled_columns_give_the_same_values() -> None:
    expected = parse_stat(stat_reply(STAT_COLUMNS))
    for seed in range(5):
        shuffled = list(STAT_COLUMNS)
        random.Random(seed).shuffle(shuffled)
        rows = parse_stat(stat_reply(shuffled))
        for want, got in zip(expected, rows, strict=True):
            assert {k: v for k, v in got.items() if k} == {k: v for k, v in want.items() if k}


@PROPERTY
@given(st.permutations(STAT_COLUMNS))
def test_parse_stat_reads_any_column_order(columns: list[str]) -> None:
    rows = parse_stat(stat_reply(columns))
    for row, source in zip(rows, ROWS, strict=True):
        for column in STAT_COLUMNS:
            assert row[column] == source.get(column, "")


def test_parse_stat_ignores_unknown_extra_columns() -> None:
    columns = [*STAT_COLUMNS[:5], "shiny_new_2_9_column", *STAT_COLUMNS[5:], "another_one"]
    rows = parse_stat(stat_reply(columns, tuple(r | {"another_one": "x"} for r in ROWS)))
    assert rows[0]["weight"] == "10"
    assert rows[0]["svname"] == "s1"


def test_parse_stat_of_a_reduced_column_set() -> None:
    rows = parse_stat(stat_reply(["type", "weight", "svname", "status", "pxname"]))
    assert rows[0] == {
        "type": "2",
        "weight": "10",
        "svname": "s1",
        "status": "UP",
        "pxname": "app",
        "": "",
    }


@pytest.mark.parametrize("column", ["pxname", "svname", "status", "weight", "type"])
def test_parse_stat_names_a_missing_required_column(column: str) -> None:
    columns = [c for c in STAT_COLUMNS if c != column]
    with pytest.raises(StatsFormatError, match=rf"lacks column\(s\) {column}\b"):
        parse_stat(stat_reply(columns))


def test_parse_stat_names_every_missing_required_column() -> None:
    columns = [c for c in STAT_COLUMNS if c not in ("weight", "type")]
    with pytest.raises(StatsFormatError, match=r"weight, type"):
        parse_stat(stat_reply(columns))


def test_parse_stat_header_only_is_no_rows() -> None:
    assert parse_stat("# " + ",".join(STAT_COLUMNS) + ",\n") == []


def test_parse_stat_skips_blank_lines() -> None:
    text = stat_reply(STAT_COLUMNS).replace("\napp,s2", "\n\napp,s2")
    assert len(parse_stat(text)) == 3


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "Unknown command. Please enter one of the following commands only :\n  help\n",
        "pxname,svname,status,weight,type\napp,s1,UP,1,2\n",  # header without '# '
        "#pxname,svname,status,weight,type\n",
        "Permission denied\n",
    ],
)
def test_parse_stat_refuses_replies_that_are_not_stat_csv(text: str) -> None:
    with pytest.raises(StatsFormatError):
        parse_stat(text)


def test_parse_stat_refuses_a_row_with_too_many_fields() -> None:
    text = stat_reply(STAT_COLUMNS).rstrip("\n") + ",x,y,z\n"
    with pytest.raises(StatsFormatError, match="line 4 has"):
        parse_stat(text)


def test_parse_stat_refuses_a_row_with_almost_no_fields() -> None:
    text = stat_reply(STAT_COLUMNS) + "app,s3\n"
    with pytest.raises(StatsFormatError, match="line 5 has 2 fields"):
        parse_stat(text)


def test_parse_stat_refuses_output_truncated_mid_row() -> None:
    full = stat_reply(STAT_COLUMNS)
    cut = full[: full.index(",UP,10,1,0") + len(",UP,10")]  # s1's row stops after 'weight'
    with pytest.raises(StatsFormatError):
        parse_stat(cut)


def test_parse_stat_oversized_field_is_a_format_error() -> None:
    text = "# pxname,svname,status,weight,type\napp,s1,UP," + "9" * 200_000 + ",2\n"
    with pytest.raises(StatsFormatError):
        parse_stat(text)


# --- show stat: the csv.reader path and parse_stat_columns -----------------------------


def quote_all(text: str) -> str:
    """The same reply with every row field quoted, as csv.writer would quote it."""
    header, *lines = text.splitlines()
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows(line.split(",") for line in lines)
    return f"{header}\n{out.getvalue()}"


def restricted(rows: list[dict[str, str]], columns: Sequence[str]) -> list[tuple[str, ...]]:
    """What parse_stat_columns must return: parse_stat's rows, read with row.get(c, "")."""
    return [tuple(r.get(c, "") for c in columns) for r in rows]


def cut_first_row(text: str, fields: int) -> str:
    """The reply with its first row cut after ``fields`` fields (a short row)."""
    header, first, *rest = text.splitlines()
    return "\n".join([header, ",".join(first.split(",")[:fields]), *rest]) + "\n"


# A reply with two 'rtime' columns, the first one 7 everywhere.
REPEATED_RTIME = stat_reply(
    [*STAT_COLUMNS[:20], "first_rtime", *STAT_COLUMNS[20:]],
    tuple(r | {"first_rtime": "7"} for r in ROWS),
).replace("first_rtime", "rtime")


def test_parse_stat_repeated_column_reads_its_last_position() -> None:
    assert [r["rtime"] for r in parse_stat(REPEATED_RTIME)] == ["12", "", ""]
    assert parse_stat_columns(REPEATED_RTIME, ["rtime"]) == [("12",), ("",), ("",)]
    short = cut_first_row(REPEATED_RTIME, 40)  # cut before the last rtime: the first one counts
    assert parse_stat(short)[0]["rtime"] == "7"
    assert parse_stat_columns(short, ["rtime"])[0] == ("7",)


def test_parse_stat_quoted_rows_read_as_the_plain_ones() -> None:
    """A '"' sends the reply through csv.reader; the rows are the comma-split ones."""
    plain = stat_reply(STAT_COLUMNS)
    assert '"' in quote_all(plain)
    assert parse_stat(quote_all(plain)) == parse_stat(plain)


def test_parse_stat_quoted_field_keeps_its_comma() -> None:
    text = stat_reply(STAT_COLUMNS).replace(",L4OK,", ',"L4OK, 2 ms",')
    assert parse_stat(text)[0]["check_status"] == "L4OK, 2 ms"
    assert parse_stat_columns(text, ["check_status", "addr"])[0] == ("L4OK, 2 ms", "127.0.0.1:8001")


def test_parse_stat_with_a_nul_reads_as_csv_reader_does() -> None:
    text = stat_reply(STAT_COLUMNS).replace(",L4OK,", ",L4\0OK,")
    header, *lines = text.splitlines()
    expected = [dict(zip(header[2:].split(","), r, strict=False)) for r in csv.reader(lines)]
    assert parse_stat(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        stat_reply(STAT_COLUMNS),
        quote_all(stat_reply(STAT_COLUMNS)),
        REPEATED_RTIME,
        cut_first_row(stat_reply(STAT_COLUMNS), 40),  # short, but has every required column
        cut_first_row(quote_all(stat_reply(STAT_COLUMNS)), 40),
        stat_reply(["type", "weight", "svname", "status", "pxname"]),
        "# " + ",".join(STAT_COLUMNS) + ",\n",
    ],
)
@pytest.mark.parametrize(
    "columns",
    [(), ("rtime",), ("svname", "pxname"), ("uweight", "no_such_column", "rtime"), STAT_COLUMNS],
)
def test_parse_stat_columns_is_parse_stat_restricted(text: str, columns: tuple[str, ...]) -> None:
    assert parse_stat_columns(text, columns) == restricted(parse_stat(text), columns)


@PROPERTY
@given(
    st.permutations(STAT_COLUMNS),
    st.lists(st.sampled_from([*STAT_COLUMNS, "no_such_column"]), max_size=25),
)
def test_parse_stat_columns_reads_any_column_order(order: list[str], columns: list[str]) -> None:
    text = stat_reply(order)
    assert parse_stat_columns(text, columns) == restricted(parse_stat(text), columns)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Unknown command.\n",
        stat_reply([c for c in STAT_COLUMNS if c != "type"]),
        stat_reply(STAT_COLUMNS).rstrip("\n") + ",x,y,z\n",
        stat_reply(STAT_COLUMNS) + "app,s3\n",
        cut_first_row(stat_reply(STAT_COLUMNS), 20),  # cut before 'type'
        cut_first_row(quote_all(stat_reply(STAT_COLUMNS)), 20),
        "# pxname,svname,status,weight,type\napp,s1,UP," + "9" * 200_000 + ",2\n",
    ],
)
def test_parse_stat_columns_refuses_what_parse_stat_refuses(text: str) -> None:
    with pytest.raises(StatsFormatError) as full:
        parse_stat(text)
    with pytest.raises(StatsFormatError) as selected:
        parse_stat_columns(text, ["rtime", "pxname"])
    assert str(selected.value) == str(full.value)


# --- show servers state ----------------------------------------------------------------


def test_parse_servers_state_reads_rows_by_name() -> None:
    states = parse_servers_state(SERVERS_STATE)
    assert set(states) == {("app", "s1"), ("app", "s2"), ("web", "w1")}
    assert states[("app", "s1")] == ServerState("app", "s1", 2, 0, 12, 10)
    assert states[("app", "s2")].admin_state == 1
    assert states[("web", "w1")].op_state == 0
    assert states[("web", "w1")].initial_weight == 5


def test_parse_servers_state_shuffled_columns_give_the_same_values() -> None:
    expected = parse_servers_state(SERVERS_STATE)
    lines = SERVERS_STATE.splitlines()
    header = lines[1][2:].split()
    rows = [line.split() for line in lines[2:]]
    for seed in range(5):
        order = list(range(len(header)))
        random.Random(seed).shuffle(order)
        text = "\n".join(
            [lines[0], "# " + " ".join(header[i] for i in order)]
            + [" ".join(r[i] for i in order) for r in rows]
        )
        assert parse_servers_state(text) == expected


def test_parse_servers_state_with_no_servers() -> None:
    assert parse_servers_state(f"1\n# {SERVERS_STATE_HEADER}\n") == {}


@pytest.mark.parametrize(
    "column",
    ["be_name", "srv_name", "srv_op_state", "srv_admin_state", "srv_uweight", "srv_iweight"],
)
def test_parse_servers_state_names_a_missing_column(column: str) -> None:
    text = SERVERS_STATE.replace(f" {column} ", " renamed_column ")
    with pytest.raises(StatsFormatError, match=column):
        parse_servers_state(text)


@pytest.mark.parametrize(
    "text",
    ["", "1\n", "1\nbe_id be_name\n", f"# {SERVERS_STATE_HEADER}\n", "Unknown command.\n"],
)
def test_parse_servers_state_without_header_is_a_format_error(text: str) -> None:
    with pytest.raises(StatsFormatError, match="header"):
        parse_servers_state(text)


def test_parse_servers_state_skips_a_row_cut_short_or_not_numeric() -> None:
    text = SERVERS_STATE + "3 app 3 s3 127.0.0.1 2\n" + "3 app 4 s4 127.0.0.1 2 x 1 1 0\n"
    states = parse_servers_state(text)
    assert ("app", "s3") not in states
    assert ("app", "s4") not in states
    assert len(states) == 3


def test_parse_servers_state_reads_a_row_cut_after_the_columns_it_needs() -> None:
    states = parse_servers_state(SERVERS_STATE + "3 app 3 s3 127.0.0.1 2 0 7 9\n")
    assert states[("app", "s3")] == ServerState("app", "s3", 2, 0, 7, 9)


def test_parse_servers_state_reads_a_repeated_column_where_dict_zip_does() -> None:
    """The last srv_uweight the row reaches wins, as dict(zip(header, fields)) has it."""
    lines = SERVERS_STATE.splitlines()
    text = "\n".join(
        [lines[0], lines[1] + " srv_uweight", lines[2] + " 99", lines[3]]  # s2: no extra field
    )
    states = parse_servers_state(text)
    assert states[("app", "s1")].user_weight == 99
    assert states[("app", "s2")].user_weight == 20


@pytest.mark.parametrize(
    ("op_state", "admin_state", "expected"),
    [
        (2, 0x00, "UP"),
        (1, 0x00, "UP"),
        (0, 0x00, "DOWN"),
        (3, 0x00, "DOWN"),
        (2, 0x01, "MAINT"),
        (2, 0x02, "MAINT"),
        (2, 0x04, "MAINT"),
        (2, 0x20, "MAINT"),
        (2, 0x40, "MAINT"),
        (0, 0x01, "MAINT"),
        (2, 0x08, "DRAIN"),
        (2, 0x10, "DRAIN"),
        (0, 0x08, "DRAIN"),
        (2, 0x01 | 0x08, "MAINT"),
        (2, 0x04 | 0x10, "MAINT"),
        (2, 0x80, "UP"),  # an unrelated flag is neither maintenance nor drain
    ],
)
def test_server_state_from_operational_and_admin_flags(
    op_state: int, admin_state: int, expected: str
) -> None:
    assert ServerState("app", "s1", op_state, admin_state, 1, 1).state == expected


@PROPERTY
@given(st.integers(0, 3), st.integers(0, 0xFF))
def test_maint_wins_over_drain_wins_over_health(op_state: int, admin: int) -> None:
    state = ServerState("app", "s1", op_state, admin, 1, 1).state
    if admin & 0x67:
        assert state == "MAINT"
    elif admin & 0x18:
        assert state == "DRAIN"
    else:
        assert state == ("UP" if op_state in (1, 2) else "DOWN")


# --- read_number -----------------------------------------------------------------------


def test_read_number_empty_or_absent_is_nan_without_a_problem() -> None:
    for row in ({"qcur": ""}, {}):
        value, problem = read_number(row, "qcur")
        assert math.isnan(value)
        assert problem == ""


@pytest.mark.parametrize("raw", ["abc", "nan", "NaN", "inf", "-inf", "-3", "1,5", "0x10"])
def test_read_number_garbage_is_nan_with_a_problem(raw: str) -> None:
    value, problem = read_number({"rtime": raw}, "rtime")
    assert math.isnan(value)
    assert problem.startswith("rtime=")


def test_read_number_problem_quotes_at_most_twenty_characters() -> None:
    _, problem = read_number({"rtime": "x" * 1000}, "rtime")
    assert "x" * 20 in problem
    assert "x" * 21 not in problem


@pytest.mark.parametrize(
    ("raw", "scale", "expected"),
    [
        ("12", 1.0, 12.0),
        ("0", 1.0, 0.0),
        ("1500", 0.001, 1.5),
        ("250", 0.001, 0.25),
        ("3.5", 2.0, 7.0),
    ],
)
def test_read_number_scales(raw: str, scale: float, expected: float) -> None:
    value, problem = read_number({"c": raw}, "c", scale)
    assert value == pytest.approx(expected)
    assert problem == ""


@PROPERTY
@given(st.integers(min_value=0, max_value=10**12))
def test_read_number_reads_every_non_negative_integer(n: int) -> None:
    assert read_number({"stot": str(n)}, "stot") == (float(n), "")


# --- no parser raises anything but StatsFormatError ------------------------------------

any_text = st.text(max_size=300) | st.from_regex(r"\A# [a-z,]{0,60}\n[^\n]{0,60}\n?\Z")


@PROPERTY
@given(any_text)
def test_parse_info_never_raises_another_exception(text: str) -> None:
    try:
        info = parse_info(text)
    except StatsFormatError:
        return
    assert "Pid" in info


# Any text, or a plausible header followed by any text.
stat_like_text = any_text | st.builds(
    lambda h, b: h + b, st.just("# pxname,svname,status,weight,type\n"), st.text(max_size=200)
)


@PROPERTY
@given(stat_like_text)
def test_parse_stat_never_raises_another_exception(text: str) -> None:
    try:
        rows = parse_stat(text)
    except StatsFormatError:
        return
    assert all(isinstance(r, dict) for r in rows)


@PROPERTY
@given(stat_like_text)
def test_parse_stat_columns_agrees_with_parse_stat_on_any_text(text: str) -> None:
    columns = ["type", "weight", "no_such_column", "pxname"]

    def outcome(parse: Callable[[], object]) -> object:
        try:
            return parse()
        except StatsFormatError as exc:
            return f"StatsFormatError: {exc}"

    assert outcome(lambda: parse_stat_columns(text, columns)) == outcome(
        lambda: restricted(parse_stat(text), columns)
    )


@PROPERTY
@given(any_text | st.builds(lambda b: f"1\n# {SERVERS_STATE_HEADER}\n" + b, st.text(max_size=200)))
def test_parse_servers_state_never_raises_another_exception(text: str) -> None:
    try:
        states = parse_servers_state(text)
    except StatsFormatError:
        return
    assert all(isinstance(s, ServerState) for s in states.values())


@PROPERTY
@given(st.text(max_size=40), st.sampled_from([1.0, 0.001]))
def test_read_number_is_nan_with_problem_or_finite_non_negative(raw: str, scale: float) -> None:
    value, problem = read_number({"c": raw}, "c", scale)
    if problem or raw == "":
        assert math.isnan(value)
    else:
        assert math.isfinite(value)
        assert value >= 0


# --- the column readers against the row readers ----------------------------------------


def outcome(parse: Callable[[], object]) -> object:
    """What a parser returns, or the message of the StatsFormatError it raises."""
    try:
        return parse()
    except StatsFormatError as exc:
        return f"StatsFormatError: {exc}"


def transposed(rows: list[tuple[str, ...]], columns: Sequence[str]) -> list[list[str]]:
    """What parse_stat_table must return: parse_stat_columns's rows as columns."""
    return [[row[i] for row in rows] for i in range(len(columns))]


def stat_table_agrees(text: str, columns: Sequence[str]) -> None:
    assert outcome(lambda: parse_stat_table(text, columns)) == outcome(
        lambda: transposed(parse_stat_columns(text, columns), columns)
    )


PLAIN = stat_reply(STAT_COLUMNS)


@pytest.mark.parametrize(
    "text",
    [
        PLAIN,
        quote_all(PLAIN),
        REPEATED_RTIME,
        cut_first_row(PLAIN, 40),  # short, but has every required column
        cut_first_row(PLAIN, 20),  # cut before 'type': refused
        stat_reply(["type", "weight", "svname", "status", "pxname"]),
        "# " + ",".join(STAT_COLUMNS) + ",\n",
        PLAIN.replace("\napp,s2,", "\n\napp,s2,"),  # a blank line
        PLAIN.replace(",L4OK,", ",L4\0OK,"),  # a NUL: the lines' mark
        PLAIN.replace(",L4OK,", ",L4\rOK,"),  # a line break within a row
        PLAIN.rstrip("\n") + ",x,y,z\n",  # a row too long
        PLAIN.replace("\napp,BACKEND,", "\napp,BACKEND,,"),  # one row longer, still fine
        PLAIN + "app,s3\n",
        "# pxname,svname,status,weight,type\napp,s1,UP," + "9" * 200_000 + ",2\n",
        # Lines of 6, 5 and 7 fields: as many as three of 6, but not three of 6.
        "# pxname,svname,status,weight,type,rtime\napp,s1,UP,1,2,3\napp,s2,UP,1,2\n"
        "app,s3,UP,1,2,7,\n",
        # The same, the field where the second mark would be a NUL, as the mark is.
        "# pxname,svname,status,weight,type,rtime\napp,s1,UP,1,2,3\napp,s2,UP,1,2\n"
        "\0,s3,UP,1,2,7,\n",
    ],
)
@pytest.mark.parametrize(
    "columns", [(), ("rtime",), ("uweight", "no_such_column", "pxname"), STAT_COLUMNS]
)
def test_parse_stat_table_is_parse_stat_columns_transposed(
    text: str, columns: tuple[str, ...]
) -> None:
    """Kills: the one-string split taken where lines differ in length, hold a quote, a
    blank line or the mark between lines, or a column read from the wrong place."""
    stat_table_agrees(text, columns)


# Rows of a few fields from an alphabet with every character that matters to a split.
stat_rows = st.lists(
    st.lists(st.sampled_from(["", "1", "app", "s1", "2", ",", '"', "\0", "\r", "x y"]), max_size=7),
    max_size=6,
)


@PROPERTY
@given(stat_rows, st.integers(min_value=0, max_value=6))
def test_parse_stat_table_agrees_with_parse_stat_columns_on_any_rows(
    rows: list[list[str]], width: int
) -> None:
    header = "# pxname,svname,status,weight,type,rtime"
    fixed = [(row + [""] * width)[: max(width, 5)] if width else row for row in rows]
    text = "\n".join([header, *(",".join(row) for row in fixed)])
    stat_table_agrees(text, ["type", "rtime", "no_such_column", "pxname"])


def state_mapping(states: ServerStates) -> dict[tuple[str, str], tuple[str, int, int]]:
    """The columns read as parse_servers_state's dict is: a server by name, the later
    line winning."""
    return {
        (backend, server): (state, user, initial)
        for backend, server, state, user, initial in zip(*states, strict=True)
    }


def expected_mapping(text: str) -> dict[tuple[str, str], tuple[str, int, int]]:
    return {
        key: (s.state, s.user_weight, s.initial_weight)
        for key, s in parse_servers_state(text).items()
    }


@pytest.mark.parametrize(
    "text",
    [
        SERVERS_STATE,
        SERVERS_STATE + "4 web 2 w2 10.0.0.8 2 8 7 5\n",  # a short line
        SERVERS_STATE + SERVERS_STATE.splitlines()[2].replace(" 12 10 ", " 13 10 ") + "\n",
        SERVERS_STATE.replace(" 2 1 20 ", " 2 x 20 "),  # a number that does not read
        SERVERS_STATE.replace("3 app 1 s1", "3\tapp  1 s1").replace("4 web", "  4 web"),
        SERVERS_STATE.replace(" 8001 ", " 8001 extra "),  # one line longer
        SERVERS_STATE.replace(" 8001 ", " 80\x0001 "),  # the lines' mark
        SERVERS_STATE.replace("\n4 web", "\n\n   \n4 web"),  # blank lines
        # Lines of 25, 24 and 26 fields, the third one's first a NUL, as the mark is.
        SERVERS_STATE.replace(" - 8002 ", " 8002 ").replace("4 web 1", "\0 4 web 1"),
        f"1\n# {SERVERS_STATE_HEADER}\n",
        "1\n# be_id be_name\n",
        "garbage",
    ],
)
def test_parse_servers_state_columns_read_as_parse_servers_state(text: str) -> None:
    """Kills: a line split as one string with the others when it differs from them, a
    line a number of which does not read kept, or a server listed twice read first."""
    assert outcome(lambda: state_mapping(parse_servers_state_columns(text))) == outcome(
        lambda: expected_mapping(text)
    )


state_lines = st.lists(
    st.lists(
        st.sampled_from(["1", "2", "0", "8", "100", "app", "s1", "s2", "x", "\0"]), max_size=11
    ).map(" ".join),
    max_size=6,
)


@PROPERTY
@given(state_lines)
def test_parse_servers_state_columns_agree_on_any_lines(lines: list[str]) -> None:
    text = "\n".join(["1", "# be_id be_name srv_id srv_name srv_addr srv_op_state "
                      "srv_admin_state srv_uweight srv_iweight", *lines])  # fmt: skip
    assert outcome(lambda: state_mapping(parse_servers_state_columns(text))) == outcome(
        lambda: expected_mapping(text)
    )
