"""Replicas of one proxy driven as one pool: several HAProxy instances with the same
config (``haproxy.replicas``), or several Envoy instances reading one EDS directory
(``envoy.replicas``).

Users reach the replicas at random (keepalived, a cloud load balancer, a Kubernetes
Service), so a pool is one pool: judged on the traffic of all of them, planned once,
and given the same weights everywhere, or users behind each replica would see a
different split.

``ReplicatedSource`` reads every replica and merges the readings into one Observation:
counters and current counts summed, moving-average times weighted by each replica's
requests since its previous reading, states combined so that a server down, in
maintenance or draining on any replica is treated as such. The replicas must agree on
each pool's servers; a pool on which they do not is held (unmanaged, with the
replicas' difference as the reason). A replica that does not answer is named and left
out while the others are driven. The merged reading's identity changes (a new
``pid``, a generation) whenever a replica restarted or the set of replicas that
answered changed: summed counters jump then, and the history must see a reset, not
traffic.

``ReplicatedSink`` writes the one plan to every replica that answered, each judged
against its own weights: a replica that came back with its configured weights gets
the current ones at the next tick, and a write is reported (and audited) per replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from veloflux.agent.ports import Sink, Source
from veloflux.domain.observation import (
    Observation,
    PoolInfo,
    ProxyIdentity,
    ReplicaStatus,
    ServerRow,
)
from veloflux.domain.weightplan import ApplyReport, PoolPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, SourceUnavailable
from veloflux.util.events import Events

_SUMMED = (
    "sessions", "queue", "session_rate", "sessions_total", "requests_total",
    "responses_5xx_total", "response_errors_total", "connect_errors_total",
)  # fmt: skip
_TIMES = ("queue_time", "connect_time", "response_time", "total_time")
# Which state wins when replicas differ: an operator's MAINT first, then DRAIN, DOWN.
_STATE_ORDER = {"MAINT": 0, "DRAIN": 1, "DOWN": 2, "UP": 3}
_LEVEL_ORDER = {"user": 0, "operator": 1, "unknown": 2, "admin": 3}
Counts = dict[tuple[str, str], float]  # a figure per (pool, server)
_FIELDS = ServerRow._fields
_SUMMED_AT = tuple(_FIELDS.index(c) for c in _SUMMED)
_TIMES_AT = tuple(_FIELDS.index(c) for c in _TIMES)
_STATE_AT, _PROBLEM_AT = _FIELDS.index("state"), _FIELDS.index("problem")
_CHANGE_AT = _FIELDS.index("since_state_change")


@dataclass
class ReplicaView:
    """What the source learned of each replica at the last reading, for the sink: which
    answered, and the weights each one had. Shared by one proxy's source and sink."""

    names: tuple[str, ...]
    up: dict[str, bool] = field(default_factory=dict)
    weights: dict[str, Counts] = field(default_factory=dict)


class ReplicatedSource:
    """Every replica read in turn, merged into one Observation (``Source``)."""

    def __init__(
        self,
        sources: Mapping[str, Source],
        view: ReplicaView,
        events: Events,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = dict(sources)
        self._view = view
        self._events = events
        self._monotonic = monotonic
        self._started = monotonic()
        self._generation = 0
        self._identities: dict[str, ProxyIdentity] = {}
        self._requests: dict[str, Counts] = {}

    def observe(self) -> Observation:
        parts: dict[str, Observation] = {}
        statuses: list[ReplicaStatus] = []
        # One after the other: parsing a reading is Python work, so reading replicas in
        # threads made the tick slower (two threads trading the GIL), not faster.
        for name, source in self._sources.items():
            try:
                parts[name] = source.observe()
            except SourceUnavailable as exc:
                self._events.record(
                    "replica_unavailable", f"{name}: {exc}; held while the others are driven"
                )
                statuses.append(ReplicaStatus(name, False, str(exc)))
            else:
                statuses.append(ReplicaStatus(name, True, "", parts[name].proxy.pid))
        self._view.up = {s.name: s.up for s in statuses}
        if not parts:
            problems = "; ".join(f"{s.name}: {s.problem}" for s in statuses)
            raise SourceUnavailable(f"no replica answered ({problems})")
        self._view.weights = {
            name: {(r.pool, r.server): r.weight for r in part.rows} for name, part in parts.items()
        }
        identity = self._identity(parts)
        shares = self._request_shares(parts)
        return merge(parts, statuses, identity, shares)

    def _identity(self, parts: Mapping[str, Observation]) -> ProxyIdentity:
        """One identity for the set: a new generation when a replica restarted or the
        set that answered changed, so that the history sees a counter reset."""
        now = {name: part.proxy for name, part in parts.items()}
        changed = set(now) != set(self._identities) or any(
            identity.reloaded_since(self._identities[name])
            for name, identity in now.items()
            if name in self._identities
        )
        if changed and self._identities:
            self._generation += 1
        self._identities = now
        first = next(iter(now.values()))
        level = min((i.level for i in now.values()), key=lambda lv: _LEVEL_ORDER.get(lv, 2))
        return ProxyIdentity(
            address=" + ".join(self._sources),
            pid=self._generation,
            started_at_epoch=0.0,
            uptime_seconds=self._monotonic() - self._started,
            version=first.version,
            level=level,
        )

    def _request_shares(self, parts: Mapping[str, Observation]) -> dict[str, Counts]:
        """Each replica's requests per server since its previous reading: the weights of
        its moving-average times in the merge (NaN when not known yet)."""
        shares: dict[str, Counts] = {}
        for name, part in parts.items():
            before = self._requests.get(name, {})
            now = {(r.pool, r.server): r.requests_total for r in part.rows}
            shares[name] = {key: value - before.get(key, math.nan) for key, value in now.items()}
            self._requests[name] = now
        return shares


def merge(
    parts: Mapping[str, Observation],
    statuses: Sequence[ReplicaStatus],
    identity: ProxyIdentity,
    shares: Mapping[str, Counts],
) -> Observation:
    """The replicas' readings as one (pure: the tests feed it readings by hand).

    Every pool any replica has is kept, its rows from the first replica that has it; a
    pool is missing only when every replica lacks it, and held when some do."""
    infos: dict[str, PoolInfo] = {}
    for part in parts.values():
        for info in part.pools:
            infos.setdefault(info.name, info)
    pools: list[PoolInfo] = []
    rows: list[ServerRow] = []
    for name, info in infos.items():
        servers = {
            replica: {r.server: r for r in part.servers_of(name)}
            for replica, part in parts.items()
            if any(p.name == name for p in part.pools)
        }
        disagreement = _disagreement(name, servers, list(parts))
        pools.append(
            replace(info, managed=False, unmanaged_reason=disagreement) if disagreement else info
        )
        holders = list(servers)
        for server, row in servers[holders[0]].items():
            copies = [(r, servers[r][server]) for r in holders if server in servers[r]]
            rows.append(_merged_row(row, copies, shares))
    everywhere = set.intersection(*(set(part.missing_pools) for part in parts.values()))
    missing = tuple(p for p in next(iter(parts.values())).missing_pools if p in everywhere)
    return Observation(
        taken_at=max(part.taken_at for part in parts.values()),
        rows=tuple(rows),
        pools=tuple(pools),
        proxy=identity,
        missing_pools=missing,
        replicas=tuple(statuses),
    )


def _disagreement(
    pool: str, servers: Mapping[str, Mapping[str, ServerRow]], replicas: Sequence[str]
) -> str:
    """Why the replicas cannot be driven as one for ``pool`` ('' when they can)."""
    lacking = [name for name in replicas if name not in servers]
    if lacking:
        return f"replicas disagree: {', '.join(lacking)} has no pool {pool!r}; held"
    names = list(servers)
    reference = set(servers[names[0]])
    for name in names[1:]:
        other = set(servers[name])
        if other != reference:
            only_first = ", ".join(sorted(reference - other)[:5]) or "-"
            only_other = ", ".join(sorted(other - reference)[:5]) or "-"
            return (
                f"replicas disagree on the servers of {pool!r}: {name} lacks {only_first} "
                f"and has {only_other} that {names[0]} lacks; held"
            )
    return ""


def _merged_row(
    first: ServerRow,
    copies: Sequence[tuple[str, ServerRow]],
    shares: Mapping[str, Counts],
) -> ServerRow:
    """One server's rows on several replicas as one. Plain loops over the row's fields by
    position: a 1,000-server pool merges every tick, and this is most of its cost."""
    if len(copies) == 1:
        return first
    rows = [row for _, row in copies]
    cells = cast(list[tuple[Any, ...]], rows)  # by position: the fields' own types vary
    values = list(first)
    for i in _SUMMED_AT:
        values[i] = sum(row[i] for row in cells)
    key = (first.pool, first.server)
    weights = [shares.get(name, {}).get(key, math.nan) for name, _ in copies]
    if not all(w >= 0 for w in weights) or not sum(weights):  # NaN fails >= 0
        weights = [1.0] * len(rows)  # no traffic measured yet: each replica alike
    for i in _TIMES_AT:
        total = weight_sum = 0.0
        for row, w in zip(cells, weights, strict=True):
            value = row[i]
            if w > 0 and value == value and value not in (math.inf, -math.inf):
                total += value * w
                weight_sum += w
        values[i] = total / weight_sum if weight_sum else math.nan
    states = {row.state for row in rows}
    if len(states) > 1:
        values[_STATE_AT] = min(states, key=lambda s: _STATE_ORDER.get(s, 2))
    if any(row.problem for row in rows):
        values[_PROBLEM_AT] = "; ".join(dict.fromkeys(row.problem for row in rows if row.problem))
    changes = [row.since_state_change for row in rows if row.since_state_change >= 0]
    values[_CHANGE_AT] = min(changes) if changes else math.nan
    # ``weight`` stays the first replica's: the replicas' may differ for a tick after one
    # returned; the plan starts from the first's, and the sink brings the others in.
    return ServerRow._make(values)


class ReplicatedSink:
    """The one plan written to every replica that answered, each judged against its own
    weights (``Sink``); every write reported with its replica."""

    def __init__(self, sinks: Mapping[str, Sink], view: ReplicaView, events: Events) -> None:
        self._sinks = dict(sinks)
        self._view = view
        self._events = events

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport:
        results: list[WriteResult] = []
        rejected: list[str] = []
        targets = [name for name in self._sinks if self._view.up.get(name, False)]
        for name in targets:
            own = _against(plan, self._view.weights.get(name, {}))
            try:
                report = self._sinks[name].apply(own, proxy_level)
            except SinkRejected as exc:
                rejected.append(f"{name}: {exc}")
                results += [
                    WriteResult(s.backend, s.server, s.current_weight, s.planned_weight or 0,
                                None, f"replica {name}: {exc}", name)
                    for s in own.changes()
                ]  # fmt: skip
                continue
            results += [write._replace(replica=name) for write in report.results]
        if targets and len(rejected) == len(targets):
            raise SinkRejected("every replica refused the writes: " + "; ".join(rejected))
        for problem in rejected:
            self._events.record("replica_write_refused", problem)
        return ApplyReport(tuple(results))


def _against(plan: WeightPlan, weights: Mapping[tuple[str, str], float]) -> WeightPlan:
    """``plan`` with each server's current weight as one replica has it: its changes are
    what that replica needs. A server it lacks or whose weight it could not read is not
    written, nor one in MAINT or DRAIN on any replica (the merged state): an operator's."""

    def current(pool: PoolPlan) -> PoolPlan:
        servers = []
        for s in pool.servers:
            weight = weights.get((s.backend, s.server), math.nan)
            known = int(weight) if math.isfinite(weight) and s.state in ("UP", "DOWN") else None
            servers.append(s if known == s.current_weight else s._replace(current_weight=known))
        return replace(pool, servers=tuple(servers))

    return replace(plan, pools=tuple(current(pool) for pool in plan.pools))
