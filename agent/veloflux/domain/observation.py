"""The Observation: what every source returns, one row per (time, pool, server).

Columns are documented here once, with their units, so that sources, the planner,
the history journal and docs/architecture.md all agree. Times are seconds, ratios are
0..1, rates are per second. A value a source could not read is NaN, never zero: zero
is a real measurement and would teach the model a lie.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Column:
    """One documented column of the Observation frame."""

    name: str
    dtype: str
    unit: str
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("time", "datetime64[ns, UTC]", "UTC", "when the source was read"),
    Column("source", "str", "-", "which system the row came from (haproxy, envoy)"),
    Column("pool", "str", "-", "HAProxy backend / Envoy cluster"),
    Column("server", "str", "-", "server name within the pool"),
    Column("address", "str", "-", "server address as the proxy reports it"),
    Column("state", "str", "-", "UP, DOWN, MAINT or DRAIN (MAINT/DRAIN: set by an operator)"),
    Column("backup", "bool", "-", "a backup server, used only when no active one is up"),
    Column("weight", "float", "-", "current (runtime) weight; NaN if unreadable"),
    Column("initial_weight", "float", "-", "configured weight at start-up / last reload"),
    Column("algorithm", "str", "-", "the pool's balancing algorithm"),
    Column("sessions", "float", "sessions", "current sessions (HAProxy scur)"),
    Column("queue", "float", "requests", "requests queued for this server (qcur)"),
    Column("session_rate", "float", "1/s", "sessions per second over the last second (rate)"),
    Column("sessions_total", "float", "sessions", "cumulative sessions (stot), a counter"),
    Column(
        "requests_total",
        "float",
        "requests",
        "cumulative HTTP requests (req_tot; stot in TCP mode)",
    ),
    Column("responses_5xx_total", "float", "responses", "cumulative 5xx responses, a counter"),
    Column("response_errors_total", "float", "responses", "cumulative response errors (eresp)"),
    Column("connect_errors_total", "float", "connections", "cumulative connect errors (econ)"),
    Column("queue_time", "float", "s", "mean queue time, moving average over recent requests"),
    Column("connect_time", "float", "s", "mean connect time, moving average"),
    Column("response_time", "float", "s", "mean response time (rtime), moving average"),
    Column("total_time", "float", "s", "mean total session time (ttime), moving average"),
    Column("since_state_change", "float", "s", "time since the last UP/DOWN change (lastchg)"),
    Column("check_status", "str", "-", "last health-check status, empty if checks are off"),
    Column("problem", "str", "-", "why this row cannot be trusted; empty when it can"),
    Column(
        "max_sessions",
        "float",
        "sessions",
        "the server's session limit (HAProxy maxconn, slim); NaN when it has none",
    ),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
# Operator-defined features (``prometheus.features``) are columns named with this
# prefix, beside the documented ones, from the Observation to the model's input.
EXTERNAL_PREFIX = "prom_"
STATES = ("UP", "DOWN", "MAINT", "DRAIN")


class ServerRow(NamedTuple):
    """One row of the Observation, typed; field order is ``COLUMN_NAMES``.

    A named tuple rather than a frozen dataclass: a source makes one per server per
    tick, and a frozen dataclass's ``__init__`` pays one ``object.__setattr__`` per
    field where a tuple is built in one step.
    """

    time: datetime
    source: str
    pool: str
    server: str
    address: str
    state: str
    backup: bool
    weight: float
    initial_weight: float
    algorithm: str
    sessions: float
    queue: float
    session_rate: float
    sessions_total: float
    requests_total: float
    responses_5xx_total: float
    response_errors_total: float
    connect_errors_total: float
    queue_time: float
    connect_time: float
    response_time: float
    total_time: float
    since_state_change: float
    check_status: str
    problem: str
    # Last and defaulted: a source without per-server limits (Envoy) leaves it out.
    max_sessions: float = math.nan


@dataclass(frozen=True)
class PoolInfo:
    """What the planner needs to know about a pool beyond its servers' rows."""

    name: str
    algorithm: str
    managed: bool
    unmanaged_reason: str = ""


START_TIME_SLACK_SECONDS = 1  # a derived start time is good to the second


@dataclass(frozen=True)
class ProxyIdentity:
    """Which proxy process answered; a change of pid or start time means a reload."""

    address: str
    pid: int
    started_at_epoch: float
    uptime_seconds: float
    version: str
    level: str

    def reloaded_since(self, earlier: ProxyIdentity) -> bool:
        """True when this is a new process: its runtime weights were reset to initial.

        Start times may differ by a second without a restart: Envoy reports its uptime
        in whole seconds, so a start time derived from it (the clock less the uptime)
        moves by one when two readings straddle a second. A restart shows in the pid
        (Envoy's hot-restart epoch) or in an uptime that went back."""
        return (
            self.pid != earlier.pid
            or abs(self.started_at_epoch - earlier.started_at_epoch) > START_TIME_SLACK_SECONDS
            or self.uptime_seconds < earlier.uptime_seconds
        )


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of a proxy driven as one (``haproxy.replicas``, ``envoy.replicas``) at
    one reading: whether it answered, and what it said when it did not or disagreed."""

    name: str  # its address: the runtime socket, or the admin URL
    up: bool
    problem: str = ""
    pid: int = 0

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "up": self.up, "problem": self.problem, "pid": self.pid}


@dataclass(frozen=True)
class ExternalFeatures:
    """Operator-defined features read beside the proxy's own stats (Prometheus).

    ``values`` holds, per feature column (``EXTERNAL_PREFIX`` + name), one value per
    row of the Observation, NaN where the source had none for that server. When the
    source could not be read, ``error`` says why and every value is NaN: the tick goes
    on with the proxy's own stats, and the model's confidence sees what is missing.
    ``problems`` names what went wrong with single features in an answered reading.
    """

    source: str
    values: tuple[tuple[str, tuple[float, ...]], ...] = ()
    error: str = ""
    problems: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(column for column, _ in self.values)

    def names(self) -> tuple[str, ...]:
        """The features' configured names (the columns without the prefix)."""
        return tuple(column.removeprefix(EXTERNAL_PREFIX) for column in self.columns)


@dataclass(frozen=True)
class Observation:
    """One reading of one proxy: typed rows, and the same rows as a pandas frame.

    The planner walks ``rows``; analysis and the model read ``frame``, built on first
    use. Keeping pandas off the planning path keeps a one-shot ``dry-run`` from paying
    pandas' import time. Treat ``frame`` as read-only (pandas copy-on-write).
    """

    taken_at: datetime
    rows: tuple[ServerRow, ...]
    pools: tuple[PoolInfo, ...]
    proxy: ProxyIdentity
    missing_pools: tuple[str, ...] = field(default=())
    external: ExternalFeatures | None = None
    # With replicas: each one's state at this reading (empty for a single proxy).
    replicas: tuple[ReplicaStatus, ...] = ()

    @classmethod
    def from_frame(
        cls,
        taken_at: datetime,
        frame: pd.DataFrame,
        pools: tuple[PoolInfo, ...],
        proxy: ProxyIdentity,
        missing_pools: tuple[str, ...] = (),
    ) -> Observation:
        """Build from a frame with the documented columns (tests, replays, the simulator)."""
        records = frame[list(COLUMN_NAMES)].to_dict("records")
        rows = tuple(ServerRow(**{str(k): v for k, v in r.items()}) for r in records)
        return cls(taken_at, rows, pools, proxy, missing_pools)

    @classmethod
    def from_columns(
        cls,
        taken_at: datetime,
        columns: Mapping[str, Sequence[Any]],
        pools: tuple[PoolInfo, ...],
        proxy: ProxyIdentity,
        missing_pools: tuple[str, ...] = (),
        replicas: tuple[ReplicaStatus, ...] = (),
    ) -> Observation:
        """Build from one sequence per documented column, all of one length: the shape
        in which the HAProxy source and the replicas' merge work (a column at a time,
        not a row at a time), made rows in one pass."""
        values = (columns[name] for name in COLUMN_NAMES)
        rows = tuple(map(ServerRow._make, zip(*values, strict=True)))
        return cls(taken_at, rows, pools, proxy, missing_pools, replicas=replicas)

    def columns(self) -> dict[str, Sequence[Any]]:
        """The rows as one sequence per documented column (``from_columns``'s input)."""
        if not self.rows:
            return dict.fromkeys(COLUMN_NAMES, ())
        return dict(zip(COLUMN_NAMES, zip(*self.rows, strict=True), strict=True))

    @classmethod
    def combined(cls, parts: Sequence[Observation]) -> Observation:
        """Several proxies' observations as one, for what reads pools and rows across
        them (the status page, checking an operator's pin). ``proxy`` is the first
        part's: each proxy's own identity stays with the agent that reads that proxy."""
        return cls(
            taken_at=max(p.taken_at for p in parts),
            rows=tuple(row for p in parts for row in p.rows),
            pools=tuple(pool for p in parts for pool in p.pools),
            proxy=parts[0].proxy,
            missing_pools=tuple(name for p in parts for name in p.missing_pools),
            external=_combined_external(parts),
            replicas=tuple(r for p in parts for r in p.replicas),
        )

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with the documented columns and dtypes."""
        import pandas as pd

        frame = pd.DataFrame.from_records(list(self.rows), columns=list(COLUMN_NAMES))
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame

    def servers_of(self, pool: str) -> tuple[ServerRow, ...]:
        """The rows of one pool, in the proxy's own server order."""
        return tuple(r for r in self.rows if r.pool == pool)

    def with_external(self, external: ExternalFeatures) -> Observation:
        """This reading with operator-defined features added."""
        return replace(self, external=external)


def _combined_external(parts: Sequence[Observation]) -> ExternalFeatures | None:
    """Every part's external features over the combined rows: a part without a
    feature has NaN for it; the first error and every problem are kept."""
    found = [p.external for p in parts if p.external is not None]
    if not found:
        return None
    columns = sorted({c for e in found for c in e.columns})
    values: dict[str, list[float]] = {c: [] for c in columns}
    for part in parts:
        own = dict(part.external.values) if part.external is not None else {}
        for column in columns:
            values[column].extend(own.get(column, (math.nan,) * len(part.rows)))
    return ExternalFeatures(
        source=found[0].source,
        values=tuple((c, tuple(v)) for c, v in values.items()),
        error=next((e.error for e in found if e.error), ""),
        problems=tuple(p for e in found for p in e.problems),
    )


@dataclass(frozen=True)
class ColumnReading:
    """One proxy's reading as columns (``Observation.columns``'s shape), before it is
    made rows: what the replicas' merge reads, a column at a time. ``observation``
    makes it the Observation a single proxy's source returns."""

    taken_at: datetime
    columns: Mapping[str, Sequence[Any]]
    pools: tuple[PoolInfo, ...]
    proxy: ProxyIdentity
    missing_pools: tuple[str, ...] = ()

    @classmethod
    def of(cls, observation: Observation) -> ColumnReading:
        """A reading made rows already (a source that reads a row at a time), as columns."""
        return cls(
            observation.taken_at,
            observation.columns(),
            observation.pools,
            observation.proxy,
            observation.missing_pools,
        )

    def observation(self) -> Observation:
        return Observation.from_columns(
            self.taken_at, self.columns, self.pools, self.proxy, self.missing_pools
        )
