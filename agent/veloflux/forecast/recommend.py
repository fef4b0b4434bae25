"""How many servers a pool needs for its forecast peak, and why, in words.

With weights that follow capacity (the capacity rung), a pool's servers share its
load in proportion to what each can serve, so the pool's utilization is its load over
the sum of its servers' capacities. The pool needs servers whose capacities sum to at
least ``peak / target_utilization``.

Which servers? An autoscaler removes whichever it removes, so the count is the
smallest ``n`` for which even the ``n`` weakest servers in rotation would carry the
peak: any ``n`` of them then do. When all of them together are short, the rest is
counted in servers of the pool's mean capacity (what a new server of the same kind
is expected to bring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Recommendation:
    pool: str
    servers: int | None  # None: no capacity estimate to size with
    in_rotation: int
    peak_rps: float  # the forecast's 90% bound at its highest over the horizon
    peak_at: datetime
    target_utilization: float
    mean_capacity_rps: float | None
    weakest: tuple[str, float] | None  # the server with the least capacity, and it
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "recommended_servers": self.servers,
            "in_rotation": self.in_rotation,
            "peak_requests_per_second": round(self.peak_rps, 3),
            "peak_at": self.peak_at.isoformat(),
            "target_utilization": self.target_utilization,
            "mean_capacity_rps": _rounded(self.mean_capacity_rps),
            "weakest": (
                {"server": self.weakest[0], "capacity_rps": round(self.weakest[1], 3)}
                if self.weakest
                else None
            ),
            "reason": self.reason,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def recommend(
    pool: str,
    peak_rps: float,
    peak_at: datetime,
    capacities: Mapping[str, float],
    target_utilization: float,
) -> Recommendation:
    """The servers ``pool`` needs so that ``peak_rps`` keeps it at or under
    ``target_utilization``; ``capacities``: requests/s each server in rotation serves
    at full use (servers without an estimate are left out of the sizing)."""
    if not 0 < target_utilization <= 1:
        raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization}")
    known = {s: c for s, c in capacities.items() if math.isfinite(c) and c > 0}
    in_rotation = len(capacities)
    when = f"{peak_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    demand = f"{peak_rps:,.0f} req/s at q90"
    if not known:
        return Recommendation(
            pool, None, in_rotation, peak_rps, peak_at, target_utilization, None, None,
            f"{pool}: peak {demand} at {when}; no server has a capacity estimate "
            "(capacity.utilization_feature), so no count can be sized",
        )  # fmt: skip
    ascending = sorted(known.values())
    mean = sum(ascending) / len(ascending)
    weakest = min(known.items(), key=lambda item: item[1])
    need = peak_rps / target_utilization
    total, n = 0.0, 0
    for capacity in ascending:
        if total >= need:
            break
        total += capacity
        n += 1
    if total < need:
        n += math.ceil((need - total) / mean)
    n = max(n, 1)  # an idle pool still serves
    unknown = in_rotation - len(known)
    reason = (
        f"{pool}: {n} server{'s' if n != 1 else ''} needed at {when} for {demand} "
        f"({target_utilization:.0%} of capacity); {in_rotation} in rotation, mean capacity "
        f"{mean:,.0f} req/s, weakest {weakest[0]} at {weakest[1]:,.0f}"
        + (f"; {unknown} without an estimate left out" if unknown else "")
    )
    return Recommendation(
        pool, n, in_rotation, peak_rps, peak_at, target_utilization, mean, weakest, reason
    )
