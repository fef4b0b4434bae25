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
from typing import Any

from veloflux.errors import SourceUnavailable
from veloflux.events import Events
from veloflux.haproxy_replies import (
    ServerState,
    StatsFormatError,
    parse_info,
    parse_servers_state,
    parse_stat,
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
            rows = parse_stat(stat_text)
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
        rows: list[dict[str, str]],
        states: Mapping[tuple[str, str], ServerState],
    ) -> Observation:
        algorithms = {
            r["pxname"]: r.get("algo", "") for r in rows if r.get("type") == _STAT_TYPE_BACKEND
        }
        server_rows = [r for r in rows if r.get("type") == _STAT_TYPE_SERVER]
        present = {r["pxname"] for r in server_rows}
        in_order = list(dict.fromkeys(r["pxname"] for r in server_rows))
        wanted = in_order if self._allowed is None else list(self._allowed)
        records = []
        for row in server_rows:
            if row["pxname"] in wanted:
                records.append(self._record(taken_at, row, algorithms, states))
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
        row: Mapping[str, str],
        algorithms: Mapping[str, str],
        states: Mapping[tuple[str, str], ServerState],
    ) -> ServerRow:
        backend, server = row["pxname"], row["svname"]
        problems: list[str] = []
        if not (is_safe_name(backend) and is_safe_name(server)):
            problems.append("unsafe name: it will not be written into a command")
        state = states.get((backend, server))
        if state is None:
            problems.append("missing from 'show servers state'")
            weight, _ = read_number(row, "uweight")
            initial = math.nan
            word = row.get("status", "").split(" ")[0]
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
        record: dict[str, Any] = {
            "time": taken_at,
            "source": "haproxy",
            "pool": backend,
            "server": server,
            "address": row.get("addr", ""),
            "state": server_state,
            "backup": row.get("bck") == "1",
            "weight": weight,
            "initial_weight": initial,
            "algorithm": algorithms.get(backend, ""),
            "check_status": row.get("check_status", ""),
        }
        for column, stat_column, scale in _METRICS:
            value, problem = read_number(row, stat_column, scale)
            record[column] = value
            if problem:
                problems.append(problem)
        if math.isnan(record["requests_total"]):  # TCP mode: every session is one request
            record["requests_total"] = record["sessions_total"]
        record["problem"] = "; ".join(problems)
        if problems:
            self._events.record(
                "source_bad_row",
                f"{backend}/{server}: {record['problem']}",
                source="haproxy",
            )
        return ServerRow(**record)


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
