"""The capacity rung's state across ticks: each server's capacity, health and the
pool's load, turned into one immutable ``PoolCapacity`` per pool every tick.

The rung needs no model and no training: it runs from the second tick on whenever a
utilization signal reaches the agent. It remembers the previous observation (to turn
counters into intervals), a ``CapacityEstimator`` per pool, and a short window of each
server's errors and each pool's offered load. Health discounts a server by its recent
error ratio (over the window, or the newest interval's when that is clearly higher),
``(1 - errors)^exponent``, so that a server failing requests fast (which
frees its slots and, under least-connections, draws more traffic) is given less: the
outlier guard's error cut, as a continuous factor, but never so deep that the load it
moves puts the other servers past ``MAX_HEALTHY_UTILIZATION``. Overload compares the
load offered to the pool with its estimated capacity, with hysteresis so that a pool
hovering at the threshold does not flap between splitting and holding.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from veloflux.config.schema import Config
from veloflux.decide.capacity import CapacityEstimator, CapacitySettings, Interval
from veloflux.decide.controller import ControllerSettings
from veloflux.decide.utilization import Work, has_signal, interval_work, utilization_column
from veloflux.domain.advice import PoolCapacity, ServerCapacity
from veloflux.domain.observation import Observation

# How many intervals the health factor and the overload test look back over.
RECENT_INTERVALS = 3
# A server's backlog beyond the pool's typical is drained over this many intervals.
DRAIN_INTERVALS = 3
# However deep the backlog, a server keeps this share of its capacity's traffic.
MIN_DRAIN = 0.1
# A health cut moves a failing server's load onto the others: never past this
# utilization of theirs (here at the weights the controller converges to;
# ``targets.headroom_limits`` on the way there).
MAX_HEALTHY_UTILIZATION = 0.9
# Overload ends only once the offered load is this far below the threshold.
OVERLOAD_HYSTERESIS = 0.07
# Persistence is measured over this many recent intervals per server, and trusted
# from this many pairs of consecutive deviations across the pool.
PERSISTENCE_INTERVALS = 30
MIN_PERSISTENCE_PAIRS = 20


@dataclass(frozen=True)
class RungSettings:
    """The capacity rung's knobs (``capacity`` in the config)."""

    utilization_column: str | None
    enabled: bool = True
    error_exponent: float = 6.0
    overload_utilization: float = 0.97
    estimator: CapacitySettings = field(default_factory=CapacitySettings)
    drain_seconds: float = 30.0  # a backlog beyond the pool's typical drains over this

    @classmethod
    def from_config(cls, config: Config) -> RungSettings:
        """The one place the rung's knobs are read from a config. Estimates expire
        after three minutes, or six intervals when ticks are slower than 30 s."""
        section = config.capacity
        feature = section.utilization_feature if section.enabled else None
        return cls(
            utilization_column=utilization_column(feature),
            enabled=section.enabled,
            error_exponent=section.error_exponent,
            overload_utilization=section.overload_utilization,
            estimator=CapacitySettings(max_age_seconds=max(180.0, 6 * config.interval_seconds)),
            drain_seconds=DRAIN_INTERVALS * config.interval_seconds,
        )


def controller_settings(config: Config) -> ControllerSettings:
    """The damped controller's gain and deadband, from ``capacity`` in the config."""
    return ControllerSettings(config.capacity.gain, config.capacity.deadband_errors)


@dataclass
class _Pool:
    estimator: CapacityEstimator
    errors: dict[str, deque[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=RECENT_INTERVALS))
    )
    offered: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=RECENT_INTERVALS)
    )
    # The pool's failed requests over the same intervals: the headroom limit counts
    # them as load (moved off a failing server, they become work for the others).
    failed: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=RECENT_INTERVALS)
    )
    # Each server's recent deviations of an interval's ratio from its estimate (relative).
    deviations: dict[str, deque[float]] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=PERSISTENCE_INTERVALS))
    )
    overloaded: bool = False
    backlogs: dict[str, float] = field(default_factory=dict)  # last tick's excess work


class CapacityRung:
    """Feed it every observation of one proxy (``update``); it answers per pool."""

    def __init__(self, settings: RungSettings) -> None:
        self._settings = settings
        self._previous: Observation | None = None
        self._pools: dict[str, _Pool] = {}

    @property
    def active(self) -> bool:
        """Whether the rung is on (it still needs a busy signal to estimate anything)."""
        return self._settings.enabled

    def has_signal(self, observation: Observation) -> bool:
        """Whether any pool of ``observation`` carries a busy signal the rung reads."""
        column = self._settings.utilization_column
        return self.active and any(
            has_signal(observation, column, p.name) for p in observation.pools
        )

    @property
    def memory_intervals(self) -> int:
        """How many past intervals its estimates can rest on (what to replay)."""
        return self._settings.estimator.window_intervals

    def update(self, observation: Observation) -> dict[str, PoolCapacity]:
        """Fold in one observation; the capacity view of every pool it holds that
        carries a busy signal (a utilization feature, or session limits); none when the
        rung is off."""
        if not self._settings.enabled:
            return {}
        previous, self._previous = self._previous, observation
        column = self._settings.utilization_column
        # Pools no busy signal has ever reached have nothing to estimate: with none
        # left, the tick pays nothing here (the default config, without one).
        pools = [
            info.name
            for info in observation.pools
            if info.name in self._pools or has_signal(observation, column, info.name)
        ]
        if not pools:
            return {}
        work = interval_work(previous, observation, column) if previous is not None else {}
        now = observation.taken_at.timestamp()
        by_pool: dict[str, dict[str, Work]] = defaultdict(dict)
        for (pool, server), w in work.items():
            by_pool[pool][server] = w
        views = {}
        for name in pools:
            state = self._pools.setdefault(name, _Pool(CapacityEstimator(self._settings.estimator)))
            views[name] = self._view(state, observation, name, by_pool[name], now)
        return views

    def _view(
        self,
        state: _Pool,
        observation: Observation,
        pool: str,
        work: dict[str, Work],
        now: float,
    ) -> PoolCapacity:
        for server, w in work.items():
            if w.busy_seconds is not None:
                interval = Interval(now, w.completions, w.busy_seconds, w.resolution)
                state.estimator.observe(server, interval)
            state.errors[server].append((w.errors, w.completions + w.errors))
        # One estimate per server per tick (a ratio of sums over its window), used for
        # both the deviation it records and the view.
        estimates = {
            row.server: state.estimator.estimate(row.server, now)
            for row in observation.servers_of(pool)
        }
        for server, w in work.items():
            if w.busy_seconds is not None and server in estimates:
                _deviation(state, server, w, estimates[server].capacity)
        persistence = _persistence(state.deviations.values())
        if work:
            state.offered.append((sum(w.offered for w in work.values()), _seconds(work)))
            state.failed.append((sum(w.errors for w in work.values()), _seconds(work)))
        servers = {}
        for row in observation.servers_of(pool):
            estimate = estimates[row.server]
            relative = (
                estimate.stderr / estimate.capacity
                if estimate.capacity and estimate.stderr is not None
                else 1.0
            )
            error_rate = _error_rate(state.errors.get(row.server, ()))
            health = (1.0 - error_rate) ** self._settings.error_exponent
            capacity = estimate.capacity
            recent = state.deviations.get(row.server)
            if capacity and recent and row.server in work:
                capacity *= _carried(persistence, recent[-1])
            servers[row.server] = ServerCapacity(
                row.server,
                capacity,
                relative,
                estimate.confidence,
                health,
                estimate.reason,
                estimate.fell,
                error_rate,
                estimate.capacity,
                saturated=row.server in work and work[row.server].saturated,
            )
        servers = _with_drain(
            servers, observation, pool, self._settings.drain_seconds, state.backlogs
        )
        offered, total, overload = self._overload(state, observation, pool, servers)
        seconds = sum(s for _, s in state.failed)
        failed = sum(f for f, _ in state.failed) / seconds if seconds > 0 else 0.0
        demand = offered + failed if offered is not None else None
        servers = _within_headroom(servers, observation, pool, demand)
        return PoolCapacity(servers, offered, total, overload, demand)

    def _overload(
        self,
        state: _Pool,
        observation: Observation,
        pool: str,
        servers: dict[str, ServerCapacity],
    ) -> tuple[float | None, float | None, str]:
        """The pool's offered load and capacity (req/s), and why it is overloaded."""
        seconds = sum(s for _, s in state.offered)
        offered = sum(o for o, _ in state.offered) / seconds if seconds > 0 else None
        serving = [
            r.server for r in observation.servers_of(pool) if r.state == "UP" and not r.backup
        ]
        known = [servers[s].long_run for s in serving if servers[s].long_run]
        if offered is None or not serving or len(known) < len(serving):
            state.overloaded = False  # no judgement without every server's estimate
            return offered, None, ""
        total = float(sum(c for c in known if c is not None))
        threshold = self._settings.overload_utilization
        if state.overloaded:
            state.overloaded = offered >= (threshold - OVERLOAD_HYSTERESIS) * total
        else:
            state.overloaded = offered >= threshold * total
        if not state.overloaded:
            return offered, total, ""
        return (
            offered,
            total,
            f"overload: {offered:.1f} req/s offered, {offered / total:.0%} of the pool's "
            f"estimated capacity ({total:.1f} req/s); no split helps, static weights held "
            "(bound the queue with HAProxy's timeout queue / maxconn)",
        )


def _deviation(state: _Pool, server: str, work: Work, estimate: float | None) -> None:
    """Record how far this interval's ratio fell from the server's estimate."""
    if estimate and work.busy_seconds:
        state.deviations[server].append(work.completions / work.busy_seconds / estimate - 1.0)


# The next interval's predicted capacity stays within this factor of the window's
# estimate, whatever one interval showed: a signal averaged over a longer span than
# the tick (Prometheus's rate window) can make one interval's ratio far off.
MAX_CARRY = 2.0


def _carried(persistence: float, deviation: float) -> float:
    """The factor the latest deviation carries into the next interval's estimate."""
    return min(MAX_CARRY, max(1.0 / MAX_CARRY, 1.0 + persistence * deviation))


def _persistence(series: Iterable[deque[float]]) -> float:
    """How much of an interval's deviation from the estimate carries over to the next:
    the pool's lag-1 autocorrelation of deviations, in [0, 0.95] (0 below enough data).

    Capacity that drifts for minutes is best predicted by where it is now; capacity
    that flickers faster than a tick, or noise, by its long-run mean. Measured, this
    chooses between the two (and everything between), and counting noise, which does
    not carry over, pulls it toward the mean by itself.
    """
    lagged = 0.0
    energy = 0.0
    pairs = 0
    for deviations in series:
        values = list(deviations)
        for before, after in itertools.pairwise(values):
            lagged += before * after
            energy += before * before
            pairs += 1
    if pairs < MIN_PERSISTENCE_PAIRS or energy <= 0:
        return 0.0
    return min(0.95, max(0.0, lagged / energy))


def _with_drain(
    servers: dict[str, ServerCapacity],
    observation: Observation,
    pool: str,
    drain_seconds: float,
    previous: dict[str, float],
) -> dict[str, ServerCapacity]:
    """Each server's backlog, and the factor that drains it.

    Weights proportional to capacity keep every server's queue where it is: a server
    that built a backlog (before its capacity was known, or when it fell) keeps it,
    and at a high utilization, its little headroom takes minutes to drain it. So a
    server holding more work than the pool's typical (in flight / capacity, in
    seconds of its own work, against the pool's median) is given less than its
    capacity until the excess is gone: ``1 - excess / drain_seconds``, at least
    ``MIN_DRAIN``. The others take the difference, within their headroom. Only the
    part of the excess that was there at the previous tick too counts (``previous``,
    updated here): a queue that a server whose speed flickers builds and clears
    within one interval is noise to the tick, not a backlog to drain.
    """
    work = {}
    for row in observation.servers_of(pool):
        estimate = servers.get(row.server)
        in_flight = (row.sessions if math.isfinite(row.sessions) else math.nan) + (
            row.queue if math.isfinite(row.queue) else 0.0
        )
        if estimate is not None and estimate.capacity and math.isfinite(in_flight):
            work[row.server] = in_flight / estimate.capacity
    if len(work) < 2 or drain_seconds <= 0:
        return servers
    typical = statistics.median(work.values())
    out = dict(servers)
    latest = {name: max(0.0, seconds - typical) for name, seconds in work.items()}
    persisting = {name: min(value, previous.get(name, 0.0)) for name, value in latest.items()}
    previous.clear()
    previous.update(latest)
    for name, excess in persisting.items():
        if excess > 0:
            factor = max(MIN_DRAIN, 1.0 - excess / drain_seconds)
            out[name] = out[name]._replace(backlog_seconds=excess, drain=factor)
    return out


def _within_headroom(
    servers: dict[str, ServerCapacity], observation: Observation, pool: str, demand: float | None
) -> dict[str, ServerCapacity]:
    """Health factors softened as far as the other servers' headroom needs.

    Weights proportional to capacity x health put every healthy server at utilization
    load / sum(capacity x health), the load being the share of the pool's ``demand``
    (requests/s offered, failed ones included: moved off a failing server they are work
    for the others) that the servers with an estimate carry (a server without one keeps
    its weight, and so its share). In a busy pool a deep cut of a failing server would
    push that toward 1, where every request the healthy servers carry waits in a queue
    that grows as 1 / (1 - u), to spare the failing server's share its errors (on real
    HAProxy's gray phase under round robin, the cut server's load went to a server near
    its capacity while another's recovery was not yet trusted). So each cut health h
    becomes h^beta, beta the largest in [0, 1] that keeps the healthy servers at
    ``MAX_HEALTHY_UTILIZATION`` (0: no cut at all, when even that is past it).
    """
    rows = [r for r in observation.servers_of(pool) if r.state == "UP" and not r.backup]
    known = [servers[r.server] for r in rows if r.server in servers and servers[r.server].capacity]
    if not demand or not known or all(c.health >= 1.0 for c in known):
        return servers
    weights = {r.server: r.weight for r in rows}
    total = sum(weights.values())
    if not (math.isfinite(total) and total > 0):  # a weight unknown, or all 0
        return servers
    load = demand * sum(weights[c.server] for c in known) / total

    def peak(beta: float) -> float:
        return load / sum((c.capacity or 0.0) * float(c.health**beta) for c in known)

    if peak(1.0) <= MAX_HEALTHY_UTILIZATION:
        return servers
    low, high = 0.0, 1.0
    if peak(0.0) < MAX_HEALTHY_UTILIZATION:
        for _ in range(30):  # peak rises with beta: the largest beta within the bound
            middle = (low + high) / 2
            low, high = (middle, high) if peak(middle) <= MAX_HEALTHY_UTILIZATION else (low, middle)
    out = dict(servers)
    for c in known:
        if c.health < 1.0:
            out[c.server] = c._replace(health=float(c.health**low), health_limited=True)
    return out


def _seconds(work: dict[str, Work]) -> float:
    return max(w.seconds for w in work.values())


def _ratio(window: deque[tuple[float, float]] | tuple[()]) -> float:
    failed = sum(e for e, _ in window)
    total = sum(t for _, t in window)
    return failed / total if total > 0 else 0.0


# How many standard errors below an interval's own error rate its lower bound lies.
NEWEST_ERROR_BOUND_SIGMAS = 2.0


def _error_rate(window: deque[tuple[float, float]] | tuple[()]) -> float:
    """A server's recent error rate: over the window, or the newest interval's lower
    bound when that is higher.

    Errors that start mid-window were diluted by the clean intervals before them, and
    the health cut followed one interval at a time while the server failed a third of
    its requests (bad news first). The newest interval alone counts only as far as
    its counts bear out: its rate less two binomial standard errors, so a few
    failures among a handful of requests do not cut a healthy server.
    """
    overall = _ratio(window)
    if not window:
        return overall
    failed, total = window[-1]
    if total <= 0:
        return overall
    rate = failed / total
    bound = rate - NEWEST_ERROR_BOUND_SIGMAS * math.sqrt(rate * (1.0 - rate) / total)
    return max(overall, bound)
