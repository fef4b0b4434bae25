"""Several proxies driven as one: an ``Agent`` per proxy, one tick over them all.

A config may set both ``haproxy`` and ``envoy``. Each proxy keeps its own agent, and
with it what belongs to that proxy alone: reload detection, the weights to put back
after its reload, its recent window of history. The agents share the journal, the
model registry and the journal's writer thread; pool names are unique across proxies
(the config refuses a name used by both), so one namespace serves overrides, metrics
and history.

A tick runs the agents in turn. A proxy whose source or sink fails is held (nothing is
written to it) and named in the result's ``failures``, while the others are driven as
usual: Envoy being down must not freeze HAProxy's weights. Only when every proxy fails
does the tick fail as a whole, with the first failure, as it does with one proxy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from veloflux.agent.ports import ProxyFailure, TickResult
from veloflux.agent.summary import log_summary
from veloflux.agent.tick import Agent
from veloflux.domain.observation import Observation
from veloflux.domain.weightplan import ApplyReport, WeightPlan
from veloflux.errors import SinkRejected, SourceUnavailable
from veloflux.model.registry import Registry
from veloflux.util.events import Events

_log = logging.getLogger("veloflux.tick")


class Fleet:
    """The agents of several proxies, ticked as one ``Driver``."""

    def __init__(self, agents: Mapping[str, Agent], events: Events) -> None:
        if not agents:
            raise ValueError("a fleet needs at least one agent")
        self._agents = dict(agents)
        self._events = events

    @property
    def events(self) -> Events:
        return self._events

    @property
    def registry(self) -> Registry | None:
        return next(iter(self._agents.values())).registry  # shared by all of them

    def tick(
        self,
        write: bool,
        overrides: Mapping[str, int] | None = None,
        record: bool | None = None,
    ) -> TickResult:
        """Each proxy's tick (see ``Agent.tick``), as one result."""
        paused = not write and bool(record)  # record without write: a paused daemon
        return self._each(lambda agent: agent.tick(write, overrides, record), paused)

    def revert(self) -> TickResult:
        return self._each(lambda agent: agent.revert())

    def stale_history(self) -> float | None:
        ages = [a for a in (agent.stale_history() for agent in self._agents.values()) if a]
        return max(ages) if ages else None

    def sample(self) -> None:
        for agent in self._agents.values():
            agent.sample()

    def seed_written(self, weights: Mapping[str, int]) -> None:
        for agent in self._agents.values():
            agent.seed_written(weights)

    def close(self) -> None:
        """Close every agent (the shared journal and writer close once; closing again
        is a no-op)."""
        for agent in self._agents.values():
            agent.close()

    def _each(self, step: Callable[[Agent], TickResult], paused: bool = False) -> TickResult:
        started = time.perf_counter()
        results: list[TickResult] = []
        failures: list[ProxyFailure] = []
        first_error: SourceUnavailable | SinkRejected | None = None
        for proxy, agent in self._agents.items():
            try:
                results.append(step(agent))
            except (SourceUnavailable, SinkRejected) as exc:
                reason = "source" if isinstance(exc, SourceUnavailable) else "sink"
                failures.append(ProxyFailure(proxy, reason, str(exc)))
                first_error = first_error or exc
        if not results:
            assert first_error is not None
            raise first_error
        for failure in failures:
            self._events.record(
                f"proxy_failed_{failure.reason}",
                f"{failure.proxy}: {failure.message}; its weights are held this tick",
                proxy=failure.proxy,
            )
        result = combined(results, tuple(failures), time.perf_counter() - started)
        log_summary(result, paused)
        return result


def combined(
    results: list[TickResult], failures: tuple[ProxyFailure, ...], duration_seconds: float
) -> TickResult:
    """Several proxies' tick results as one: every pool's plan, every write."""
    plans = [r.plan for r in results]
    version = next((p.model_version for p in plans if p.model_version), None)
    plan = WeightPlan(
        max(p.generated_at for p in plans),
        tuple(pool for p in plans for pool in p.pools),
        version,
    )
    reports = [r.report for r in results]
    report = None
    if any(r is not None for r in reports):
        report = ApplyReport(tuple(w for r in reports if r is not None for w in r.results))
    return TickResult(
        observation=Observation.combined([r.observation for r in results]),
        plan=plan,
        report=report,
        duration_seconds=duration_seconds,
        proxy_reloaded=any(r.proxy_reloaded for r in results),
        failures=failures,
        config_problems=tuple(p for r in results for p in r.config_problems),
        external_changes=tuple(c for r in results for c in r.external_changes),
        external_holds=tuple(c for r in results for c in r.external_holds),
    )
