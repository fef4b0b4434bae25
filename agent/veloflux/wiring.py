"""Building the real adapters from a configuration, in one place.

The CLI (and later the daemon) ask here for a source, a sink, the journal and the
model registry, so that every command wires the agent the same way. Heavy modules
(pandas, through the journal) are imported only when a journal is really opened.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from veloflux.config import Config
from veloflux.errors import ConfigError, ConfigProblem
from veloflux.events import Events
from veloflux.haproxy_runtime import RuntimeAPI
from veloflux.loop import Agent, Sink, Source
from veloflux.model.registry import Registry
from veloflux.sinks.haproxy import HAProxySink
from veloflux.sources.haproxy import HAProxySource

if TYPE_CHECKING:
    from veloflux.history import Journal


def utc_now() -> datetime:
    return datetime.now(UTC)


def proxy_kind(config: Config) -> str:
    """``haproxy`` or ``envoy``: the proxy this agent drives (the config has exactly one)."""
    return "envoy" if config.envoy is not None else "haproxy"


def runtime_api(config: Config) -> RuntimeAPI:
    if config.haproxy is None:
        raise ConfigError([ConfigProblem("haproxy", "required for this command")])
    return RuntimeAPI(config.haproxy.socket, config.haproxy.timeout_seconds)


def proxy_address(config: Config) -> str:
    """What the status page and messages name: the socket, or Envoy's admin URL."""
    if config.envoy is not None:
        return config.envoy.admin
    return config.haproxy.socket if config.haproxy else ""


def build_source(config: Config, events: Events, clock: Callable[[], datetime] = utc_now) -> Source:
    if config.envoy is not None:
        from veloflux.envoy_admin import EnvoyAdmin
        from veloflux.sources.envoy import EnvoyCluster, EnvoySource

        envoy = config.envoy
        clusters = [
            EnvoyCluster(c.name, {e.name: e.weight for e in c.endpoints}) for c in envoy.clusters
        ]
        return EnvoySource(EnvoyAdmin(envoy.admin, envoy.timeout_seconds), clusters, clock, events)
    assert config.haproxy is not None  # the config has exactly one proxy
    return HAProxySource(
        runtime_api(config),
        clock=clock,
        events=events,
        backends=config.haproxy.backends,
        consistent_hash_backends=config.haproxy.consistent_hash_backends,
    )


def build_sink(config: Config, events: Events) -> Sink:
    if config.envoy is not None:
        from veloflux.envoy_admin import EnvoyAdmin
        from veloflux.sinks.envoy import EnvoySink

        envoy = config.envoy
        admin = EnvoyAdmin(envoy.admin, envoy.timeout_seconds)
        return EnvoySink(
            admin,
            envoy.eds_dir,
            envoy.confirm_timeout_seconds,
            events,
            templates_dir=envoy.templates_dir,
        )
    return HAProxySink(runtime_api(config), events)


def open_registry(config: Config, events: Events) -> Registry:
    return Registry(config.ai.model_dir, utc_now, events, keep=config.ai.keep_models)


def open_journal(config: Config, events: Events, create: bool) -> Journal | None:
    """The journal, or None when there is none to read (and ``create`` is False).

    A journal that cannot be opened is counted and logged by the caller's events and
    treated as absent: history is an aid to the model, never a reason to stop.
    """
    path = config.ai.history_path
    if not config.ai.enabled or (not create and not path.exists()):
        return None  # decided before importing the journal: it pulls in pandas
    from veloflux.history import HistoryError, Journal

    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return Journal(path, events, retention_seconds=config.ai.history_retention_seconds)
    except (HistoryError, OSError) as exc:
        events.record("history_unavailable", f"{path}: {exc}")
        return None


def build_agent(config: Config, events: Events, write: bool, strict_pools: bool = True) -> Agent:
    """The agent for one-shot commands: ``write`` also appends to the journal."""
    source = build_source(config, events)
    sink = build_sink(config, events)
    return Agent(
        config,
        source,
        sink,
        events,
        strict_pools=strict_pools,
        journal=open_journal(config, events, create=write),
        registry=open_registry(config, events) if config.ai.enabled else None,
    )


def build_daemon_agent(config: Config, events: Events) -> Agent:
    """The daemon's agent: it records history on a writer thread, and a backend missing
    from HAProxy is counted and skipped rather than fatal (the other pools still need
    managing)."""
    journal = open_journal(config, events, create=True)
    recorder = None
    if journal is not None:
        from veloflux.recorder import BackgroundRecorder

        recorder = BackgroundRecorder(journal, events)
    return Agent(
        config,
        build_source(config, events),
        build_sink(config, events),
        events,
        strict_pools=False,
        journal=journal,
        registry=open_registry(config, events) if config.ai.enabled else None,
        recorder=recorder,
    )
