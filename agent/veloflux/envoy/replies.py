"""Pure parsers for Envoy's admin API answers: ``/clusters``, ``/stats``, ``/server_info``.

Envoy's JSON leaves out a counter whose value is 0 (``{"name": "rq_error"}`` with no
``value``), spells 64-bit integers as strings in places, writes ``null`` for a
histogram quantile that has no sample, and may change shape between versions. Every
parser here reads defensively and raises ``EnvoyFormatError`` naming what it expected,
so that a surprising answer is a counted, logged event, never a traceback or a
silently wrong number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from veloflux.errors import VelofluxError


class EnvoyFormatError(VelofluxError):
    """An admin API answer that does not have the documented shape."""


@dataclass(frozen=True)
class HostStatus:
    """One endpoint of one cluster as ``/clusters?format=json`` shows it."""

    address: str
    port: int
    weight: float  # NaN when Envoy did not say
    health: str  # HEALTHY, UNHEALTHY, DRAINING, DEGRADED, TIMEOUT, UNKNOWN
    failed_checks: tuple[str, ...]  # which health flags are set (active check, outlier...)
    stats: Mapping[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The server's name in VeloFlux: ``ADDRESS:PORT`` (Envoy endpoints have no name)."""
        return endpoint_name(self.address, self.port)


@dataclass(frozen=True)
class UpdateCounters:
    """A cluster's EDS update counters: ``update_success`` rises on every accepted file."""

    attempt: float
    success: float
    rejected: float


def endpoint_name(address: str, port: int) -> str:
    return f"{address}:{port}"


def parse_clusters(document: Any) -> dict[str, list[HostStatus]]:
    """``/clusters?format=json`` -> cluster name -> its hosts."""
    statuses = _field(document, "cluster_statuses", list, "the /clusters answer")
    clusters: dict[str, list[HostStatus]] = {}
    for cluster in statuses:
        name = _field(cluster, "name", str, "a cluster status")
        hosts = cluster.get("host_statuses", []) if isinstance(cluster, dict) else []
        if not isinstance(hosts, list):
            raise EnvoyFormatError(f"cluster {name!r}: host_statuses is not a list")
        clusters[name] = [_host(name, host) for host in hosts]
    return clusters


def _host(cluster: str, host: Any) -> HostStatus:
    where = f"a host of cluster {cluster!r}"
    socket = _field(_field(host, "address", dict, where), "socket_address", dict, where)
    address = _field(socket, "address", str, where)
    port = socket.get("port_value")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise EnvoyFormatError(f"{where}: port_value {port!r} is not a port")
    health = host.get("health_status", {})
    if not isinstance(health, dict):
        raise EnvoyFormatError(f"{where}: health_status is not an object")
    flags = tuple(sorted(k for k, v in health.items() if k.startswith("failed") and v is True))
    listed = host.get("stats") or []
    if not isinstance(listed, list):
        raise EnvoyFormatError(f"{where}: stats is not a list")
    stats = {}
    for stat in listed:
        if isinstance(stat, dict) and isinstance(stat.get("name"), str):
            stats[stat["name"]] = _number(stat.get("value", 0))
    status = health.get("eds_health_status")
    return HostStatus(
        address=address,
        port=port,
        weight=_number(host.get("weight")),
        health=status if isinstance(status, str) else "UNKNOWN",
        failed_checks=flags,
        stats=stats,
    )


def parse_weights_text(text: str, cluster: str) -> dict[str, float]:
    """Plain ``/clusters`` -> ``ADDRESS:PORT`` -> weight, for one cluster.

    The text form is a line per host and field (``app::10.0.0.1:80::weight::3``): the
    weights are picked out of its lines without decoding the JSON form's whole
    document, which matters for a large cluster when an update is confirmed by
    polling it.
    """
    prefix = f"{cluster}::"
    weights = {}
    for line in text.splitlines():
        if line.startswith(prefix) and "::weight::" in line:
            parts = line.split("::")
            if len(parts) == 4:
                weights[parts[1]] = _number(parts[3])
    return weights


def parse_update_counters(document: Any, cluster: str) -> UpdateCounters:
    """``/stats?format=json&filter=...`` -> the cluster's EDS update counters."""
    values = stat_values(document)
    prefix = cluster_stat_prefix(cluster)
    return UpdateCounters(
        attempt=values.get(prefix + "update_attempt", 0.0),
        success=values.get(prefix + "update_success", 0.0),
        rejected=values.get(prefix + "update_rejected", 0.0),
    )


def cluster_stat_prefix(cluster: str) -> str:
    """The prefix of a cluster's stats: Envoy writes ``:`` in a stat name as ``_``."""
    return f"cluster.{cluster.replace(':', '_')}."


def stat_values(document: Any) -> dict[str, float]:
    """Counters and gauges of a ``/stats?format=json`` answer (histograms are skipped)."""
    stats = _field(document, "stats", list, "the /stats answer")
    values = {}
    for stat in stats:
        if isinstance(stat, dict) and isinstance(stat.get("name"), str) and "value" in stat:
            values[stat["name"]] = _number(stat["value"])
    return values


@dataclass(frozen=True)
class HistogramSummary:
    """One histogram of ``/stats?format=json``, as Envoy summarises it: quantiles.

    ``interval`` holds each quantile over Envoy's last stats flush interval
    (``stats_flush_interval``, 5 s by default), ``cumulative`` since Envoy started;
    NaN where that window had no sample (Envoy writes ``null``).
    """

    quantiles: tuple[float, ...]  # percent: 0, 25, 50, ... 100
    interval: tuple[float, ...]
    cumulative: tuple[float, ...]

    def interval_at(self, quantile: float) -> float:
        """The ``quantile`` (percent) over the last flush interval; NaN with no sample."""
        if quantile not in self.quantiles:
            raise EnvoyFormatError(
                f"quantile {quantile:g} is not among Envoy's supported_quantiles "
                f"{list(self.quantiles)}"
            )
        return self.interval[self.quantiles.index(quantile)]


def parse_histograms(document: Any) -> dict[str, HistogramSummary]:
    """``/stats?format=json`` -> histogram name -> its quantiles.

    Envoy puts every histogram in one ``{"histograms": {"supported_quantiles": [...],
    "computed_quantiles": [{"name": ..., "values": [{"interval": ..., "cumulative":
    ...}, ...]}]}}`` element of ``stats``, one value per supported quantile, in order.
    No such element (no histogram matched the filter) is an empty answer, not an error:
    Envoy leaves it out until a histogram has been used.
    """
    stats = _field(document, "stats", list, "the /stats answer")
    found: dict[str, HistogramSummary] = {}
    for stat in stats:
        if isinstance(stat, dict) and "histograms" in stat:
            found |= _histograms(stat["histograms"])
    return found


def _histograms(block: Any) -> dict[str, HistogramSummary]:
    where = "the histograms of the /stats answer"
    supported = _field(block, "supported_quantiles", list, where)
    quantiles = tuple(_quantile_number(q, where) for q in supported)
    found = {}
    for computed in _field(block, "computed_quantiles", list, where):
        name = _field(computed, "name", str, f"{where}: a computed_quantiles entry")
        values = _field(computed, "values", list, f"histogram {name!r}")
        if len(values) != len(quantiles):
            raise EnvoyFormatError(
                f"histogram {name!r}: {len(values)} values for {len(quantiles)} quantiles"
            )
        pairs = [_quantile_pair(name, value) for value in values]
        found[name] = HistogramSummary(
            quantiles=quantiles,
            interval=tuple(interval for interval, _ in pairs),
            cumulative=tuple(cumulative for _, cumulative in pairs),
        )
    return found


def _quantile_number(value: Any, where: str) -> float:
    number = _number(value) if not isinstance(value, str) else math.nan
    if not 0 <= number <= 100:
        raise EnvoyFormatError(f"{where}: supported quantile {value!r} is not in 0..100")
    return number


def _quantile_pair(histogram: str, value: Any) -> tuple[float, float]:
    """``{"interval": x, "cumulative": y}``: ``null`` is "no sample", NaN; garbage raises."""
    if not isinstance(value, dict):
        raise EnvoyFormatError(f"histogram {histogram!r}: a quantile value is not an object")
    pair = []
    for key in ("interval", "cumulative"):
        if key not in value:
            raise EnvoyFormatError(f"histogram {histogram!r}: a quantile value lacks {key!r}")
        raw = value[key]
        number = math.nan if raw is None or isinstance(raw, str) else _number(raw)
        if raw is not None and not number >= 0:
            raise EnvoyFormatError(
                f"histogram {histogram!r}: {key} {raw!r} is not a non-negative number or null"
            )
        pair.append(number)
    return pair[0], pair[1]


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def parse_uptime(document: Any) -> tuple[float, int]:
    """``/server_info`` -> (uptime of this epoch in seconds, hot-restart epoch)."""
    uptime = _field(document, "uptime_current_epoch", str, "the /server_info answer")
    match = _DURATION.match(uptime)
    seconds = float(match.group(1)) if match else math.nan
    if not math.isfinite(seconds):  # 400 digits read as a float are infinite
        raise EnvoyFormatError(f"uptime_current_epoch {uptime[:40]!r} is not a duration like '7s'")
    options = document.get("command_line_options", {})
    epoch = options.get("restart_epoch", 0) if isinstance(options, dict) else 0
    known = isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
    return seconds, epoch if known else 0


def _field(value: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(value, dict):
        raise EnvoyFormatError(f"{where}: expected an object")
    found = value.get(key)
    if not isinstance(found, kind):
        raise EnvoyFormatError(f"{where}: '{key}' is missing or not a {kind.__name__}")
    return found


def _number(value: Any) -> float:
    """An admin API number (int, float or decimal string); NaN when it is none of them.

    Envoy's counters, gauges and weights are unsigned, so a negative number is as
    unreadable as text, and so is one too large for a float (JSON has no limit).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return math.nan
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return math.nan
    return number if math.isfinite(number) and number >= 0 else math.nan
