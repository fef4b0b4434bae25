"""Prometheus features for each tick: instant queries, joined onto the Observation.

``PrometheusFeatures.read`` runs every configured feature query (once, once per
managed pool for ``{backend}``, or once per server for ``{server}``; in parallel, each
bounded by the timeout) and maps every series it gets back to servers by its labels:

- ``instance`` in ``prometheus.instance_map``: that server (node-level series);
- the backend label and the server label: that server;
- the backend label alone (or a ``{backend}`` query's own pool): every server of the
  pool, unless a series names the server itself.

A server no series maps to has NaN for that feature, never 0. Two series for one
server is an ambiguous query: NaN for that server, counted, and named, since picking
one would be a guess. NaN and infinite samples are NaN too, counted. A query
Prometheus refuses (bad PromQL, an HTTP error) costs that feature only; Prometheus
unreachable, too slow or answering garbage costs all of them: the reading comes back
with ``error`` set and every value NaN, and the tick goes on with the proxy's stats.

``WithPrometheus`` wraps a proxy's source so that each of its observations carries
the features.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from veloflux.domain.observation import EXTERNAL_PREFIX, ExternalFeatures, Observation, ServerRow
from veloflux.prometheus.api import PrometheusAPI, PrometheusError, Series
from veloflux.prometheus.promql import FeatureQuery, fill
from veloflux.util.events import Events
from veloflux.util.names import parse_server_key

SOURCE = "prometheus"
# Failures that say Prometheus itself cannot be used now, not one query.
_DOWN = frozenset(("unreachable", "timeout", "not_json"))
MAX_WORKERS = 8


@dataclass(frozen=True)
class _Call:
    """One query to run: the feature, and the pool/server a placeholder was filled with."""

    feature: FeatureQuery
    pool: str = ""
    server: str = ""


class PrometheusFeatures:
    """Reads the configured features for the servers of an observation."""

    def __init__(
        self,
        api: PrometheusAPI,
        features: Sequence[FeatureQuery],
        events: Events,
        instance_map: Mapping[str, str] | None = None,
    ) -> None:
        self._api = api
        self._features = tuple(features)
        self._events = events
        self._instances = {
            instance: parse_server_key(key) for instance, key in (instance_map or {}).items()
        }
        self._pool: ThreadPoolExecutor | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(EXTERNAL_PREFIX + f.name for f in self._features)

    def read(self, observation: Observation) -> ExternalFeatures:
        """Every feature's value for every row of ``observation`` (NaN where unknown)."""
        rows = observation.rows
        managed = [p.name for p in observation.pools if p.managed]
        calls = [call for f in self._features for call in _calls(f, managed, rows)]
        answers = self._run(calls, observation.taken_at)
        failures = [a for a in answers if isinstance(a, PrometheusError)]
        down = next((a for a in failures if a.kind in _DOWN), None)
        if down is None and len(failures) == len(answers) > 0:
            # Every query refused, and not for its PromQL: a 503 from an overloaded store.
            down = next((a for a in failures if a.kind != "bad_query"), None)
        if down is not None:
            self._events.record("source_unavailable", str(down), source=SOURCE, reason=down.kind)
            return self._missing(len(rows), str(down))
        index = ServerIndex([(r.pool, r.server) for r in rows])
        problems: list[str] = []
        values: list[tuple[str, tuple[float, ...]]] = []
        for feature in self._features:
            mine = [(c, a) for c, a in zip(calls, answers, strict=True) if c.feature is feature]
            failed = [a for _, a in mine if isinstance(a, PrometheusError)]
            if failed:
                problem = f"feature {feature.name}: {failed[0]}"
                self._events.record(
                    "prometheus_query_failed", problem, feature=feature.name, reason=failed[0].kind
                )
                problems.append(problem)
            answered = [(c, a) for c, a in mine if not isinstance(a, BaseException)]
            column, found = self._join(feature, answered, index)
            problems += found
            values.append((EXTERNAL_PREFIX + feature.name, column))
        return ExternalFeatures(SOURCE, tuple(values), problems=tuple(problems))

    def _missing(self, n: int, error: str) -> ExternalFeatures:
        nothing = (math.nan,) * n
        return ExternalFeatures(SOURCE, tuple((c, nothing) for c in self.columns), error=error)

    def _run(self, calls: Sequence[_Call], at: datetime) -> list[list[Series] | PrometheusError]:
        """Every call's answer (or its failure), in order; in parallel when several.
        Evaluated at ``at``, when the proxy was read: the features describe the same
        moment as the proxy's figures."""

        def one(call: _Call) -> list[Series] | PrometheusError:
            query = fill(call.feature.template, call.pool, call.server)
            try:
                return self._api.instant(query, at)
            except PrometheusError as exc:
                return exc

        if len(calls) <= 1:
            return [one(c) for c in calls]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="prometheus")
        return list(self._pool.map(one, calls))

    def _join(
        self,
        feature: FeatureQuery,
        answered: Sequence[tuple[_Call, list[Series] | PrometheusError]],
        index: ServerIndex,
    ) -> tuple[tuple[float, ...], list[str]]:
        """One value per row from a feature's series; the problems found on the way."""
        own: dict[int, list[float]] = defaultdict(list)  # series naming the server
        shared: dict[int, list[float]] = defaultdict(list)  # pool-level series
        unmatched = nonfinite = infinite = 0
        for call, series in answered:
            assert not isinstance(series, BaseException)
            for s in series:
                rows, server_level = index.rows_for(
                    feature, s.labels, self._instances, call.pool, call.server
                )
                if not rows:
                    # A series instance_map gives to a pool this proxy lacks is another
                    # proxy's (two proxies, one agent): not a series nobody can place.
                    mapped = self._instances.get(s.labels.get("instance", ""))
                    unmatched += mapped is None or index.has_pool(mapped[0])
                    continue
                value = s.value
                if not math.isfinite(value):
                    nonfinite += 1
                    infinite += math.isinf(value)
                    value = math.nan
                for row in rows:
                    (own if server_level else shared)[row].append(value)
        problems: list[str] = []
        column = [math.nan] * index.size
        ambiguous: list[str] = []
        for row in range(index.size):
            candidates = own.get(row) or shared.get(row) or []
            if len(candidates) == 1:
                column[row] = candidates[0]
            elif len(candidates) > 1:
                ambiguous.append(index.name(row))
        if ambiguous:
            problem = (
                f"feature {feature.name}: several series for {', '.join(ambiguous[:5])}"
                f"{' ...' if len(ambiguous) > 5 else ''}; aggregate the query to one series "
                "per server (e.g. sum by (proxy, server))"
            )
            self._events.record("prometheus_ambiguous", problem, feature=feature.name)
            problems.append(problem)
        if nonfinite:
            # NaN is routine (a ratio over an idle interval, 0/0); an infinity is not.
            problem = (
                f"feature {feature.name}: {nonfinite} NaN or infinite sample(s) "
                f"({infinite} infinite), taken as missing"
            )
            level = logging.WARNING if infinite else logging.DEBUG
            self._events.record("prometheus_nonfinite", problem, level=level, feature=feature.name)
            problems.append(problem)
        if unmatched and all(math.isnan(v) for v in column):
            problem = (
                f"feature {feature.name}: {unmatched} series, none of them names a server here "
                f"(labels {feature.backend_label!r}/{feature.server_label!r} or instance_map)"
            )
            self._events.record("prometheus_unmatched", problem, feature=feature.name)
            problems.append(problem)
        return tuple(column), problems

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._api.close()


def _calls(feature: FeatureQuery, pools: Sequence[str], rows: Sequence[ServerRow]) -> list[_Call]:
    """The queries one feature needs for this observation."""
    if feature.per_server:
        return [_Call(feature, r.pool, r.server) for r in rows if r.pool in pools]
    if feature.per_backend:
        return [_Call(feature, pool) for pool in pools]
    return [_Call(feature)]


class ServerIndex:
    """Where each (pool, server) sits among a list of servers (an observation's rows),
    and its pools' names as a feature's labels spell them: how a series finds its
    server, for a tick's instant queries and for a training's range queries alike."""

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        self.size = len(keys)
        self._row: dict[tuple[str, str], int] = {}
        self._pool_rows: dict[str, list[int]] = defaultdict(list)
        for i, (pool, server) in enumerate(keys):
            self._row[(pool, server)] = i
            self._pool_rows[pool].append(i)
        self._names = [f"{pool}/{server}" for pool, server in keys]
        self._spelled: dict[str, dict[str, str]] = {}

    def name(self, row: int) -> str:
        return self._names[row]

    def has_pool(self, pool: str) -> bool:
        return pool in self._pool_rows

    def _pool_of(self, feature: FeatureQuery, label: str) -> str | None:
        spelled = self._spelled.get(feature.pool_names)
        if spelled is None:
            spelled = {feature.label_value(p): p for p in self._pool_rows}
            self._spelled[feature.pool_names] = spelled
        return spelled.get(label)

    def rows_for(
        self,
        feature: FeatureQuery,
        labels: Mapping[str, str],
        instances: Mapping[str, tuple[str, str]],
        pool: str = "",
        server: str = "",
    ) -> tuple[list[int], bool]:
        """The rows a series with ``labels`` belongs to, and whether it named the server;
        ``pool``/``server``: what the query's placeholders were filled with."""
        mapped = instances.get(labels.get("instance", ""))
        if mapped is not None:
            row = self._row.get(mapped)
            return ([row] if row is not None else []), True
        label = labels.get(feature.backend_label) if feature.backend_label else None
        found = self._pool_of(feature, label) if label is not None else pool or None
        if found is None:
            return [], False
        named = labels.get(feature.server_label) if feature.server_label else None
        named = named if named is not None else server or None
        if named is None:
            return list(self._pool_rows.get(found, ())), False
        row = self._row.get((found, named))
        return ([row] if row is not None else []), True


class _Observes(Protocol):
    def observe(self) -> Observation: ...


class WithPrometheus:
    """A proxy's source whose observations also carry the Prometheus features."""

    def __init__(self, inner: _Observes, features: PrometheusFeatures) -> None:
        self._inner = inner
        self.features = features

    def observe(self) -> Observation:
        """The proxy's reading (its failure is the tick's), then the features (whose
        failure is only theirs)."""
        observation = self._inner.observe()
        return observation.with_external(self.features.read(observation))

    def close(self) -> None:
        self.features.close()
