"""The model's tilt of the capacity weights: a bounded factor per server.

Weights proportional to capacity x health equalize utilization. The model's
optimizer splits the pool's traffic to equalize predicted cost instead (latency plus
the error penalty), which differs where the servers' curves differ in shape (a
server that slows sooner, one that fails under load). The tilt is the log ratio of
the model's share to the capacity share over the servers both know, clipped to
``[-bound, bound]``: the model can lean on the capacity split, never replace it, and
whether it leans at all is the switchback test's decision. Without a capacity
estimate the same holds against the static weights: the model alone may lean on the
static split by the same bound, never more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from veloflux.domain.advice import PoolAdvice, PoolCapacity


def model_tilt(base: Mapping[str, float], advice: PoolAdvice, bound: float) -> dict[str, float]:
    """Log tilt per server of the model's shares against ``base`` (what each server
    would carry without the model: capacity x health on the capacity rung, its static
    weight below it); empty when they share fewer than two servers: there is nothing
    to lean between."""
    both = {}
    for name, server in advice.servers.items():
        amount = base.get(name)
        if server.share is None or server.share <= 0 or amount is None or amount <= 0:
            continue
        both[name] = (server.share, amount)
    if len(both) < 2:
        return {}
    model_total = sum(share for share, _ in both.values())
    base_total = sum(amount for _, amount in both.values())
    return {
        name: max(-bound, min(bound, math.log((share / model_total) / (amount / base_total))))
        for name, (share, amount) in both.items()
    }


# The tilt never plans a server past this utilization: near saturation latency grows
# as 1 / (1 - utilization), and a tilt that moves load there builds a queue that
# outlasts the test that would revoke it.
MAX_TILTED_UTILIZATION = 0.9


def headroom_bound(bound: float, capacity: PoolCapacity) -> float:
    """The tilt's bound at the pool's utilization: capacity weights put every server
    at the pool's utilization ``u``, and a tilt ``t`` moves one to about ``u e^t``; so
    ``|t| <= log(MAX_TILTED_UTILIZATION / u)``, and no tilt at all from there up."""
    if not capacity.offered_rps or not capacity.capacity_rps:
        return 0.0  # the pool's utilization unknown: no headroom to lean into
    utilization = capacity.offered_rps / capacity.capacity_rps
    if utilization >= MAX_TILTED_UTILIZATION:
        return 0.0
    return min(bound, math.log(MAX_TILTED_UTILIZATION / utilization))


def capacity_base(capacity: PoolCapacity) -> dict[str, float]:
    """What each confidently estimated server carries on the capacity rung."""
    return {
        name: estimate.capacity * estimate.health
        for name, estimate in capacity.servers.items()
        if estimate.capacity and estimate.confidence > 0
    }


def tilted_shares(base: Mapping[str, float], tilt: Mapping[str, float]) -> dict[str, float]:
    """The shares ``base`` x exp(tilt) gives the tilted servers, summing to 1."""
    amounts = {name: base[name] * math.exp(value) for name, value in tilt.items()}
    total = sum(amounts.values())
    return {name: amount / total for name, amount in amounts.items()}
