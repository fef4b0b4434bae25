"""Observe HAProxy through its runtime API and return an Observation.

One connection per observation runs ``show info``, ``show cli level``, ``show stat``
and ``show servers state`` together. ``show stat`` has the traffic figures;
``show servers state`` has what ``show stat`` lacks: the initial weight and the admin
state that separates an operator's MAINT/DRAIN from a failed health check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import cast

from veloflux.domain.observation import Observation, PoolInfo, ProxyIdentity, ServerRow
from veloflux.errors import SourceUnavailable
from veloflux.haproxy.replies import (
    ServerState,
    StatsFormatError,
    parse_info,
    parse_servers_state,
    parse_stat_columns,
    read_number,
)
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT, RuntimeAPI, RuntimeAPIError
from veloflux.util.events import Events
from veloflux.util.names import is_safe_name

# Algorithms whose servers take runtime weights at once.
DYNAMIC_ALGORITHMS = frozenset({"roundrobin", "leastconn", "random"})
# Hash-based algorithms: runtime weights work only with 'hash-type consistent', which
# `show stat` does not reveal, so the operator must say so in the config.
HASH_ALGORITHMS = frozenset({"source", "uri", "url_param", "hdr", "rdp-cookie", "hash"})
_STAT_TYPE_BACKEND, _STAT_TYPE_SERVER = "1", "2"
_MS = 0.001

# (Observation column, stat column, scale)
_METRICS: tuple[tuple[str, str, float], ...] = (
    ("sessions", "scur", 1.0),
    ("queue", "qcur", 1.0),
    ("session_rate", "rate", 1.0),
    ("sessions_total", "stot", 1.0),
    ("requests_total", "req_tot", 1.0),
    ("responses_5xx_total", "hrsp_5xx", 1.0),
    ("response_errors_total", "eresp", 1.0),
    ("connect_errors_total", "econ", 1.0),
    ("queue_time", "qtime", _MS),
    ("connect_time", "ctime", _MS),
    ("response_time", "rtime", _MS),
    ("total_time", "ttime", _MS),
    ("since_state_change", "lastchg", 1.0),
)

# The stat columns this source reads, ~20 of HAProxy's ~130, in the order of the
# tuples parse_stat_columns returns: the ones _server_rows unpacks, then _METRICS's.
_STAT_COLUMNS: tuple[str, ...] = (
    "pxname",
    "svname",
    "type",
    "algo",
    "status",
    "addr",
    "bck",
    "check_status",
    "uweight",
    *(stat_column for _, stat_column, _ in _METRICS),
    "slim",  # the server's maxconn: empty when it has none
)
_PXNAME, _SVNAME, _TYPE, _ALGO = 0, 1, 2, 3
_FIRST_METRIC = _STAT_COLUMNS.index(_METRICS[0][1])
_METRIC_NAMES = tuple(name for name, _, _ in _METRICS)
_SESSIONS = _METRIC_NAMES.index("sessions_total")
_REQUESTS = _METRIC_NAMES.index("requests_total")
# One float per _METRICS entry, so that ServerRow(..., *metrics, ...) type-checks.
_Metrics = tuple[
    float, float, float, float, float, float, float, float, float, float, float, float, float
]

Clock = Callable[[], datetime]


def classify_pool(
    name: str, algorithm: str, consistent_hash: frozenset[str], level: str = "admin"
) -> PoolInfo:
    """Decide whether VeloFlux may set weights in a backend, and if not, why."""
    if not algorithm and level != "admin":
        return PoolInfo(
            name, "", False, f"algorithm hidden at socket level {level}: VeloFlux needs level admin"
        )
    if algorithm in DYNAMIC_ALGORITHMS:
        return PoolInfo(name, algorithm, managed=True)
    if algorithm in HASH_ALGORITHMS:
        if name in consistent_hash:
            return PoolInfo(name, algorithm, managed=True)
        return PoolInfo(
            name,
            algorithm,
            managed=False,
            unmanaged_reason=(
                f"hash algorithm ({algorithm}): list it in haproxy.consistent_hash_backends "
                "if it uses 'hash-type consistent'"
            ),
        )
    if algorithm in ("static-rr", "first"):
        return PoolInfo(name, algorithm, False, f"static algorithm ({algorithm})")
    return PoolInfo(name, algorithm, False, f"unknown algorithm ({algorithm or 'none'})")


class HAProxySource:
    """Reads one HAProxy; every dependency (API, clock, events) is injected."""

    def __init__(
        self,
        api: RuntimeAPI,
        clock: Clock,
        events: Events,
        backends: Sequence[str] | None = None,
        consistent_hash_backends: Sequence[str] = (),
    ) -> None:
        self._api = api
        self._clock = clock
        self._events = events
        self._allowed = None if backends is None else tuple(backends)
        self._consistent = frozenset(consistent_hash_backends)
        self._names = SafeNames()

    def observe(self) -> Observation:
        """One reading; raises ``SourceUnavailable`` if HAProxy cannot be read at all."""
        try:
            info_text, level, stat_text, state_text = self._api.run_many(
                ["show info", "show cli level", "show stat -1 6 -1", "show servers state"]
            )
            taken_at = self._clock()
            info = parse_info(info_text)
            rows = parse_stat_columns(stat_text, _STAT_COLUMNS)
            states = parse_servers_state(state_text)
        # Counted here, logged at DEBUG: the error raised carries the message, and the
        # one who catches it (the daemon's tick line, the CLI's error) says it once.
        except RuntimeAPIError as exc:
            self._events.record(
                "source_unavailable", str(exc), source="haproxy", level=logging.DEBUG
            )
            raise SourceUnavailable(f"HAProxy runtime API {exc}") from exc
        except StatsFormatError as exc:
            self._events.record("source_malformed", str(exc), source="haproxy", level=logging.DEBUG)
            raise SourceUnavailable(f"HAProxy at {self._api.address}: {exc}") from exc
        return self._build(taken_at, info, level.strip(), rows, states)

    def _build(
        self,
        taken_at: datetime,
        info: Mapping[str, str],
        level: str,
        rows: list[tuple[str, ...]],
        states: Mapping[tuple[str, str], ServerState],
    ) -> Observation:
        """Rows are tuples of ``_STAT_COLUMNS``, as ``parse_stat_columns`` returns them."""
        algorithms = {r[_PXNAME]: r[_ALGO] for r in rows if r[_TYPE] == _STAT_TYPE_BACKEND}
        server_rows = [r for r in rows if r[_TYPE] == _STAT_TYPE_SERVER]
        in_order = list(dict.fromkeys(r[_PXNAME] for r in server_rows))
        present = set(in_order)
        wanted = in_order if self._allowed is None else list(self._allowed)
        if self._allowed is not None:
            allowed = set(wanted)
            server_rows = [r for r in server_rows if r[_PXNAME] in allowed]
        records = _server_rows(taken_at, server_rows, algorithms, states, self._names)
        for record in records:
            if record.problem:
                self._events.record(
                    "source_bad_row",
                    f"{record.pool}/{record.server}: {record.problem}",
                    source="haproxy",
                )
        pools = tuple(
            classify_pool(name, algorithms.get(name, ""), self._consistent, level)
            for name in wanted
            if name in present
        )
        missing = tuple(name for name in wanted if name not in present)
        for name in missing:
            self._events.record(
                "unknown_backend",
                f"backend {name!r} (haproxy.backends) has no servers in HAProxy at "
                f"{self._api.address}",
                source="haproxy",
            )
        return Observation(
            taken_at=taken_at,
            rows=tuple(records),
            pools=pools,
            proxy=_identity(self._api.address, info, level),
            missing_pools=missing,
        )


class SafeNames:
    """``is_safe_name``, remembered: the same 1,000 names come back every tick. Bounded:
    past ``limit`` names (a proxy whose servers churn), it starts again empty."""

    def __init__(self, limit: int = 100_000) -> None:
        self._known: dict[str, bool] = {}
        self._limit = limit

    def safe(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            if len(self._known) >= self._limit:
                self._known.clear()
            known = self._known[name] = is_safe_name(name)
        return known


def _server_rows(
    taken_at: datetime,
    rows: list[tuple[str, ...]],
    algorithms: Mapping[str, str],
    states: Mapping[tuple[str, str], ServerState],
    names: SafeNames,
) -> list[ServerRow]:
    """One ServerRow per ``show stat`` server row, its problems said in ``problem``.

    The numbers are read a column at a time (``_metric_column``), not a row at a time:
    13 list passes instead of 13,000 loop turns for 1,000 servers, the same values.
    """
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    metric_problems: dict[int, list[str]] = {}
    metrics = [
        _metric_column(columns[_FIRST_METRIC + i], column, scale, metric_problems)
        for i, (_, column, scale) in enumerate(_METRICS)
    ]
    limits = _metric_column(columns[-1], "slim", 1.0, metric_problems)
    # TCP mode has no request counter: every session is one request.
    metrics[_REQUESTS] = [
        sessions if requests != requests else requests  # requests != requests: NaN
        for requests, sessions in zip(metrics[_REQUESTS], metrics[_SESSIONS], strict=True)
    ]
    records = []
    identity = zip(*columns[:_FIRST_METRIC], zip(*metrics, strict=True), limits, strict=True)
    for i, (
        backend,
        server,
        _,
        _,
        status,
        address,
        backup,
        check,
        uweight,
        values,
        limit,
    ) in enumerate(identity):
        problems: list[str] = []
        if not (names.safe(backend) and names.safe(server)):
            problems.append("unsafe name: it will not be written into a command")
        state = states.get((backend, server))
        if state is None:
            problems.append("missing from 'show servers state'")
            weight, _ = read_number({"uweight": uweight}, "uweight")
            initial = math.nan
            word = status.split(" ")[0]
            server_state = word if word in ("MAINT", "DRAIN", "DOWN") else "UP"
        else:
            weight, initial = float(state.user_weight), float(state.initial_weight)
            server_state = state.state
        if not 0 <= weight <= HAPROXY_MAX_WEIGHT:
            problems.append(f"weight is not a number in 0..{HAPROXY_MAX_WEIGHT}")
            weight = math.nan
        problems += metric_problems.get(i, ())
        # Positional, in ServerRow's field order; a unit test checks _METRICS follows it.
        records.append(
            ServerRow(
                taken_at,
                "haproxy",
                backend,
                server,
                address,
                server_state,
                backup == "1",
                weight,
                initial,
                algorithms.get(backend, ""),
                *cast(_Metrics, values),
                check,
                "; ".join(problems),
                limit,
            )
        )
    return records


def _metric_column(
    raws: tuple[str, ...], column: str, scale: float, problems: dict[int, list[str]]
) -> list[float]:
    """One ``_METRICS`` column of every row, scaled; a bad value is NaN and a problem
    of its row (in ``problems``, by row position).

    Each distinct text is converted once: across a pool most counters and averages
    repeat ("0", the same few values), and a dict lookup is cheaper than parsing the
    text with ``float`` again.
    """
    by_text: dict[str, float] = {}
    bad: dict[str, str] = {}
    for raw in dict.fromkeys(raws):
        if raw == "":
            by_text[raw] = math.nan  # HAProxy leaves a column empty when it does not apply
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            value = math.nan
        if not 0.0 <= value < math.inf:  # NaN, infinite or negative: a bad value
            value, bad[raw] = read_number({column: raw}, column)
        by_text[raw] = value
    if bad:
        for i, raw in enumerate(raws):
            if raw in bad:
                problems.setdefault(i, []).append(bad[raw])
    return [by_text[raw] for raw in raws]


def _identity(address: str, info: Mapping[str, str], level: str) -> ProxyIdentity:
    def num(key: str) -> float:
        try:
            return float(info.get(key, "nan"))
        except ValueError:
            return math.nan

    pid = num("Pid")
    return ProxyIdentity(
        address=address,
        pid=int(pid) if math.isfinite(pid) else -1,
        started_at_epoch=num("Start_time_sec"),
        uptime_seconds=num("Uptime_sec"),
        version=info.get("Version", ""),
        level=level if level in ("admin", "operator", "user") else "unknown",
    )
