"""One tick of the agent: observe, plan, act. Scheduling joins it in the daemon.

The ``Agent`` gets every dependency from outside (source, sink, clock, events), so
the CLI, the tests and later the simulator drive exactly the code production runs.
Sources and sinks are one-method protocols: HAProxy today, Envoy beside it later.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from veloflux.config import Config
from veloflux.errors import ConfigError, ConfigProblem
from veloflux.events import Events
from veloflux.observation import Observation
from veloflux.plan import plan_revert, plan_weights
from veloflux.weightplan import ApplyReport, WeightPlan

_log = logging.getLogger("veloflux.tick")


class Source(Protocol):
    """Anything that can be read into an Observation (raises ``SourceUnavailable``)."""

    def observe(self) -> Observation: ...


class Sink(Protocol):
    """Anything that can apply a WeightPlan (raises ``SinkRejected`` if it cannot at all)."""

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport: ...


@dataclass(frozen=True)
class TickResult:
    """What one tick saw, decided and (if it wrote) did."""

    observation: Observation
    plan: WeightPlan
    report: ApplyReport | None
    duration_seconds: float


class Agent:
    """Observe -> plan -> act for one proxy.

    With ``strict_pools`` a pool named in the config but absent from the proxy stops
    the tick before anything is written (the one-shot commands want that: the config is
    wrong). The daemon instead counts the event and keeps managing the other pools.
    """

    def __init__(
        self,
        config: Config,
        source: Source,
        sink: Sink,
        events: Events,
        strict_pools: bool = False,
    ) -> None:
        self._config = config
        self._source = source
        self._sink = sink
        self._events = events
        self._strict_pools = strict_pools

    def _fallback_reason(self) -> str:
        return "no model" if self._config.ai.enabled else "ai disabled"

    def _observe(self) -> Observation:
        observation = self._source.observe()
        if self._strict_pools and observation.missing_pools:
            raise ConfigError(
                [
                    ConfigProblem(
                        "haproxy.backends",
                        f"backend {name!r} does not exist in HAProxy at "
                        f"{observation.proxy.address}",
                    )
                    for name in observation.missing_pools
                ]
            )
        return observation

    def tick(self, write: bool) -> TickResult:
        """One observe-plan(-act) cycle; ``write=False`` is the dry-run."""
        started = time.perf_counter()
        observation = self._observe()
        plan = plan_weights(observation, self._config.policy, self._fallback_reason())
        report = self._sink.apply(plan, observation.proxy.level) if write else None
        return self._finish(observation, plan, report, started)

    def revert(self) -> TickResult:
        """Every managed server to its static weight at once, no step limit."""
        started = time.perf_counter()
        observation = self._observe()
        plan = plan_revert(observation, self._config.policy)
        report = self._sink.apply(plan, observation.proxy.level)
        return self._finish(observation, plan, report, started)

    def _finish(
        self,
        observation: Observation,
        plan: WeightPlan,
        report: ApplyReport | None,
        started: float,
    ) -> TickResult:
        result = TickResult(observation, plan, report, time.perf_counter() - started)
        _log.info(summary_line(result))
        return result


def summary_line(result: TickResult) -> str:
    """The one log line per tick: modes, changes, failures, duration."""
    modes = Counter(p.mode for p in result.plan.pools)
    mode_text = " ".join(f"{mode}={n}" for mode, n in sorted(modes.items())) or "no pools"
    planned = len(result.plan.changes())
    if result.report is None:
        acted = f"planned_changes={planned} (dry-run)"
    else:
        acted = f"written={len(result.report.applied)} failed={len(result.report.failures)}"
    servers = sum(len(p.servers) for p in result.plan.pools)
    return (
        f"tick pools[{mode_text}] servers={servers} {acted} "
        f"duration_ms={result.duration_seconds * 1000:.1f}"
    )
