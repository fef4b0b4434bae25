"""Advice: what the model layer tells the planner, as plain immutable values.

The planner never calls the model. It receives, per pool, whether the model may act
and why not, each server's confidence (with its named parts), the traffic share the
optimizer wants for it, and whether it stands out as an outlier. That keeps the
planner a pure function, testable without XGBoost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import NamedTuple

_NO_PARTS: Mapping[str, float] = MappingProxyType({})
# No server under a latency cut (the outlier guard's and the advice's default).
NO_CUTS: Mapping[str, int] = MappingProxyType({})


class ServerAdvice(NamedTuple):
    """One server: how sure the model is, what share it wants, and any outlier finding
    (a named tuple: the advisor makes one per server per tick)."""

    server: str
    confidence: float = 0.0
    parts: Mapping[str, float] = _NO_PARTS
    share: float | None = None  # desired share of the model-driven servers' traffic
    outlier: str = ""  # why the server stands out from its pool; "" when it does not
    # The newest interval shows the fault its cut has not cured: cut below its current
    # weight again (see ``veloflux.decide.outlier_guard.outlier_findings``).
    deepen: bool = False
    # The finding includes failed requests (a fault of the server's own); without it,
    # the server was found slow, which in an overloaded pool is the pool's fault.
    failing: bool = False


class ServerCapacity(NamedTuple):
    """One server's measured capacity, as the capacity rung uses it.

    ``capacity`` is successful completions per second at full utilization (None before
    the first busy interval); ``confidence`` is 0 while the estimate warms up, after a
    change (a blackout) or when it expires, and ``reason`` says which. ``fell`` marks an
    estimate in the blackout after a downward change: not yet trusted to raise a weight,
    but enough to lower one. ``health`` (0..1) discounts a server that fails requests,
    no further than the other servers' headroom allows (``health_limited``).
    """

    server: str
    capacity: float | None
    relative_error: float
    confidence: float
    health: float = 1.0
    reason: str = ""
    fell: bool = False
    error_rate: float = 0.0
    # The window's own estimate, before the latest interval's persistent deviation is
    # carried into ``capacity``: what the pool's total (and so overload) is judged on.
    long_run: float | None = None
    # Seconds of work in flight beyond the pool's typical (in flight / capacity, less
    # the pool's median), and the factor that drains it (1: nothing to drain).
    backlog_seconds: float = 0.0
    drain: float = 1.0
    # Whether ``health`` was softened because a full cut would push the others past
    # their headroom (``capacity_rung.MAX_HEALTHY_UTILIZATION``).
    health_limited: bool = False
    # Whether this tick's interval was saturated (its backlog grew by more than chance:
    # ``utilization.backlog_grew``), so read as busy throughout, whatever the signal said.
    saturated: bool = False


@dataclass(frozen=True)
class PoolCapacity:
    """The capacity rung's view of one pool: each server's estimate, the load offered to
    the pool and its total estimated capacity (requests/s), and ``overload`` ("" when
    not): why the pool is treated as overloaded, where no split of traffic can help."""

    servers: Mapping[str, ServerCapacity]
    offered_rps: float | None = None
    capacity_rps: float | None = None
    overload: str = ""
    # Every request offered, failed ones included (req/s): what the servers must carry
    # once a failing server's share moves onto them.
    demand_rps: float | None = None

    def confident(self) -> list[str]:
        """The servers whose estimates the rung may act on."""
        return [s.server for s in self.servers.values() if s.confidence > 0 and s.capacity]


@dataclass(frozen=True)
class SwitchbackState:
    """Where the model's tilt stands in its pool's switchback test (see
    ``veloflux.decide.switchback``): ``testing``, ``granted`` or ``revoked``, over how
    many pairs of blocks, the tilt's mean relative gain in cost (negative: it costs)
    with its t statistic, whether the tilt runs this tick, and at what share of its
    bound (``scale``: an unproven tilt is tried at half strength)."""

    state: str
    pairs: int
    mean_gain: float | None
    t_statistic: float | None
    tilt_on: bool
    scale: float = 1.0

    def describe(self) -> str:
        if self.mean_gain is None or self.t_statistic is None:
            return f"switchback {self.state} ({self.pairs} pair(s))"
        return (
            f"switchback {self.state}: tilt gains {self.mean_gain:+.1%} of the cost over "
            f"{self.pairs} pair(s) (t {self.t_statistic:.1f})"
        )

    def to_json(self) -> dict[str, object]:
        def rounded(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else round(value, 4)

        return {
            "state": self.state,
            "pairs": self.pairs,
            "mean_gain": rounded(self.mean_gain),
            "t_statistic": rounded(self.t_statistic),
            "tilt_on": self.tilt_on,
            "scale": self.scale,
        }


@dataclass(frozen=True)
class PoolAdvice:
    """One pool: ``blocked`` says why the model may not act ("" when it may)."""

    pool: str
    confidence: float
    blocked: str
    servers: Mapping[str, ServerAdvice] = field(default_factory=dict)
    forecast_rate: float | None = None
    # Why the model, free to act, keeps the weights where they are ("" when it moves
    # them): the split it found is not predicted to be worth a change.
    hold: str = ""
    # The capacity rung's estimates (None when no utilization signal reaches the agent).
    capacity: PoolCapacity | None = None
    # The pool's cost over the newest interval as measured (mean latency + the error
    # penalty x the error ratio, seconds per request): what the switchback test judges.
    cost: float | None = None
    # The model's tilt of the capacity weights for this tick (log factor per server,
    # bounded; empty when it does not run), and the switchback test behind it.
    tilt: Mapping[str, float] = field(default_factory=dict)
    switchback: SwitchbackState | None = None
    # This tick's weight probes on the capacity rung (log factor per probed server;
    # ``decide/probes.py``): load changes for the model to learn from.
    probe: Mapping[str, float] = field(default_factory=dict)
    probed_before: Mapping[str, float] = field(default_factory=dict)  # last tick's
    # The servers under a latency cut at this tick, with the clean intervals each has
    # had since: the next tick's outlier guard carries them on.
    latency_cuts: Mapping[str, int] = field(default_factory=dict)

    def without_latency_findings(self) -> PoolAdvice:
        """The advice with the outlier guard's latency findings and carried cuts
        dropped, its error findings kept: what an overloaded pool acts on.

        In an overloaded pool every server queues, and the smallest stand out slowest;
        their latency is the pool's fault, not theirs, and a cut would move load onto
        servers that have no room for it either (overload mode holds static weights).
        A server that fails requests is cut in overload too.
        """
        servers = {
            name: s if s.failing or not s.outlier else s._replace(outlier="", deepen=False)
            for name, s in self.servers.items()
        }
        return replace(self, servers=servers, latency_cuts=NO_CUTS)


def blocked_pool(
    pool: str,
    reason: str,
    outliers: Mapping[str, str],
    deepen: frozenset[str] = frozenset(),
    latency_cuts: Mapping[str, int] = NO_CUTS,
    errors: frozenset[str] = frozenset(),
) -> PoolAdvice:
    """A pool the model may not drive: only the outlier findings remain (``errors``:
    those for failed requests)."""
    servers = {
        name: ServerAdvice(name, outlier=why, deepen=name in deepen, failing=name in errors)
        for name, why in outliers.items()
    }
    return PoolAdvice(pool, 0.0, reason, servers, latency_cuts=latency_cuts)


@dataclass(frozen=True)
class Advice:
    """Advice for every pool of one observation."""

    model_version: str | None
    pools: Mapping[str, PoolAdvice] = field(default_factory=dict)

    def for_pool(self, pool: str) -> PoolAdvice | None:
        return self.pools.get(pool)


NO_ADVICE = Advice(model_version=None)
