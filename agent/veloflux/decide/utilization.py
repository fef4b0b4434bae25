"""What each server did between two observations: the capacity rung's raw material.

A proxy's counters say how many requests a server completed and failed, and its
current sessions and queue say how many are still in flight; a utilization signal
(a Prometheus feature: the server's busy share, 0..1, as the server itself or its
host reports it) says how busy it was meanwhile. Completions over busy seconds is the
server's capacity; what arrived over the interval is the load offered to it, which,
unlike completions, keeps growing past capacity, so overload can show.

A row that cannot be trusted (a problem, a state other than UP, a counter that went
back after a reload, a missing value) gives no interval: a gap is better than a lie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from veloflux.domain.observation import EXTERNAL_PREFIX, Observation, ServerRow


@dataclass(frozen=True)
class Work:
    """One server's interval: successful completions, failed requests (5xx and refused
    connections), the work offered to it (completions plus the change of what is in
    flight), the seconds it was busy (utilization x length; None without a signal),
    and the interval's length."""

    completions: float
    errors: float
    offered: float
    busy_seconds: float | None
    seconds: float


def _counter_delta(before: float, after: float) -> float | None:
    if not (math.isfinite(before) and math.isfinite(after)) or after < before:
        return None
    return after - before


def _in_flight(row: ServerRow) -> float:
    sessions = row.sessions if math.isfinite(row.sessions) else 0.0
    queue = row.queue if math.isfinite(row.queue) else 0.0
    return sessions + queue


def utilization_column(feature: str | None) -> str | None:
    """The Observation's column for a configured utilization feature."""
    return EXTERNAL_PREFIX + feature if feature else None


def _utilizations(observation: Observation, column: str | None) -> tuple[float, ...] | None:
    if column is None or observation.external is None:
        return None
    for name, values in observation.external.values:
        if name == column:
            return values
    return None


def interval_work(
    previous: Observation, current: Observation, utilization: str | None
) -> dict[tuple[str, str], Work]:
    """Each trustworthy server's ``Work`` between ``previous`` and ``current``, by
    (pool, server). ``utilization`` is the Observation column holding each server's
    busy share (``utilization_column``), or None when there is no such signal."""
    seconds = (current.taken_at - previous.taken_at).total_seconds()
    if seconds <= 0:
        return {}
    before = {(r.pool, r.server): r for r in previous.rows}
    shares = _utilizations(current, utilization)
    out: dict[tuple[str, str], Work] = {}
    for i, row in enumerate(current.rows):
        old = before.get((row.pool, row.server))
        if old is None or row.problem or old.problem or row.state != "UP" or old.state != "UP":
            continue
        requests = _counter_delta(old.requests_total, row.requests_total)
        failed = _counter_delta(old.responses_5xx_total, row.responses_5xx_total)
        refused = _counter_delta(old.connect_errors_total, row.connect_errors_total)
        if requests is None or failed is None:
            continue
        completions = max(0.0, requests - failed)
        errors = failed + (refused or 0.0)
        offered = max(0.0, completions + _in_flight(row) - _in_flight(old))
        busy = None
        if shares is not None:
            share = shares[i]
            if math.isfinite(share) and share >= 0:
                busy = min(share, 1.0) * seconds
        out[(row.pool, row.server)] = Work(completions, errors, offered, busy, seconds)
    return out
