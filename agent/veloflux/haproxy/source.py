"""Observe HAProxy through its runtime API and return an Observation.

One connection per observation runs ``show info``, ``show cli level``, ``show stat``
and ``show servers state`` together. ``show stat`` has the traffic figures;
``show servers state`` has what ``show stat`` lacks: the initial weight and the admin
state that separates an operator's MAINT/DRAIN from a failed health check. Replies
are read into columns (a list per figure), not a record per server: HAProxy replicas
are merged a column at a time (``veloflux.agent.replicas``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from itertools import compress, repeat
from operator import and_, eq
from typing import Any

from veloflux.domain.observation import ColumnReading, Observation, PoolInfo, ProxyIdentity
from veloflux.errors import SourceUnavailable
from veloflux.haproxy.replies import (
    ServerStates,
    StatsFormatError,
    parse_info,
    parse_servers_state_columns,
    parse_stat_table,
    read_number,
)
from veloflux.haproxy.runtime import (
    HAPROXY_MAX_WEIGHT,
    PendingReplies,
    RuntimeAPI,
    RuntimeAPIError,
)
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
# columns parse_stat_table returns: the ones _server_columns unpacks, then _METRICS's.
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
_PXNAME, _TYPE, _ALGO = 0, 2, 3
_METRIC_NAMES = tuple(name for name, _, _ in _METRICS)
_SESSIONS = _METRIC_NAMES.index("sessions_total")
_REQUESTS = _METRIC_NAMES.index("requests_total")
_COMMANDS = ("show info", "show cli level", "show stat -1 6 -1", "show servers state")

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
        return self.ask().reading().observation()

    def ask(self) -> PendingReading:
        """Send the reading's commands now and read the replies later (``reading``):
        replicas all asked before any is read prepare their replies at the same time."""
        return PendingReading(self, self._api.send_many(_COMMANDS))

    def _read(self, replies: list[str] | RuntimeAPIError) -> ColumnReading:
        try:
            if isinstance(replies, RuntimeAPIError):
                raise replies
            info_text, level, stat_text, state_text = replies
            taken_at = self._clock()
            info = parse_info(info_text)
            table = parse_stat_table(stat_text, _STAT_COLUMNS)
            states = parse_servers_state_columns(state_text)
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
        return self._build(taken_at, info, level.strip(), table, states)

    def _build(
        self,
        taken_at: datetime,
        info: Mapping[str, str],
        level: str,
        table: list[list[str]],
        states: ServerStates,
    ) -> ColumnReading:
        """``table`` holds the ``_STAT_COLUMNS``, as ``parse_stat_table`` returns them."""
        pxname, types, algos = table[_PXNAME], table[_TYPE], table[_ALGO]
        backends = list(map(eq, types, repeat(_STAT_TYPE_BACKEND)))
        algorithms = dict(zip(compress(pxname, backends), compress(algos, backends), strict=True))
        servers = list(map(eq, types, repeat(_STAT_TYPE_SERVER)))
        in_order = list(dict.fromkeys(compress(pxname, servers)))
        present = set(in_order)
        wanted = in_order if self._allowed is None else list(self._allowed)
        if self._allowed is not None and not present.issubset(wanted):
            servers = list(map(and_, servers, map(set(wanted).__contains__, pxname)))
        table = _rows_of(table, servers)
        columns = _server_columns(taken_at, table, algorithms, states, self._names)
        if any(columns["problem"]):
            for pool, server, problem in zip(
                columns["pool"], columns["server"], columns["problem"], strict=True
            ):
                if problem:
                    self._events.record(
                        "source_bad_row", f"{pool}/{server}: {problem}", source="haproxy"
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
        return ColumnReading(
            taken_at, columns, pools, _identity(self._api.address, info, level), missing
        )


class PendingReading:
    """A reading asked of HAProxy (``HAProxySource.ask``) whose replies are still due:
    ``receive`` waits for them, ``reading`` parses them (receiving them first if need
    be), ``pump`` takes in what has arrived without waiting."""

    def __init__(self, source: HAProxySource, replies: PendingReplies) -> None:
        self._source, self._replies = source, replies
        self._received: list[str] | RuntimeAPIError | None = None

    def receive(self) -> None:
        if self._received is None:
            try:
                self._received = self._replies.wait()
            except RuntimeAPIError as exc:
                self._received = exc  # raised, and counted, by ``reading``

    def pump(self) -> None:
        if self._received is None:
            self._replies.pump()

    def reading(self) -> ColumnReading:
        """``observe``'s reading, as columns; raises ``SourceUnavailable`` as it does."""
        self.receive()
        assert self._received is not None
        return self._source._read(self._received)

    def close(self) -> None:
        """Drop the reading unread."""
        self._replies.close()


class SafeNames:
    """``is_safe_name``, remembered: the same 1,000 names come back every tick. Bounded:
    past ``limit`` names (a proxy whose servers churn), it starts again empty."""

    def __init__(self, limit: int = 100_000) -> None:
        self._known: dict[str, bool] = {}
        self._safe: set[str] = set()
        self._limit = limit

    def safe(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            if len(self._known) >= self._limit:
                self._known.clear()
                self._safe.clear()
            known = self._known[name] = is_safe_name(name)
            if known:
                self._safe.add(name)
        return known

    def all_safe(self, names: Sequence[str]) -> bool:
        """Whether every name is safe: for names all seen safe before (a pool's, every
        tick), one set comparison."""
        return self._safe.issuperset(names) or all(map(self.safe, names))


def _server_columns(
    taken_at: datetime,
    table: list[list[str]],
    algorithms: Mapping[str, str],
    states: ServerStates,
    names: SafeNames,
) -> dict[str, list[Any]]:
    """The Observation's columns for ``show stat``'s server rows, a row's problems said
    in its ``problem``.

    Computed a column at a time, not a row at a time: list passes and dict lookups run
    in C where a loop over 1,000 servers would run each step in Python.
    """
    pool, server, _, _, status, address, backup, check, uweight, *raw_metrics, slim = table
    count = len(pool)
    metric_problems: dict[int, list[str]] = {}
    metrics = [
        _metric_column(raws, column, scale, metric_problems)
        for raws, (_, column, scale) in zip(raw_metrics, _METRICS, strict=True)
    ]
    limits = _metric_column(slim, "slim", 1.0, metric_problems)
    # TCP mode has no request counter: every session is one request.
    if any(map(math.isnan, metrics[_REQUESTS])):
        metrics[_REQUESTS] = [
            sessions if math.isnan(requests) else requests
            for requests, sessions in zip(metrics[_REQUESTS], metrics[_SESSIONS], strict=True)
        ]
    weight, initial, state, missing = _admin_view(pool, server, status, uweight, states)
    bad_weight: list[int] = []
    if not all(0 <= w <= HAPROXY_MAX_WEIGHT for w in set(weight)):  # NaN fails too
        bad_weight = [i for i, w in enumerate(weight) if not 0 <= w <= HAPROXY_MAX_WEIGHT]
        for i in bad_weight:
            weight[i] = math.nan
    unsafe: list[int] = []
    if not (names.all_safe(pool) and names.all_safe(server)):
        unsafe = [
            i
            for i, (backend, name) in enumerate(zip(pool, server, strict=True))
            if not (names.safe(backend) and names.safe(name))
        ]
    problem = [""] * count
    unsafe_at, missing_at, bad_weight_at = set(unsafe), set(missing), set(bad_weight)
    for i in sorted({*unsafe, *missing, *bad_weight, *metric_problems}):
        problems: list[str] = []
        if i in unsafe_at:
            problems.append("unsafe name: it will not be written into a command")
        if i in missing_at:
            problems.append("missing from 'show servers state'")
        if i in bad_weight_at:
            problems.append(f"weight is not a number in 0..{HAPROXY_MAX_WEIGHT}")
        problem[i] = "; ".join(problems + metric_problems.get(i, []))
    return {
        "time": [taken_at] * count,
        "source": ["haproxy"] * count,
        "pool": pool,
        "server": server,
        "address": address,
        "state": state,
        "backup": list(map(eq, backup, repeat("1"))),
        "weight": weight,
        "initial_weight": initial,
        "algorithm": list(map(algorithms.get, pool, repeat(""))),
        **dict(zip(_METRIC_NAMES, metrics, strict=True)),
        "check_status": check,
        "problem": problem,
        "max_sessions": limits,
    }


def _rows_of(table: list[list[str]], kept: list[bool]) -> list[list[str]]:
    """``table``'s columns with only the ``kept`` rows: sliced when those follow one
    another (a pool's servers, before its BACKEND row), compressed otherwise."""
    count = sum(kept)
    if count == len(kept):
        return table
    first = kept.index(True) if count else 0
    if all(kept[first : first + count]):
        return [column[first : first + count] for column in table]
    return [list(compress(column, kept)) for column in table]


def _admin_view(
    pool: list[str], server: list[str], status: list[str], uweight: list[str], states: ServerStates
) -> tuple[list[float], list[float], list[str], list[int]]:
    """Each server's weight, initial weight and state from ``show servers state``, and
    the rows it lacks: those read from ``show stat`` (its status word and ``uweight``),
    with no initial weight.

    HAProxy lists the servers in the same order in both replies, so the common case
    is two comparisons and three columns taken whole; otherwise each row is looked up.
    """
    if states.backend == pool and states.server == server and _each_once(pool, server):
        weight = list(map(float, states.user_weight))
        return weight, list(map(float, states.initial_weight)), list(states.state), []
    listed = zip(states.backend, states.server, strict=True)
    at = {key: j for j, key in enumerate(listed)}  # a server listed twice: the later line
    weight, initial, state, missing = [], [], [], []
    for i, key in enumerate(zip(pool, server, strict=True)):
        j = at.get(key)
        if j is None:
            missing.append(i)
            weight.append(read_number({"uweight": uweight[i]}, "uweight")[0])
            initial.append(math.nan)
            word = status[i].split(" ")[0]
            state.append(word if word in ("MAINT", "DRAIN", "DOWN") else "UP")
        else:
            weight.append(float(states.user_weight[j]))
            initial.append(float(states.initial_weight[j]))
            state.append(states.state[j])
    return weight, initial, state, missing


def _each_once(pool: list[str], server: list[str]) -> bool:
    """Whether no (pool, server) comes twice; server names alone, when they tell."""
    count = len(server)
    return len(set(server)) == count or len(set(zip(pool, server, strict=True))) == count


def _metric_column(
    raws: Sequence[str], column: str, scale: float, problems: dict[int, list[str]]
) -> list[float]:
    """One ``_METRICS`` column of every row, scaled; a bad value is NaN and a problem
    of its row (in ``problems``, by row position).

    Each distinct text is converted once: across a pool most counters and averages
    repeat ("0", the same few values), and a dict lookup is cheaper than parsing the
    text with ``float`` again.
    """
    by_text: dict[str, float] = {}
    bad: dict[str, str] = {}
    for raw in set(raws):
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
    return list(map(by_text.__getitem__, raws))


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
