"""``veloflux-agent run``: the long-lived agent beside the proxy.

Two scheduled jobs share one process. The tick job (every ``interval``, one at a
time, late runs coalesced and counted as overruns) observes, plans and acts. The
training job (on ``ai.retrain_cron`` or every ``ai.training_interval``) runs in its
own thread, never a fork, and publishes a model only through the registry's
promotion gate; the next tick picks up the new ``current`` version, so a model is
always swapped between ticks, never during one.

The main thread does nothing but react to flags set by signal handlers: SIGHUP
re-reads the config (an invalid one is refused and the old one kept), SIGTERM and
SIGINT stop after the tick in progress. Every tick catches its own failures: a dead
socket, a refused write or a bug in one tick is counted, logged in one line, and the
next tick runs as usual. Nothing is written while the source is unreadable (weights
are held); when it comes back after ``policy.stale_after`` the model sees stale
history and the plan falls back to static weights.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from veloflux import __version__
from veloflux.agent.build import build_daemon_agent, utc_now
from veloflux.agent.ports import Driver
from veloflux.config.load import load_config, load_config_checked
from veloflux.config.schema import Config
from veloflux.daemon.api.fields import read_token
from veloflux.daemon.api.server import ApiServer
from veloflux.daemon.audit import open_audit
from veloflux.daemon.controls import OperatorControls
from veloflux.daemon.forecasts import ForecastBoard
from veloflux.daemon.metrics import AgentMetrics
from veloflux.daemon.state import DaemonOps
from veloflux.daemon.training_job import Trainer, TrainingRun, train_in_child
from veloflux.errors import ConfigError, SinkRejected, SourceUnavailable
from veloflux.util.events import Events
from veloflux.util.heap import HeapSettler
from veloflux.util.logs import FIELDS

_log = logging.getLogger("veloflux.daemon")
AgentFactory = Callable[[Config, Events], Driver]
_TICK, _TRAIN, _FORECAST = "tick", "train", "forecast"


@dataclass(frozen=True)
class DaemonOptions:
    """What the daemon is wired with; tests swap the factories and the clock."""

    config_path: Path
    agent_factory: AgentFactory = build_daemon_agent
    trainer: Trainer = train_in_child
    clock: Callable[[], datetime] = utc_now
    serve_api: bool = True
    install_signals: bool = True


class Daemon:
    """Scheduler, API and signal handling around one ``Driver`` (an agent, or a fleet)."""

    def __init__(self, config: Config, options: DaemonOptions) -> None:
        self._options = options
        self._config = config
        self.events = Events()
        self.metrics = AgentMetrics(__version__, self.events)
        self._controls = OperatorControls(config.api.state_path, options.clock, self.events)
        self._tick_lock = threading.Lock()
        self._heap = HeapSettler()
        self._generation = 0  # counts adopted configurations: a new agent, a new heap
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._ticked = False  # a tick has succeeded since start
        self._exit_code = 0
        self.ops = DaemonOps(
            config=config,
            agent=options.agent_factory(config, self.events),
            controls=self._controls,
            metrics=self.metrics,
            clock=options.clock,
            audit=open_audit(config.ai, self.events),
            quiesce=self._quiesce,
        )
        self.forecasts = ForecastBoard(options.clock)
        self.metrics.registry.register(self.forecasts)
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": ThreadPoolExecutor(1),
                _TRAIN: ThreadPoolExecutor(1),
                _FORECAST: ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._api: ApiServer | None = None
        if options.serve_api:
            self._api = ApiServer(
                config.api.host,
                config.api.port,
                status=self.ops,
                controls=self.ops,
                metrics=lambda: (self.metrics.render(), AgentMetrics.CONTENT_TYPE),
                events=self.events,
                token=read_token(config.api.token_file),
                max_body_bytes=config.api.max_body_bytes,
                forecast=self.forecasts.to_json,
            )

    @property
    def api_address(self) -> tuple[str, int] | None:
        return self._api.address if self._api else None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Serve the API and start both jobs; the first tick runs at once."""
        if self._api is not None:
            self._api.start()
        self.metrics.config_reloaded(True, time.time())
        self._schedule(first_tick_now=True)
        self._scheduler.start()
        _log.info(
            "started: interval %.3gs, retraining %s, api %s",
            self._config.interval_seconds,
            _training_text(self._config),
            "{}:{}".format(*self._api.address) if self._api else "off",
        )

    def run(self) -> int:
        """Start, then wait for signals until told to stop; returns the exit code."""
        if self._options.install_signals:
            self._install_signal_handlers()
        self.start()
        while not self._stop.wait(0.2):
            if self._reload.is_set():
                self._reload.clear()
                self.reload_config()
        self.shutdown()
        return self._exit_code

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def shutdown(self) -> None:
        """Stop after the tick in progress; leave weights as ``policy.on_exit`` says."""
        self._stop.set()
        self.ops.stop_training()
        self._scheduler.shutdown(wait=False)
        with self._tick_lock:  # waits for a running tick to finish
            if self._config.policy.on_exit == "static" and self._exit_code == 0:
                self._revert_on_exit()
            self.ops.close()
        if self._api is not None:
            self._api.stop()
        _log.info("stopped")

    def _quiesce(self) -> None:
        """Wait (a bounded time) for a tick in progress to end: called after a pause, so
        that when the API answers, no tick that began before it can still write."""
        if self._tick_lock.acquire(timeout=max(5.0, 2 * self._config.interval_seconds)):
            self._tick_lock.release()

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            _log.info("signal %s: stopping after the current tick", signal.Signals(signum).name)
            self._stop.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    # --- jobs ---------------------------------------------------------------------------

    def _schedule(self, first_tick_now: bool = False) -> None:
        interval = self._config.interval_seconds
        tick_trigger = IntervalTrigger(seconds=interval, timezone=UTC)
        kwargs: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if first_tick_now else {}
        self._scheduler.add_job(
            self.tick,
            tick_trigger,
            id=_TICK,
            replace_existing=True,
            misfire_grace_time=max(1, int(interval)),
            **kwargs,
        )
        if self._config.ai.enabled:
            self._scheduler.add_job(
                self.train,
                _training_trigger(self._config),
                id=_TRAIN,
                replace_existing=True,
                executor=_TRAIN,
                misfire_grace_time=None,
            )
        elif self._scheduler.get_job(_TRAIN) is not None:
            self._scheduler.remove_job(_TRAIN)
        self.forecasts.switch(self._config.forecast.enabled)
        if self._config.forecast.enabled:
            # The first refresh a little after the first tick, then every refresh.
            soon = datetime.now(UTC) + timedelta(seconds=min(30.0, 2 * interval))
            first: dict[str, Any] = {"next_run_time": soon} if first_tick_now else {}
            self._scheduler.add_job(
                self.refresh_forecasts,
                IntervalTrigger(seconds=self._config.forecast.refresh_seconds, timezone=UTC),
                id=_FORECAST,
                replace_existing=True,
                executor=_FORECAST,
                misfire_grace_time=None,
                **first,
            )
        elif self._scheduler.get_job(_FORECAST) is not None:
            self._scheduler.remove_job(_FORECAST)

    def tick(self) -> None:
        """One tick, whatever happens: failures are counted and logged, never raised."""
        with self._tick_lock:
            if self._stop.is_set():
                return
            started = time.perf_counter()
            try:
                result = self.ops.tick()
            except SourceUnavailable as exc:
                self._tick_failed("source", exc, started)
            except SinkRejected as exc:
                self._tick_failed("sink", exc, started)
            except ConfigError as exc:
                self._tick_failed("config", exc, started)
                if not self._ticked:  # the config names what the proxy lacks: do not start
                    _log.error("refusing to run: %s", exc.render())
                    self._exit_code = 1
                    self._stop.set()
            except Exception as exc:  # one bad tick must never stop the agent
                _log.exception("tick failed unexpectedly")
                self._tick_failed("error", exc, started)
            else:
                self._ticked = True
                if result.report is not None:
                    self.ops.audit.record(result.plan, result.report)
                self._heap.settle((self._generation, result.plan.model_version))

    def _tick_failed(self, reason: str, exc: BaseException, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.ops.tick_failed(reason, str(exc), elapsed)
        # Counted as an event, logged once: this line is the failed tick's only one.
        self.events.record(f"tick_failed_{reason}", str(exc), level=logging.DEBUG)
        fields = {
            "event": "tick_failed",
            "reason": reason,
            "error": str(exc),
            "duration_ms": round(elapsed * 1000, 1),
        }
        _log.warning(
            "tick failed (%s): %s; weights held duration_ms=%.1f",
            reason,
            exc,
            elapsed * 1000,
            extra={FIELDS: fields},
        )

    def refresh_forecasts(self) -> None:
        """One forecast refresh in its own thread (also callable directly by tests)."""
        self.forecasts.refresh(self._config, self.events)

    def train(self) -> TrainingRun:
        """One retraining run in the training thread (also callable directly by tests)."""
        return self.ops.train(self._options.trainer)

    def _on_skipped(self, event: JobExecutionEvent) -> None:
        if event.job_id == _TICK:
            self.metrics.tick_overrun()
            self.events.record("tick_overrun", "a tick was skipped: the previous one still ran")

    # --- configuration ------------------------------------------------------------------

    def reload_config(self) -> bool:
        """Re-read the config file; adopt it between ticks, or keep the old one."""
        try:
            config = load_config(self._options.config_path)
        except ConfigError as exc:
            self.metrics.config_reloaded(False, time.time())
            self.events.record("config_reload_refused", exc.render())
            return False
        with self._tick_lock:
            agent = self._options.agent_factory(config, self.events)
            audit_changed = _audit_settings(config) != _audit_settings(self._config)
            audit = open_audit(config.ai, self.events) if audit_changed else None
            self.ops.adopt(config, agent, audit)
            self._generation += 1
            if config.api != self._config.api:
                _log.warning("api.* changes take effect at the next restart")
            self._config = config
            self._schedule()
        self.metrics.config_reloaded(True, time.time())
        _log.info("config reloaded from %s", self._options.config_path)
        return True

    def _revert_on_exit(self) -> None:
        try:
            result = self.ops.revert()
        except (SourceUnavailable, SinkRejected) as exc:
            self.events.record("exit_revert_failed", str(exc))
            return
        if result.report is not None:
            self.ops.audit.record(result.plan, result.report, action="on_exit")


def _audit_settings(config: Config) -> tuple[Path, int, int]:
    ai = config.ai
    return ai.audit_log, ai.audit_max_bytes, ai.audit_backups


def _training_trigger(config: Config) -> BaseTrigger:
    if config.ai.training_interval_seconds is not None:
        return IntervalTrigger(seconds=config.ai.training_interval_seconds, timezone=UTC)
    return CronTrigger.from_crontab(config.ai.retrain_cron, timezone=UTC)


def _training_text(config: Config) -> str:
    if not config.ai.enabled:
        return "off (ai disabled)"
    if config.ai.training_interval_seconds is not None:
        return f"every {config.ai.training_interval_seconds:g}s"
    return f"on cron '{config.ai.retrain_cron}' (UTC)"


def run_daemon(config_path: Path) -> int:
    """Entry point of ``veloflux-agent run``: raises ``ConfigError`` before starting."""
    config, warnings = load_config_checked(config_path)
    for warning in warnings:
        _log.warning("config: %s", warning)
    return Daemon(config, DaemonOptions(config_path)).run()
