"""Weight strategies: what sets the weights every tick, from what a proxy can see.

- ``static-equal``: every server at the same weight, never changed (what most pools run);
- ``capacity-oracle``: weights proportional to each server's true base capacity
  (concurrency x speed), set once: the best static split, which no real agent knows;
- ``heuristic``: the client-side weighted round robin formula of gRPC and Envoy,
  ``qps / (utilization + penalty x eps / qps)`` per server from the last interval
  (utilization as the server itself would report it: busy slots over its concurrency),
  smoothed between ticks;
- ``veloflux`` (``sim/real_agent.py``): the real agent on the simulated proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

from veloflux.sim.engine import STATIC_WEIGHT, ServerStats, Strategy, scaled
from veloflux.sim.scenario import Scenario


class StaticEqual(Strategy):
    name = "static-equal"


class CapacityOracle(Strategy):
    name = "capacity-oracle"

    def start(self, scenario: Scenario, names: Sequence[str], dispatcher: str) -> list[int]:
        return scaled([g.concurrency * g.speed for _, g in scenario.expanded()])


class Heuristic(Strategy):
    """gRPC's / Envoy's client-side WRR weight, recomputed every interval."""

    name = "heuristic"
    penalty = 1.0  # error_utilization_penalty, gRPC's default
    smoothing = 0.5  # share of the new estimate in the smoothed one

    def start(self, scenario: Scenario, names: Sequence[str], dispatcher: str) -> list[int]:
        self._concurrency = [g.concurrency for _, g in scenario.expanded()]
        self._interval = scenario.interval_s
        n = len(names)
        self._last_requests, self._last_errors = [0] * n, [0] * n
        self._last_busy = [0.0] * n
        self._smoothed: list[float | None] = [None] * n
        return [STATIC_WEIGHT] * n

    def tick(self, now: float, stats: ServerStats) -> tuple[list[int] | None, str]:
        raw: list[float | None] = []
        for i, concurrency in enumerate(self._concurrency):
            done = stats.requests[i] - self._last_requests[i]
            errors = stats.errors[i] - self._last_errors[i]
            busy = stats.busy_seconds[i] - self._last_busy[i]
            self._last_requests[i] = stats.requests[i]
            self._last_errors[i] = stats.errors[i]
            self._last_busy[i] = stats.busy_seconds[i]
            qps, eps = done / self._interval, errors / self._interval
            utilization = busy / (concurrency * self._interval)
            denominator = utilization + (self.penalty * eps / qps if qps else 0.0)
            raw.append(qps / denominator if qps and denominator > 0 else None)
        known = [w for w in raw if w is not None]
        mean = sum(known) / len(known) if known else 1.0
        for i, weight in enumerate(raw):  # no traffic: the mean, as gRPC gives a new server
            value = mean if weight is None else weight
            old = self._smoothed[i]
            self._smoothed[i] = value if old is None else old + self.smoothing * (value - old)
        return scaled([w or 0.0 for w in self._smoothed]), ""
