"""Builders for the values the planner consumes, so tests state only what matters to them.

An Observation is built directly (no HAProxy involved): one dict per server row with
sensible defaults for every documented column, then the frame in the documented order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from veloflux.config.schema import PolicySection
from veloflux.domain.observation import COLUMN_NAMES, Observation, PoolInfo, ProxyIdentity

TAKEN_AT = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Server:
    """One server row; ``weight``/``initial`` None means NaN in the frame."""

    name: str
    weight: float | None = 10
    initial: float | None = 10
    state: str = "UP"
    backup: bool = False
    problem: str = ""


@dataclass(frozen=True)
class Pool:
    name: str
    servers: Sequence[Server]
    algorithm: str = "roundrobin"
    managed: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def row(pool: str, algorithm: str, server: Server) -> dict[str, Any]:
    """One Observation row with every documented column present."""
    record: dict[str, Any] = {
        "time": TAKEN_AT,
        "source": "haproxy",
        "pool": pool,
        "server": server.name,
        "address": "127.0.0.1:9",
        "state": server.state,
        "backup": server.backup,
        "weight": _num(server.weight),
        "initial_weight": _num(server.initial),
        "algorithm": algorithm,
        "check_status": "",
        "problem": server.problem,
    }
    for column in COLUMN_NAMES:
        record.setdefault(column, 0.0)
    return record


# The proxy every built Observation claims to come from (an admin-level HAProxy 2.6).
PROXY = ProxyIdentity(
    address="unix:///tmp/haproxy.sock",
    pid=1234,
    started_at_epoch=1_700_000_000.0,
    uptime_seconds=60.0,
    version="2.6.12",
    level="admin",
)


def observation(pools: Iterable[Pool], taken_at: datetime = TAKEN_AT) -> Observation:
    """An Observation of the given pools, rows in pool order then server order."""
    pools = list(pools)
    records = [row(p.name, p.algorithm, s) for p in pools for s in p.servers]
    frame = pd.DataFrame.from_records(records, columns=list(COLUMN_NAMES))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    infos = tuple(
        PoolInfo(
            p.name,
            p.algorithm,
            p.managed,
            "" if p.managed else f"static algorithm ({p.algorithm})",
        )
        for p in pools
    )
    return Observation.from_frame(taken_at, frame, infos, PROXY)


def policy(**fields: Any) -> PolicySection:
    """A validated PolicySection; raises if the test asks for an invalid one."""
    return PolicySection.model_validate(fields)


def frozen(server: Server, pol: PolicySection, key: str = "") -> bool:
    """A row the rules say must keep its weight in every mode (design section 4).

    A weight 0 set outside VeloFlux is kept too, unless an operator's override names
    the server: the override is the operator saying to bring it back.
    """
    return (
        bool(server.problem)
        or server.weight is None
        or server.state in ("MAINT", "DRAIN")
        or server.backup
        or (server.weight == 0 and pol.min_weight > 0 and key not in pol.overrides)
    )
