"""The outlier guard's judgement, when all there is to go on is one observation.

Without history there are no counter deltas, so no error rates; but HAProxy's moving
average of response time is in every reading. A server whose average stands far above
its pool's median is flagged. Pure Python on purpose: the fallback path of a one-shot
``dry-run`` must not pay for importing pandas.
"""

from __future__ import annotations

import math
import statistics

from veloflux.config.schema import OutlierSection
from veloflux.domain.observation import Observation

MIN_POOL_SIZE = 3  # with fewer servers, "far from the median" means nothing
# At most this share of a pool (at least one server, the slowest first) is flagged for
# latency at once. Every cut moves load onto the others: a pool where many servers
# are slow has unequal servers or too little capacity, not outliers, and cutting them
# all piles their load onto the few left (the capacity rung is what splits unequal
# servers). Error outliers are not limited: a failing server must lose its traffic.
LATENCY_OUTLIER_SHARE = 0.1


def latency_outliers(
    servers: list[tuple[str, float]], rules: OutlierSection, ratio: float | None = None
) -> dict[str, str]:
    """``(server, latency seconds)`` pairs -> the servers far above the pool's median:
    at least ``ratio`` (default ``rules.latency_ratio``) times it."""
    known = [(name, value) for name, value in servers if math.isfinite(value)]
    if not rules.enabled or len(known) < MIN_POOL_SIZE:
        return {}
    median = statistics.median(value for _, value in known)
    if median <= 0:
        return {}
    bar = (rules.latency_ratio if ratio is None else ratio) * median
    slow = sorted(
        ((name, value) for name, value in known if value >= bar),
        key=lambda pair: -pair[1],
    )
    allowed = max(1, int(LATENCY_OUTLIER_SHARE * len(known)))
    return {
        name: f"outlier: latency {value * 1000:.0f} ms (pool median {median * 1000:.0f} ms)"
        for name, value in slow[:allowed]
    }


def moving_average_outliers(
    observation: Observation, pool: str, rules: OutlierSection
) -> dict[str, str]:
    """Outliers of one pool judged on HAProxy's moving-average response time."""
    busy = [
        (r.server, r.response_time)
        for r in observation.servers_of(pool)
        if r.state == "UP" and r.requests_total >= rules.min_requests
    ]
    return latency_outliers(busy, rules)
