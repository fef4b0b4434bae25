"""The agent's own Prometheus metrics: is the loop turning, and what is it doing to weights.

An operator needs to see, from the Prometheus that watches the proxy, whether the agent
ticks, why ticks fail, which weights it set, how sure it was, and whether bad input piles
up. The daemon reports each tick, training run or reload to one ``AgentMetrics``; the
HTTP API serves its ``render()``. A private ``CollectorRegistry`` keeps two agents (or
two tests) in one process apart and the global default registry untouched.

Per-server and per-pool series describe *the last tick*, not a history: a server that
left the proxy must leave ``/metrics`` too. So they are yielded at scrape time from the
last ``TickResult``, swapped in whole under a lock: a scrape racing a tick sees the old
tick or the new one, never half of each. ``Events`` counts are read at scrape time too.
"""

from __future__ import annotations

import platform
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from veloflux.domain.weightplan import ApplyReport, Mode, ServerPlan, WriteResult
from veloflux.util.events import Events

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from veloflux.agent.ports import TickResult

MODES: tuple[str, ...] = get_args(Mode)
SWITCHBACK_STATES = ("testing", "granted", "revoked")
TICK_FAILURE_REASONS = ("source", "sink", "error", "config")
# "skipped": too little history to train yet; neither a success nor a failure.
TRAINING_OUTCOMES = ("promoted", "not_promoted", "skipped", "failed")
# A tick is a handful of socket round trips (ms) up to a slow model or proxy (s).
TICK_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class _Snapshot:
    """What the last tick and the last model load left to report."""

    tick: TickResult | None = None
    model_version: str | None = None


def weight_in_effect(server: ServerPlan, write: WriteResult | None) -> int | None:
    """The weight the proxy runs with after the tick, as far as the agent knows.

    A read-back after a write is the truth; without one, a successful write means the
    new weight and a failed one means the weight read at the start of the tick.
    """
    if write is None:
        return server.current_weight
    if write.confirmed_weight is not None:
        return write.confirmed_weight
    return write.new_weight if write.ok else server.current_weight


def writes_by_server(report: ApplyReport | None) -> dict[tuple[str, str], WriteResult]:
    return {} if report is None else {(w.backend, w.server): w for w in report.results}


class _LastTickCollector(Collector):
    """Yields the series that describe the current state from one swapped snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()

    def set_tick(self, result: TickResult) -> None:
        with self._lock:
            self._snapshot = replace(self._snapshot, tick=result)

    def set_model(self, version: str | None) -> None:
        with self._lock:
            self._snapshot = replace(self._snapshot, model_version=version)

    def describe(self) -> Iterable[Metric]:
        return _state_families(_Snapshot())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = self._snapshot
        return _state_families(snapshot)


def _server_families(tick: TickResult | None) -> list[Metric]:
    labels = ["backend", "server"]
    weight = GaugeMetricFamily(
        "veloflux_server_weight",
        "Weight in effect after the last tick: read back after a write, else as read.",
        labels=labels,
    )
    planned = GaugeMetricFamily(
        "veloflux_server_planned_weight", "Weight the last tick's plan asked for.", labels=labels
    )
    confidence = GaugeMetricFamily(
        "veloflux_server_confidence",
        "Confidence (0..1) in the server's prediction at the last tick.",
        labels=labels,
    )
    if tick is not None:
        writes = writes_by_server(tick.report)
        for s in tick.plan.servers():
            key = [s.backend, s.server]
            effective = weight_in_effect(s, writes.get((s.backend, s.server)))
            # An unreadable weight is left out rather than exported as a made-up number.
            if effective is not None:
                weight.add_metric(key, effective)
            if s.planned_weight is not None:
                planned.add_metric(key, s.planned_weight)
            confidence.add_metric(key, s.confidence)
    return [weight, planned, confidence]


def _pool_families(tick: TickResult | None) -> list[Metric]:
    mode = GaugeMetricFamily(
        "veloflux_pool_mode",
        "1 for the mode the pool was planned in at the last tick, 0 for the other modes.",
        labels=["backend", "mode"],
    )
    confidence = GaugeMetricFamily(
        "veloflux_pool_confidence",
        "Confidence (0..1) in the pool's model-driven plan at the last tick.",
        labels=["backend"],
    )
    overload = GaugeMetricFamily(
        "veloflux_pool_overload",
        "1 when the load offered to the pool reached its estimated capacity at the last "
        "tick (static weights held), else 0.",
        labels=["backend"],
    )
    authority = GaugeMetricFamily(
        "veloflux_pool_tilt_authority",
        "1 for the state of the model tilt's switchback test (testing, granted, revoked) "
        "at the last tick, 0 for the others; absent before the test starts.",
        labels=["backend", "state"],
    )
    gain = GaugeMetricFamily(
        "veloflux_pool_tilt_gain_ratio",
        "The model tilt's mean relative fall in the pool's cost over the test's recent "
        "pairs of blocks (negative: the tilt costs); absent before the first pair.",
        labels=["backend"],
    )
    for pool in tick.plan.pools if tick is not None else ():
        for name in MODES:
            mode.add_metric([pool.backend, name], 1.0 if name == pool.mode else 0.0)
        confidence.add_metric([pool.backend], pool.confidence)
        overload.add_metric([pool.backend], 1.0 if pool.overload else 0.0)
        test = pool.switchback
        if test is not None:
            for state in SWITCHBACK_STATES:
                authority.add_metric([pool.backend, state], 1.0 if state == test.state else 0.0)
            if test.mean_gain is not None:
                gain.add_metric([pool.backend], test.mean_gain)
    return [mode, confidence, overload, authority, gain]


def _state_families(snapshot: _Snapshot) -> list[Metric]:
    model = GaugeMetricFamily(
        "veloflux_model_info", "The model version in use (absent when none).", labels=["version"]
    )
    if snapshot.model_version is not None:
        model.add_metric([snapshot.model_version], 1.0)
    return [*_server_families(snapshot.tick), *_pool_families(snapshot.tick), model]


class _EventsCollector(Collector):
    """Exports the injected ``Events`` counts, summed per kind, at scrape time."""

    def __init__(self, events: Events) -> None:
        self._events = events

    def describe(self) -> Iterable[Metric]:
        return [_events_family({})]

    def collect(self) -> Iterable[Metric]:
        per_kind: Tally[str] = Tally()
        for (kind, _labels), count in self._events.totals().items():
            per_kind[kind] += count
        return [_events_family(per_kind)]


def _events_family(per_kind: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "veloflux_events",
        "Problems counted without stopping the agent (bad input, refused writes...), by kind.",
        labels=["kind"],
    )
    for kind in sorted(per_kind):
        family.add_metric([kind], per_kind[kind])
    return family


def _require(value: str, allowed: tuple[str, ...], what: str) -> None:
    """Label values come from a fixed set: a typo must not become a new time series."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


class AgentMetrics:
    """Every metric the agent exports, on its own registry; safe to call from any thread.

    The daemon calls one method per thing that happened; each method says in its name
    what happened, so the daemon never needs to know metric names or label sets.
    """

    CONTENT_TYPE: ClassVar[str] = CONTENT_TYPE_LATEST

    def __init__(self, version: str, events: Events) -> None:
        self.registry = CollectorRegistry()
        self._state = _LastTickCollector()
        self.registry.register(self._state)
        self.registry.register(_EventsCollector(events))
        build = self._gauge(
            "build_info", "Always 1; labels say which agent and Python run.", "version", "python"
        )
        build.labels(version, platform.python_version()).set(1)
        self._define_tick_metrics()
        self._define_other_metrics()

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(f"veloflux_{name}", doc, labels, registry=self.registry)

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(f"veloflux_{name}", doc, labels, registry=self.registry)

    def _define_tick_metrics(self) -> None:
        self._ticks = self._counter("ticks", "Ticks that observed, planned and (if run) acted.")
        self._tick_failures = self._counter(
            "tick_failures", "Ticks that stopped early, by what failed.", "reason"
        )
        for reason in TICK_FAILURE_REASONS:
            self._tick_failures.labels(reason)
        self._tick_overruns = self._counter(
            "tick_overruns", "Ticks skipped because the previous tick was still running."
        )
        self._tick_duration = Histogram(
            "veloflux_tick_duration_seconds",
            "Wall time of one tick, successful or failed.",
            buckets=TICK_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._last_tick = self._gauge(
            "last_successful_tick_timestamp_seconds", "Unix time the last successful tick ended."
        )
        self._weight_changes = self._counter(
            "weight_changes", "Server weights written and accepted by the proxy.", "backend"
        )
        self._write_failures = self._counter(
            "weight_write_failures",
            "Weight writes the proxy refused or did not confirm on read-back.",
            "backend",
        )
        self._source_up = self._gauge(
            "source_up", "1 if the source answered at the last attempt, else 0.", "source"
        )
        self._replica_up = self._gauge(
            "replica_up",
            "1 if the replica answered at the last tick, else 0 (proxies run as replicas).",
            "replica",
        )
        self._proxy_reloads = self._counter(
            "proxy_reloads", "Proxy restarts or reloads seen (runtime weights reset)."
        )
        self._external_changes = self._counter(
            "external_changes",
            "Weights found changed outside VeloFlux since it last wrote them.",
            "backend",
        )
        self._external_holds = self._gauge(
            "external_holds", "Servers held at a weight set outside VeloFlux (policy hold)."
        )

    def _define_other_metrics(self) -> None:
        self._trainings = self._counter("trainings", "Training runs, by outcome.", "outcome")
        for outcome in TRAINING_OUTCOMES:
            self._trainings.labels(outcome)
        self._last_training = self._gauge(
            "last_training_success_timestamp_seconds",
            "Unix time the last training run that did not fail ended.",
        )
        self._last_training_duration = self._gauge(
            "last_training_duration_seconds",
            "Wall time of the last training run that did not fail.",
        )
        self._config_ok = self._gauge(
            "config_last_reload_successful", "1 if the last configuration (re)load succeeded."
        )
        self._config_loaded = self._gauge(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
        )
        self._paused = self._gauge("paused", "1 while an operator has paused weight writes.")
        self._overrides = self._gauge(
            "overrides_active", "Servers whose weight an operator override currently pins."
        )

    def tick_succeeded(self, result: TickResult, finished_at_epoch: float) -> None:
        """Record one completed tick and replace the per-server series with its values."""
        self._state.set_tick(result)
        self._ticks.inc()
        self._tick_duration.observe(result.duration_seconds)
        self._last_tick.set(finished_at_epoch)
        self._count_writes(result)

    def _count_writes(self, result: TickResult) -> None:
        for pool in result.plan.pools:  # every managed backend shows its counters, even at 0
            self._weight_changes.labels(pool.backend)
            self._write_failures.labels(pool.backend)
        if result.report is None:
            return
        for write in result.report.applied:
            self._weight_changes.labels(write.backend).inc()
        for write in result.report.failures:
            self._write_failures.labels(write.backend).inc()

    def tick_failed(self, reason: str, duration_seconds: float) -> None:
        """A tick that stopped early; the last successful tick's series stay as they were."""
        _require(reason, TICK_FAILURE_REASONS, "tick failure reason")
        self._tick_failures.labels(reason).inc()
        self._tick_duration.observe(duration_seconds)

    def tick_overrun(self) -> None:
        self._tick_overruns.inc()

    def source_up(self, source: str, up: bool) -> None:
        self._source_up.labels(source).set(1 if up else 0)

    def replica_up(self, replica: str, up: bool) -> None:
        self._replica_up.labels(replica).set(1 if up else 0)

    def proxy_reload_detected(self) -> None:
        self._proxy_reloads.inc()

    def external_changes(self, backends: list[str], holds: int) -> None:
        """The external changes new at this tick (one backend each) and the holds in force."""
        for backend in backends:
            self._external_changes.labels(backend).inc()
        self._external_holds.set(holds)

    def training_finished(
        self, outcome: str, duration_seconds: float, finished_at_epoch: float
    ) -> None:
        """Count the run; only a finished training sets the last success's time and duration."""
        _require(outcome, TRAINING_OUTCOMES, "training outcome")
        self._trainings.labels(outcome).inc()
        if outcome in ("promoted", "not_promoted"):
            self._last_training.set(finished_at_epoch)
            self._last_training_duration.set(duration_seconds)

    def model_loaded(self, version: str | None) -> None:
        """The model now in use; ``None`` when there is none (the series disappears)."""
        self._state.set_model(version)

    def config_reloaded(self, ok: bool, at_epoch: float) -> None:
        self._config_ok.set(1 if ok else 0)
        if ok:
            self._config_loaded.set(at_epoch)

    def operator_state(self, paused: bool, overrides: int) -> None:
        self._paused.set(1 if paused else 0)
        self._overrides.set(overrides)

    def render(self) -> bytes:
        """The text exposition of every metric, served as ``CONTENT_TYPE``."""
        return generate_latest(self.registry)
