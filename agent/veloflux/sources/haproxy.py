"""Observe HAProxy through its runtime API and return an Observation.

One connection per observation runs ``show info``, ``show cli level``, ``show stat``
and ``show servers state`` together. ``show stat`` has the traffic figures;
``show servers state`` has what ``show stat`` lacks: the initial weight and the admin
state that separates an operator's MAINT/DRAIN from a failed health check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import cast

from veloflux.errors import SourceUnavailable
from veloflux.events import Events
from veloflux.haproxy_replies import (
    ServerState,
    StatsFormatError,
    parse_info,
    parse_servers_state,
    parse_stat_columns,
    read_number,
)
from veloflux.haproxy_runtime import RuntimeAPI, RuntimeAPIError
from veloflux.names import is_safe_name
from veloflux.observation import Observation, PoolInfo, ProxyIdentity, ServerRow

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
# tuples parse_stat_columns returns: the ones _record unpacks, then _METRICS's.
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
        except RuntimeAPIError as exc:
            self._events.record("source_unavailable", str(exc), source="haproxy")
            raise SourceUnavailable(f"HAProxy runtime API {exc}") from exc
        except StatsFormatError as exc:
            self._events.record("source_malformed", str(exc), source="haproxy")
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
        allowed = set(wanted)
        numbers = {"": math.nan}  # an empty column is NaN, and not a problem
        records = [
            self._record(taken_at, row, algorithms, states, numbers)
            for row in server_rows
            if row[_PXNAME] in allowed
        ]
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

    def _record(
        self,
        taken_at: datetime,
        row: tuple[str, ...],
        algorithms: Mapping[str, str],
        states: Mapping[tuple[str, str], ServerState],
        numbers: dict[str, float],
    ) -> ServerRow:
        backend, server, _, _, status, address, backup, check_status, uweight = row[:_FIRST_METRIC]
        problems: list[str] = []
        if not (is_safe_name(backend) and is_safe_name(server)):
            problems.append("unsafe name: it will not be written into a command")
        state = states.get((backend, server))
        if state is None:
            problems.append("missing from 'show servers state'")
            weight, _ = read_number({"uweight": uweight}, "uweight")
            initial = math.nan
            word = status.split(" ")[0]
            server_state = word if word in ("MAINT", "DRAIN", "DOWN") else "UP"
        else:
            weight, initial, server_state = (
                float(state.user_weight),
                float(state.initial_weight),
                state.state,
            )
        if not 0 <= weight <= 256:
            problems.append("weight is not a number in 0..256")
            weight = math.nan
        metrics = _read_metrics(row[_FIRST_METRIC:], problems, numbers)
        problem = "; ".join(problems)
        if problems:
            self._events.record(
                "source_bad_row", f"{backend}/{server}: {problem}", source="haproxy"
            )
        # Positional, in ServerRow's field order; a unit test checks _METRICS follows it.
        return ServerRow(
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
            *metrics,
            check_status,
            problem,
        )


def _read_metrics(
    raws: tuple[str, ...], problems: list[str], numbers: dict[str, float]
) -> _Metrics:
    """The ``_METRICS`` values of one row, in order; appends a problem per bad value.

    ``numbers`` holds the good values already read in this observation, by their text
    (seeded with ``"": NaN``, an empty column): counters such as "0" repeat across
    servers, and a dict lookup is several times cheaper than ``float``. Only a bad
    value goes through ``read_number``, for its problem text. This runs 13 times per
    server per observation, so what it saves adds up.
    """
    values = []
    for raw, (_, column, scale) in zip(raws, _METRICS, strict=True):
        value = numbers.get(raw)
        if value is None:
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not 0.0 <= value < math.inf:  # NaN, infinite or negative: a bad value
                value, problem = read_number({column: raw}, column, scale)
                values.append(value)
                problems.append(problem)
                continue
            numbers[raw] = value
        values.append(value * scale)
    if math.isnan(values[_REQUESTS]):  # TCP mode: every session is one request
        values[_REQUESTS] = values[_SESSIONS]
    return cast(_Metrics, tuple(values))


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
