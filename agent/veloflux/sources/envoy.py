"""Observe Envoy through its admin API and return the same Observation as for HAProxy.

``/clusters?format=json`` gives, per endpoint, its weight, health flags and counters;
``/server_info`` gives the uptime and hot-restart epoch that reveal a restart (which
reloads EDS files and resets counters). What has no Envoy equivalent is NaN, never 0:
Envoy keeps no per-endpoint latency (only per-cluster histograms), so the latency
columns are NaN here; per-endpoint latency comes from Prometheus where it is scraped.
An endpoint is named ``ADDRESS:PORT``, since EDS endpoints have no name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from veloflux.envoy_admin import EnvoyAdmin, EnvoyAdminError
from veloflux.envoy_replies import EnvoyFormatError, HostStatus, parse_clusters, parse_uptime
from veloflux.errors import SourceUnavailable
from veloflux.events import Events
from veloflux.names import is_safe_name
from veloflux.observation import Observation, PoolInfo, ProxyIdentity, ServerRow

Clock = Callable[[], datetime]
NAN = math.nan
# Envoy's EDS health status -> the Observation's state. DEGRADED hosts still serve.
_STATES = {"HEALTHY": "UP", "DEGRADED": "UP", "DRAINING": "DRAIN"}


@dataclass(frozen=True)
class EnvoyCluster:
    """A cluster VeloFlux manages, and each endpoint's static (fallback) weight."""

    name: str
    static_weights: Mapping[str, int] = field(default_factory=dict)  # ADDRESS:PORT -> weight


class EnvoySource:
    """Reads one Envoy; every dependency (admin client, clock, events) is injected."""

    def __init__(
        self,
        admin: EnvoyAdmin,
        clusters: Sequence[EnvoyCluster],
        clock: Clock,
        events: Events,
    ) -> None:
        self._admin = admin
        self._clusters = tuple(clusters)
        self._clock = clock
        self._events = events

    def observe(self) -> Observation:
        """One reading; raises ``SourceUnavailable`` if Envoy cannot be read at all."""
        try:
            info = parse_uptime(self._admin.get_json("/server_info"))
            statuses = parse_clusters(self._admin.get_json("/clusters?format=json"))
        except EnvoyAdminError as exc:
            self._events.record("source_unavailable", str(exc), source="envoy")
            raise SourceUnavailable(str(exc)) from exc
        except EnvoyFormatError as exc:
            self._events.record("source_malformed", str(exc), source="envoy")
            raise SourceUnavailable(f"Envoy admin at {self._admin.address}: {exc}") from exc
        taken_at = self._clock()
        uptime, epoch = info
        proxy = ProxyIdentity(
            address=self._admin.address,
            pid=epoch,
            started_at_epoch=round(taken_at.timestamp() - uptime),
            uptime_seconds=uptime,
            version="",
            level="admin",
        )
        rows: list[ServerRow] = []
        pools: list[PoolInfo] = []
        missing: list[str] = []
        for cluster in self._clusters:
            hosts = statuses.get(cluster.name)
            if hosts is None:
                missing.append(cluster.name)
                self._events.record(
                    "pool_missing", f"cluster {cluster.name!r} is not known to Envoy"
                )
                continue
            pools.append(PoolInfo(cluster.name, "eds", managed=True))
            rows += [_row(taken_at, cluster, host) for host in hosts]
        return Observation(taken_at, tuple(rows), tuple(pools), proxy, tuple(missing))


def _row(taken_at: datetime, cluster: EnvoyCluster, host: HostStatus) -> ServerRow:
    stats = host.stats
    problem = "" if is_safe_name(host.name) else "endpoint address is not a safe name"
    state = "DOWN" if host.failed_checks else _STATES.get(host.health, "DOWN")
    static = cluster.static_weights.get(host.name)
    return ServerRow(
        time=taken_at,
        source="envoy",
        pool=cluster.name,
        server=host.name,
        address=host.name,
        state=state,
        backup=False,
        weight=host.weight,
        initial_weight=float(static) if static is not None else NAN,
        algorithm="eds",
        sessions=stats.get("cx_active", NAN),
        queue=stats.get("rq_pending_active", NAN),
        session_rate=NAN,
        sessions_total=stats.get("cx_total", NAN),
        requests_total=stats.get("rq_total", NAN),
        responses_5xx_total=stats.get("rq_error", NAN),
        response_errors_total=stats.get("rq_timeout", NAN),
        connect_errors_total=stats.get("cx_connect_fail", NAN),
        queue_time=NAN,
        connect_time=NAN,
        response_time=NAN,
        total_time=NAN,
        since_state_change=NAN,
        check_status=",".join(host.failed_checks),
        problem=problem if not math.isnan(host.weight) else "weight unreadable",
    )
