"""The model's tilt of the capacity weights: a bounded factor per server.

Weights proportional to capacity x health equalize utilization. The model's
optimizer splits the pool's traffic to equalize predicted cost instead (latency plus
the error penalty), which differs where the servers' curves differ in shape (a
server that slows sooner, one that fails under load). The tilt is the log ratio of
the model's share to the capacity share over the servers both know, clipped to
``[-bound, bound]``: the model can lean on the capacity split, never replace it, and
whether it leans at all is the switchback test's decision.
"""

from __future__ import annotations

import math

from veloflux.domain.advice import PoolAdvice, PoolCapacity


def model_tilt(capacity: PoolCapacity, advice: PoolAdvice, bound: float) -> dict[str, float]:
    """Log tilt per server (empty when the model and the rung share fewer than two
    servers: there is nothing to lean between)."""
    both = {}
    for name, server in advice.servers.items():
        estimate = capacity.servers.get(name)
        if server.share is None or server.share <= 0 or estimate is None:
            continue
        if estimate.capacity and estimate.confidence > 0:
            both[name] = (server.share, estimate.capacity * estimate.health)
    if len(both) < 2:
        return {}
    model_total = sum(share for share, _ in both.values())
    capacity_total = sum(amount for _, amount in both.values())
    if model_total <= 0 or capacity_total <= 0:
        return {}
    tilt = {}
    for name, (share, amount) in both.items():
        if amount <= 0:
            continue
        ratio = (share / model_total) / (amount / capacity_total)
        tilt[name] = max(-bound, min(bound, math.log(ratio)))
    return tilt
