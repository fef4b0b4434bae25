"""The agent's ports: what a proxy adapter implements (``Source``, ``Sink``), what
the CLI and the daemon drive (``Driver``), and what one tick gives back.

Each is a small protocol or a frozen value, so the HAProxy, Envoy and simulated
adapters, the single ``Agent`` and the ``Fleet`` of them all meet here, and none of
them imports another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from veloflux.agent.external import ExternalChange
from veloflux.domain.observation import Observation
from veloflux.domain.weightplan import ApplyReport, WeightPlan
from veloflux.errors import ConfigProblem
from veloflux.model.registry import Registry
from veloflux.util.events import Events


class Source(Protocol):
    """Anything that can be read into an Observation (raises ``SourceUnavailable``)."""

    def observe(self) -> Observation: ...


class Sink(Protocol):
    """Anything that can apply a WeightPlan (raises ``SinkRejected`` if it cannot at all)."""

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport: ...


@dataclass(frozen=True)
class ProxyFailure:
    """A proxy a tick could not drive (its source or sink failed); its weights held."""

    proxy: str  # haproxy | envoy
    reason: str  # source | sink
    message: str


@dataclass(frozen=True)
class TickResult:
    """What one tick saw, decided and (if it wrote) did."""

    observation: Observation
    plan: WeightPlan
    report: ApplyReport | None
    duration_seconds: float
    proxy_reloaded: bool = False  # a new proxy process since the previous tick
    # Proxies skipped in this tick while others were driven (several proxies only).
    failures: tuple[ProxyFailure, ...] = ()
    # Config names the proxies do not have (``agent/names.py``; the daemon's ticks).
    config_problems: tuple[ConfigProblem, ...] = ()
    # Weights set outside VeloFlux: new at this tick, and every hold in force.
    external_changes: tuple[ExternalChange, ...] = ()
    external_holds: tuple[ExternalChange, ...] = ()


class Driver(Protocol):
    """What the CLI and the daemon drive: one proxy's ``Agent``, or a ``Fleet`` of them."""

    @property
    def events(self) -> Events: ...

    @property
    def registry(self) -> Registry | None: ...

    def tick(
        self,
        write: bool,
        overrides: Mapping[str, int] | None = None,
        record: bool | None = None,
    ) -> TickResult: ...

    def revert(self) -> TickResult: ...

    def seed_written(self, weights: Mapping[str, int]) -> None: ...

    def stale_history(self) -> float | None: ...

    def sample(self) -> None: ...

    def close(self) -> None: ...
