"""Observe Envoy through its admin API and return the same Observation as for HAProxy.

``/clusters?format=json`` gives, per endpoint, its weight, health flags and counters;
``/server_info`` gives the uptime and hot-restart epoch that reveal a restart (which
reloads EDS files and resets counters). An endpoint is named ``ADDRESS:PORT``, since
EDS endpoints have no name. What has no Envoy equivalent is NaN, never 0.

Latency: Envoy keeps none per endpoint, only the cluster's ``upstream_rq_time``
histogram (ms). Its median over Envoy's last stats flush interval is given to every UP
endpoint of the cluster as ``response_time``, so that the model and the outlier guard
have the pool's level: a per-cluster figure, shared, so it cannot show which endpoint
is slow (per-endpoint errors still can). The median rather than a mean because the
JSON carries only quantiles, and a median over a few seconds is not swung by one slow
request. ``total_time`` stays NaN: ``upstream_rq_time`` ends when the upstream's
response does, while HAProxy's ``ttime`` spans the whole client session.

A ``/stats`` answer that cannot be read costs the latency only (counted, left NaN):
weights can still be planned from the endpoints' state and counters.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from veloflux.domain.observation import Observation, PoolInfo, ProxyIdentity, ServerRow
from veloflux.envoy.admin import EnvoyAdmin, EnvoyAdminError, EnvoyNotJson
from veloflux.envoy.replies import (
    EnvoyFormatError,
    HostStatus,
    cluster_stat_prefix,
    parse_clusters,
    parse_histograms,
    parse_uptime,
)
from veloflux.errors import SourceUnavailable
from veloflux.util.events import Events
from veloflux.util.names import is_safe_name

Clock = Callable[[], datetime]
NAN = math.nan
# Envoy's EDS health status -> the Observation's state. DEGRADED hosts still serve.
_STATES = {"HEALTHY": "UP", "DEGRADED": "UP", "DRAINING": "DRAIN"}
LATENCY_HISTOGRAM = "upstream_rq_time"  # per cluster, milliseconds
LATENCY_QUANTILE = 50.0  # percent, one of Envoy's supported_quantiles


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
        # Each failure is counted here and logged at DEBUG: the error raised carries the
        # message, and the one who catches it (the tick line, the CLI) says it once.
        try:
            info = parse_uptime(self._admin.get_json("/server_info"))
            statuses = parse_clusters(self._admin.get_json("/clusters?format=json"))
        except EnvoyNotJson as exc:
            self._events.record("source_malformed", str(exc), source="envoy", level=logging.DEBUG)
            raise SourceUnavailable(str(exc)) from exc
        except EnvoyAdminError as exc:
            self._events.record("source_unavailable", str(exc), source="envoy", level=logging.DEBUG)
            raise SourceUnavailable(str(exc)) from exc
        except EnvoyFormatError as exc:
            self._events.record("source_malformed", str(exc), source="envoy", level=logging.DEBUG)
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
        known = [c for c in self._clusters if c.name in statuses]
        latencies = self._latencies([c.name for c in known])
        for cluster in self._clusters:
            hosts = statuses.get(cluster.name)
            if hosts is None:
                missing.append(cluster.name)
                self._events.record(
                    "pool_missing", f"cluster {cluster.name!r} is not known to Envoy"
                )
                continue
            pools.append(PoolInfo(cluster.name, "eds", managed=True))
            latency = latencies.get(cluster.name, NAN)
            rows += [_row(taken_at, cluster, host, latency) for host in hosts]
        return Observation(taken_at, tuple(rows), tuple(pools), proxy, tuple(missing))

    def _latencies(self, clusters: Sequence[str]) -> dict[str, float]:
        """Cluster -> median ``upstream_rq_time`` (s) over Envoy's last flush interval.

        One ``/stats`` call for every cluster. A cluster with no sample in that interval,
        or no histogram yet, is left out (NaN). An answer that cannot be read is counted
        and gives no latency at all, never a made-up one, and never fails the reading.
        """
        if not clusters:
            return {}
        path = "/stats?" + urllib.parse.urlencode(
            {"format": "json", "filter": latency_filter(clusters)}, safe="^$|()"
        )
        try:
            histograms = parse_histograms(self._admin.get_json(path))
            found = {
                name: histograms[stat].interval_at(LATENCY_QUANTILE) / 1000.0
                for name in clusters
                if (stat := cluster_stat_prefix(name) + LATENCY_HISTOGRAM) in histograms
            }
        except EnvoyFormatError as exc:
            self._latency_malformed(f"Envoy admin at {self._admin.address}: {exc}")
            return {}
        except EnvoyNotJson as exc:
            self._latency_malformed(str(exc))
            return {}
        except EnvoyAdminError as exc:
            message = f"{exc}; latency left unknown this tick"
            self._events.record("latency_unavailable", message, source="envoy")
            return {}
        return {name: value for name, value in found.items() if not math.isnan(value)}

    def _latency_malformed(self, problem: str) -> None:
        message = f"{problem}; latency left unknown this tick"
        self._events.record("source_malformed", message, source="envoy", part="latency")


def latency_filter(clusters: Sequence[str]) -> str:
    """The ``/stats`` filter (an RE2 regex) matching exactly these clusters' histograms.

    Cluster names are safe names (``[A-Za-z0-9_.:-]``): only ``.`` needs escaping.
    """
    names = "|".join(cluster_stat_prefix(c)[len("cluster.") : -1] for c in clusters)
    escaped = names.replace(".", "\\.")
    return f"^cluster\\.({escaped})\\.{LATENCY_HISTOGRAM}$"


def _row(taken_at: datetime, cluster: EnvoyCluster, host: HostStatus, latency: float) -> ServerRow:
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
        response_time=latency if state == "UP" else NAN,  # the cluster's, shared
        total_time=NAN,
        since_state_change=NAN,
        check_status=",".join(host.failed_checks),
        problem=problem if not math.isnan(host.weight) else "weight unreadable",
    )
