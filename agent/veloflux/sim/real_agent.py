"""The ``veloflux`` strategy: the real agent, driving the simulated proxy.

Not a re-implementation: ``agent.tick.Agent`` ticks every interval with the scenario's clock,
reading a ``SimSource`` (the engine's counters laid out as HAProxy would report them)
and writing through a ``SimSink`` (the planned weights go to the dispatcher), with a
real journal and model registry in a temp directory. During the warm-up it runs as an
agent without a model does (the capacity rung and its probes, static weights, the
outlier guard) and records history; at the end of the warm-up it trains through the
normal training path (``train_from_journal``, the promotion gate included), and again
every half warm-up (at least a minute) on the history so far, as the daemon retrains
on its schedule. A promoted model then tilts the pool as its switchback test allows.

What HAProxy would show, and so what the source reports: without ``maxconn`` the
proxy forwards at once, so every request at a server (in service or in its own queue)
is a current session, and HAProxy's response time is everything after forwarding:
queue and service. With ``maxconn`` the wait in the proxy's queue is the queue time
and the rest the response time, and the row carries the limit (``slim``). Each time
is HAProxy's 512-request moving average in whole milliseconds (rounded up), updated
here from each interval's completions in order.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.domain.advice import SwitchbackState
from veloflux.domain.observation import (
    EXTERNAL_PREFIX,
    ExternalFeatures,
    Observation,
    PoolInfo,
    ProxyIdentity,
    ServerRow,
)
from veloflux.domain.weightplan import ApplyReport, WeightPlan, WriteResult
from veloflux.history.ema import EMA_SAMPLES
from veloflux.sim.engine import STATIC_WEIGHT, ServerStats, Strategy
from veloflux.sim.scenario import Scenario
from veloflux.util.events import Events

if TYPE_CHECKING:
    from veloflux.history.journal import Journal
    from veloflux.model.registry import Registry

POOL = "app"
UTILIZATION_FEATURE = "utilization"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # simulated time 0


class SimSource:
    """The engine's counters as an HAProxy observation of one backend, and, given the
    servers' concurrency, each server's utilization over the last interval as a
    Prometheus feature would supply it (``UTILIZATION_FEATURE``: busy slot-seconds over
    the interval's slot-seconds, what the heuristic reads too)."""

    def __init__(
        self,
        names: Sequence[str],
        algorithm: str,
        concurrency: Sequence[int] | None = None,
        limits: Sequence[int | None] | None = None,
    ) -> None:
        self.names = tuple(names)
        self.algorithm = algorithm
        self.weights = [STATIC_WEIGHT] * len(names)
        self.now = 0.0
        self.stats: ServerStats | None = None
        n = len(names)
        self._total = _MovingAverages(n)
        self._queued = _MovingAverages(n)  # the wait in the proxy's queue (maxconn)
        self._response = _MovingAverages(n)  # the rest: Tr
        self._limits = tuple(math.nan if m is None else float(m) for m in (limits or [None] * n))
        self._limited = any(math.isfinite(m) for m in self._limits)  # the engine records waits
        self._concurrency = tuple(concurrency) if concurrency is not None else None
        self._busy = [0.0] * n
        self._utilization = [math.nan] * n
        self._last = 0.0

    def update(self, now: float, stats: ServerStats) -> None:
        """Fold the completions since the last tick into HAProxy's moving averages, and
        measure each server's utilization since the last tick."""
        if self._concurrency is not None and now > self._last:
            span = now - self._last
            for i, slots in enumerate(self._concurrency):
                used = stats.busy_seconds[i] - self._busy[i]
                self._utilization[i] = used / (slots * span)
                self._busy[i] = stats.busy_seconds[i]
            self._last = now
        self.now, self.stats = now, stats
        self._total.fold(stats.recent_latencies)
        if self._limited:
            self._queued.fold(stats.recent_waits)
            self._response.fold(
                [
                    [t - w for t, w in zip(times, waits, strict=True)]
                    for times, waits in zip(stats.recent_latencies, stats.recent_waits, strict=True)
                ]
            )
        else:
            self._response.fold(stats.recent_latencies)

    def observe(self) -> Observation:
        stats = self.stats
        assert stats is not None
        taken_at = EPOCH + timedelta(seconds=self.now)
        rows = []
        for i, name in enumerate(self.names):
            total = self._total.shown(i)
            waited = self._queued.shown(i) if math.isfinite(self._limits[i]) else 0.0
            rows.append(
                ServerRow(
                    time=taken_at,
                    source="haproxy",
                    pool=POOL,
                    server=name,
                    address=f"10.0.0.{i % 250 + 1}:80",
                    state="UP" if stats.up[i] else "DOWN",
                    backup=False,
                    weight=float(self.weights[i]),
                    initial_weight=float(STATIC_WEIGHT),
                    algorithm=self.algorithm,
                    sessions=float(stats.active[i]),
                    queue=0.0,
                    session_rate=math.nan,
                    sessions_total=float(stats.requests[i] + stats.connect_errors[i]),
                    requests_total=float(stats.requests[i]),
                    responses_5xx_total=float(stats.errors[i]),
                    response_errors_total=0.0,
                    connect_errors_total=float(stats.connect_errors[i]),
                    queue_time=waited,
                    connect_time=0.0,
                    response_time=self._response.shown(i),
                    total_time=total,
                    since_state_change=math.nan,
                    check_status="",
                    problem="",
                    max_sessions=self._limits[i],
                )
            )
        pool = PoolInfo(POOL, self.algorithm, managed=True)
        proxy = ProxyIdentity("simulated", 1, EPOCH.timestamp(), self.now, "sim", "admin")
        external = None
        if self._concurrency is not None:
            column = EXTERNAL_PREFIX + UTILIZATION_FEATURE
            external = ExternalFeatures("prometheus", ((column, tuple(self._utilization)),))
        return Observation(taken_at, tuple(rows), (pool,), proxy, external=external)


class _MovingAverages:
    """HAProxy's per-server moving average of a time: a plain running mean until 512
    requests, then an EMA of weight 1/512, shown in whole milliseconds rounded up."""

    def __init__(self, n: int) -> None:
        self._ema = [math.nan] * n
        self._seen = [0] * n  # requests folded into each average so far

    def fold(self, recent: Sequence[Sequence[float]]) -> None:
        a = 1.0 - 1.0 / EMA_SAMPLES
        for i, values in enumerate(recent):
            for value in values:
                seen = self._seen[i]
                old = 0.0 if math.isnan(self._ema[i]) else self._ema[i]
                if seen < EMA_SAMPLES:
                    self._ema[i] = (old * seen + value) / (seen + 1)
                else:
                    self._ema[i] = value + (old - value) * a
                self._seen[i] = seen + 1

    def shown(self, i: int) -> float:
        ema = self._ema[i]
        return math.ceil(ema * 1000 - 1e-9) / 1000 if not math.isnan(ema) else math.nan


class SimSink:
    """Takes the plan's weights for the dispatcher; every write is confirmed."""

    def __init__(self, source: SimSource) -> None:
        self._source = source

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport:
        index = {name: i for i, name in enumerate(self._source.names)}
        results = []
        for change in plan.changes():
            assert change.planned_weight is not None
            i = index[change.server]
            old = self._source.weights[i]
            self._source.weights[i] = change.planned_weight
            weight = change.planned_weight
            results.append(WriteResult(change.backend, change.server, old, weight, weight, ""))
        return ApplyReport(tuple(results))


# The simulated agent retrains every half warm-up, never more often than this.
RETRAIN_MIN_SECONDS = 60.0

# Dispatchers whose weights the proxy honours, as the agent's planner knows them.
_ALGORITHMS = {"roundrobin": "roundrobin", "leastconn": "leastconn", "least_request": "roundrobin"}


def agent_config(scenario: Scenario, workdir: Path, utilization: bool = True) -> Config:
    """The agent's configuration for a simulated run: defaults, the scenario's tick, and
    state in ``workdir``. Training needs fewer rows than a production default: a warm-up
    of a few minutes holds a few hundred intervals. With ``utilization`` the capacity
    rung reads each server's busy share as a Prometheus feature (the source supplies
    it; the URL is never queried), else the agent sees only what the proxy shows."""
    signal: dict[str, object] = {}
    if utilization:
        query = 'rate(busy_seconds_total{instance="{server}"}[1m])'
        signal = {
            "prometheus": {
                "url": "http://127.0.0.1:9",
                "features": {UTILIZATION_FEATURE: query},
                "default_features": False,
            },
            "capacity": {"utilization_feature": UTILIZATION_FEATURE},
        }
    return validate_config(
        {
            **signal,
            "interval": f"{scenario.interval_s * 1000:g}ms",
            "haproxy": {"socket": f"unix://{workdir}/simulated.sock", "backends": [POOL]},
            "ai": {
                "history_path": str(workdir / "history.sqlite"),
                "model_dir": str(workdir / "models"),
                "audit_log": str(workdir / "audit.jsonl"),
                "min_training_rows": 100,
            },
            "api": {"state_path": str(workdir / "operator.json")},
        }
    )


class VelofluxStrategy(Strategy):
    """The agent with every signal the heuristic has (utilization as a Prometheus
    feature); ``utilization=False`` is the proxy-only variant."""

    name = "veloflux"

    def __init__(self, utilization: bool = True) -> None:
        self._utilization = utilization
        if not utilization:
            self.name = "veloflux-proxy-only"

    def start(self, scenario: Scenario, names: Sequence[str], dispatcher: str) -> list[int]:
        from veloflux.agent.tick import Agent
        from veloflux.history.journal import Journal
        from veloflux.model.registry import Registry

        self._workdir = Path(tempfile.mkdtemp(prefix="veloflux-sim-"))
        self._scenario = scenario
        self._events = Events()
        config = agent_config(scenario, self._workdir, self._utilization)
        self._config = config
        # The algorithm the source reports: one whose weights the planner manages.
        concurrency = [g.concurrency for _, g in scenario.expanded()]
        self._source = SimSource(
            names,
            _ALGORITHMS.get(dispatcher, "roundrobin"),
            concurrency if self._utilization else None,
            [g.maxconn for _, g in scenario.expanded()],
        )
        self._journal = Journal(config.ai.history_path, self._events)
        self._registry = Registry(config.ai.model_dir, self._clock, self._events)
        self._agent = Agent(
            config,
            self._source,
            SimSink(self._source),
            self._events,
            journal=self._journal,
            registry=self._registry,
            log_summary=False,
        )
        self._next_training = scenario.warmup_s
        self._retrain_every = max(RETRAIN_MIN_SECONDS, scenario.warmup_s / 2)
        self._modes: list[str] = []
        self._switchback: list[SwitchbackState] = []
        self._training: dict[str, float] = {}
        return list(self._source.weights)

    @property
    def journal(self) -> Journal:
        """The run's journal (for diagnostics; valid until ``finish``)."""
        return self._journal

    @property
    def registry(self) -> Registry:
        """The run's model registry (for diagnostics; valid until ``finish``)."""
        return self._registry

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @property
    def config(self) -> Config:
        """The agent's configuration in this run (for diagnostics)."""
        return self._config

    def _clock(self) -> datetime:
        return EPOCH + timedelta(seconds=self._source.now)

    def tick(self, now: float, stats: ServerStats) -> tuple[list[int] | None, str]:
        self._source.update(now, stats)
        if now >= self._next_training:
            self._next_training = now + self._retrain_every
            self._train()
        result = self._agent.tick(write=True, record=True)
        mode = result.plan.pools[0].mode if result.plan.pools else "none"
        if now >= self._scenario.warmup_s:
            self._modes.append(mode)
            test = result.plan.pools[0].switchback if result.plan.pools else None
            if test is not None:
                self._switchback.append(test)
        return list(self._source.weights), mode

    def _train(self) -> None:
        from veloflux.agent.learn import training_settings
        from veloflux.model.pipeline import train_from_journal
        from veloflux.model.train import NotEnoughData

        # One thread: the benchmark runs one simulation per core.
        settings = training_settings(self._config, threads=1)
        figures = self._training
        figures.setdefault("trained", 0.0)
        figures.setdefault("promoted", 0.0)
        try:
            report = train_from_journal(self._journal, self._registry, settings)
        except NotEnoughData:
            return
        figures["trained"] = 1.0
        figures["promoted"] = max(figures["promoted"], 1.0 if report.promoted else 0.0)
        figures["promotions"] = figures.get("promotions", 0.0) + (1.0 if report.promoted else 0.0)
        if "mae_p50_ms" not in figures:  # the first training's, at the end of the warm-up
            metrics = report.metadata["metrics"]
            naive = metrics.get("naive_mae_seconds")
            figures["mae_p50_ms"] = metrics["mae_p50_seconds"] * 1000
            figures["naive_mae_ms"] = naive * 1000 if naive is not None else math.nan

    def _switchback_figures(self, ticks: int) -> dict[str, float]:
        """How long the tilt had authority, and its last measured gain (the switchback
        test's own figure: what the tilt added to the capacity rung, in cost)."""
        if not self._switchback:
            return {}
        last = self._switchback[-1]
        return {
            "tilt_granted_share": sum(t.state == "granted" for t in self._switchback) / ticks,
            "tilt_revoked_share": sum(t.state == "revoked" for t in self._switchback) / ticks,
            "tilt_gain": last.mean_gain if last.mean_gain is not None else math.nan,
            "tilt_pairs": float(last.pairs),
        }

    def finish(self) -> dict[str, float]:
        self._agent.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        ticks = max(len(self._modes), 1)
        return {
            "model_tick_share": sum(m == "model" for m in self._modes) / ticks,
            "capacity_tick_share": sum(m == "capacity" for m in self._modes) / ticks,
            **self._switchback_figures(ticks),
            "fallback_tick_share": sum(m == "fallback" for m in self._modes) / ticks,
            **{f"model_{k}": v for k, v in self._training.items()},
        }
