"""Building the real adapters from a configuration, in one place.

The CLI, the daemon and the benchmarks ask here for a source, a sink, the journal and
the model registry, so that every command wires the agent the same way. Heavy modules
(pandas, through the journal) are imported only when a journal is really opened.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from veloflux.agent.fleet import Fleet
from veloflux.agent.ports import Driver, Sink, Source
from veloflux.agent.replicas import ReplicatedSink, ReplicatedSource, ReplicaView
from veloflux.agent.tick import Agent
from veloflux.config.schema import Config
from veloflux.errors import ConfigError, ConfigProblem
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.sink import HAProxySink
from veloflux.haproxy.source import HAProxySource
from veloflux.model.registry import Registry
from veloflux.prometheus import promql
from veloflux.prometheus.promql import FeatureQuery
from veloflux.util.events import Events

if TYPE_CHECKING:
    from veloflux.history.journal import Journal
    from veloflux.history.recorder import BackgroundRecorder


def utc_now() -> datetime:
    return datetime.now(UTC)


def proxy_kinds(config: Config) -> tuple[str, ...]:
    """The proxies this config drives: ``haproxy``, ``envoy`` or both, in that order."""
    sections = (("haproxy", config.haproxy), ("envoy", config.envoy))
    return tuple(kind for kind, section in sections if section is not None)


def proxy_view(config: Config, kind: str) -> Config:
    """``config`` as if ``kind`` were its only proxy: what that proxy's agent reads."""
    other = "envoy" if kind == "haproxy" else "haproxy"
    view: Config = config.model_copy(update={other: None})
    return view


def runtime_api(config: Config, address: str | None = None) -> RuntimeAPI:
    """HAProxy's runtime API at ``address`` (a replica's), or at ``haproxy.socket``."""
    if config.haproxy is None:
        raise ConfigError([ConfigProblem("haproxy", "required for this command")])
    return RuntimeAPI(address or config.haproxy.socket, config.haproxy.timeout_seconds)


def proxy_address(config: Config, kind: str) -> str:
    """What the status page and messages name: the socket, or Envoy's admin URL."""
    if kind == "envoy":
        return config.envoy.admin if config.envoy else ""
    return config.haproxy.socket if config.haproxy else ""


def replica_names(config: Config, kind: str) -> tuple[str, ...]:
    """Every instance of the ``kind`` proxy: its sockets or admin URLs, the first first."""
    if kind == "envoy":
        return config.envoy.admins if config.envoy else ()
    return config.haproxy.sockets if config.haproxy else ()


def feature_queries(config: Config, kind: str) -> tuple[FeatureQuery, ...]:
    """The Prometheus features read for ``kind``'s pools: the proxy's built-in set (unless
    ``default_features`` is off), then the operator's, which win a name they share."""
    prom = config.prometheus
    if prom is None:
        return ()
    chosen = {f.name: f for f in (promql.DEFAULTS[kind] if prom.default_features else ())}
    labels = prom.server_labels
    for name, template in prom.features.items():
        chosen[name] = FeatureQuery(name, template, labels.backend, labels.server)
    return tuple(chosen.values())


def replica_view(config: Config) -> ReplicaView | None:
    """What one proxy's source and sink share when it runs as replicas; None for one."""
    names = replica_names(config, "envoy" if config.envoy is not None else "haproxy")
    return ReplicaView(names) if len(names) > 1 else None


def build_source(
    config: Config,
    events: Events,
    clock: Callable[[], datetime] = utc_now,
    view: ReplicaView | None = None,
) -> Source:
    """The source of the config's one proxy (with both set: Envoy's; see ``build_sources``),
    reading Prometheus's features beside it when ``prometheus`` is set. With replicas,
    every one is read and merged (``veloflux.agent.replicas``), sharing ``view`` with
    the sink."""
    view = view or replica_view(config)
    if view is None:
        source = _proxy_source(config, events, clock, None)
    else:
        parts = {name: _proxy_source(config, events, clock, name) for name in view.names}
        source = ReplicatedSource(parts, view, events)
    prom = config.prometheus
    if prom is None:
        return source
    from veloflux.prometheus.api import PrometheusAPI
    from veloflux.prometheus.features import PrometheusFeatures, WithPrometheus

    kind = "envoy" if config.envoy is not None else "haproxy"
    api = PrometheusAPI(prom.url, prom.timeout_seconds, prom.headers)
    features = PrometheusFeatures(api, feature_queries(config, kind), events, prom.instance_map)
    return WithPrometheus(source, features)


def _proxy_source(
    config: Config, events: Events, clock: Callable[[], datetime], address: str | None
) -> Source:
    """One proxy instance's source: ``address`` (a replica) or the configured one."""
    if config.envoy is not None:
        from veloflux.envoy.admin import EnvoyAdmin
        from veloflux.envoy.source import EnvoyCluster, EnvoySource

        envoy = config.envoy
        clusters = [
            EnvoyCluster(c.name, {e.name: e.weight for e in c.endpoints}) for c in envoy.clusters
        ]
        admin = EnvoyAdmin(address or envoy.admin, envoy.timeout_seconds)
        return EnvoySource(admin, clusters, clock, events)
    assert config.haproxy is not None  # the config has a proxy
    return HAProxySource(
        runtime_api(config, address),
        clock=clock,
        events=events,
        backends=config.haproxy.backends,
        consistent_hash_backends=config.haproxy.consistent_hash_backends,
    )


def build_sources(config: Config, events: Events) -> list[Source]:
    """A source per proxy the config drives."""
    return [build_source(proxy_view(config, kind), events) for kind in proxy_kinds(config)]


def build_sink(config: Config, events: Events, view: ReplicaView | None = None) -> Sink:
    """The sink of the config's one proxy (with both set: Envoy's); with replicas, one
    per replica behind a ``ReplicatedSink`` sharing ``view`` with the source."""
    view = view or replica_view(config)
    if view is None:
        return _proxy_sink(config, events, None)
    sinks = {name: _proxy_sink(config, events, name) for name in view.names}
    return ReplicatedSink(sinks, view, events)


def _proxy_sink(config: Config, events: Events, address: str | None) -> Sink:
    if config.envoy is not None:
        from veloflux.envoy.admin import EnvoyAdmin
        from veloflux.envoy.sink import EnvoySink

        envoy = config.envoy
        admin = EnvoyAdmin(address or envoy.admin, envoy.timeout_seconds)
        return EnvoySink(
            admin,
            envoy.eds_dir,
            envoy.confirm_timeout_seconds,
            events,
            templates_dir=envoy.templates_dir,
        )
    return HAProxySink(runtime_api(config, address), events)


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
    from veloflux.history.journal import HistoryError, Journal

    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return Journal(path, events, retention_seconds=config.ai.history_retention_seconds)
    except (HistoryError, OSError) as exc:
        events.record("history_unavailable", f"{path}: {exc}")
        return None


def build_agent(config: Config, events: Events, write: bool, strict_pools: bool = True) -> Driver:
    """The driver for one-shot commands: ``write`` also appends to the journal."""
    journal = open_journal(config, events, create=write)
    return _driver(config, events, journal, None, strict_pools)


def build_daemon_agent(config: Config, events: Events) -> Driver:
    """The daemon's driver: it records history on a writer thread, and a backend missing
    from HAProxy after its first observation (a reload removed it) is counted and
    skipped rather than fatal (the other pools still need managing); at the first, a
    name the proxy lacks is a config error, as for the one-shot commands."""
    journal = open_journal(config, events, create=True)
    recorder = None
    if journal is not None:
        from veloflux.history.recorder import BackgroundRecorder

        recorder = BackgroundRecorder(journal, events)
    return _driver(config, events, journal, recorder, strict_pools=False)


def _driver(
    config: Config,
    events: Events,
    journal: Journal | None,
    recorder: BackgroundRecorder | None,
    strict_pools: bool,
) -> Driver:
    """One proxy: its agent. Several: a fleet of one agent per proxy, sharing the
    journal, the registry and the writer."""
    registry = open_registry(config, events) if config.ai.enabled else None

    def agent(view: Config, alone: bool) -> Agent:
        replicas = replica_view(view)
        return Agent(
            view,
            build_source(view, events, view=replicas),
            build_sink(view, events, replicas),
            events,
            strict_pools=strict_pools,
            journal=journal,
            registry=registry,
            recorder=recorder,
            log_summary=alone,  # a fleet logs one line for all its proxies
            alone=alone,
        )

    kinds = proxy_kinds(config)
    if len(kinds) == 1:
        return agent(config, True)
    return Fleet({kind: agent(proxy_view(config, kind), False) for kind in kinds}, events)
