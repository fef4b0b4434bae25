"""Pure parsers for HAProxy runtime API replies, by column name, never by position.

Column order and sets change between HAProxy versions; a parser that reads columns by
position reads the wrong numbers after an upgrade. Every function here is pure and
raises ``StatsFormatError`` when a reply is not what it claims to be.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from veloflux.errors import VelofluxError

# Columns VeloFlux cannot work without; any other column may come and go.
REQUIRED_STAT_COLUMNS = ("pxname", "svname", "status", "weight", "type")

# Flags of srv_admin_state in `show servers state` (HAProxy's SRV_ADMF_*).
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # forced, inherited, config, resolution, hostname
_ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited
_OP_STOPPED, _OP_STARTING, _OP_RUNNING, _OP_STOPPING = 0, 1, 2, 3


_WEIGHT_REPLY = re.compile(r"([0-9]{1,4}) \(initial ([0-9]{1,4})\)")


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
    if not lines or not lines[0].startswith("# "):
        raise StatsFormatError("'show stat' reply does not start with its '# pxname,...' header")
    header = lines[0][2:].split(",")
    missing = [c for c in REQUIRED_STAT_COLUMNS if c not in header]
    if missing:
        raise StatsFormatError(
            f"'show stat' lacks column(s) {', '.join(missing)}: unsupported HAProxy version?"
        )
    # A row cut short before any required column is a truncated reply, not a short row.
    needed = max(header.index(c) for c in REQUIRED_STAT_COLUMNS) + 1
    rows = []
    try:
        records = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
    except csv.Error as exc:
        raise StatsFormatError(f"'show stat' reply is not valid CSV: {exc}") from None
    for number, record in enumerate(records, start=2):
        if not record:
            continue
        if len(record) < needed or len(record) > len(header) + 1:
            raise StatsFormatError(
                f"'show stat' line {number} has {len(record)} fields for {len(header)} columns"
            )
        rows.append(dict(zip(header, record, strict=False)))
    return rows


@dataclass(frozen=True)
class ServerState:
    """One line of ``show servers state``: the admin view of a server."""

    backend: str
    server: str
    op_state: int
    admin_state: int
    user_weight: int
    initial_weight: int

    @property
    def state(self) -> str:
        """UP, DOWN, MAINT or DRAIN; MAINT and DRAIN are an operator's decision."""
        if self.admin_state & _ADMIN_MAINT:
            return "MAINT"
        if self.admin_state & _ADMIN_DRAIN:
            return "DRAIN"
        if self.op_state in (_OP_STARTING, _OP_RUNNING):
            return "UP"
        return "DOWN"


def parse_servers_state(text: str) -> dict[tuple[str, str], ServerState]:
    """``show servers state``: version line, ``# be_id be_name ...`` header, then rows."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[1].startswith("# "):
        raise StatsFormatError("'show servers state' reply has no '# be_id ...' header")
    header = lines[1][2:].split()
    needed = (
        "be_name",
        "srv_name",
        "srv_op_state",
        "srv_admin_state",
        "srv_uweight",
        "srv_iweight",
    )
    missing = [c for c in needed if c not in header]
    if missing:
        raise StatsFormatError(f"'show servers state' lacks column(s) {', '.join(missing)}")
    states: dict[tuple[str, str], ServerState] = {}
    for line in lines[2:]:
        fields = dict(zip(header, line.split(), strict=False))
        try:
            state = ServerState(
                backend=fields["be_name"],
                server=fields["srv_name"],
                op_state=int(fields["srv_op_state"]),
                admin_state=int(fields["srv_admin_state"]),
                user_weight=int(fields["srv_uweight"]),
                initial_weight=int(fields["srv_iweight"]),
            )
        except (KeyError, ValueError):
            continue  # the stat row for this server is then marked as untrustworthy
        states[(state.backend, state.server)] = state
    return states


def parse_weight_reply(text: str) -> tuple[int, int]:
    """``get weight b/s`` answers ``12 (initial 10)``; return (current, initial)."""
    match = _WEIGHT_REPLY.fullmatch(text.strip())
    if match:
        return int(match.group(1)), int(match.group(2))
    raise StatsFormatError(f"unexpected 'get weight' reply: {text.strip()!r}")


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
