"""The dashboard's memory: a bounded ring of the recent ticks, what ``/`` draws and
``/api/v1/history`` serves.

Each tick leaves one ``TickSample``: when, whether it worked, and per pool the rung,
the confidence, the switchback test, and per server the weight in effect, the static
and planned weights, the latency and the error rate the agent observed. Nothing here
is read from the journal or the proxies: it is what the ticks saw, kept as they saw
it, so the page and a script read the same figures the agent acted on.

Memory is bounded twice: by time (``api.history_window``) and by count
(``api.history_max_ticks``). A pool's figures are five ``array('f')`` columns (4 bytes a
value), and the tuple of server names is shared with the previous tick while it is
unchanged, so an hour of a 1,000-server pool at 10 s is about 9 MB
(docs/benchmarks.md).

Recording costs the tick one pass over its servers; encoding to JSON happens on the
API's thread, once per tick and pool (the fragments are cached, samples are immutable),
so a dashboard polling every few seconds costs the tick nothing but the GIL's share.
"""

from __future__ import annotations

import json
import math
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from veloflux.agent.ports import TickResult
from veloflux.daemon.metrics import weight_in_effect, writes_by_server
from veloflux.domain.observation import ServerRow

_NAN = math.nan
_COLUMNS = ("weight", "static", "planned", "latency_ms", "error_rate")
_DIGITS = {"weight": 0, "static": 0, "planned": 0, "latency_ms": 2, "error_rate": 4}


@dataclass(frozen=True)
class PoolSample:
    """One pool at one tick; the columns are aligned with ``servers`` (NaN: unknown)."""

    mode: str
    confidence: float
    overload: bool
    switchback: Mapping[str, object] | None
    servers: tuple[str, ...]
    columns: Mapping[str, array[float]]


@dataclass(frozen=True)
class TickSample:
    """One tick, good or failed (a failed one has no pools)."""

    seq: int
    at: datetime
    ok: bool
    error: str
    duration_seconds: float
    paused: bool
    written: int
    write_failures: int
    model_version: str | None
    sources: Mapping[str, bool]
    pools: Mapping[str, PoolSample] = field(default_factory=dict)


def _number(value: float, digits: int) -> float | int | None:
    if not math.isfinite(value):
        return None
    return round(value) if digits == 0 else round(value, digits)


def _error_rate(
    row: ServerRow, before: tuple[float, float] | None
) -> tuple[float, tuple[float, float]]:
    """Errors over the interval, as ``history/rates.py`` counts them: (5xx + response
    + connect errors) / max(requests, errors); NaN without traffic or across a reset."""
    errors = row.responses_5xx_total + row.response_errors_total + row.connect_errors_total
    now = (row.requests_total, errors)
    if before is None:
        return _NAN, now
    requests, failed = now[0] - before[0], now[1] - before[1]
    if not (math.isfinite(requests) and math.isfinite(failed)) or requests < 0 or failed < 0:
        return _NAN, now
    most = max(requests, failed)
    return (failed / most if most > 0 else _NAN), now


class TickTimeline:
    """The ring: ``record`` from the tick's thread, ``to_json`` from the API's threads."""

    def __init__(
        self,
        window_seconds: float,
        max_ticks: int,
        interval_seconds: float,
        started_at: datetime | None = None,
    ) -> None:
        # When this ring began (the daemon's start): a reader that sees it change knows
        # the numbering began again, whatever ``seq`` it had.
        self._started_at = started_at.isoformat() if started_at else None
        self._lock = threading.Lock()
        self._samples: deque[TickSample] = deque()
        self._bounds(window_seconds, max_ticks, interval_seconds)
        self._seq = 0
        # Counters of the previous good tick, per (pool, server): the error rate's base.
        self._counters: dict[tuple[str, str], tuple[float, float]] = {}
        self._layouts: dict[str, tuple[str, ...]] = {}
        # Each sample's pools as JSON, encoded on first request: seq -> pool -> bytes.
        self._fragments: dict[int, dict[str, bytes]] = {}

    def _bounds(self, window_seconds: float, max_ticks: int, interval_seconds: float) -> None:
        self._window_seconds = window_seconds
        self._interval_seconds = interval_seconds
        ticks = math.ceil(window_seconds / interval_seconds) + 1
        self._capacity = max(1, min(max_ticks, ticks))
        self._samples = deque(self._samples, maxlen=self._capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    def resize(self, window_seconds: float, max_ticks: int, interval_seconds: float) -> None:
        """A reloaded config: keep the newest samples that fit the new bounds."""
        with self._lock:
            self._bounds(window_seconds, max_ticks, interval_seconds)
            self._forget_dropped()

    def record(self, result: TickResult, paused: bool, sources: Mapping[str, bool]) -> None:
        """A good tick: its plan, what it wrote, and what it observed per server."""
        observed = {(r.pool, r.server): r for r in result.observation.rows}
        writes = writes_by_server(result.report)
        counters: dict[tuple[str, str], tuple[float, float]] = {}
        pools: dict[str, PoolSample] = {}
        for pool in result.plan.pools:
            names = tuple(s.server for s in pool.servers)
            if self._layouts.get(pool.backend) != names:  # share the tuple while unchanged
                self._layouts[pool.backend] = names
            columns = {name: array("f", bytes(4 * len(names))) for name in _COLUMNS}
            for i, s in enumerate(pool.servers):
                effective = weight_in_effect(s, writes.get((s.backend, s.server)))
                columns["weight"][i] = _NAN if effective is None else effective
                columns["static"][i] = _NAN if s.static_weight is None else s.static_weight
                columns["planned"][i] = _NAN if s.planned_weight is None else s.planned_weight
                row = observed.get((pool.backend, s.server))
                if row is None:
                    columns["latency_ms"][i] = columns["error_rate"][i] = _NAN
                    continue
                columns["latency_ms"][i] = row.response_time * 1000.0
                key = (pool.backend, s.server)
                columns["error_rate"][i], counters[key] = _error_rate(row, self._counters.get(key))
            pools[pool.backend] = PoolSample(
                mode=pool.mode,
                confidence=pool.confidence,
                overload=bool(pool.overload),
                switchback=pool.switchback.to_json() if pool.switchback else None,
                servers=self._layouts[pool.backend],
                columns=columns,
            )
        self._counters = counters
        report = result.report
        self._append(
            at=result.plan.generated_at,
            ok=True,
            error="",
            duration_seconds=result.duration_seconds,
            paused=paused,
            written=len(report.applied) if report else 0,
            write_failures=len(report.failures) if report else 0,
            model_version=result.plan.model_version,
            sources=dict(sources),
            pools=pools,
        )

    def record_failure(
        self,
        at: datetime,
        error: str,
        duration_seconds: float,
        paused: bool,
        sources: Mapping[str, bool],
    ) -> None:
        """A failed tick: a gap in the charts, with its reason."""
        self._append(
            at=at,
            ok=False,
            error=error,
            duration_seconds=duration_seconds,
            paused=paused,
            written=0,
            write_failures=0,
            model_version=None,
            sources=dict(sources),
        )

    def _append(self, **fields: object) -> None:
        with self._lock:
            self._seq += 1
            sample = TickSample(seq=self._seq, **fields)  # type: ignore[arg-type]
            self._samples.append(sample)  # the oldest falls off at capacity
            horizon = sample.at.timestamp() - self._window_seconds
            while self._samples[0].at.timestamp() < horizon:
                self._samples.popleft()
            self._forget_dropped()

    def _forget_dropped(self) -> None:
        oldest = self._samples[0].seq if self._samples else self._seq + 1
        for seq in [seq for seq in self._fragments if seq < oldest]:
            del self._fragments[seq]

    def samples(self, since: int = 0) -> list[TickSample]:
        with self._lock:
            return [s for s in self._samples if s.seq > since]

    def to_json(self, since: int = 0, pools: Iterable[str] = ()) -> bytes:
        """The ``/api/v1/history`` document (bytes: the fragments are cached)."""
        wanted = frozenset(pools)
        with self._lock:
            oldest = self._samples[0].seq if self._samples else 0
            newest = self._samples[-1].seq if self._samples else 0
        head = {
            "started_at": self._started_at,
            "interval_seconds": self._interval_seconds,
            "window_seconds": self._window_seconds,
            "capacity": self._capacity,
            "oldest_seq": oldest,
            "newest_seq": newest,
        }
        ticks = b",".join(self._tick_json(s, wanted) for s in self.samples(since))
        return json.dumps(head)[:-1].encode() + b', "ticks": [' + ticks + b"]}\n"

    def _tick_json(self, sample: TickSample, wanted: frozenset[str]) -> bytes:
        head = {
            "seq": sample.seq,
            "at": sample.at.isoformat(),
            "ok": sample.ok,
            "error": sample.error,
            "duration_seconds": round(sample.duration_seconds, 4),
            "paused": sample.paused,
            "written": sample.written,
            "write_failures": sample.write_failures,
            "model_version": sample.model_version,
            "sources": sample.sources,
        }
        parts = [
            json.dumps(name).encode() + b":" + self._pool_json(sample.seq, name, pool)
            for name, pool in sample.pools.items()
            if not wanted or name in wanted
        ]
        return json.dumps(head)[:-1].encode() + b', "pools": {' + b",".join(parts) + b"}}"

    def _pool_json(self, seq: int, name: str, pool: PoolSample) -> bytes:
        with self._lock:
            cached = self._fragments.get(seq, {}).get(name)
        if cached is not None:
            return cached
        document: dict[str, object] = {
            "mode": pool.mode,
            "confidence": round(pool.confidence, 4),
            "overload": pool.overload,
            "switchback": pool.switchback,
            "servers": pool.servers,
        }
        for column in _COLUMNS:
            digits = _DIGITS[column]
            document[column] = [_number(v, digits) for v in pool.columns[column]]
        encoded = json.dumps(document, separators=(",", ":")).encode()
        with self._lock:  # cache it only while the sample is still held
            if self._samples and self._samples[0].seq <= seq:
                self._fragments.setdefault(seq, {})[name] = encoded
        return encoded
