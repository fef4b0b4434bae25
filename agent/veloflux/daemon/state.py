"""What the daemon does and knows, apart from scheduling: ticks, training, status, controls.

``DaemonOps`` holds the daemon's state (the last tick, the loop's heartbeat, the last
training, the operator's pins) and is what the HTTP API talks to, through its
``StatusPort`` and ``ControlPort`` protocols. It never schedules anything itself and
takes no locks around ticks: ``veloflux.daemon.service`` calls it from one tick at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from veloflux import __version__
from veloflux.agent.build import proxy_address, proxy_kinds, replica_names
from veloflux.agent.learn import DaskUnavailable, NoHistory
from veloflux.agent.ports import Driver, TickResult
from veloflux.config.schema import Config
from veloflux.daemon.audit import DAEMON, EXTERNAL, Actor, AuditLog
from veloflux.daemon.controls import OperatorControls
from veloflux.daemon.metrics import AgentMetrics
from veloflux.daemon.timeline import TickTimeline
from veloflux.daemon.training_job import Trainer, TrainingCancelled, TrainingRun
from veloflux.errors import ControlRefused, UnsafeName
from veloflux.util.names import parse_server_key, server_key

_log = logging.getLogger("veloflux.daemon")
RECENT_TRAININGS = 10


class DaemonOps:
    """The daemon's state and actions; the API's status and control ports."""

    def __init__(
        self,
        config: Config,
        agent: Driver,
        controls: OperatorControls,
        metrics: AgentMetrics,
        clock: Callable[[], datetime],
        audit: AuditLog,
        monotonic: Callable[[], float] = time.monotonic,
        epoch: Callable[[], float] = time.time,
        quiesce: Callable[[], None] = lambda: None,
        timeline: TickTimeline | None = None,
    ) -> None:
        self._config = config
        # The recent ticks the dashboard draws (``/api/v1/history``).
        self.timeline = timeline or timeline_for(config, clock())
        self.audit = audit
        # Returns once no tick is writing: a pause has taken effect when it answers.
        self._quiesce = quiesce
        # Liveness and durations read ``monotonic``; metric timestamps read ``epoch``:
        # both injected, so a test can move time by hand.
        self._monotonic = monotonic
        self._epoch = epoch
        self._agent = agent
        self._controls = controls
        self._metrics = metrics
        self._clock = clock
        self._events = agent.events
        self._started = self._monotonic()
        self._heartbeat = self._monotonic()
        self._last: TickResult | None = None
        self._last_error = ""
        # The newest tick, good or failed: `last_attempt` on the status page, apart from
        # `last_success` (the newest good one), which `last_tick` used to mix.
        self._attempt: dict[str, Any] | None = None
        self._training: TrainingRun | None = None
        self._trainings: deque[TrainingRun] = deque(maxlen=RECENT_TRAININGS)
        self._ticks_ok = 0
        self._ticks_failed: Counter[str] = Counter()
        self._external_total = 0
        self._stopping = threading.Event()

    # --- ticks --------------------------------------------------------------------------

    def tick(self) -> TickResult:
        """One tick with the operator's pins; paused means observe and record, write nothing."""
        state = self._controls.snapshot()
        self._metrics.operator_state(state.paused, len(state.overrides))
        try:
            result = self._agent.tick(write=not state.paused, overrides=state.weights, record=True)
        finally:
            self._heartbeat = self._monotonic()
        self._last, self._last_error = result, ""
        self._attempt = {
            "at": result.plan.generated_at.isoformat(),
            "duration_seconds": round(result.duration_seconds, 4),
            "ok": True,
            "error": "",
        }
        failed = {f.proxy for f in result.failures if f.reason == "source"}
        sources = {proxy: proxy not in failed for proxy in proxy_kinds(self._config)}
        external = result.observation.external
        if self._config.prometheus is not None:
            sources["prometheus"] = external is not None and not external.error
        for source, up in sources.items():
            self._metrics.source_up(source, up)
        for replica in result.observation.replicas:
            self._metrics.replica_up(replica.name, replica.up)
        self._ticks_ok += 1
        self.timeline.record(result, state.paused, sources)
        self._metrics.tick_succeeded(result, self._epoch())
        self._metrics.model_loaded(result.plan.model_version)
        if result.proxy_reloaded:
            self._metrics.proxy_reload_detected()
        self._external(result)
        return result

    def _external(self, result: TickResult) -> None:
        """Weights set outside VeloFlux: counted, audited (the actor is unknown), held."""
        changes = result.external_changes
        self._external_total += len(changes)
        self._metrics.external_changes(
            [c.server.partition("/")[0] for c in changes], len(result.external_holds)
        )
        for change in changes:
            _log.warning("external change: %s: %s", change.server, change.reason())
            self.audit.action(
                "external_change",
                EXTERNAL,
                change.reason(),
                server=change.server,
                old=change.written,
                new=change.found,
                held_until=change.to_json()["held_until"],
            )

    def tick_failed(self, reason: str, message: str, duration_seconds: float) -> None:
        self._last_error = f"{reason}: {message}"
        self._attempt = {
            "at": self._clock().isoformat(),
            "duration_seconds": round(duration_seconds, 4),
            "ok": False,
            "error": self._last_error,
        }
        sources = dict.fromkeys(proxy_kinds(self._config), reason != "source")
        if reason == "source":  # with several proxies: every one of them failed
            for proxy in sources:
                self._metrics.source_up(proxy, False)
        self._metrics.tick_failed(reason, duration_seconds)
        self._ticks_failed[reason] += 1
        paused = self._controls.snapshot().paused
        self.timeline.record_failure(
            self._clock(), self._last_error, duration_seconds, paused, sources
        )

    def revert(self) -> TickResult:
        return self._agent.revert()

    def adopt(self, config: Config, agent: Driver, audit: AuditLog | None = None) -> None:
        """A reloaded config and the agent built from it (called between ticks)."""
        self._agent.close()
        self._config, self._agent = config, agent
        api = config.api
        interval = config.interval_seconds
        self.timeline.resize(api.history_window_seconds, api.history_max_ticks, interval)
        if audit is not None:
            self.audit = audit

    def close(self) -> None:
        self._agent.close()

    # --- training -----------------------------------------------------------------------

    def train(self, trainer: Trainer) -> TrainingRun:
        """Run ``trainer`` once; every outcome is recorded, none is raised."""
        from veloflux.model.train import NotEnoughData

        started = self._monotonic()
        report: dict[str, Any] | None = None
        try:
            result = trainer(self._config, self._events, self._stopping.is_set)
        except (NotEnoughData, NoHistory) as exc:  # nothing to learn from yet
            outcome, message = "skipped", str(exc)
        except (TrainingCancelled, DaskUnavailable) as exc:  # said whole: no traceback
            outcome, message = "failed", str(exc)
        except Exception as exc:  # a failed training must never take the daemon down
            _log.exception("training failed")
            outcome, message = "failed", f"{type(exc).__name__}: {exc}"
        else:
            report = result
            outcome = "promoted" if result["promoted"] else "not_promoted"
            message = f"model {result['version']}: {result['reason']}"
            if result["promoted"]:
                self.audit.action(
                    "model_promote", DAEMON, str(result["reason"]), model_version=result["version"]
                )
        run = TrainingRun(outcome, self._clock(), self._monotonic() - started, message, report)
        self._training = run
        self._trainings.appendleft(run)
        self._metrics.training_finished(outcome, run.duration_seconds, self._epoch())
        level = logging.WARNING if outcome == "failed" else logging.INFO
        self._events.record(f"training_{outcome}", message, level=level)
        return run

    def stop_training(self) -> None:
        self._stopping.set()

    # --- StatusPort -----------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """The loop is turning: a tick (good or bad) ended recently."""
        age = self._monotonic() - self._heartbeat
        limit = max(3 * self._config.interval_seconds, 30.0)
        if age > limit:
            return False, f"no tick has ended for {age:.0f}s (limit {limit:.0f}s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._last is None:
            return False, f"no successful observation yet ({self._last_error or 'starting'})"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        state = self._controls.snapshot()
        last = self._last
        return {
            "version": __version__,
            "ready": self.ready()[0],
            "interval_seconds": self._config.interval_seconds,
            "paused": state.paused,
            "pause_reason": state.pause_reason,
            "overrides": [o.to_json() for o in state.overrides.values()],
            "external_holds": [c.to_json() for c in last.external_holds] if last else [],
            "external_changes_total": self._external_total,
            "ticks": {
                "ok": self._ticks_ok,
                "failed": sum(self._ticks_failed.values()),
                "failed_by_reason": dict(self._ticks_failed),
            },
            "last_tick": {  # kept for scripts that read it: last_success + last error
                "at": last.plan.generated_at.isoformat() if last else None,
                "duration_seconds": round(last.duration_seconds, 4) if last else None,
                "error": self._last_error,
            },
            "last_attempt": self._attempt,
            "last_success": {
                "at": last.plan.generated_at.isoformat(),
                "duration_seconds": round(last.duration_seconds, 4),
            }
            if last
            else None,
            "sources": {
                proxy: {
                    "up": self._source_up(proxy),
                    "address": proxy_address(self._config, proxy),
                }
                | self._replicas_status(proxy)
                for proxy in proxy_kinds(self._config)
            }
            | self._prometheus_status(),
            "model": self._model_status(),
            "last_training": self._training.to_json() if self._training else None,
            "recent_trainings": [run.to_json() for run in self._trainings],
            "plan": last.plan.to_json() if last else None,
        }

    def history_json(self, since: int, pools: Sequence[str]) -> bytes:
        return self.timeline.to_json(since, pools)

    def audit_entries(self, limit: int) -> list[dict[str, Any]]:
        return self.audit.tail(limit)

    def _replicas_status(self, proxy: str) -> dict[str, Any]:
        """A proxy run as replicas: each one's state at the last tick."""
        names = replica_names(self._config, proxy)
        if len(names) < 2:
            return {}
        seen = {r.name: r for r in self._last.observation.replicas} if self._last else {}
        return {
            "replicas": [
                seen[name].to_json() if name in seen else {"name": name, "up": None}
                for name in names
            ]
        }

    def _prometheus_status(self) -> dict[str, Any]:
        """Prometheus beside the proxies on the status page: up, and what it gave."""
        prom = self._config.prometheus
        if prom is None:
            return {}
        external = self._last.observation.external if self._last else None
        status: dict[str, Any] = {
            "up": external is not None and not external.error,
            "address": prom.url,
        }
        if external is not None:
            status |= {"error": external.error, "problems": list(external.problems)}
        return {"prometheus": status}

    def _source_up(self, proxy: str) -> bool:
        """Whether ``proxy``'s source answered at the last tick."""
        if self._last_error.startswith("source"):
            return False
        failures = self._last.failures if self._last else ()
        return not any(f.proxy == proxy and f.reason == "source" for f in failures)

    def _model_status(self) -> dict[str, Any] | None:
        registry = self._agent.registry
        version = registry.current_version() if registry else None
        if registry is None or version is None:
            return None
        entry = next((e for e in registry.entries() if e.version == version), None)
        metrics = dict(entry.metadata.get("metrics", {})) if entry else {}
        created = entry.created_at.isoformat() if entry else None
        return {"version": version, "created_at": created, "metrics": metrics}

    # --- ControlPort ----------------------------------------------------------------------

    def overrides(self) -> list[dict[str, Any]]:
        return [o.to_json() for o in self._controls.snapshot().overrides.values()]

    def set_override(
        self, server: str, weight: int, ttl_seconds: float | None, actor: Actor
    ) -> dict[str, Any]:
        self._check_known(server)
        before = self._controls.snapshot().overrides.get(server)
        override = self._controls.set_override(server, weight, ttl_seconds)
        _log.info("override set: %s = %d (ttl %s) by %s", server, weight, ttl_seconds, actor.name)
        self.audit.action(
            "override_set",
            actor,
            f"pinned at {weight}" + (f" for {ttl_seconds:g}s" if ttl_seconds else ""),
            server=server,
            old=before.weight if before else None,
            new=weight,
            expires_at=override.to_json()["expires_at"],
        )
        return override.to_json()

    def clear_overrides(self, server: str | None, actor: Actor) -> list[str]:
        before = self._controls.snapshot().overrides
        cleared = self._controls.clear_overrides(server)
        _log.info("overrides cleared by %s: %s", actor.name, ", ".join(cleared) or "none")
        for key in cleared:
            self.audit.action(
                "override_clear", actor, "pin cleared", server=key, old=before[key].weight
            )
        return cleared

    def pause(self, reason: str, actor: Actor) -> dict[str, Any]:
        was = self._controls.snapshot()
        state = self._controls.pause(reason)
        _log.warning(
            "paused by %s: %s (weights are held until resume)", actor.name, state.pause_reason
        )
        self.audit.action("pause", actor, state.pause_reason, was_paused=was.paused)
        self._quiesce()  # a tick that began before the pause has ended: nothing more is written
        return {"paused": True, "reason": state.pause_reason}

    def resume(self, actor: Actor) -> dict[str, Any]:
        was = self._controls.snapshot()
        self._controls.resume()
        _log.info("resumed by %s", actor.name)
        self.audit.action(
            "resume", actor, "writes resumed", was_paused=was.paused, pause_reason=was.pause_reason
        )
        return {"paused": False}

    def _check_known(self, server: str) -> None:
        """A pin must name a server of a managed pool the proxy has right now."""
        try:
            backend, _ = parse_server_key(server)
        except UnsafeName as exc:
            raise ControlRefused(f"server: {exc}") from None
        if self._last is None:
            raise ControlRefused("no observation yet: cannot check the server exists", 409)
        observation = self._last.observation
        pool = next((p for p in observation.pools if p.name == backend), None)
        if pool is None:
            raise ControlRefused(f"unknown backend {backend!r}", 404)
        if not pool.managed:
            raise ControlRefused(
                f"backend {backend!r} is not managed: {pool.unmanaged_reason}", 409
            )
        if not any(
            server_key(backend, r.server) == server for r in observation.servers_of(backend)
        ):
            raise ControlRefused(f"unknown server {server!r}", 404)


def timeline_for(config: Config, started_at: datetime) -> TickTimeline:
    """The ring of recent ticks the config's ``api.history_*`` keys bound."""
    api = config.api
    interval = config.interval_seconds
    return TickTimeline(api.history_window_seconds, api.history_max_ticks, interval, started_at)
