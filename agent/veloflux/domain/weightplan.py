"""The WeightPlan (what the planner decides) and the ApplyReport (what a sink did).

They live below both the planner and the sinks, so that a sink depends on the shape of
a plan, never on how a plan is made, and every sink reports in the same terms.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from veloflux.domain.advice import SwitchbackState

Mode = Literal["model", "capacity", "fallback", "hold", "unmanaged"]
# The modes in which VeloFlux writes weights (the others leave every weight alone).
DRIVEN_MODES: tuple[str, ...] = ("model", "capacity", "fallback")
NO_PARTS: Mapping[str, float] = MappingProxyType({})


class ServerPlan(NamedTuple):
    """One server's current and planned weight, and why (a named tuple: the planner
    makes one per server per tick, cheaper to build than a frozen dataclass)."""

    backend: str
    server: str
    state: str
    current_weight: int | None
    planned_weight: int | None
    static_weight: int | None
    confidence: float
    reason: str
    confidence_parts: Mapping[str, float] = NO_PARTS

    @property
    def changes(self) -> bool:
        """True when applying the plan writes this server's weight."""
        return (
            self.planned_weight is not None
            and self.current_weight is not None
            and self.planned_weight != self.current_weight
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "state": self.state,
            "current_weight": self.current_weight,
            "planned_weight": self.planned_weight,
            "static_weight": self.static_weight,
            "confidence": round(self.confidence, 4),
            "confidence_parts": dict(self.confidence_parts) or {"freshness": 0.0},
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PoolPlan:
    """One pool's mode, confidence and servers."""

    backend: str
    algorithm: str
    mode: Mode
    confidence: float
    reason: str
    servers: tuple[ServerPlan, ...]
    # Why the pool is treated as overloaded ("" when it is not): static weights held.
    overload: str = ""
    # The model tilt's switchback test in this pool (None when it has not started).
    switchback: SwitchbackState | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "algorithm": self.algorithm,
            "mode": self.mode,
            "confidence": round(self.confidence, 4),
            "reason": self.reason,
            "overload": bool(self.overload),
            "switchback": self.switchback.to_json() if self.switchback else None,
            "servers": [s.to_json() for s in self.servers],
        }


@dataclass(frozen=True)
class WeightPlan:
    """The whole plan: what dry-run prints and apply writes."""

    generated_at: datetime
    pools: tuple[PoolPlan, ...]
    model_version: str | None = None

    def servers(self) -> Iterator[ServerPlan]:
        for pool in self.pools:
            yield from pool.servers

    def changes(self) -> list[ServerPlan]:
        """Servers whose weight this plan writes."""
        return [s for s in self.servers() if s.changes]

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "model_version": self.model_version,
            "pools": [p.to_json() for p in self.pools],
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json())


class WriteResult(NamedTuple):
    """The outcome of one weight write (a named tuple: a tick may write 1,000)."""

    backend: str
    server: str
    old_weight: int | None
    new_weight: int
    confirmed_weight: int | None
    error: str
    replica: str = ""  # which replica was written, when a proxy runs as several

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class ApplyReport:
    """Every write of one apply, for the summary line and the exit code."""

    results: tuple[WriteResult, ...]

    @property
    def failures(self) -> tuple[WriteResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def applied(self) -> tuple[WriteResult, ...]:
        return tuple(r for r in self.results if r.ok)
