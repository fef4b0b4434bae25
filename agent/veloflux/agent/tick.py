"""One tick of the agent for one proxy: observe, advise, plan, act.

The ``Agent`` gets every dependency from outside (source, sink, journal, registry,
clock, events), so the CLI, the daemon, the tests and the simulator drive exactly the
code production runs, whichever proxy the adapters speak to.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from veloflux.agent.external import ExternalChange, ExternalChanges, name_holds
from veloflux.agent.ladder import Ladder
from veloflux.agent.names import missing_pools, unknown_names
from veloflux.agent.ports import Sink, Source, TickResult
from veloflux.agent.steps import UNTIMED, Steps
from veloflux.agent.summary import log_summary
from veloflux.config.schema import Config
from veloflux.decide.capacity_rung import controller_settings
from veloflux.decide.outliers import moving_average_outliers
from veloflux.decide.planner import plan_revert, plan_weights
from veloflux.domain.advice import Advice, blocked_pool
from veloflux.domain.observation import Observation, ProxyIdentity
from veloflux.domain.weightplan import DRIVEN_MODES, ApplyReport, WeightPlan
from veloflux.errors import ConfigError, ConfigProblem, ModelUnavailable
from veloflux.model.registry import Registry
from veloflux.util.events import Events
from veloflux.util.names import server_key

if TYPE_CHECKING:
    import pandas as pd

    from veloflux.history.journal import Journal
    from veloflux.history.recorder import BackgroundRecorder
    from veloflux.history.window import RecentWindow
    from veloflux.model.predict import Predictor


# How much journal history a tick reads. The realized-error part of confidence judges
# the last 3 intervals; each of their features needs a 3-interval trend, and each rate
# one reading before it: 7 readings back from now, plus one for timing jitter.
HISTORY_WINDOW_INTERVALS = 8


class Agent:
    """Observe -> advise -> plan -> act for one proxy.

    With ``strict_pools`` a pool named in the config but absent from the proxy stops
    the tick before anything is written (the one-shot commands want that: the config is
    wrong). The daemon does the same at its first observation, and after it counts the
    event and keeps managing the other pools (a reload may remove a pool or a server).
    The journal and the model registry are optional: without them every pool is in
    fallback, and the outlier guard judges on HAProxy's moving averages alone. With a
    ``recorder`` (the daemon's), appends to the journal happen on its writer thread.
    In a ``Fleet`` the agents share journal, registry and recorder, and the fleet logs
    the tick's summary line (``log_summary=False``).
    """

    def __init__(
        self,
        config: Config,
        source: Source,
        sink: Sink,
        events: Events,
        strict_pools: bool = False,
        journal: Journal | None = None,
        registry: Registry | None = None,
        recorder: BackgroundRecorder | None = None,
        log_summary: bool = True,
        steps: Steps = UNTIMED,
        alone: bool = True,
    ) -> None:
        self._config = config
        self._steps = steps
        self._log_summary = log_summary  # the flag; ``log_summary()`` below writes the line
        self._source = source
        self._sink = sink
        self._events = events
        self._strict_pools = strict_pools
        # Config names this proxy lacks (``agent/names.py``): at the last tick, and
        # which were already counted, so a standing typo is one event, not one a tick.
        # ``alone``: no other proxy of a fleet could hold a pool this one lacks.
        self._alone = alone
        self._unknown_names: tuple[ConfigProblem, ...] = ()
        self._observed = False
        self._reported_names: frozenset[str] = frozenset()
        self._journal = journal
        self._registry = registry
        self._recorder = recorder
        self._predictor: Predictor | None = None
        # What the previous ticks learned about the proxy: its identity, and the
        # weights VeloFlux set, to put back if a reload resets them.
        self._proxy: ProxyIdentity | None = None
        self._set_weights: dict[str, int] = {}
        self._external = ExternalChanges(config.policy.external_change_hold_seconds)
        self._seeded = False  # a one-shot command was told what VeloFlux last wrote
        self._window: RecentWindow | None = None
        # The outlier guard's latency cuts at the last tick, per pool, carried on so a
        # cut outlives the history window it began in.
        self._latency_cuts: dict[str, Mapping[str, int]] = {}
        # The capacity rung's memory (previous observation, estimates) and which pools
        # were overloaded at the last tick, to count each overload once when it begins.
        # The confidence ladder's memory: capacity estimates, switchback tests.
        self._ladder = Ladder(config, events, journal)
        self._controller = controller_settings(config)

    @property
    def events(self) -> Events:
        return self._events

    @property
    def registry(self) -> Registry | None:
        return self._registry

    def close(self) -> None:
        """Release the journal (the daemon calls this when a reloaded config replaces it),
        after the recorder, if any, has written what it holds. A source that holds
        something of its own (Prometheus's query threads) has a ``close`` too."""
        close_source = getattr(self._source, "close", None)
        if close_source is not None:
            close_source()
        if self._recorder is not None:
            self._recorder.close()
        if self._journal is not None:
            self._journal.close()

    def _advice(self, observation: Observation, samples: pd.DataFrame | None) -> Advice:
        """Ask the model layer; it is imported only when there is something to ask it.

        Importing pandas and XGBoost is a large start-up cost; a one-shot dry-run with
        no history and no model should not pay it to learn that there is no model
        (``tests/unit/test_fallback_imports.py`` checks that it does not).
        """
        ai = self._config.ai
        if self._journal is None and (not ai.enabled or self._current_version() is None):
            reason = "ai disabled" if not ai.enabled else self._no_model_reason()
            return _fallback_advice(observation, self._config, reason)
        from veloflux.decide.advisor import AdvisorSettings, advise
        from veloflux.history.frames import journal_frame

        with self._steps.step("history"):
            current = journal_frame(observation) if samples is None else samples
            features, last_sample = self._recent_features(observation, current)
        with self._steps.step("advise"):
            predictor, reason = (None, "ai disabled") if not ai.enabled else self._load_predictor()
            settings = AdvisorSettings.from_config(self._config)
            advice = advise(
                observation, features, predictor, settings, reason, last_sample, self._latency_cuts
            )
        self._latency_cuts = {name: pool.latency_cuts for name, pool in advice.pools.items()}
        return advice

    def _current_version(self) -> str | None:
        return self._registry.current_version() if self._registry else None

    def _no_model_reason(self) -> str:
        if self._registry is None:
            return "no model"
        return "no model (none promoted yet; run `veloflux-agent train`)"

    def _load_predictor(self) -> tuple[Predictor | None, str]:
        """The current model, loaded once per version; a refusal falls back, never crashes."""
        version = self._current_version()
        if self._registry is None or version is None:
            return None, self._no_model_reason()
        if self._predictor is not None and self._predictor.version == version:
            return self._predictor, ""
        from veloflux.model.predict import Predictor

        try:
            self._predictor = Predictor(self._registry.load(version))
        except ModelUnavailable as exc:
            self._events.record("model_unavailable", str(exc))
            self._predictor = None
            return None, f"model refused: {exc}"
        return self._predictor, ""

    def _recent_features(
        self, observation: Observation, current: pd.DataFrame
    ) -> tuple[pd.DataFrame, datetime | None]:
        from veloflux.history.journal import HistoryError
        from veloflux.history.window import RecentWindow
        from veloflux.model.inputs import recent_features

        if self._journal is not None and self._window is None:
            span = HISTORY_WINDOW_INTERVALS * self._config.interval_seconds
            self._window = RecentWindow(self._journal, span)
        try:
            return recent_features(self._window, observation.taken_at, current)
        except HistoryError as exc:
            self._events.record("history_read_failed", str(exc))
            return recent_features(None, observation.taken_at, current)

    def _samples(self, observation: Observation) -> pd.DataFrame | None:
        """The observation as journal rows, made once a tick for the model, the journal
        and the recent window; None without a journal (nothing to record or compare)."""
        if self._journal is None:
            return None
        from veloflux.history.frames import journal_frame

        return journal_frame(observation)

    def _record(self, observation: Observation, samples: pd.DataFrame | None) -> None:
        """Append to the journal; with a recorder this only hands the rows to its writer
        thread, which is why a tick does it last: the writer then competes for the
        interpreter with nothing the tick still has to do."""
        if self._journal is None:
            return
        from veloflux.history.journal import HistoryError

        # A failed append is already counted and logged by the journal; the tick goes on.
        with contextlib.suppress(HistoryError):
            if self._recorder is not None:
                self._recorder.append(observation, samples)
            else:
                self._journal.append(observation, samples)

    def _remember_samples(self, samples: pd.DataFrame | None) -> None:
        """The recent window keeps what was seen, recorded or not (a failed append
        included): the model judges on what was seen."""
        if self._window is not None and samples is not None:
            self._window.add(samples)

    def _observe(self) -> Observation:
        observation = self._source.observe()
        unknown = unknown_names(self._config, observation, self._alone)
        first, self._observed = not self._observed, True
        # The daemon's first look at the proxy is strict too: a typo in a name stops it
        # before any write; later, a pool or server a reload removed is counted and the
        # other pools go on.
        if (self._strict_pools or first) and (observation.missing_pools or unknown):
            kind = "envoy" if self._config.envoy else "haproxy"
            raise ConfigError(missing_pools(self._config, kind, observation) + unknown)
        self._unknown_names = tuple(unknown)
        for problem in unknown:
            if problem.path not in self._reported_names:
                self._events.record("config_name_unknown", f"{problem.path}: {problem.message}")
        self._reported_names = frozenset(p.path for p in unknown)
        return observation

    def tick(
        self,
        write: bool,
        overrides: Mapping[str, int] | None = None,
        record: bool | None = None,
    ) -> TickResult:
        """One observe-plan(-act) cycle; ``write=False`` is the dry-run.

        ``overrides`` are an operator's run-time pins, on top of the config's.
        ``record`` appends the observation to the journal (default: when writing; a
        paused daemon keeps recording without writing).
        """
        started = time.perf_counter()
        with self._steps.step("observe"):
            observation = self._observe()
        reloaded = self._proxy is not None and observation.proxy.reloaded_since(self._proxy)
        self._proxy = observation.proxy
        if reloaded:
            self._events.record(
                "proxy_reloaded",
                f"{observation.proxy.address}: new process (pid {observation.proxy.pid}); "
                f"restoring {len(self._set_weights)} weight(s) VeloFlux had set",
            )
        policy = self._config.policy
        changes = self._external_changes(observation, write, reloaded)
        operator = {**policy.overrides, **(overrides or {})}
        held = self._external.holds()
        holds = {c.server: c for c in held if c.server not in operator}
        pins = {**{key: c.found for key, c in holds.items()}, **operator}
        if pins != policy.overrides:
            policy = policy.model_copy(update={"overrides": pins})
        restore = self._set_weights if reloaded and write else None
        with self._steps.step("frame"):
            samples = self._samples(observation)
        advice = self._advice(observation, samples)
        with self._steps.step("capacity"):
            advice = self._ladder.join(advice, observation, policy)
        with self._steps.step("plan"):
            plan = plan_weights(observation, policy, advice, restore, self._controller)
            plan = name_holds(plan, holds)
        report = None
        if write:
            with self._steps.step("apply"):
                report = self._sink.apply(plan, observation.proxy.level)
            self._remember(plan, report)
        recording = write if record is None else record
        if recording:
            self._remember_samples(samples)
        result = self._finish(observation, plan, report, started, reloaded)
        result = replace(result, external_changes=tuple(changes), external_holds=held)
        if self._log_summary:  # record without write: a paused daemon
            log_summary(result, paused=not write and bool(record))
        if recording:
            with self._steps.step("record"):
                self._record(observation, samples)
        return result

    def _external_changes(
        self, observation: Observation, write: bool, reloaded: bool
    ) -> list[ExternalChange]:
        """Weights set outside VeloFlux since its last write (``agent/external.py``),
        each an event; a tick that writes nothing makes what it found the baseline."""
        if not write and not self._seeded:
            self._external.forget()
            self._set_weights = {}
            return []
        if reloaded:  # the restart reset the weights itself: restored below, not held
            return []
        changes = self._external.find(observation, self._set_weights, observation.taken_at)
        for change in changes:
            self._events.record("external_change", f"{change.server}: {change.reason()}")
        return changes

    def stale_history(self) -> float | None:
        """How old the journal's newest sample is (inf: none) when it is too old for the
        model to be asked (``policy.stale_after``); None when it is fresh enough, or
        when there is no model to ask (the plan falls back either way)."""
        if self._journal is None or not self._config.ai.enabled:
            return None
        if self._current_version() is None:
            return None
        from veloflux.history.journal import HistoryError

        try:
            span = self._journal.span()
        except HistoryError:
            return None
        age = math.inf if span is None else (datetime.now(UTC) - span[1]).total_seconds()
        return age if age > self._config.stale_after_seconds else None

    def sample(self) -> None:
        """One observation into the recent window only (not the journal, no plan): a
        one-shot command whose journal is stale takes two, an interval apart, so that
        the model has a fresh interval to judge (``stale_history``)."""
        observation = self._observe()
        samples = self._samples(observation)
        if samples is None:
            return
        self._recent_features(observation, samples)  # opens the window, reads the journal
        self._remember_samples(samples)

    def seed_written(self, weights: Mapping[str, int]) -> None:
        """What VeloFlux last wrote, for a one-shot command (from the audit log): its
        one tick then finds and holds external changes as the daemon would."""
        self._set_weights = dict(weights)
        self._seeded = True

    def _remember(self, plan: WeightPlan, report: ApplyReport) -> None:
        """The weights in effect after a write tick, for restoring after a reload.

        Only pools VeloFlux drives count; a failed write is forgotten rather than
        restored later as if it had happened.
        """
        failed = {server_key(f.backend, f.server) for f in report.failures}
        for pool in plan.pools:
            if pool.mode not in DRIVEN_MODES:
                continue
            for s in pool.servers:
                key = server_key(s.backend, s.server)
                if s.planned_weight is None or key in failed:
                    self._set_weights.pop(key, None)
                else:
                    self._set_weights[key] = s.planned_weight

    def revert(self) -> TickResult:
        """Every managed server to its static weight at once, no step limit."""
        started = time.perf_counter()
        observation = self._observe()
        plan = plan_revert(observation, self._config.policy)
        report = self._sink.apply(plan, observation.proxy.level)
        result = self._finish(observation, plan, report, started)
        if self._log_summary:
            log_summary(result)
        return result

    def _finish(
        self,
        observation: Observation,
        plan: WeightPlan,
        report: ApplyReport | None,
        started: float,
        reloaded: bool = False,
    ) -> TickResult:
        duration = time.perf_counter() - started
        return TickResult(
            observation, plan, report, duration, reloaded, config_problems=self._unknown_names
        )


def _fallback_advice(observation: Observation, config: Config, reason: str) -> Advice:
    """Advice without a model: every pool blocked, outliers judged on moving averages."""
    rules = config.policy.outlier
    pools = {
        pool.name: blocked_pool(
            pool.name, reason, moving_average_outliers(observation, pool.name, rules)
        )
        for pool in observation.pools
    }
    return Advice(None, pools)
