"""The Observation: what every source returns, one row per (time, pool, server).

Columns are documented here once, with their units, so that sources, the planner,
the history journal and docs/architecture.md all agree. Times are seconds, ratios are
0..1, rates are per second. A value a source could not read is NaN, never zero: zero
is a real measurement and would teach the model a lie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
STATES = ("UP", "DOWN", "MAINT", "DRAIN")


@dataclass(frozen=True)
class PoolInfo:
    """What the planner needs to know about a pool beyond its servers' rows."""

    name: str
    algorithm: str
    managed: bool
    unmanaged_reason: str = ""


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
        """True when this is a new process: its runtime weights were reset to initial."""
        return (
            self.pid != earlier.pid
            or self.started_at_epoch != earlier.started_at_epoch
            or self.uptime_seconds < earlier.uptime_seconds
        )


@dataclass(frozen=True)
class Observation:
    """One reading of one proxy. Treat ``frame`` as read-only (pandas copy-on-write)."""

    taken_at: datetime
    frame: pd.DataFrame
    pools: tuple[PoolInfo, ...]
    proxy: ProxyIdentity
    missing_pools: tuple[str, ...] = field(default=())

    def servers_of(self, pool: str) -> pd.DataFrame:
        """The rows of one pool, in the proxy's own server order."""
        return self.frame[self.frame["pool"] == pool]
