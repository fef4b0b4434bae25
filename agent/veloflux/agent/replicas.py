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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import itemgetter, sub
from typing import Protocol, runtime_checkable

from veloflux.agent.ports import Sink, Source
from veloflux.agent.replica_merge import Counts, each_once, keys_of, merge, merge_readings
from veloflux.domain.observation import ColumnReading, Observation, ProxyIdentity, ReplicaStatus
from veloflux.domain.weightplan import ApplyReport, PoolPlan, ServerPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, SourceUnavailable
from veloflux.util.events import Events

__all__ = ["ReplicaView", "ReplicatedSink", "ReplicatedSource", "merge"]
_LEVEL_ORDER = {"user": 0, "operator": 1, "unknown": 2, "admin": 3}
_WRITABLE = frozenset({"UP", "DOWN"})  # the states a replica's own weight is written from
_BACKEND, _SERVER, _STATE, _CURRENT = (
    itemgetter(ServerPlan._fields.index(name))
    for name in ("backend", "server", "state", "current_weight")
)


class Asked(Protocol):
    """A reading asked of a proxy, its answer still due: ``receive`` waits for it,
    ``pump`` takes in what has come without waiting, ``reading`` parses it."""

    def receive(self) -> None: ...

    def pump(self) -> None: ...

    def reading(self) -> ColumnReading: ...

    def close(self) -> None: ...


@runtime_checkable
class AskingSource(Protocol):
    """A source whose reading can be asked now and read later (``HAProxySource``): every
    replica is asked before any answer is read, so the proxies prepare their answers
    at the same time, while this process reads the first."""

    def ask(self) -> Asked: ...


class Sent(Protocol):
    """Writes sent to a proxy, their outcome still due."""

    def report(self) -> ApplyReport: ...

    def close(self) -> None: ...


class Looked(Protocol):
    """A proxy's weights asked for again just before a write; ``send`` writes."""

    def send(self) -> Sent: ...

    def close(self) -> None: ...


@runtime_checkable
class LookingSink(Protocol):
    """A sink that reads the weights again before writing and whose writes can be sent
    now and checked later (``HAProxySink``): every replica is asked before any reply is
    read, and written before any write's reply is read, so they work at the same time."""

    def look(self, plan: WeightPlan, proxy_level: str = "unknown") -> Looked: ...


@dataclass
class ReplicaView:
    """What the source learned of each replica at the last reading, for the sink: which
    answered, and the weights each one had. Shared by one proxy's source and sink."""

    names: tuple[str, ...]
    up: dict[str, bool] = field(default_factory=dict)
    weights: dict[str, Counts] = field(default_factory=dict)


class ReplicatedSource:
    """Every replica asked, then read in turn, merged into one Observation (``Source``).

    Reading a reply is Python work, so threads would only trade the GIL; instead every
    replica that can be (``AskingSource``) is asked before any reply is read, and
    prepares its reply while this process parses the first one."""

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
        self._requests: dict[str, tuple[list[tuple[str, str]], list[float]]] = {}

    def observe(self) -> Observation:
        asked = {name: _ask(source) for name, source in self._sources.items()}
        parts: dict[str, ColumnReading] = {}
        statuses: list[ReplicaStatus] = []
        waiting = list(asked.values())
        try:
            for i, (name, pending) in enumerate(asked.items()):
                # Received, then the others pumped before this one is parsed: a proxy
                # whose reply fills its socket waits to be read before it goes on.
                pending.receive()
                for other in waiting[i + 1 :]:
                    other.pump()
                try:
                    parts[name] = pending.reading()
                except SourceUnavailable as exc:
                    self._events.record(
                        "replica_unavailable", f"{name}: {exc}; held while the others are driven"
                    )
                    statuses.append(ReplicaStatus(name, False, str(exc)))
                else:
                    statuses.append(ReplicaStatus(name, True, "", parts[name].proxy.pid))
        finally:
            for pending in asked.values():
                pending.close()
        self._view.up = {s.name: s.up for s in statuses}
        if not parts:
            problems = "; ".join(f"{s.name}: {s.problem}" for s in statuses)
            raise SourceUnavailable(f"no replica answered ({problems})")
        keys = {name: keys_of(part) for name, part in parts.items()}
        self._view.weights = {
            name: dict(zip(keys[name], part.columns["weight"], strict=True))
            for name, part in parts.items()
        }
        identity = self._identity(parts)
        shares = self._request_shares(parts, keys)
        return merge_readings(parts, statuses, identity, shares, keys)

    def _identity(self, parts: Mapping[str, ColumnReading]) -> ProxyIdentity:
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

    def _request_shares(
        self, parts: Mapping[str, ColumnReading], keys: Mapping[str, list[tuple[str, str]]]
    ) -> dict[str, list[float]]:
        """Each replica's requests per row since its previous reading: the weights of its
        moving-average times in the merge (NaN when not known yet). A replica that lists
        the same servers as before, each once, is subtracted column from column."""
        shares: dict[str, list[float]] = {}
        for name, part in parts.items():
            now = list(part.columns["requests_total"])
            then_keys, then = self._requests.get(name, ([], []))
            if then_keys == keys[name] and each_once(part, then_keys):
                shares[name] = list(map(sub, now, then))
            else:
                before = dict(zip(then_keys, then, strict=True))
                by_key = {
                    key: value - before.get(key, math.nan)
                    for key, value in zip(keys[name], now, strict=True)
                }
                shares[name] = [by_key[key] for key in keys[name]]
            self._requests[name] = (keys[name], now)
        return shares


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
        owns = {name: _against(plan, self._view.weights.get(name, {})) for name in targets}
        looks = {name: _look(self._sinks[name], owns[name], proxy_level) for name in targets}
        sent: dict[str, Sent] = {}
        try:
            for name, look in looks.items():
                sent[name] = look.send()
            for name, pending in sent.items():
                try:
                    report = pending.report()
                except SinkRejected as exc:
                    rejected.append(f"{name}: {exc}")
                    results += [
                        WriteResult(s.backend, s.server, s.current_weight, s.planned_weight or 0,
                                    None, f"replica {name}: {exc}", name)
                        for s in owns[name].changes()
                    ]  # fmt: skip
                    continue
                results += [write._replace(replica=name) for write in report.results]
        finally:
            for look in looks.values():
                look.close()
            for pending in sent.values():
                pending.close()
        if targets and len(rejected) == len(targets):
            raise SinkRejected("every replica refused the writes: " + "; ".join(rejected))
        for problem in rejected:
            self._events.record("replica_write_refused", problem)
        return ApplyReport(tuple(results))


def _against(plan: WeightPlan, weights: Mapping[tuple[str, str], float]) -> WeightPlan:
    """``plan`` with each server's current weight as one replica has it: its changes are
    what that replica needs. A server it lacks or whose weight it could not read is not
    written, nor one in MAINT or DRAIN on any replica (the merged state): an operator's.

    Read a pool at a time: the common case, every weight known and as planned from,
    is a few passes in C over a 1,000-server pool rather than a loop in Python."""

    def current(pool: PoolPlan) -> PoolPlan:
        servers = pool.servers
        keys = zip(map(_BACKEND, servers), map(_SERVER, servers), strict=True)
        found = list(map(weights.get, keys, repeat(math.nan)))
        currents = list(map(_CURRENT, servers))
        # Equal to the planned-from weights (ints), each weight is finite and whole.
        if found == currents and _WRITABLE.issuperset(map(_STATE, servers)):
            return pool
        if all(map(math.isfinite, found)) and _WRITABLE.issuperset(map(_STATE, servers)):
            known: list[int | None] = list(map(int, found))
        else:
            known = [
                int(w) if math.isfinite(w) and s.state in _WRITABLE else None
                for w, s in zip(found, servers, strict=True)
            ]
        if known == currents:
            return pool
        return replace(
            pool,
            servers=tuple(
                s if k == s.current_weight else s._replace(current_weight=k)
                for s, k in zip(servers, known, strict=True)
            ),
        )

    return replace(plan, pools=tuple(current(pool) for pool in plan.pools))


@dataclass(frozen=True)
class _Observed:
    """A source read a row at a time (Envoy's, a test's): asked when its turn comes."""

    source: Source

    def receive(self) -> None:
        pass

    def pump(self) -> None:
        pass

    def reading(self) -> ColumnReading:
        return ColumnReading.of(self.source.observe())

    def close(self) -> None:
        pass


def _ask(source: Source) -> Asked:
    return source.ask() if isinstance(source, AskingSource) else _Observed(source)


@dataclass(frozen=True)
class _Applied:
    """A sink that writes in one call (Envoy's, a test's): written when its turn comes."""

    sink: Sink
    plan: WeightPlan
    proxy_level: str

    def send(self) -> _Applied:
        return self

    def report(self) -> ApplyReport:
        return self.sink.apply(self.plan, self.proxy_level)

    def close(self) -> None:
        pass


def _look(sink: Sink, plan: WeightPlan, proxy_level: str) -> Looked:
    if isinstance(sink, LookingSink):
        return sink.look(plan, proxy_level)
    return _Applied(sink, plan, proxy_level)
