"""Pure parsers for HAProxy runtime API replies, by column name, never by position.

Column order and sets change between HAProxy versions; a parser that reads columns by
position reads the wrong numbers after an upgrade. Every function here is pure and
raises ``StatsFormatError`` when a reply is not what it claims to be.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import NamedTuple

from veloflux.errors import VelofluxError

# Between lines split as one string (``_uniform_fields``); a reply holding it is split
# line by line.
_MARK = "\x00"
# Columns VeloFlux cannot work without; any other column may come and go.
REQUIRED_STAT_COLUMNS = ("pxname", "svname", "status", "weight", "type")

# Flags of srv_admin_state in `show servers state` (HAProxy's SRV_ADMF_*).
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # forced, inherited, config, resolution, hostname
_ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited
_OP_STOPPED, _OP_STARTING, _OP_RUNNING, _OP_STOPPING = 0, 1, 2, 3
# Columns of `show servers state` that ServerState is built from, in its field order.
_STATE_COLUMNS = (
    "be_name",
    "srv_name",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
)


class StatsFormatError(VelofluxError):
    """A runtime API reply that does not parse as the documented format."""


def parse_info(text: str) -> dict[str, str]:
    """``show info``: ``Key: value`` lines into a mapping."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    if "Pid" not in info:
        raise StatsFormatError("'show info' reply has no Pid line; is this HAProxy's runtime API?")
    return info


def parse_stat(text: str) -> list[dict[str, str]]:
    """``show stat``: the CSV with its ``# pxname,svname,...`` header, as dicts by column."""
    lines = text.splitlines()
    header = _stat_header(lines)
    return [dict(zip(header, record, strict=False)) for record in _stat_records(lines, header)]


def parse_stat_columns(text: str, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """``show stat`` rows as tuples of the values of ``columns``, in that order.

    The same checks and values as ``parse_stat``, with ``""`` for a column a row does
    not have, as ``row.get(column, "")`` reads it. A caller that reads 20 of HAProxy's
    ~130 columns then neither splits the columns after its last one nor builds a
    dict of 130 entries per server.
    """
    lines = text.splitlines()
    header = _stat_header(lines)
    # Each column at its last position in the header, as dict(zip(header, record))
    # reads it; a column the header lacks reads the "" appended to every record.
    last = {name: index for index, name in enumerate(header)}
    indexes = [last.get(c, -1) for c in columns]
    stop = max(indexes, default=-1) + 1
    pick = _tuple_getter(indexes)
    rows = []
    for record in _stat_records(lines, header, stop):
        if len(record) >= stop:  # the row has every column asked for: the common case
            record.append("")
            rows.append(pick(record))
        else:  # a row cut short after the required columns: rare, so the plain way
            by_name = dict(zip(header, record, strict=False))
            rows.append(tuple(by_name.get(c, "") for c in columns))
    return rows


def parse_stat_table(text: str, columns: Sequence[str]) -> list[list[str]]:
    """``show stat`` as one list per name in ``columns``: ``parse_stat_columns``'s rows,
    transposed, the same values and the same errors.

    When every line has the same number of fields and no quote (HAProxy's replies), the
    lines are split as one string and each column is a slice of that one list: no list
    per line, and so nothing for the garbage collector to walk through 1,000 times.
    Any other reply is read row by row, by ``parse_stat_columns``.
    """
    lines = text.splitlines()
    header = _stat_header(lines)
    body = lines[1:]
    last = {name: index for index, name in enumerate(header)}
    indexes = [last.get(c, -1) for c in columns]
    stop = max(indexes, default=-1) + 1
    width = body[0].count(",") + 1 if body else 0
    needed = max(header.index(c) for c in REQUIRED_STAT_COLUMNS) + 1
    fields = None
    if (
        max(needed, stop) <= width <= len(header) + 1
        and '"' not in text
        and max(map(len, body)) <= csv.field_size_limit()
    ):
        fields = _uniform_fields(text, body, ",", width)
    if fields is None:
        rows = parse_stat_columns(text, columns)
        return (
            [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in columns]
        )
    return [fields[i :: width + 1] if i >= 0 else [""] * len(body) for i in indexes]


def _uniform_fields(text: str, lines: list[str], sep: str | None, width: int) -> list[str] | None:
    """The fields of ``lines`` (of ``text``), split on ``sep`` as ``str.split`` does, as
    one list if every line has ``width`` of them, else None: each line's fields, then a
    mark, then the next line's, so that field j of every line is ``[j :: width + 1]``.

    One split of one string: no list per line. The marks prove the count: there is one
    per line break, none in the text, so the marks sit ``width + 1`` apart only if every
    line has ``width`` fields."""
    if not lines or _MARK in text:
        return None
    fields = (f"{sep or ' '}{_MARK}{sep or ' '}").join(lines).split(sep)
    count = len(lines)
    if len(fields) != count * (width + 1) - 1:
        return None
    if count > 1 and set(fields[width :: width + 1]) != {_MARK}:
        return None
    return fields


def _tuple_getter(indexes: Sequence[int]) -> Callable[[Sequence[str]], tuple[str, ...]]:
    """``itemgetter(*indexes)``, but a tuple for any count (``itemgetter(i)`` is not one)."""
    if len(indexes) > 1:
        return itemgetter(*indexes)
    return lambda fields: tuple(fields[i] for i in indexes)


def _stat_header(lines: list[str]) -> list[str]:
    """The column names of a ``show stat`` reply, with the required ones checked."""
    if not lines or not lines[0].startswith("# "):
        raise StatsFormatError("'show stat' reply does not start with its '# pxname,...' header")
    header = lines[0][2:].split(",")
    missing = [c for c in REQUIRED_STAT_COLUMNS if c not in header]
    if missing:
        raise StatsFormatError(
            f"'show stat' lacks column(s) {', '.join(missing)}: unsupported HAProxy version?"
        )
    return header


def _stat_records(lines: list[str], header: list[str], stop: int = -1) -> list[list[str]]:
    """The fields of each row after the header line, counts checked, blank lines skipped.

    With ``stop`` >= 0, a row may be split only up to field ``stop``, the rest of its
    line left in one more field, for callers that read no column after that.
    """
    # A row cut short before any required column is a truncated reply, not a short row.
    needed = max(header.index(c) for c in REQUIRED_STAT_COLUMNS) + 1
    records = []
    for number, (count, record) in enumerate(_split_csv(lines[1:], stop), start=2):
        if not count:
            continue
        if count < needed or count > len(header) + 1:
            raise StatsFormatError(
                f"'show stat' line {number} has {count} fields for {len(header)} columns"
            )
        records.append(record)
    return records


def _split_csv(lines: list[str], stop: int) -> list[tuple[int, list[str]]]:
    """Each CSV line's field count and fields (split up to ``stop`` if it is >= 0).

    HAProxy quotes a field only when it holds a comma or a quote, so a reply without
    ``"`` splits on commas (``str.split``) exactly as csv.reader would, without
    csv.reader's per-character parsing. A reply with a quote, or with a line longer
    than csv's field limit, goes through csv.reader, whole, so that its fields and its
    errors stay csv.reader's own.
    """
    body = "\n".join(lines)
    if '"' not in body and max(map(len, lines), default=0) <= csv.field_size_limit():
        return [(line.count(",") + 1, line.split(",", stop)) if line else (0, []) for line in lines]
    try:
        return [(len(record), record) for record in csv.reader(io.StringIO(body))]
    except csv.Error as exc:
        raise StatsFormatError(f"'show stat' reply is not valid CSV: {exc}") from None


class ServerState(NamedTuple):
    """One line of ``show servers state``: the admin view of a server (a named tuple:
    one is made per server per tick)."""

    backend: str
    server: str
    op_state: int
    admin_state: int
    user_weight: int
    initial_weight: int

    @property
    def state(self) -> str:
        """UP, DOWN, MAINT or DRAIN; MAINT and DRAIN are an operator's decision."""
        return server_state(self.op_state, self.admin_state)


def server_state(op_state: int, admin_state: int) -> str:
    """A server's state from its ``srv_op_state`` and ``srv_admin_state``."""
    if admin_state & _ADMIN_MAINT:
        return "MAINT"
    if admin_state & _ADMIN_DRAIN:
        return "DRAIN"
    if op_state in (_OP_STARTING, _OP_RUNNING):
        return "UP"
    return "DOWN"


def parse_servers_state(text: str) -> dict[tuple[str, str], ServerState]:
    """``show servers state``: version line, ``# be_id be_name ...`` header, then rows."""
    lines, header, indexes = _state_lines(text)
    stop = max(indexes) + 1
    pick = itemgetter(*indexes)
    states: dict[tuple[str, str], ServerState] = {}
    for line in lines:
        fields = line.split(None, stop)
        try:
            if len(fields) >= stop:
                backend, server, op_state, admin_state, uweight, iweight = pick(fields)
            else:
                by_name = dict(zip(header, fields, strict=False))
                backend, server, op_state, admin_state, uweight, iweight = (
                    by_name[c] for c in _STATE_COLUMNS
                )
            state = ServerState(
                backend, server, int(op_state), int(admin_state), int(uweight), int(iweight)
            )
        except (KeyError, ValueError):
            continue  # the stat row for this server is then marked as untrustworthy
        states[(backend, server)] = state
    return states


class ServerStates(NamedTuple):
    """``show servers state`` as columns, a line a row, in the reply's order. A line
    ``parse_servers_state`` skips is not in them; a server on two lines is twice, and
    read as the dict that function returns would be, the later line wins."""

    backend: list[str]
    server: list[str]
    state: list[str]
    user_weight: list[int]
    initial_weight: list[int]


def parse_servers_state_columns(text: str) -> ServerStates:
    """``parse_servers_state`` as columns (``ServerStates``), for a reader of every
    server: no ServerState per line, and each distinct number read once (the weights
    and states of a pool repeat). A reply whose lines are not all alike (one short,
    one with more fields) or with a number that does not read goes through
    ``parse_servers_state``, whose dict then gives the columns."""
    lines, _, indexes = _state_lines(text)
    width = len(lines[0].split()) if lines else 0
    fields = _uniform_fields(text, lines, None, width) if width > max(indexes) else None
    if fields is None:
        return _state_columns(parse_servers_state(text))
    backend, server, op_state, admin_state, uweight, iweight = (
        fields[i :: width + 1] for i in indexes
    )
    try:
        ops, admins, uweights, iweights = (
            {raw: int(raw) for raw in set(column)}
            for column in (op_state, admin_state, uweight, iweight)
        )
    except ValueError:
        return _state_columns(parse_servers_state(text))
    states = {
        (op, admin): server_state(ops[op], admins[admin])
        for op, admin in set(zip(op_state, admin_state, strict=True))
    }
    return ServerStates(
        backend,
        server,
        list(map(states.__getitem__, zip(op_state, admin_state, strict=True))),
        list(map(uweights.__getitem__, uweight)),
        list(map(iweights.__getitem__, iweight)),
    )


def _state_columns(states: Mapping[tuple[str, str], ServerState]) -> ServerStates:
    values = list(states.values())
    return ServerStates(
        [s.backend for s in values],
        [s.server for s in values],
        [s.state for s in values],
        [s.user_weight for s in values],
        [s.initial_weight for s in values],
    )


def _state_lines(text: str) -> tuple[list[str], list[str], list[int]]:
    """A ``show servers state`` reply's server lines, its header, and where in a line
    the columns of ``_STATE_COLUMNS`` are: each at its last position in the header, as
    dict(zip(header, fields)) reads it."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[1].startswith("# "):
        raise StatsFormatError("'show servers state' reply has no '# be_id ...' header")
    header = lines[1][2:].split()
    missing = [c for c in _STATE_COLUMNS if c not in header]
    if missing:
        raise StatsFormatError(f"'show servers state' lacks column(s) {', '.join(missing)}")
    last = {name: index for index, name in enumerate(header)}
    return lines[2:], header, [last[c] for c in _STATE_COLUMNS]


def read_number(row: Mapping[str, str], column: str, scale: float = 1.0) -> tuple[float, str]:
    """A stat column as a non-negative finite number, and a problem if it is garbage.

    An empty or absent column is NaN with no problem: HAProxy leaves columns empty
    when they do not apply. Text, NaN, infinities and negative numbers are NaN *with*
    a problem, because they mean the reply itself cannot be trusted.
    """
    raw = row.get(column, "")
    if raw == "":
        return math.nan, ""
    try:
        value = float(raw)
    except ValueError:
        return math.nan, f"{column}={raw[:20]!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return math.nan, f"{column}={raw[:20]!r} is not a finite non-negative number"
    return value * scale, ""
