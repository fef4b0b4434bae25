"""Dispatchers: how a proxy picks a server for each request, faithful to its semantics.

Each dispatcher sees the engine's per-server ``active`` counts (in service plus queued
at the server: what HAProxy's ``leastconn`` and Envoy's ``LEAST_REQUEST`` count) and
which servers are usable (up, weight above 0), and honours integer weights set
between requests by a weight strategy, as the runtime API or EDS would set them.

- ``roundrobin``: HAProxy's weighted round robin, smooth: each server's picks spread
  evenly over a cycle of sum(weights) picks (4:1:1 gives a a b c a a), rebuilt only
  when weights or usable servers change.
- ``leastconn``: the lowest ``(active + 1) / weight``; round robin among equals, so
  weights matter only once servers hold several requests at once.
- ``random(N)``: N weighted draws, the one with fewer active requests wins (HAProxy's
  ``random`` draws 2); ``random(1)`` is a plain weighted random split.
- ``least_request``: Envoy's: with equal weights, two uniform draws and the one with
  fewer active requests; with unequal ones, a smooth weighted pick over
  ``weight / (active + 1) ** bias`` (bias 1).
- ``p2c_peak_ewma`` (Finagle, Linkerd): two uniform draws, the lower
  ``peak-EWMA latency x (active + 1)``; per request, so no weight can emulate it.
- ``jsq``: join the shortest queue (fewest active; random among ties); ignores weights.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

DISPATCHERS = (
    "roundrobin",
    "leastconn",
    "random",
    "least_request",
    "p2c_peak_ewma",
    "jsq",
)
# The dispatchers that honour weights (``random`` is ``random(2)``).
WEIGHTED = ("roundrobin", "leastconn", "random", "least_request")


class Dispatcher:
    """The shared part: weights, the usable servers, and the engine's active counts."""

    name = "base"

    def __init__(self, active: list[int], rng: random.Random) -> None:
        self.active = active  # the engine's list, updated in place
        self.rng = rng
        self.n = len(active)
        self.weights = [1] * self.n
        self.up = [True] * self.n
        self.usable = list(range(self.n))
        self.usable_set = frozenset(self.usable)
        self._changed()

    def set_weights(self, weights: Sequence[int]) -> None:
        if list(weights) != self.weights:
            self.weights = [int(w) for w in weights]
            self._refresh()

    def set_up(self, server: int, up: bool) -> None:
        if self.up[server] != up:
            self.up[server] = up
            self._refresh()

    def _refresh(self) -> None:
        self.usable = [i for i in range(self.n) if self.up[i] and self.weights[i] > 0]
        if not self.usable:  # every weight 0: a proxy still serves the up servers
            self.usable = [i for i in range(self.n) if self.up[i]]
        self.usable_set = frozenset(self.usable)
        self._changed()

    def _changed(self) -> None:
        """Rebuild what depends on weights and usable servers."""

    def choose(self) -> int:
        raise NotImplementedError

    def choose_open(self, full: Sequence[bool]) -> int | None:
        """A pick that skips servers at their ``maxconn`` (``full``), as HAProxy's
        algorithms do; None when every usable server is full (the request waits in
        the proxy's queue). The dispatcher's own pick when it is open; else the open
        server with the lowest ``(active + 1) / weight``."""
        for _ in range(len(self.usable)):
            server = self.choose()
            if not full[server]:
                return server
        return self._least_loaded([i for i in self.usable if not full[i]])

    def _least_loaded(self, candidates: Sequence[int]) -> int | None:
        if not candidates:
            return None
        active, weights = self.active, self.weights
        return min(candidates, key=lambda i: (active[i] + 1) / max(weights[i], 1))

    def completed(self, server: int, latency: float, now: float) -> None:
        """A request finished (only latency-aware dispatchers care)."""


class RoundRobin(Dispatcher):
    name = "roundrobin"

    def _changed(self) -> None:
        # One cycle of sum(weights) picks, each server's spread evenly over it: its k-th
        # pick at (k + 1/2) / weight of the cycle (ties by server order). One sort of
        # every pick's position, not a pick-by-pick simulation of the cycle.
        import numpy as np

        usable = np.asarray(self.usable, dtype=np.int64)
        weights = np.asarray([max(self.weights[i], 1) for i in self.usable], dtype=np.int64)
        owners = np.repeat(usable, weights)
        ranks = np.arange(len(owners)) - np.repeat(np.cumsum(weights) - weights, weights)
        at = (ranks + 0.5) / np.repeat(weights, weights)
        order = np.lexsort((owners, at))
        cycle: list[int] = owners[order].tolist()
        self._cycle = cycle or [0]
        self._at = getattr(self, "_at", 0) % len(self._cycle)

    def choose(self) -> int:
        at = self._at
        self._at = at + 1 if at + 1 < len(self._cycle) else 0
        return self._cycle[at]


class LeastConn(Dispatcher):
    name = "leastconn"

    def _changed(self) -> None:
        self._inverse = [1.0 / max(self.weights[i], 1) for i in range(self.n)]
        self._next = 0

    def choose(self) -> int:
        best = self._pick(self.usable)
        assert best is not None
        return best

    def choose_open(self, full: Sequence[bool]) -> int | None:
        # Deterministic: asking again would give the same full server.
        return self._pick([i for i in self.usable if not full[i]])

    def _pick(self, candidates: Sequence[int]) -> int | None:
        active, inverse = self.active, self._inverse
        best_key = math.inf
        ties: list[int] = []
        for i in candidates:
            key = (active[i] + 1) * inverse[i]
            if key < best_key:
                best_key, ties = key, [i]
            elif key == best_key:
                ties.append(i)
        if len(ties) <= 1:
            return ties[0] if ties else None
        self._next += 1
        return ties[self._next % len(ties)]


class WeightedRandom(Dispatcher):
    name = "random"

    def __init__(self, active: list[int], rng: random.Random, draws: int = 2) -> None:
        self.draws = draws
        super().__init__(active, rng)

    def _changed(self) -> None:
        total = 0.0
        cumulative = []
        for i in self.usable:
            total += max(self.weights[i], 1)
            cumulative.append(total)
        self._cumulative, self._total = cumulative, total

    def _draw(self) -> int:
        import bisect

        k = bisect.bisect_right(self._cumulative, self.rng.random() * self._total)
        return self.usable[min(k, len(self.usable) - 1)]

    def choose(self) -> int:
        best = self._draw()
        for _ in range(self.draws - 1):
            other = self._draw()
            if self.active[other] < self.active[best]:
                best = other
        return best


class LeastRequest(Dispatcher):
    name = "least_request"
    bias = 1.0

    def _changed(self) -> None:
        weights = {self.weights[i] for i in self.usable}
        self._equal = len(weights) <= 1
        self._current = [0.0] * self.n

    def choose(self) -> int:
        usable, active = self.usable, self.active
        if self._equal or len(usable) == 1:
            a, b = self.rng.choice(usable), self.rng.choice(usable)
            return a if active[a] <= active[b] else b
        # Smooth weighted pick over the effective weights of this moment.
        effective = [self.weights[i] / (active[i] + 1) ** self.bias for i in usable]
        total = sum(effective)
        current = self._current
        best, best_value = usable[0], -math.inf
        for i, w in zip(usable, effective, strict=True):
            current[i] += w
            if current[i] > best_value:
                best, best_value = i, current[i]
        current[best] -= total
        return best


class PeakEwma(Dispatcher):
    """Finagle's peak EWMA: latency estimates decay with ``tau`` seconds, jump to a
    higher sample at once; cost = estimate x (active + 1)."""

    name = "p2c_peak_ewma"
    tau = 10.0

    def __init__(self, active: list[int], rng: random.Random) -> None:
        super().__init__(active, rng)
        self._ewma = [0.0] * self.n
        self._stamp = [0.0] * self.n
        self._now = 0.0

    def completed(self, server: int, latency: float, now: float) -> None:
        self._now = now
        old = self._ewma[server]
        if latency > old:
            self._ewma[server] = latency
        else:
            decay = math.exp(-(now - self._stamp[server]) / self.tau)
            self._ewma[server] = old * decay + latency * (1 - decay)
        self._stamp[server] = now

    def choose(self) -> int:
        usable, active, ewma = self.usable, self.active, self._ewma
        a, b = self.rng.choice(usable), self.rng.choice(usable)
        return a if ewma[a] * (active[a] + 1) <= ewma[b] * (active[b] + 1) else b


class ShortestQueue(Dispatcher):
    name = "jsq"

    def choose(self) -> int:
        active = self.active
        fewest = min(active[i] for i in self.usable)
        ties = [i for i in self.usable if active[i] == fewest]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)


_RANDOM = re.compile(r"^random(?:\((\d+)\))?$")


def make_dispatcher(name: str, active: list[int], rng: random.Random) -> Dispatcher:
    """A dispatcher by name (``random(N)`` picks the number of draws)."""
    found = _RANDOM.match(name)
    if found:
        draws = int(found.group(1) or 2)
        if not 1 <= draws <= 100:
            raise ValueError(f"{name}: draws between 1 and 100")
        return WeightedRandom(active, rng, draws)
    kinds: dict[str, type[Dispatcher]] = {
        "roundrobin": RoundRobin,
        "leastconn": LeastConn,
        "least_request": LeastRequest,
        "p2c_peak_ewma": PeakEwma,
        "jsq": ShortestQueue,
    }
    if name not in kinds:
        raise ValueError(f"unknown dispatcher {name!r}; one of {', '.join(DISPATCHERS)}, random(N)")
    return kinds[name](active, rng)
