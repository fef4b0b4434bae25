"""The discrete-event engine: Poisson arrivals, servers with a concurrency limit and a
FCFS queue (or processor sharing), timed server events, a dispatcher per request and a
weight strategy per tick. Seeded: the same scenario, seed, dispatcher and strategy give
the same run.

A processor-sharing server (``discipline: ps``) serves every request at once, each at
``speed x min(1, concurrency / n)`` with ``n`` in service, and a speed change reaches
the requests already in service. It keeps one clock of attained service shared by
all its requests (they all progress at the same rate), so a request finishes when
that clock passes its start value plus its demand: only the earliest of them is in
the event heap, and an entry made stale by a later arrival or departure is skipped.

Without ``maxconn`` the proxy forwards at once, so a server's own queue is part of
what the proxy sees as its response time, as with the demo backends behind HAProxy.
A server with ``maxconn`` takes at most that many requests; the dispatcher skips a
full server, and when every usable server is full the request waits in the proxy's
queue (HAProxy's backend queue, FIFO) until a slot frees: that wait is the proxy's
queue time, the rest its response time. Each
request's service demand is drawn up front and divided by the server's speed when it
starts. A server with an ``error_rate`` answers that share of its requests with a fast
error (``error_latency_ms``, without queueing: a failing dependency check); a server
that is ``down`` refuses connections until health checks (every 2 s, 3 failures to
mark it down, 2 successes to bring it back) take it out of rotation.

Everything is plain Python lists and a heap in one loop: a request costs a few
microseconds, so a 15-minute scenario runs in seconds (bench/run_sim.py measures it).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from veloflux.sim.dispatchers import Dispatcher, make_dispatcher
from veloflux.sim.scenario import Scenario, ServerGroup

CHECK_INTERVAL_S, FALL, RISE = 2.0, 3, 2
CONNECT_REFUSED_S = 0.0005


@dataclass
class ServerStats:
    """What a proxy can see of each server, cumulative, for strategies and sources."""

    requests: list[int]
    errors: list[int]  # 5xx answered by the server
    connect_errors: list[int]
    active: list[int]  # in service + queued at the server
    queued: list[int]
    busy_seconds: list[float]
    recent_latencies: list[list[float]]  # completions since the last tick, in order
    up: list[bool]  # as the health checks see it
    # With maxconn: each completion's wait in the proxy's queue (beside its latency).
    recent_waits: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class TickRecord:
    """One tick: when, the weights set, and what the strategy said about it."""

    time: float
    weights: tuple[int, ...]
    note: str = ""


@dataclass(frozen=True)
class RunResult:
    """Every request of one run (numpy arrays) and every tick."""

    arrival: np.ndarray
    latency: np.ndarray
    error: np.ndarray
    server: np.ndarray
    ticks: tuple[TickRecord, ...]
    names: tuple[str, ...]
    capacity: tuple[float, ...]  # requests/s each server completes at base speed
    concurrency: tuple[int, ...]
    busy_seconds: tuple[float, ...]  # slot-seconds each server spent serving
    requests_simulated: int
    wall_seconds: float = 0.0
    notes: dict[str, float] = field(default_factory=dict)


STATIC_WEIGHT = 100


def scaled(values: Sequence[float], top: int = STATIC_WEIGHT) -> list[int]:
    """Positive values as integer weights, the largest at ``top``, none below 1."""
    largest = max(values) if values else 0.0
    if largest <= 0:
        return [top] * len(values)
    return [max(1, round(top * v / largest)) for v in values]


class Strategy:
    """Sets weights every tick from what a proxy can see. ``start`` gives the weights
    before the first request; ``tick`` may return None to keep the current ones."""

    name = "static-equal"

    def start(self, scenario: Scenario, names: Sequence[str], dispatcher: str) -> list[int]:
        return [STATIC_WEIGHT] * len(names)

    def tick(self, now: float, stats: ServerStats) -> tuple[list[int] | None, str]:
        return None, ""

    def finish(self) -> dict[str, float]:
        """Figures about the strategy itself (the share of ticks in model mode...)."""
        return {}


def _service_times(scenario: Scenario, rng: np.random.Generator, n: int) -> np.ndarray:
    service = scenario.service
    mean = service.mean_ms / 1000.0
    if service.distribution == "exponential":
        return rng.exponential(mean, n)
    if service.distribution == "constant":
        return np.full(n, mean)
    if service.distribution == "lognormal":
        sigma2 = math.log(1 + service.scv)
        return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)
    alpha = 1 + math.sqrt(1 + 1 / service.scv)  # Pareto with this mean and scv
    scale = mean * (alpha - 1) / alpha
    return scale * (1 + rng.pareto(alpha, n))


def _arrivals(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrival times over the run; a pattern thins a faster process."""
    arrival = scenario.arrival
    base = arrival.rate_rps or (arrival.utilization or 0.0) * scenario.capacity_rps()
    duration = scenario.duration_s
    pattern = arrival.pattern

    def multiplier(t: np.ndarray) -> np.ndarray:
        if pattern is None:
            return np.ones_like(t)
        if pattern.ramp is not None:
            start, end = pattern.ramp
            return start + (end - start) * t / duration
        assert pattern.diurnal is not None
        amplitude = pattern.diurnal.get("amplitude", 0.0)
        return 1 + amplitude * np.sin(2 * np.pi * t / pattern.diurnal["period_s"])

    peak = base * (float(multiplier(np.linspace(0, duration, 1001)).max()) if pattern else 1.0)
    expected = peak * duration
    gaps = rng.exponential(1 / peak, int(expected + 6 * math.sqrt(expected) + 100))
    times = np.cumsum(gaps)
    while times[-1] < duration:  # very unlikely: draw more
        more = np.cumsum(rng.exponential(1 / peak, len(times))) + times[-1]
        times = np.concatenate([times, more])
    times = times[times < duration]
    if pattern is not None:
        times = times[rng.random(len(times)) < multiplier(times) / (peak / base)]
    return times


def simulate(
    scenario: Scenario,
    dispatcher: str,
    strategy: Strategy,
    seed: int | None = None,
    on_tick: Callable[[float, ServerStats], None] | None = None,
) -> RunResult:
    """One run of ``scenario`` (seed: the scenario's unless given)."""
    import time as wallclock

    began = wallclock.perf_counter()
    seed = scenario.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    servers = scenario.expanded()
    names = tuple(name for name, _ in servers)
    n = len(servers)
    arrivals = _arrivals(scenario, rng)
    count = len(arrivals)
    work = _service_times(scenario, rng, count).tolist()
    draws = rng.random(count).tolist()
    arrival_list = arrivals.tolist()
    concurrency = [g.concurrency for _, g in servers]
    speed = [g.speed for _, g in servers]
    error_rate = [0.0] * n
    error_latency = [0.0] * n
    refusing = [False] * n
    stats = ServerStats(
        requests=[0] * n,
        errors=[0] * n,
        connect_errors=[0] * n,
        active=[0] * n,
        queued=[0] * n,
        busy_seconds=[0.0] * n,
        recent_latencies=[[] for _ in range(n)],
        up=[True] * n,
        recent_waits=[[] for _ in range(n)],
    )
    active, busy_seconds, recent = stats.active, stats.busy_seconds, stats.recent_latencies
    waits = stats.recent_waits
    limit = [g.maxconn or 0 for _, g in servers]
    limited = any(limit)
    full = [False] * n
    backlog: deque[int] = deque()  # the proxy's queue (maxconn): requests by arrival
    started = list(arrivals.tolist()) if limited else []  # when each reached its server
    busy = [0] * n
    queues: list[deque[int]] = [deque() for _ in range(n)]
    chooser: Dispatcher = make_dispatcher(dispatcher, active, random.Random(seed))
    chooser.set_weights(strategy.start(scenario, names, dispatcher))
    latency = [math.nan] * count
    error = [False] * count
    assigned = [-1] * count
    timeline = _timeline(scenario, servers, np.random.default_rng([seed, 1]))
    ticks: list[TickRecord] = []
    heap: list[tuple[float, int, int]] = []  # (finish, request, server)
    completes = chooser.completed if chooser.name == "p2c_peak_ewma" else None
    sharing = [g.discipline == "ps" for _, g in servers]
    shared = _Sharing(n)

    def share_advance(s: int, now: float) -> None:
        """Bring server ``s``'s attained-service clock up to ``now``."""
        in_service = len(shared.jobs[s])
        if in_service:
            elapsed = now - shared.since[s]
            shared.attained[s] += elapsed * speed[s] * min(1.0, concurrency[s] / in_service)
            busy_seconds[s] += elapsed * min(in_service, concurrency[s])
        shared.since[s] = now

    def share_schedule(s: int, now: float) -> None:
        """Put server ``s``'s next completion in the heap (earlier entries go stale)."""
        jobs = shared.jobs[s]
        if not jobs:
            shared.due[s] = -1
            return
        done_at, ri = jobs[0]
        rate = speed[s] * min(1.0, concurrency[s] / len(jobs))
        finish = now + max(done_at - shared.attained[s], 0.0) / rate
        shared.due[s], shared.due_at[s] = ri, finish
        heapq.heappush(heap, (finish, ri, s))

    def admit(ri: int, s: int, now: float) -> None:
        """Request ``ri`` reaches server ``s`` at ``now``: refused, failed fast, or taken
        (in service, or in the server's own queue)."""
        assigned[ri] = s
        if limited:
            started[ri] = now
        waited = now - arrival_list[ri]
        if refusing[s]:
            latency[ri], error[ri] = waited + CONNECT_REFUSED_S, True
            stats.connect_errors[s] += 1
            return
        rate = error_rate[s]
        if rate and draws[ri] < rate:
            latency[ri], error[ri] = waited + error_latency[s], True
            stats.requests[s] += 1
            stats.errors[s] += 1
            recent[s].append(waited + error_latency[s])
            if limited:
                waits[s].append(waited)
            return
        active[s] += 1
        if limited:
            full[s] = 0 < limit[s] <= active[s]
        if sharing[s]:
            share_advance(s, now)
            heapq.heappush(shared.jobs[s], (shared.attained[s] + work[ri], ri))
            share_schedule(s, now)
        elif busy[s] < concurrency[s]:
            busy[s] += 1
            duration = work[ri] / speed[s]
            busy_seconds[s] += duration
            heapq.heappush(heap, (now + duration, ri, s))
        else:
            queues[s].append(ri)
            stats.queued[s] += 1

    ai = ei = 0
    inf = math.inf
    while True:
        t_arrival = arrival_list[ai] if ai < count else inf
        t_done = heap[0][0] if heap else inf
        t_event = timeline[ei][0] if ei < len(timeline) else inf
        if t_event <= t_arrival and t_event <= t_done:
            if t_event == inf:
                break
            _, kind, s, value = timeline[ei]
            ei += 1
            if kind == "tick":
                if on_tick is not None:
                    on_tick(t_event, stats)
                weights, note = strategy.tick(t_event, stats)
                if weights is not None:
                    chooser.set_weights(weights)
                ticks.append(TickRecord(t_event, tuple(chooser.weights), note))
                for lat in recent:
                    lat.clear()
                for wait in waits:
                    wait.clear()
                while backlog and (opened := chooser.choose_open(full)) is not None:
                    admit(backlog.popleft(), opened, t_event)
            elif kind == "speed":
                if sharing[s]:
                    share_advance(s, t_event)
                    speed[s] = value
                    share_schedule(s, t_event)
                else:
                    speed[s] = value
            elif kind == "error_rate":
                error_rate[s] = value
            elif kind == "error_latency":
                error_latency[s] = value
            elif kind == "refusing":
                refusing[s] = bool(value)
            elif kind == "checked_up":
                stats.up[s] = bool(value)
                chooser.set_up(s, bool(value))
                while backlog and (opened := chooser.choose_open(full)) is not None:
                    admit(backlog.popleft(), opened, t_event)
            continue
        if t_done <= t_arrival:
            finish, ri, s = heapq.heappop(heap)
            if sharing[s]:
                if ri != shared.due[s] or finish != shared.due_at[s]:
                    continue  # superseded by a later arrival or departure
                share_advance(s, finish)
                heapq.heappop(shared.jobs[s])
                share_schedule(s, finish)
            taken = finish - arrival_list[ri]
            latency[ri] = taken
            recent[s].append(taken)
            stats.requests[s] += 1
            active[s] -= 1
            if completes is not None:
                completes(s, taken, finish)
            if limited:
                waits[s].append(started[ri] - arrival_list[ri])
            if not sharing[s]:
                if queues[s]:
                    nxt = queues[s].popleft()
                    stats.queued[s] -= 1
                    duration = work[nxt] / speed[s]
                    busy_seconds[s] += duration
                    heapq.heappush(heap, (finish + duration, nxt, s))
                else:
                    busy[s] -= 1
            if limited:
                full[s] = 0 < limit[s] <= active[s]
                # The freed slot takes the oldest request waiting in the proxy.
                while backlog and not full[s] and s in chooser.usable_set:
                    admit(backlog.popleft(), s, finish)
            continue
        # An arrival.
        ri = ai
        ai += 1
        if limited:
            chosen = chooser.choose_open(full)
            if chosen is None:
                backlog.append(ri)
                continue
            admit(ri, chosen, t_arrival)
        else:
            admit(ri, chooser.choose(), t_arrival)
    per_slot = 1000.0 / scenario.service.mean_ms
    return RunResult(
        arrival=arrivals,
        latency=np.asarray(latency),
        error=np.asarray(error),
        server=np.asarray(assigned),
        ticks=tuple(ticks),
        names=names,
        capacity=tuple(g.concurrency * g.speed * per_slot for _, g in servers),
        concurrency=tuple(concurrency),
        busy_seconds=tuple(busy_seconds),
        requests_simulated=count,
        wall_seconds=wallclock.perf_counter() - began,
        notes=strategy.finish(),
    )


class _Sharing:
    """Processor-sharing state per server: requests in service by the attained service
    at which each finishes, the clock of attained service and when it was last brought
    up to date, and the completion the event heap holds for the server."""

    def __init__(self, n: int) -> None:
        self.jobs: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        self.attained = [0.0] * n
        self.since = [0.0] * n
        self.due = [-1] * n
        self.due_at = [0.0] * n


def _timeline(
    scenario: Scenario, servers: Sequence[tuple[str, ServerGroup]], rng: np.random.Generator
) -> list[tuple[float, str, int, float]]:
    """Ticks and server events in time order (a tick before an event at the same time);
    drift's switches drawn from ``rng``."""
    out: list[tuple[float, int, str, int, float]] = []
    ticks = int(scenario.duration_s // scenario.interval_s)
    out += [(k * scenario.interval_s, 0, "tick", -1, 0.0) for k in range(1, ticks + 1)]
    for s, (_, group) in enumerate(servers):
        base_speed = group.speed
        drift = group.drift
        if drift is not None:
            at, slow = drift.from_s + rng.exponential(drift.period_s), True
            while at < scenario.duration_s:
                out.append((at, 1, "speed", s, base_speed * (drift.speed if slow else 1.0)))
                at, slow = at + rng.exponential(drift.period_s), not slow
        for event in group.events:
            if event.speed is not None:
                out += [
                    (event.at_s, 1, "speed", s, base_speed * event.speed),
                    (event.until_s, 1, "speed", s, base_speed),
                ]
            if event.error_rate is not None:
                out += [
                    (event.at_s, 1, "error_latency", s, event.error_latency_ms / 1000.0),
                    (event.at_s, 2, "error_rate", s, event.error_rate),
                    (event.until_s, 1, "error_rate", s, 0.0),
                ]
            if event.down:
                down_seen = event.at_s + CHECK_INTERVAL_S * FALL
                up_seen = event.until_s + CHECK_INTERVAL_S * RISE
                out += [
                    (event.at_s, 1, "refusing", s, 1.0),
                    (event.until_s, 1, "refusing", s, 0.0),
                ]
                if down_seen < event.until_s:
                    out += [
                        (down_seen, 1, "checked_up", s, 0.0),
                        (up_seen, 1, "checked_up", s, 1.0),
                    ]
    out.sort(key=lambda e: (e[0], e[1]))
    return [(t, kind, s, value) for t, _, kind, s, value in out]
