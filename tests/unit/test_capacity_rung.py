"""The capacity rung end to end: what a server did between two readings
(``interval_work``), what the rung makes of many readings of servers whose capacity
the test knows (``CapacityRung``), and what the planner does with it (``plan_weights``
on the capacity rung, overload, and a cut that survives every change of rung).

Each test's docstring names the break it catches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.unit.factories import PROXY, Pool, Server, observation, policy, row
from tests.unit.learning_factories import (
    StepClock,
    synthetic_features,
    synthetic_observation,
    synthetic_raw,
    train_small,
)
from veloflux.agent.ladder import Ladder
from veloflux.config.load import validate_config
from veloflux.config.schema import AISection, OutlierSection
from veloflux.decide.advisor import AdvisorSettings, advise
from veloflux.decide.capacity_rung import (
    MAX_HEALTHY_UTILIZATION,
    OVERLOAD_HYSTERESIS,
    CapacityRung,
    RungSettings,
)
from veloflux.decide.controller import max_step
from veloflux.decide.planner import plan_weights
from veloflux.decide.targets import Row, headroom_limits
from veloflux.decide.tilt import headroom_bound
from veloflux.decide.utilization import Work, backlog_grew, interval_work
from veloflux.domain.advice import Advice, PoolAdvice, PoolCapacity, ServerAdvice, ServerCapacity
from veloflux.domain.observation import (
    COLUMN_NAMES,
    ExternalFeatures,
    Observation,
    PoolInfo,
    ServerRow,
)
from veloflux.domain.weightplan import PoolPlan, WeightPlan
from veloflux.model.predict import Predictor
from veloflux.model.registry import Registry
from veloflux.util.events import Events

POOL = "app"
UTILIZATION = "prom_utilization"  # the Observation column of a feature named utilization
START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
INTERVAL = 10.0  # seconds between readings
CAPACITY = {"small": 50.0, "mid": 100.0, "big": 200.0}  # requests per busy second
OUTLIER = "outlier: error rate 30% (pool median 0%)"

# --- readings ----------------------------------------------------------------------------


def reading(
    seconds: float,
    servers: Mapping[str, Mapping[str, Any]],
    utilization: Mapping[str, float] | None = None,
) -> Observation:
    """One reading of pool ``app`` at ``START + seconds``: each server's row with the
    given column values (the rest as ``factories.row`` has them), and each server's
    busy share in the utilization column (none without ``utilization``)."""
    taken_at = START + timedelta(seconds=seconds)
    rows = []
    for name, values in servers.items():
        record = row(POOL, "roundrobin", Server(name))
        record.update(time=taken_at, **values)
        rows.append(ServerRow(**{column: record[column] for column in COLUMN_NAMES}))
    external = None
    if utilization is not None:
        shares = tuple(utilization.get(name, math.nan) for name in servers)
        external = ExternalFeatures("prometheus", ((UTILIZATION, shares),))
    return Observation(
        taken_at, tuple(rows), (PoolInfo(POOL, "roundrobin", True),), PROXY, (), external
    )


class Fleet:
    """Servers of known capacity (successful completions per busy second), read every
    ``INTERVAL`` seconds. Each ``tick`` serves, per server, what its busy share allows:
    Poisson-noisy from a seeded generator, or exact with ``seed=None``. The readings
    show ``weights`` (static weight 10): set them to feed a plan back."""

    def __init__(self, capacity: Mapping[str, float], seed: int | None = 0) -> None:
        self.capacity = dict(capacity)
        self.rng = np.random.default_rng(seed) if seed is not None else None
        self.totals = {
            name: {"requests_total": 0.0, "responses_5xx_total": 0.0} for name in capacity
        }
        self.queues = dict.fromkeys(capacity, 0.0)
        self.ticks = 0
        self.weights = dict.fromkeys(capacity, 10)

    def tick(
        self,
        busy: float | Mapping[str, float] | None = None,
        fail: Mapping[str, float] | None = None,
        growth: float = 0.0,
    ) -> Observation:
        """The next reading. ``busy``: each server's busy share (None: drawn from
        0.3-0.9); ``fail``: the share of its requests a server fails; ``growth``: how
        much its queue grows, as a share of what its capacity serves in the interval
        (the load offered beyond what it completes)."""
        self.ticks += 1
        shares: dict[str, float] = {}
        for name, capacity in self.capacity.items():
            if busy is None:
                assert self.rng is not None
                share = float(self.rng.uniform(0.3, 0.9))
            else:
                share = float(busy) if isinstance(busy, int | float) else busy[name]
            shares[name] = share
            mean = capacity * share * INTERVAL
            failing = (fail or {}).get(name, 0.0)
            if self.rng is None:
                served, failed = float(round(mean)), float(round(mean * failing))
            else:
                served = float(self.rng.poisson(mean))
                failed = float(self.rng.binomial(int(served), failing))
            self.totals[name]["requests_total"] += served
            self.totals[name]["responses_5xx_total"] += failed
            self.queues[name] += growth * capacity * INTERVAL
        rows = {
            name: {
                **self.totals[name],
                "sessions_total": self.totals[name]["requests_total"],
                "queue": self.queues[name],
                "weight": float(self.weights[name]),
            }
            for name in self.capacity
        }
        return reading(self.ticks * INTERVAL, rows, shares)


def rung(column: str | None = UTILIZATION, **settings: Any) -> CapacityRung:
    """A capacity rung reading ``column`` (None: no utilization signal)."""
    return CapacityRung(RungSettings(utilization_column=column, **settings))


def run(fleet: Fleet, the_rung: CapacityRung, ticks: int, **tick: Any) -> PoolCapacity:
    """Feed ``ticks`` readings of ``fleet``; the rung's last view of the pool."""
    view = None
    for _ in range(ticks):
        view = the_rung.update(fleet.tick(**tick))[POOL]
    assert view is not None
    return view


def run_views(fleet: Fleet, the_rung: CapacityRung, ticks: int) -> list[dict[str, PoolCapacity]]:
    """Every view of ``ticks`` readings, all pools."""
    return [the_rung.update(fleet.tick()) for _ in range(ticks)]


def capacity_view(
    capacities: Mapping[str, float | None],
    relative_error: float = 0.0,
    overload: str = "",
    **changes: ServerCapacity,
) -> PoolCapacity:
    """A pool's capacity view by hand: every named server confident at its capacity
    (none: no estimate yet), unless ``changes`` gives its ``ServerCapacity``."""
    servers = {
        name: ServerCapacity(
            name,
            capacity,
            relative_error,
            1.0 if capacity else 0.0,
            reason="" if capacity else "no busy interval yet",
            long_run=capacity,
        )
        for name, capacity in capacities.items()
    }
    servers.update(changes)
    total = sum(c.long_run or 0.0 for c in servers.values())
    return PoolCapacity(servers, 0.5 * total, total, overload)


def on_rung(
    view: PoolCapacity | None,
    outliers: Mapping[str, str] | None = None,
    blocked: str = "no model",
    shares: Mapping[str, float | None] | None = None,
    tilt: Mapping[str, float] | None = None,
) -> Advice:
    """Advice for pool ``app``: the model blocked (as the agent's advice is without
    one) unless ``shares`` are given, the capacity ``view``, and outlier findings."""
    names = set(outliers or {}) | set(shares or {})
    servers = {
        name: ServerAdvice(
            name,
            0.9 if (shares or {}).get(name) is not None else 0.3,
            {"ood": 0.9 if (shares or {}).get(name) is not None else 0.3},
            (shares or {}).get(name),
            (outliers or {}).get(name, ""),
        )
        for name in names
    }
    version = "v1" if shares is not None else None
    pool = PoolAdvice(POOL, 0.9, blocked, servers, 100.0, capacity=view, tilt=tilt or {})
    return Advice(version, {POOL: pool})


def pool_at(weights: Mapping[str, int], static: int = 10) -> Observation:
    """Pool ``app`` with each server at its current weight, all of static weight 10."""
    return observation(
        [Pool(POOL, [Server(n, weight=w, initial=static) for n, w in weights.items()])]
    )


def planned(plan: WeightPlan) -> dict[str, int]:
    out = {}
    for s in plan.servers():
        assert s.planned_weight is not None
        out[s.server] = s.planned_weight
    return out


def the_pool(plan: WeightPlan) -> PoolPlan:
    (pool,) = plan.pools
    return pool


def goals(capacities: Mapping[str, float], budget: float) -> dict[str, float]:
    """Capacity-proportional weights summing to ``budget``."""
    total = sum(capacities.values())
    return {name: c / total * budget for name, c in capacities.items()}


# Three servers of static weight 10 are scaled x10 on the capacity rung: 300 to share.
BUDGET = 300.0
EVEN = {"small": 100, "mid": 100, "big": 100}

# --- interval_work -------------------------------------------------------------------------


def counters(**values: Any) -> dict[str, Any]:
    """One row's counters: 100 requests, 10 of them 5xx, 2 refused, 2 in session, 1 queued."""
    base = {
        "requests_total": 100.0,
        "responses_5xx_total": 10.0,
        "connect_errors_total": 2.0,
        "sessions": 2.0,
        "queue": 1.0,
    }
    return {**base, **values}


LATER = counters(
    requests_total=160.0,
    responses_5xx_total=15.0,
    connect_errors_total=5.0,
    sessions=5.0,
    queue=4.0,
)


def work_of(before: Mapping[str, Any], after: Mapping[str, Any], share: float = 0.4) -> Work | None:
    """Server s1's Work between a reading of ``before`` and one 10 s later of ``after``."""
    found = interval_work(
        reading(0.0, {"s1": before}, {"s1": share}),
        reading(INTERVAL, {"s1": after}, {"s1": share}),
        UTILIZATION,
    )
    return found.get((POOL, "s1"))


def test_interval_work_counts_completions_errors_offered_and_busy_time() -> None:
    """Catches completions that keep the 5xx in, errors without refused connections,
    offered load that ignores what is still in flight, or busy time not utilization x
    the interval."""
    work = work_of(counters(), LATER)
    assert work is not None
    assert work.busy_seconds == pytest.approx(4.0)  # 0.4 x 10 s
    assert work == Work(
        completions=55.0,  # 60 requests, 5 of them 5xx
        errors=8.0,  # 5 5xx + 3 refused connections
        offered=61.0,  # 55 completed + in flight up from 3 to 9
        busy_seconds=work.busy_seconds,
        seconds=10.0,
    )


def test_a_backlog_that_grows_reads_as_a_saturated_interval() -> None:
    """Catches a saturated server's busy share taken from a lagging signal: in flight up
    from 3 to 64 over the interval means it served all it could, so it was busy all
    10 s, whatever the scraped share (still 0.4, from before it slowed) says."""
    work = work_of(counters(), {**LATER, "sessions": 60.0})
    assert work is not None
    assert work.saturated
    assert work.busy_seconds == pytest.approx(INTERVAL)
    assert work.offered == pytest.approx(55.0 + 64.0 - 3.0)


def test_a_stable_servers_swing_is_not_saturation() -> None:
    """Catches a saturation test that reads a busy server's ordinary swing as a
    backlog: in flight at two instants of a single-slot server at utilization 0.9
    (geometric, mean 9: the widest a stable server's queue is) is flagged in under
    1% of intervals, while a server four times slower than its load (in flight up by
    40 in a second from a mean of 2.4) is flagged."""
    rng = np.random.default_rng(7)
    u = 0.9
    draws = rng.geometric(1.0 - u, size=(20_000, 2)) - 1.0  # P(n) = (1 - u) u^n
    flagged = backlog_grew(draws[:, 0], draws[:, 1], np.full(len(draws), u / (1.0 - u)))
    assert flagged.mean() < 0.01
    # Slowed fourfold; a rise of six (ordinary); a reading unknown before or after.
    before = np.array([3.0, 3.0, math.nan, 3.0])
    after = np.array([43.0, 9.0, 60.0, math.nan])
    expected = np.array([2.4, 2.4, math.nan, 2.4])
    assert backlog_grew(before, after, expected).tolist() == [True, False, False, False]


def test_a_busy_share_above_one_is_clipped_to_the_whole_interval() -> None:
    """Catches a utilization above 1 (a host's sum of cores, a rate window's overshoot)
    giving more busy seconds than the interval has."""
    work = work_of(counters(), LATER, share=1.7)
    assert work is not None
    assert work.busy_seconds == pytest.approx(INTERVAL)


def littles_law_work(before: Mapping[str, Any], after: Mapping[str, Any]) -> Work | None:
    """Server s1's Work between two readings 10 s apart, with no utilization column."""
    found = interval_work(reading(0.0, {"s1": before}), reading(INTERVAL, {"s1": after}), None)
    return found.get((POOL, "s1"))


def test_with_maxconn_busy_time_is_requests_times_response_time_over_the_limit() -> None:
    """Catches Little's law off by the limit, by the moving average (600 requests, past
    HAProxy's 512, so the interval's mean is what moved the average), or computed
    from the queue time."""
    limit = {"max_sessions": 4.0, "queue_time": 0.5}
    before = counters(requests_total=10_000.0, response_time=0.010, **limit)
    after = counters(requests_total=10_600.0, responses_5xx_total=10.0, **limit)
    a = 1.0 - 1.0 / 512
    after["response_time"] = 0.020 + (0.010 - 0.020) * a**600  # 600 requests of 20 ms
    work = littles_law_work(before, after)
    assert work is not None
    assert work.busy_seconds == pytest.approx(600 * 0.020 / 4.0, rel=1e-6)  # 3 s of 10
    assert work.completions == 600.0
    assert 0 < work.resolution < 0.05  # half a shown millisecond of a 20 ms mean


@pytest.mark.parametrize(
    "after",
    [
        {"max_sessions": math.nan},  # no maxconn: slim is empty
        {"max_sessions": 4.0, "response_time": 0.0},  # TCP mode: HAProxy's rtime is 0
        {"max_sessions": 4.0, "requests_total": 10_000.0},  # no request: no Tr
    ],
)
def test_without_a_limit_or_a_response_time_littles_law_gives_nothing(
    after: dict[str, Any],
) -> None:
    """Catches a busy time invented where HAProxy shows no limit or no Tr."""
    before = counters(requests_total=10_000.0, response_time=0.010, max_sessions=4.0)
    later = counters(**{"requests_total": 10_600.0, "response_time": 0.012, **after})
    work = littles_law_work(before, later)
    assert work is not None
    assert work.busy_seconds is None


def test_offered_load_is_never_negative_when_the_queue_drains() -> None:
    """Catches offered = completions + a drained queue going below zero."""
    work = work_of(counters(queue=500.0), LATER)
    assert work is not None
    assert work.offered == 0.0


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (counters(), {**LATER, "problem": "rtime='x' is not a number"}),
        (counters(problem="stot is not a number"), LATER),
        (counters(), {**LATER, "state": "DOWN"}),
        (counters(state="MAINT"), LATER),
        (counters(), {**LATER, "state": "DRAIN"}),
        (counters(), {**LATER, "requests_total": 40.0}),  # a reload reset the counter
        (counters(), {**LATER, "responses_5xx_total": 3.0}),
        (counters(), {**LATER, "requests_total": math.nan}),
        (counters(responses_5xx_total=math.nan), LATER),
    ],
    ids=[
        "problem-now",
        "problem-before",
        "down",
        "maint-before",
        "drain",
        "requests-back",
        "5xx-back",
        "requests-nan",
        "5xx-nan-before",
    ],
)
def test_an_untrustworthy_row_gives_no_interval(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    """Catches a problem, a state other than UP (on either side), a counter gone back
    after a reload or a missing counter turned into an interval: a gap, not a lie."""
    assert work_of(before, after) is None


def test_a_server_missing_from_the_previous_reading_gives_no_interval() -> None:
    """Catches a new server's whole counter taken as one interval's work."""
    found = interval_work(
        reading(0.0, {"s1": counters()}, {"s1": 0.4}),
        reading(INTERVAL, {"s1": LATER, "s2": LATER}, {"s1": 0.4, "s2": 0.4}),
        UTILIZATION,
    )
    assert set(found) == {(POOL, "s1")}


@pytest.mark.parametrize("share", [math.nan, -0.2])
def test_a_missing_or_negative_busy_share_gives_no_busy_time(share: float) -> None:
    """Catches NaN or a negative reading becoming busy seconds (and so a capacity)."""
    work = work_of(counters(), LATER, share=share)
    assert work is not None
    assert work.busy_seconds is None
    assert work.completions == 55.0


def test_without_a_utilization_column_there_is_work_but_no_busy_time() -> None:
    """Catches a missing signal read as zero (or as full) busy time."""
    before = reading(0.0, {"s1": counters()})
    after = reading(INTERVAL, {"s1": LATER})
    for column in (None, UTILIZATION):
        work = interval_work(before, after, column)[(POOL, "s1")]
        assert work.busy_seconds is None
        assert work.completions == 55.0


def test_readings_out_of_order_give_nothing() -> None:
    """Catches a negative or zero interval length turned into rates."""
    first = reading(INTERVAL, {"s1": counters()}, {"s1": 0.4})
    second = reading(INTERVAL, {"s1": LATER}, {"s1": 0.4})
    assert interval_work(first, second, UTILIZATION) == {}
    assert interval_work(second, reading(0.0, {"s1": LATER}, {"s1": 0.4}), UTILIZATION) == {}


# --- CapacityRung on servers of known capacity ------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rung_recovers_each_known_capacity_within_ten_percent(seed: int) -> None:
    """Catches a capacity measured on requests instead of busy seconds, on the wrong
    server's utilization, or never becoming confident."""
    view = run(Fleet(CAPACITY, seed), rung(), 20)
    for name, capacity in CAPACITY.items():
        estimate = view.servers[name]
        assert estimate.capacity == pytest.approx(capacity, rel=0.1), name
        assert estimate.long_run == pytest.approx(capacity, rel=0.1), name
        assert estimate.confidence > 0.5, name
        assert estimate.health == 1.0
    assert sorted(view.confident()) == sorted(CAPACITY)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_capacity_that_drops_to_a_quarter_is_found_within_two_ticks(seed: int) -> None:
    """Catches a drop that waits for the window to forget (tens of ticks), or a rung
    that never passes the estimator's finding on (``fell``)."""
    fleet, the_rung = Fleet(CAPACITY, seed), rung()
    run(fleet, the_rung, 20)
    fleet.capacity["big"] = 50.0
    found = []
    for _ in range(2):
        big = the_rung.update(fleet.tick())[POOL].servers["big"]
        found.append(big.fell or (big.capacity or 0.0) < 0.6 * CAPACITY["big"])
    assert any(found)
    big = run(fleet, the_rung, 10).servers["big"]
    assert big.capacity == pytest.approx(50.0, rel=0.1)
    assert big.confidence > 0


def test_a_server_that_fails_thirty_percent_loses_health_the_others_keep_it() -> None:
    """Catches errors not counted per server, health = error ratio itself, or the
    exponent ignored: (1 - 0.3)^6 is about 0.12."""
    fleet, the_rung = Fleet(CAPACITY, 4), rung()
    run(fleet, the_rung, 10)
    view = run(fleet, the_rung, 4, fail={"mid": 0.3})
    mid = view.servers["mid"]
    assert mid.error_rate == pytest.approx(0.3, abs=0.05)
    assert mid.health == pytest.approx((1 - mid.error_rate) ** 6)
    assert mid.health < 0.25
    assert view.servers["small"].health == view.servers["big"].health == 1.0


def test_a_health_cut_stops_where_the_others_headroom_ends() -> None:
    """Catches a cut that moves a failing server's load onto servers with no room for
    it, or a headroom judged without the failed requests (moved off the failing
    server they are work for the others): at 80% busy, (1 - 0.3)^6 would put the
    healthy servers past their capacity, so the cut is softened until the pool's
    demand (every request, 80% of the capacity) puts them at MAX_HEALTHY_UTILIZATION,
    still a cut, and the reason says so; at 50% busy the full cut stands."""
    fleet, the_rung = Fleet(CAPACITY, None), rung()
    run(fleet, the_rung, 10, busy=0.8)
    view = run(fleet, the_rung, 4, busy=0.8, fail={"mid": 0.3})
    mid = view.servers["mid"]
    full = (1 - mid.error_rate) ** 6
    assert mid.health_limited
    assert full < mid.health < 1.0
    carried = sum((c.capacity or 0.0) * c.health for c in view.servers.values())
    demand = 0.8 * sum(CAPACITY.values())
    assert demand / carried == pytest.approx(MAX_HEALTHY_UTILIZATION, abs=0.01)
    plan = plan_weights(pool_at(EVEN), policy(), on_rung(view))
    reason = next(s.reason for s in plan.servers() if s.server == "mid")
    assert "cut only as far as the others' headroom allows" in reason

    fleet, the_rung = Fleet(CAPACITY, None), rung()
    run(fleet, the_rung, 10, busy=0.5)
    calm = run(fleet, the_rung, 4, busy=0.5, fail={"mid": 0.3}).servers["mid"]
    assert not calm.health_limited
    assert calm.health == pytest.approx((1 - calm.error_rate) ** 6)


def test_the_headroom_is_judged_on_the_load_the_estimated_servers_carry() -> None:
    """Catches a limit that gives up, or counts the whole pool's load, while a server
    has no estimate (its busy share missing, or a rise not yet trusted): that server
    keeps its weight and its share of the load (a seventh here, by weight), and the
    other two must not be pushed past MAX_HEALTHY_UTILIZATION by the third's cut."""
    fleet, the_rung = Fleet(CAPACITY, None), rung()
    fleet.weights = {"small": 5, "mid": 10, "big": 20}  # as the busy shares split the load

    def without_small(reading: Observation) -> Observation:
        assert reading.external is not None
        name, shares = reading.external.values[0]
        blind = tuple(
            math.nan if s == "small" else v for s, v in zip(CAPACITY, shares, strict=True)
        )
        return replace(reading, external=replace(reading.external, values=((name, blind),)))

    for k in range(14):
        fail = {"mid": 0.3} if k >= 10 else None
        view = the_rung.update(without_small(fleet.tick(busy=0.8, fail=fail)))[POOL]
    assert view.servers["small"].capacity is None
    mid, big = view.servers["mid"], view.servers["big"]
    assert mid.health_limited
    assert (1 - mid.error_rate) ** 6 < mid.health < 1.0
    load = 0.8 * sum(CAPACITY.values()) * 30 / 35
    carried = (mid.capacity or 0.0) * mid.health + (big.capacity or 0.0) * big.health
    assert load / carried == pytest.approx(MAX_HEALTHY_UTILIZATION, abs=0.01)


def test_health_comes_back_after_three_clean_intervals_and_not_before() -> None:
    """Catches a health window longer or shorter than RECENT_INTERVALS (3)."""
    fleet, the_rung = Fleet(CAPACITY, 5), rung()
    run(fleet, the_rung, 10, fail={"mid": 0.3})
    assert run(fleet, the_rung, 2).servers["mid"].health < 1.0
    assert run(fleet, the_rung, 1).servers["mid"].health == 1.0


def test_the_exponent_is_the_configured_one() -> None:
    """Catches ``error_exponent`` not reaching the health factor."""
    fleet, the_rung = Fleet(CAPACITY, None), rung(error_exponent=1.0)
    mid = run(fleet, the_rung, 5, busy=0.5, fail={"mid": 0.2}).servers["mid"]
    assert mid.health == pytest.approx(0.8)


def test_overload_begins_at_the_threshold_and_ends_only_below_the_hysteresis() -> None:
    """Catches overload judged on completions (they never pass capacity), a missing or
    reversed hysteresis (flapping at 0.93), or an overload that never ends."""
    fleet, the_rung = Fleet(CAPACITY, None), rung()
    # 0.93 lies between the threshold less the hysteresis (0.90) and the threshold.
    assert 0.97 - OVERLOAD_HYSTERESIS < 0.93 < 0.97
    steps = [(0.5, 8), (0.95, 5), (0.99, 3), (0.93, 5), (0.85, 3)]
    seen = {}
    for share, ticks in steps:
        view = run(fleet, the_rung, ticks, busy=share)
        assert view.capacity_rps == pytest.approx(sum(CAPACITY.values()))
        assert view.offered_rps == pytest.approx(share * sum(CAPACITY.values()), rel=0.01)
        seen[share] = bool(view.overload)
    assert seen == {0.5: False, 0.95: False, 0.99: True, 0.93: True, 0.85: False}


def test_overload_counts_the_load_that_queues_beyond_what_is_completed() -> None:
    """Catches offered load taken as completions alone: at full use, completions equal
    capacity; only the growing queue shows that more arrives than can be served."""
    fleet, the_rung = Fleet(CAPACITY, None), rung()
    run(fleet, the_rung, 8, busy=0.5)
    view = run(fleet, the_rung, 3, busy=1.0, growth=0.1)
    assert view.offered_rps == pytest.approx(1.1 * sum(CAPACITY.values()), rel=0.01)
    assert view.overload.startswith("overload: ")
    assert "static weights held" in view.overload


def test_overload_threshold_is_the_configured_one() -> None:
    """Catches ``overload_utilization`` not reaching the test."""
    fleet, the_rung = Fleet(CAPACITY, None), rung(overload_utilization=0.5)
    assert run(fleet, the_rung, 8, busy=0.6).overload


def test_without_a_busy_signal_the_rung_gives_no_view() -> None:
    """Catches a rung that runs (and plans) with no signal to work from: no utilization
    column configured and no session limit on any server."""
    the_rung = rung(column=None)
    assert the_rung.active
    assert run_views(Fleet(CAPACITY, 1), the_rung, 6) == [{}] * 6


def test_a_disabled_rung_is_off_whatever_the_signal() -> None:
    """Catches ``capacity.enabled: false`` not reaching the rung."""
    the_rung = rung(enabled=False)
    assert not the_rung.active
    assert run_views(Fleet(CAPACITY, 1), the_rung, 6) == [{}] * 6


def test_readings_without_the_utilization_column_give_no_confident_server() -> None:
    """Catches a missing Prometheus reading taken as zero or full utilization."""
    fleet, the_rung = Fleet(CAPACITY, 1), rung()
    run(fleet, the_rung, 2)
    for _ in range(10):
        view = the_rung.update(replace(fleet.tick(), external=None))[POOL]
        assert view.confident() == []
        assert not view.overload


# --- the planner on the capacity rung -----------------------------------------------------------


def test_a_pool_with_confident_estimates_is_planned_on_the_capacity_rung() -> None:
    """Catches the rung not chosen, or chosen while the model is blocked only in name."""
    plan = plan_weights(pool_at(EVEN), policy(), on_rung(capacity_view(CAPACITY)))
    pool = the_pool(plan)
    assert (pool.mode, pool.reason, pool.overload) == ("capacity", "capacity", "")
    assert pool.confidence == 1.0
    assert all(s.reason.startswith("capacity ") for s in pool.servers)
    assert the_pool(plan).to_json()["overload"] is False


def test_each_tick_moves_weights_part_of_the_way_toward_capacity_shares() -> None:
    """Catches a jump straight to the target (no damping), a step away from it, or a
    gain other than the default 0.5 on log-weights."""
    weights = planned(plan_weights(pool_at(EVEN), policy(), on_rung(capacity_view(CAPACITY))))
    for name, goal in goals(CAPACITY, BUDGET).items():
        assert weights[name] == pytest.approx(100 * math.sqrt(goal / 100), abs=1), name
        assert min(100, goal) < weights[name] < max(100, goal), name


def test_the_capacity_rung_obeys_the_step_limit() -> None:
    """Catches capacity targets exempt from ``max_step_ratio``."""
    pol = policy(max_step_ratio=0.25)
    plan = plan_weights(pool_at(EVEN), pol, on_rung(capacity_view(CAPACITY)))
    weights = planned(plan)
    assert weights == {"small": 75, "mid": 93, "big": 125}
    assert all(abs(w - 100) <= max_step(100, 0.25) for w in weights.values())
    big = next(s for s in plan.servers() if s.server == "big")
    assert "step-limited" in big.reason


@pytest.mark.parametrize(
    "start",
    [EVEN, {"small": 200, "mid": 60, "big": 40}, {"small": 30, "mid": 30, "big": 240}],
    ids=["even", "reversed", "overshot"],
)
def test_repeated_ticks_converge_on_capacity_shares_without_overshoot(
    start: Mapping[str, int],
) -> None:
    """Catches an oscillating controller (a gain above 1, a step past the target) or one
    that stops short: fed its own weights back, each weight approaches its goal from
    one side, never crossing it, and ends within 3% of it."""
    goal = goals(CAPACITY, BUDGET)
    advice = on_rung(capacity_view(CAPACITY))
    weights = dict(start)
    for _ in range(15):
        before = weights
        weights = planned(plan_weights(pool_at(before), policy(), advice))
        for name in CAPACITY:
            assert abs(weights[name] - goal[name]) <= abs(before[name] - goal[name]) + 1, name
            side = math.copysign(1, start[name] - goal[name])
            assert side * (weights[name] - goal[name]) >= -1, (name, weights)
    for name in CAPACITY:
        assert weights[name] == pytest.approx(goal[name], rel=0.03), weights
    assert weights["small"] < weights["mid"] < weights["big"]


def test_a_failing_server_gets_capacity_times_health() -> None:
    """Catches health left out of the target: equal capacities, one server at health
    0.1, and it must be given less than the others, the others more."""
    failing = ServerCapacity("mid", 100.0, 0.0, 1.0, 0.1, "", False, 0.32, 100.0)
    view = capacity_view(dict.fromkeys(CAPACITY, 100.0), mid=failing)
    weights = planned(plan_weights(pool_at(EVEN), policy(), on_rung(view)))
    assert weights["mid"] < 100 < weights["small"]
    assert weights["small"] == weights["big"]


def test_a_cut_keeps_what_the_others_cannot_take_this_tick() -> None:
    """Catches a cut that moves a failing server's load faster than the others can be
    raised to take it: "rising" (capacity 130) is still at 30 and may go up only by
    the step limit, so at a demand of 340 req/s the big server would carry the cut's
    load near its capacity. The failing server keeps what the others, at the weights
    they can reach this tick, need (it is still cut, and the reason says why); at 200
    req/s its cut is not held back."""
    current = {"big": 190, "rising": 30, "failing": 110, "small": 70}
    capacities = {"big": 200.0, "rising": 130.0, "failing": 130.0, "small": 70.0}
    failing = ServerCapacity("failing", 130.0, 0.0, 1.0, 0.1, "", False, 0.32, 130.0)

    def plan_at(demand: float) -> tuple[dict[str, int], str]:
        view = replace(capacity_view(capacities, failing=failing), demand_rps=demand)
        plan = plan_weights(pool_at(current), policy(), on_rung(view))
        reason = next(s.reason for s in plan.servers() if s.server == "failing")
        return planned(plan), reason

    busy, reason = plan_at(340.0)
    total = sum(busy.values())
    for name in ("big", "rising", "small"):
        assert 340.0 * busy[name] / total / capacities[name] <= MAX_HEALTHY_UTILIZATION + 0.01
    assert busy["failing"] < current["failing"]
    assert "the others cannot take its load this tick" in reason
    calm, reason = plan_at(200.0)
    assert calm["failing"] < busy["failing"]
    assert "cannot take" not in reason


def test_while_a_server_fails_the_others_are_raised_only_to_their_headroom() -> None:
    """Catches a controller that raises a big server toward its larger share, while
    another is cut for errors, past what it can serve: "big" may reach 230 this tick,
    which at 320 req/s over the weights then planned is past 90% of its 200 req/s; it
    stops where it reaches the bound, never below its weight now."""
    current = {"big": 187, "rising": 29, "failing": 124, "small": 65}
    rows = [Row(f"app/{n}", "app", n, "UP", False, w, 10, "") for n, w in current.items()]
    known = {
        n: ServerCapacity(n, c, 0.0, 1.0, 0.1 if n == "failing" else 1.0)
        for n, c in {"big": 200.0, "rising": 37.0, "failing": 131.0, "small": 68.0}.items()
    }
    desired = {"big": 230.0, "rising": 36.0, "failing": 62.0, "small": 60.0}
    floors, caps = headroom_limits(rows, known, desired, 320.0, policy())
    planned_total = caps["big"] + 36.0 + max(62.0, floors.get("failing", 0.0)) + 60.0
    assert current["big"] <= caps["big"] < desired["big"]
    assert 320.0 * caps["big"] / planned_total / 200.0 <= MAX_HEALTHY_UTILIZATION + 0.02
    floors, caps = headroom_limits(rows, known, desired, 200.0, policy())
    assert caps == {}


def test_a_server_whose_capacity_fell_is_lowered_but_never_raised() -> None:
    """Catches the blackout after a drop treated as an estimate to raise a weight on,
    or ignored (the server keeping its weight while it is slow)."""

    def fell(capacity: float) -> ServerCapacity:
        return ServerCapacity(
            "big",
            capacity,
            0.0,
            0.0,
            reason="blackout after a capacity drop",
            fell=True,
            long_run=capacity,
        )

    low = {"small": 100, "mid": 100, "big": 20}  # capacity 200 would raise it far
    plan = plan_weights(pool_at(low), policy(), on_rung(capacity_view(CAPACITY, big=fell(200.0))))
    assert the_pool(plan).mode == "capacity"
    assert planned(plan)["big"] == 20
    assert "lowered only" in next(s.reason for s in plan.servers() if s.server == "big")
    dropped = plan_weights(
        pool_at(EVEN), policy(), on_rung(capacity_view(CAPACITY, big=fell(10.0)))
    )
    assert planned(dropped)["big"] < 100


def test_a_server_without_an_estimate_keeps_its_weight() -> None:
    """Catches a server with no estimate driven toward zero or static, or the others'
    budget diluted by its static weight."""
    weights = {**EVEN, "new": 77, "unseen": 55}
    view = capacity_view({**CAPACITY, "new": None})  # "unseen" is not in the view at all
    plan = plan_weights(pool_at(weights), policy(), on_rung(view))
    assert the_pool(plan).mode == "capacity"
    result = planned(plan)
    assert (result["new"], result["unseen"]) == (77, 55)
    reasons = {s.server: s.reason for s in plan.servers()}
    assert reasons["new"] == "capacity: held (no busy interval yet)"
    assert reasons["unseen"] == "capacity: held (no capacity estimate yet)"
    # The three driven servers move exactly as they do without the other two.
    alone = planned(plan_weights(pool_at(EVEN), policy(), on_rung(capacity_view(CAPACITY))))
    assert {n: result[n] for n in CAPACITY} == alone


def test_overload_holds_static_weights_in_fallback_and_says_so() -> None:
    """Catches an overloaded pool still split by capacity (or by the model's tilt), an
    overload missing from the plan and its JSON, or weights jumping to static at once."""
    overload = "overload: 360.0 req/s offered, 103% of the pool's estimated capacity"
    view = capacity_view(CAPACITY, overload=overload)
    plan = plan_weights(pool_at(EVEN), policy(), on_rung(view, tilt={"big": 0.2}))
    pool = the_pool(plan)
    assert pool.mode == "fallback"
    assert pool.overload == overload
    assert pool.reason == overload
    assert pool.to_json()["overload"] is True
    assert planned(plan) == dict.fromkeys(CAPACITY, 50)  # halfway to static 10 (step 0.5)
    assert all(s.reason.startswith(overload) for s in pool.servers)


@pytest.mark.parametrize("shares", [None, {"small": 0.2, "mid": 0.3, "big": 0.5}])
def test_fewer_than_two_confident_servers_is_not_the_capacity_rung(
    shares: Mapping[str, float] | None,
) -> None:
    """Catches the rung chosen on one estimate (nothing to compare it with): the pool
    falls to the model when the model may act, else to static weights."""
    unsure = ServerCapacity(
        "mid", 100.0, 0.5, 0.0, reason="warming up (3 intervals)", long_run=100.0
    )
    view = capacity_view({"small": 50.0, "mid": 100.0, "big": None}, mid=unsure)
    plan = plan_weights(
        pool_at(EVEN), policy(), on_rung(view, shares=shares, blocked="" if shares else "no model")
    )
    assert the_pool(plan).mode == ("model" if shares else "fallback")
    assert the_pool(plan).overload == ""


def test_the_rung_and_the_planner_together_reach_capacity_shares() -> None:
    """Catches a break between the rung's view and the planner (names, the view's
    ``capacity`` unused): noisy readings of known servers, the plan fed back as the
    weights, and after 30 ticks each weight within 6% of its capacity share."""
    fleet, the_rung = Fleet(CAPACITY, 7), rung()
    weights = dict(EVEN)
    mode = ""
    for _ in range(30):
        fleet.weights = weights
        now = fleet.tick()
        plan = plan_weights(now, policy(), on_rung(the_rung.update(now)[POOL]))
        weights, mode = planned(plan), the_pool(plan).mode
    assert mode == "capacity"
    for name, goal in goals(CAPACITY, BUDGET).items():
        assert weights[name] == pytest.approx(goal, rel=0.06), weights


# --- a cut survives a change of rung ------------------------------------------------------

# Server "small" was cut by the outlier guard to 20 while the others stayed at 100; on
# each rung below, its target lies above 20 (equal capacities, or its static share).
CUT = {"small": 20, "mid": 100, "big": 100}
EQUAL = dict.fromkeys(CAPACITY, 100.0)
RUNGS = {
    # rung: (the advice without findings, the mode it plans in)
    "capacity": (lambda o: on_rung(capacity_view(EQUAL), o), "capacity"),
    "capacity-x-tilt": (
        lambda o: on_rung(capacity_view(EQUAL), o, tilt={"small": 0.2, "big": -0.2}),
        "model",
    ),
    "fallback-overload": (
        lambda o: on_rung(capacity_view(EQUAL, overload="overload: held"), o),
        "fallback",
    ),
    "fallback-no-estimates": (lambda o: on_rung(capacity_view({}), o), "fallback"),
    "model-low-confidence": (
        lambda o: on_rung(None, o, blocked="", shares={"small": None, "mid": 0.5, "big": 0.5}),
        "model",
    ),
}


@pytest.mark.parametrize("rung_name", list(RUNGS))
def test_an_outlier_cut_is_never_raised_on_any_rung(rung_name: str) -> None:
    """Catches a rung that gives a flagged server its weight back: the capacity rung
    (which skips the guard's extra cut), the tilt on top of it, fallback to static
    (overload or no estimates), and the model's "low confidence: static share" path.
    The same server unflagged is raised on each, so the finding is what holds it."""
    advice_of, mode = RUNGS[rung_name]
    weights = {**CUT, "small": 5} if mode == "fallback" else CUT  # below static 10 there
    free = plan_weights(pool_at(weights), policy(), advice_of({}))
    assert the_pool(free).mode == mode
    assert planned(free)["small"] > weights["small"]
    flagged = plan_weights(pool_at(weights), policy(), advice_of({"small": OUTLIER}))
    assert the_pool(flagged).mode == mode
    assert planned(flagged)["small"] <= weights["small"]
    assert next(s.reason for s in flagged.servers() if s.server == "small").startswith("outlier")


def test_with_the_guard_off_a_finding_holds_nothing_on_the_capacity_rung() -> None:
    """The other side: with ``policy.outlier.enabled`` false a finding holds nothing
    (catches the guard applied whatever the config says)."""
    advice = on_rung(capacity_view(EQUAL), {"small": OUTLIER})
    plan = plan_weights(pool_at(CUT), policy(outlier={"enabled": False}), advice)
    assert planned(plan)["small"] > CUT["small"]


def test_a_cut_is_not_raised_on_a_promoted_models_static_share_path(tmp_path: Path) -> None:
    """The model-mode case with a real model: trained small, saved, promoted and loaded
    from the registry. Server s0 fails 30% of its requests in the newest intervals, so
    the advisor flags it and the model, never having seen that, has no confidence in
    it: it is on the "low confidence: static share" path, whose target (its static
    weight, 100) lies far above its cut weight. Catches that path raising the cut."""
    raw, features = synthetic_raw(), synthetic_features()
    last = pd.Timestamp(features["time"].max())
    registry = Registry(
        tmp_path / "models", StepClock(last.to_pydatetime() - timedelta(hours=1)), Events()
    )
    model = train_small()
    registry.promote(registry.save(model.booster_bytes(), model.metadata).version, "test")
    recent = features[features["time"] > last - timedelta(minutes=2)].copy()
    newest = (recent["server"] == "s0") & (recent["time"] > last - timedelta(seconds=35))
    recent.loc[newest, "error_rate"] = 0.3
    now = synthetic_observation(raw, last)
    settings = AdvisorSettings(
        confidence_threshold=0.7,
        error_penalty_seconds=1.0,
        stale_after_seconds=30.0,
        max_model_age_seconds=86400.0,
        outlier=OutlierSection(),
        min_gain=AISection().min_gain,
    )
    advice = advise(now, recent, Predictor(registry.load()), settings, "", last.to_pydatetime())
    pool = advice.pools[POOL]
    s0 = pool.servers["s0"]
    assert (pool.blocked, s0.share, s0.outlier != "") == ("", None, True)
    cut = int(next(r.weight for r in now.rows if r.server == "s0"))
    assert cut < 100  # the synthetic pool runs below its static weights of 100

    unflagged = {**pool.servers, "s0": s0._replace(outlier="", deepen=False)}
    free = plan_weights(
        now, policy(), replace(advice, pools={POOL: replace(pool, servers=unflagged)})
    )
    assert the_pool(free).mode == "model"
    free_s0 = next(s for s in free.servers() if s.server == "s0")
    assert free_s0.reason.startswith("low confidence")
    assert (free_s0.planned_weight or 0) > cut

    plan = plan_weights(now, policy(), advice)
    assert the_pool(plan).mode == "model"
    assert planned(plan)["s0"] <= cut


def test_a_pinned_confident_server_does_not_let_the_model_bypass_its_tilt_bound() -> None:
    """The ladder and the planner judge "on the capacity rung" alike: a pinned server
    with a confident estimate must not make the ladder skip the tilt's bound while the
    planner, finding too few movable estimates, plans on the model's raw shares."""
    config = validate_config(
        {
            "haproxy": {"socket": "unix:///haproxy.sock", "backends": [POOL]},
            "prometheus": {"url": "http://127.0.0.1:9", "features": {"utilization": "up"}},
            "capacity": {"utilization_feature": "utilization"},
            "policy": {"overrides": {"app/small": 10}},  # pinned, but still estimated
        }
    )
    ladder, fleet = Ladder(config, Events(), None), Fleet(CAPACITY, 3)
    shares = {"small": 0.1, "mid": 0.1, "big": 0.8}  # the model wants big at 8x mid
    servers = {n: ServerAdvice(n, 0.9, {}, s) for n, s in shares.items()}
    advice = Advice("v1", {POOL: PoolAdvice(POOL, 0.9, "", servers, 100.0, cost=0.02)})
    for _ in range(40):
        now = fleet.tick()
        # "big" has no utilization reading yet (a new host): no estimate for it.
        assert now.external is not None
        ((column, values),) = now.external.values
        values = tuple(
            math.nan if r.server == "big" else v for r, v in zip(now.rows, values, strict=True)
        )
        now = replace(now, external=ExternalFeatures("prometheus", ((column, values),)))
        plan = plan_weights(now, config.policy, ladder.join(advice, now, config.policy))
        fleet.weights = planned(plan)
    weights = planned(plan)
    # Static weights are equal; the model may lean on them by exp(+-max_tilt) at most.
    bound = math.exp(2 * config.ai.max_tilt)
    assert weights["big"] / weights["mid"] <= bound * 1.05, (the_pool(plan).mode, weights)


# --- backlog drain and the tilt's headroom ---------------------------------------------


def test_a_fall_behind_a_lagging_signal_is_read_at_saturation_throughput() -> None:
    """Catches a fall read through a busy share that lags it: the small server slows
    to 12.5/s, serves that for the whole interval while 100 requests pile up, and its
    scraped share still says 0.5, which puts its capacity at 25/s. A backlog that grew
    says it was busy throughout: the rung takes its capacity to what it completed."""
    fleet, the_rung = Fleet(CAPACITY, seed=None), rung()
    run(fleet, the_rung, 10, busy=0.5)
    fleet.capacity["small"] = 25.0  # at share 0.5: 12.5 completions a second
    fleet.queues["small"] = 100.0
    view = the_rung.update(fleet.tick(busy=0.5))[POOL]
    small = view.servers["small"]
    assert small.capacity is not None
    assert small.capacity == pytest.approx(12.5, rel=0.1)
    # The operator is told why the figure fell so far at once.
    assert small.saturated
    plan = plan_weights(pool_at({"small": 50, "mid": 100, "big": 150}), policy(), on_rung(view))
    reason = next(s.reason for s in the_pool(plan).servers if s.server == "small")
    assert "saturated" in reason
    assert not any(view.servers[n].saturated for n in ("mid", "big"))


def test_a_backlog_that_persists_is_drained_and_a_flicker_is_not() -> None:
    """A server holding more work than the pool's typical, at two ticks running, is
    given less than its capacity (``drain`` < 1); one tick's queue is noise."""
    fleet, the_rung = Fleet(CAPACITY, seed=None), rung()
    run(fleet, the_rung, 10, busy=0.5)
    fleet.queues["small"] = 200.0  # 4 s of the small server's work (50/s)
    once = the_rung.update(fleet.tick(busy=0.5))[POOL].servers["small"]
    assert once.drain == 1.0
    twice = the_rung.update(fleet.tick(busy=0.5))[POOL].servers["small"]
    # A queue that rose by 200 in one interval was a saturated one: the capacity the
    # backlog is measured in is what the server completed then (below its 50/s).
    assert twice.capacity is not None
    assert twice.capacity < 50.0
    assert twice.backlog_seconds == pytest.approx(200.0 / twice.capacity, rel=0.1)
    assert 0.1 <= twice.drain < 1.0
    others = the_rung.update(fleet.tick(busy=0.5))[POOL].servers
    assert others["big"].drain == 1.0
    assert others["mid"].drain == 1.0
    fleet.queues["small"] = 0.0
    the_rung.update(fleet.tick(busy=0.5))
    assert the_rung.update(fleet.tick(busy=0.5))[POOL].servers["small"].drain == 1.0


def test_a_draining_server_gets_less_than_its_capacity_share() -> None:
    """Catches a drain factor that the planner's targets ignore."""
    drained = capacity_view({"small": 50.0, "mid": 100.0, "big": 200.0})
    small = drained.servers["small"]._replace(drain=0.5, backlog_seconds=7.5)
    drained = replace(drained, servers={**drained.servers, "small": small})
    settled = pool_at({"small": 43, "mid": 86, "big": 171})  # capacity shares of 300
    plain = plan_weights(settled, policy(), on_rung(drained))
    reference = capacity_view({"small": 50.0, "mid": 100.0, "big": 200.0})
    base = plan_weights(settled, policy(), on_rung(reference))
    assert planned(base)["small"] == 43
    assert planned(plain)["small"] < planned(base)["small"]
    assert "drain 0.50" in next(s.reason for s in the_pool(plain).servers if s.server == "small")


@pytest.mark.parametrize(
    ("offered", "expected"),
    [(50.0, 0.2), (80.0, math.log(0.9 / 0.8)), (90.0, 0.0), (120.0, 0.0), (None, 0.0)],
)
def test_the_tilt_never_plans_a_server_past_ninety_percent(
    offered: float | None, expected: float
) -> None:
    """Near saturation a tilt builds a queue that outlasts the test that would revoke it."""
    view = PoolCapacity({}, offered, 100.0)
    assert headroom_bound(0.2, view) == pytest.approx(expected)


def test_without_capacity_the_model_alone_leans_on_static_weights_in_its_blocks_only() -> None:
    """No utilization signal: the model's shares become a bounded tilt of the static
    split, applied only in the switchback's tilt blocks; in the others the pool is in
    fallback, and the test's state is in the plan."""
    config = validate_config({"haproxy": {"socket": "unix:///haproxy.sock", "backends": [POOL]}})
    ladder, fleet = Ladder(config, Events(), None), Fleet(CAPACITY, 3)
    shares = {"small": 0.1, "mid": 0.1, "big": 0.8}  # the model wants big at 8x mid
    servers = {n: ServerAdvice(n, 0.9, {}, s) for n, s in shares.items()}
    advice = Advice("v1", {POOL: PoolAdvice(POOL, 0.9, "", servers, 100.0, cost=0.02)})
    modes = []
    for _ in range(40):
        now = fleet.tick()
        joined = ladder.join(advice, now, config.policy)
        plan = plan_weights(now, config.policy, joined)
        modes.append(the_pool(plan).mode)
        assert the_pool(plan).switchback is not None
        fleet.weights = planned(plan)
        pool = joined.pools[POOL]
        if pool.blocked:
            assert the_pool(plan).mode == "fallback"
            assert pool.blocked.startswith("model held back: switchback")
        else:
            wanted = {n: a.share or 0.0 for n, a in pool.servers.items()}
            assert wanted["big"] / wanted["mid"] <= math.exp(2 * config.ai.max_tilt) + 1e-9
    assert "model" in modes
    assert "fallback" in modes


def test_errors_that_start_mid_window_cut_health_at_once_but_noise_does_not() -> None:
    """Catches the health factor reading only the three-interval window: a server that
    begins failing a third of its requests kept two thirds of its health for a tick
    (diluted by the clean intervals before), and its cut followed one interval at a
    time. A few failures among a handful of requests must not cut."""
    fleet, the_rung = Fleet(CAPACITY, None), rung()
    run(fleet, the_rung, 10, busy=0.5)
    mid = run(fleet, the_rung, 1, busy=0.5, fail={"mid": 0.35}).servers["mid"]
    assert mid.error_rate > 0.25  # the window alone says about 0.12
    assert mid.health < 0.2
    fleet, the_rung = Fleet({"a": 0.4, "b": 0.4}, None), rung()  # 2 requests an interval
    run(fleet, the_rung, 10, busy=0.5)
    a = run(fleet, the_rung, 1, busy=0.5, fail={"a": 0.5}).servers["a"]  # 1 of 2 failed
    assert a.error_rate == pytest.approx(1 / 6)  # the window's: the newest bound is below
