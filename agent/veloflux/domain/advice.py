"""Advice: what the model layer tells the planner, as plain immutable values.

The planner never calls the model. It receives, per pool, whether the model may act
and why not, each server's confidence (with its named parts), the traffic share the
optimizer wants for it, and whether it stands out as an outlier. That keeps the
planner a pure function, testable without XGBoost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

_NO_PARTS: Mapping[str, float] = MappingProxyType({})


class ServerAdvice(NamedTuple):
    """One server: how sure the model is, what share it wants, and any outlier finding
    (a named tuple: the advisor makes one per server per tick)."""

    server: str
    confidence: float = 0.0
    parts: Mapping[str, float] = _NO_PARTS
    share: float | None = None  # desired share of the model-driven servers' traffic
    outlier: str = ""  # why the server stands out from its pool; "" when it does not
    # The newest interval shows the fault its cut has not cured: cut below its current
    # weight again (see ``veloflux.decide.advisor.outlier_findings``).
    deepen: bool = False


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


def blocked_pool(
    pool: str, reason: str, outliers: Mapping[str, str], deepen: frozenset[str] = frozenset()
) -> PoolAdvice:
    """A pool the model may not drive: only the outlier findings remain."""
    servers = {
        name: ServerAdvice(name, outlier=why, deepen=name in deepen)
        for name, why in outliers.items()
    }
    return PoolAdvice(pool, 0.0, reason, servers)


@dataclass(frozen=True)
class Advice:
    """Advice for every pool of one observation."""

    model_version: str | None
    pools: Mapping[str, PoolAdvice] = field(default_factory=dict)

    def for_pool(self, pool: str) -> PoolAdvice | None:
        return self.pools.get(pool)


NO_ADVICE = Advice(model_version=None)
