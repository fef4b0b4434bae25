"""The readings of one proxy's replicas merged into one (``veloflux.agent.replicas``),
a column at a time.

The rule, per server: counters and current counts summed; moving-average times
weighted by each replica's requests since its previous reading (alike when those are
not known); the worst state (an operator's MAINT, then DRAIN, DOWN); every replica's
problems; the most recent state change; the rest (the weight included) the first
replica's. A pool's rows come from the first replica that has the pool.

A 1,000-server pool merges every tick, so the rule is applied to whole columns: a sum
over the replicas' columns is one ``map`` in C, not 1,000 loop turns in Python. Where
the replicas list the same servers in the same order (the common case) the columns
are used as they are; otherwise each server's rows are gathered first, and scattered
back to the first replica's order after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import repeat
from operator import add, mul, ne, truediv
from typing import Any

from veloflux.domain.observation import (
    COLUMN_NAMES,
    ColumnReading,
    Observation,
    PoolInfo,
    ProxyIdentity,
    ReplicaStatus,
)

_SUMMED = (
    "sessions", "queue", "session_rate", "sessions_total", "requests_total",
    "responses_5xx_total", "response_errors_total", "connect_errors_total",
)  # fmt: skip
_TIMES = ("queue_time", "connect_time", "response_time", "total_time")
# Which state wins when replicas differ: an operator's MAINT first, then DRAIN, DOWN.
_STATE_ORDER = {"MAINT": 0, "DRAIN": 1, "DOWN": 2, "UP": 3}
Counts = dict[tuple[str, str], float]  # a figure per (pool, server)
Columns = Mapping[str, Sequence[Any]]
_INFINITIES = (math.inf, -math.inf)


def keys_of(reading: ColumnReading) -> list[tuple[str, str]]:
    """Each row's (pool, server)."""
    return list(zip(reading.columns["pool"], reading.columns["server"], strict=True))


def each_once(reading: ColumnReading, keys: list[tuple[str, str]]) -> bool:
    """Whether no (pool, server) comes twice in ``reading`` (``keys``, its rows'): by the
    server names alone when they tell, which are cheaper to compare than pairs."""
    return len(set(reading.columns["server"])) == len(keys) or len(set(keys)) == len(keys)


def merge(
    parts: Mapping[str, Observation],
    statuses: Sequence[ReplicaStatus],
    identity: ProxyIdentity,
    shares: Mapping[str, Counts],
) -> Observation:
    """The replicas' readings as one (pure: the tests feed it readings by hand), with
    each replica's requests since its previous reading by (pool, server) in ``shares``.

    Every pool any replica has is kept, its rows from the first replica that has it; a
    pool is missing only when every replica lacks it, and held when some do."""
    readings = {name: ColumnReading.of(part) for name, part in parts.items()}
    by_row = {
        name: [shares.get(name, {}).get(key, math.nan) for key in keys_of(reading)]
        for name, reading in readings.items()
    }
    return merge_readings(readings, statuses, identity, by_row)


def merge_readings(
    readings: Mapping[str, ColumnReading],
    statuses: Sequence[ReplicaStatus],
    identity: ProxyIdentity,
    shares: Mapping[str, Sequence[float]],
    keys: Mapping[str, list[tuple[str, str]]] | None = None,
) -> Observation:
    """``merge`` of readings as columns, ``shares`` given per row of each reading (and
    ``keys``, each row's (pool, server), when the caller has them already)."""
    infos: dict[str, PoolInfo] = {}
    for reading in readings.values():
        for info in reading.pools:
            infos.setdefault(info.name, info)
    keys = keys or {name: keys_of(reading) for name, reading in readings.items()}
    columns: Columns
    if _aligned(readings, infos, keys):
        pools = list(infos.values())
        copies = [(reading.columns, shares[name]) for name, reading in readings.items()]
        columns = _merge_rows(copies)
    else:
        pools, columns = _merge_gathered(readings, infos, shares)
    first = next(iter(readings.values()))
    everywhere = set.intersection(*(set(r.missing_pools) for r in readings.values()))
    return Observation.from_columns(
        taken_at=max(reading.taken_at for reading in readings.values()),
        columns=columns,
        pools=tuple(pools),
        proxy=identity,
        missing_pools=tuple(p for p in first.missing_pools if p in everywhere),
        replicas=tuple(statuses),
    )


def _aligned(
    readings: Mapping[str, ColumnReading],
    infos: Mapping[str, PoolInfo],
    keys: Mapping[str, list[tuple[str, str]]],
) -> bool:
    """Whether the merged rows are the rows of each reading, in its order: every reading
    has every pool and the same servers in the same order, each server once, and the
    rows of a pool together, the pools in ``infos``'s order."""
    first_keys, *others = keys.values()
    first = next(iter(readings.values()))
    if not each_once(first, first_keys):
        return False
    if any({info.name for info in reading.pools} != infos.keys() for reading in readings.values()):
        return False
    if any(other != first_keys for other in others):
        return False
    pools = first.columns["pool"]
    blocks = list(dict.fromkeys(pools))
    changes = sum(map(ne, pools[:-1], pools[1:]))
    return changes == len(blocks) - 1 and blocks == [name for name in infos if name in blocks]


def _merge_gathered(
    readings: Mapping[str, ColumnReading],
    infos: Mapping[str, PoolInfo],
    shares: Mapping[str, Sequence[float]],
) -> tuple[list[PoolInfo], dict[str, list[Any]]]:
    """The general case: each pool's servers in the order of the first replica that has
    the pool, matched by name on the others; rows merged in groups of the same set of
    replicas, and put back in order."""
    servers_of: dict[str, dict[str, dict[str, int]]] = {}
    for name, reading in readings.items():
        listed = servers_of[name] = {}
        held = {info.name for info in reading.pools}
        for i, (pool, server) in enumerate(keys_of(reading)):
            if pool in held:
                listed.setdefault(pool, {})[server] = i  # first place, the later row
    groups: dict[tuple[str, ...], tuple[list[int], dict[str, list[int]]]] = {}
    pools: list[PoolInfo] = []
    count = 0
    for pool, info in infos.items():
        servers = {
            name: listed.get(pool, {})
            for name, listed in servers_of.items()
            if any(p.name == pool for p in readings[name].pools)
        }
        disagreement = _disagreement(pool, servers, list(readings))
        pools.append(
            replace(info, managed=False, unmanaged_reason=disagreement) if disagreement else info
        )
        holders = list(servers)
        for server in servers[holders[0]]:
            having = tuple(name for name in holders if server in servers[name])
            places, rows = groups.setdefault(having, ([], {name: [] for name in having}))
            places.append(count)
            count += 1
            for name in having:
                rows[name].append(servers[name][server])
    merged: dict[str, list[Any]] = {column: [None] * count for column in COLUMN_NAMES}
    for having, (places, rows) in groups.items():
        copies = [
            (
                {
                    column: [readings[name].columns[column][i] for i in rows[name]]
                    for column in COLUMN_NAMES
                },
                [shares[name][i] for i in rows[name]],
            )
            for name in having
        ]
        for column, values in _merge_rows(copies).items():
            target = merged[column]
            for place, value in zip(places, values, strict=True):
                target[place] = value
    return pools, merged


def _disagreement(
    pool: str, servers: Mapping[str, Mapping[str, object]], replicas: Sequence[str]
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


def _merge_rows(copies: Sequence[tuple[Columns, Sequence[float]]]) -> dict[str, Sequence[Any]]:
    """Rows of the same servers on several replicas (the first's columns whole, each
    with its replica's requests per row), merged a column at a time."""
    merged = dict(copies[0][0])
    if len(copies) == 1:
        return merged
    columns = [c for c, _ in copies]
    for name in _SUMMED:
        merged[name] = _summed([c[name] for c in columns])
    weights = _time_weights([s for _, s in copies])
    weight_sum = _accumulated(weights)
    for name in _TIMES:
        merged[name] = _weighted([c[name] for c in columns], weights, weight_sum)
    merged["state"] = _worst_state([c["state"] for c in columns])
    merged["problem"] = _problems([c["problem"] for c in columns])
    merged["since_state_change"] = _latest_change([c["since_state_change"] for c in columns])
    return merged


def _summed(columns: Sequence[Sequence[float]]) -> list[float]:
    """Per row, ``sum`` of the replicas' values. For two, the additions ``sum`` makes
    ((0 + a) + b; a compensated sum of two floats rounds the same), as two C passes."""
    if len(columns) == 2:
        return list(map(add, map(add, repeat(0), columns[0]), columns[1]))
    return list(map(sum, zip(*columns, strict=True)))


def _accumulated(columns: Sequence[Iterable[float]]) -> list[float]:
    """Per row, 0.0 plus each replica's value in turn, as a loop over a row's replicas
    adds them."""
    total: Iterable[float] = map(add, repeat(0.0), columns[0])
    for column in columns[1:]:
        total = map(add, total, column)
    return list(total)


def _time_weights(shares: Sequence[Sequence[float]]) -> list[Sequence[float]]:
    """Each replica's weight in a row's times: its requests, or 1.0 for every replica of
    a row whose requests are not all known and non-negative or sum to nothing. Never
    negative, then: a replica the rule leaves out of a row for its weight has 0.0."""
    if all(all(map((0.0).__le__, s)) for s in shares):  # every count known: the common case
        # Non-negative counts sum to nothing only when each is nothing.
        counted = list(map(any, zip(*shares, strict=True)))
    else:
        known = map(all, zip(*(map((0.0).__le__, s) for s in shares), strict=True))
        totals = map(sum, zip(*shares, strict=True))
        counted = [k and bool(t) for k, t in zip(known, totals, strict=True)]
    if all(counted):
        return list(shares)
    return [[w if c else 1.0 for w, c in zip(s, counted, strict=True)] for s in shares]


def _weighted(
    values: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    weight_sum: Sequence[float],
) -> list[float]:
    """A time's mean over the replicas, weighted (``_time_weights``, summed in
    ``weight_sum``); a replica without a finite time or a positive weight left out, NaN
    when none is left.

    Summed replica by replica from 0.0, as a loop over a row's replicas would. Where
    every time is finite, only a weight of 0.0 leaves a replica out, and it adds
    nothing anyway: 0.0 (or -0.0) changes no sum that starts from 0.0 (never -0.0).
    """
    # A column's sum is finite only if each of its values is: no NaN, no infinity.
    if all(math.isfinite(sum(column)) for column in values):
        terms = [map(mul, column, shares) for column, shares in zip(values, weights, strict=True)]
        total, counted_sum = _accumulated(terms), weight_sum
    else:
        total = counted_sum = [0.0] * len(weight_sum)
        for column, shares in zip(values, weights, strict=True):
            kept = [
                w > 0 and v == v and v not in _INFINITIES
                for v, w in zip(column, shares, strict=True)
            ]
            products = [v * w if k else 0.0 for v, w, k in zip(column, shares, kept, strict=True)]
            counted = [w if k else 0.0 for w, k in zip(shares, kept, strict=True)]
            total = list(map(add, total, products))
            counted_sum = list(map(add, counted_sum, counted))
    if all(counted_sum):
        return list(map(truediv, total, counted_sum))
    return [t / s if s else math.nan for t, s in zip(total, counted_sum, strict=True)]


def _worst_state(states: Sequence[Sequence[str]]) -> Sequence[str]:
    """Per row, the state that wins among the replicas' (``_STATE_ORDER``)."""
    first = states[0]
    if all(other == first for other in states[1:]):
        return first
    merged = list(first)
    for i, row in enumerate(zip(*states, strict=True)):
        distinct = set(row)
        if len(distinct) > 1:
            merged[i] = min(distinct, key=lambda s: _STATE_ORDER.get(s, 2))
    return merged


def _problems(problems: Sequence[Sequence[str]]) -> Sequence[str]:
    """Per row, every replica's problem, each said once; the first's when only it has one."""
    first = problems[0]
    if not any(any(other) for other in problems[1:]):
        return first
    merged = list(first)
    for i, row in enumerate(zip(*problems, strict=True)):
        if any(row):
            merged[i] = "; ".join(dict.fromkeys(p for p in row if p))
    return merged


def _latest_change(values: Sequence[Sequence[float]]) -> list[float]:
    """Per row, the least time since a state change among the replicas that know it."""
    if all(all(map((0.0).__le__, column)) for column in values):
        return list(map(min, *values))
    merged = []
    for row in zip(*values, strict=True):
        changes = [v for v in row if v >= 0]
        merged.append(min(changes) if changes else math.nan)
    return merged
