"""The model-free capacity estimator: recovers known capacities, finds changes (quick
downward, slower upward), and says when it cannot be trusted."""

from __future__ import annotations

import random

import pytest

from veloflux.decide.capacity import (
    CapacityEstimator,
    CapacitySettings,
    Interval,
    ratio_of_sums,
)


def busy_intervals(
    rng: random.Random, capacity: float, count: int, start: float = 0.0
) -> list[Interval]:
    """``count`` one-second intervals of a server of ``capacity`` requests per busy
    second, at a utilization drawn from 0.3-0.9, completions Poisson as served."""
    out = []
    for k in range(count):
        busy = rng.uniform(0.3, 0.9)
        out.append(Interval(start + k + 1, float(_poisson(rng, capacity * busy)), busy))
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method in chunks, so that large means do not underflow."""
    total = 0
    while mean > 0:
        chunk = min(mean, 30.0)
        mean -= chunk
        limit, k, p = pow(2.718281828459045, -chunk), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                break
            k += 1
        total += k
    return total


def feed(estimator: CapacityEstimator, intervals: list[Interval], server: str = "s1") -> None:
    for interval in intervals:
        estimator.observe(server, interval)


@pytest.mark.parametrize("capacity", [5.0, 40.0, 300.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_known_capacity_is_recovered_within_ten_percent(capacity: float, seed: int) -> None:
    estimator = CapacityEstimator()
    intervals = busy_intervals(random.Random(seed), capacity, 60)
    feed(estimator, intervals)
    estimate = estimator.estimate("s1", intervals[-1].at)
    assert estimate.capacity is not None
    assert abs(estimate.capacity - capacity) <= 0.1 * capacity
    assert estimate.confidence > 0
    assert estimator.changes("s1") == 0  # noise is not a change


def test_the_standard_error_covers_the_truth_and_shrinks_with_more_intervals() -> None:
    intervals = busy_intervals(random.Random(7), 40.0, 60)
    _, short_se = ratio_of_sums(intervals[:10])
    estimate, long_se = ratio_of_sums(intervals)
    assert short_se is not None
    assert long_se is not None
    assert long_se < short_se
    assert abs(estimate - 40.0) <= 3 * long_se


def test_noise_alone_is_never_called_a_change() -> None:
    for seed in range(5):
        for capacity in (5.0, 40.0, 300.0):
            estimator = CapacityEstimator()
            feed(estimator, busy_intervals(random.Random(seed), capacity, 500))
            assert estimator.changes("s1") == 0, (seed, capacity)


def intervals_to_find(factor: float, seed: int, capacity: float = 60.0) -> int | None:
    """How many intervals after the capacity is multiplied by ``factor`` the change is
    found (None: not within 60)."""
    rng = random.Random(seed)
    estimator = CapacityEstimator()
    feed(estimator, busy_intervals(rng, capacity, 40))
    for k, interval in enumerate(busy_intervals(rng, capacity * factor, 60, start=40.0)):
        estimator.observe("s1", interval)
        if estimator.changes("s1"):
            return k + 1
    return None


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_halving_is_found_within_six_intervals_and_a_fifth_within_two(seed: int) -> None:
    halving = intervals_to_find(0.5, seed)
    assert halving is not None
    assert halving <= 6
    fifth = intervals_to_find(0.2, seed)
    assert fifth is not None
    assert fifth <= 2


def test_after_a_change_the_new_capacity_is_learned() -> None:
    rng = random.Random(11)
    estimator = CapacityEstimator()
    feed(estimator, busy_intervals(rng, 60.0, 40))
    after = busy_intervals(rng, 30.0, 40, start=40.0)
    feed(estimator, after)
    assert estimator.changes("s1") == 1
    estimate = estimator.estimate("s1", after[-1].at)
    assert estimate.capacity is not None
    assert abs(estimate.capacity - 30.0) <= 3.0
    assert estimate.confidence > 0


def steady(ratio: float, count: int, start: float = 0.0) -> list[Interval]:
    """Intervals whose ratios cycle through ``ratio`` and 5% either side of it: a known
    spread around a known median."""
    return [
        Interval(start + k + 1, ratio * (1.0, 0.95, 1.05)[k % 3] * 10.0, 10.0) for k in range(count)
    ]


def test_the_same_evidence_finds_a_fall_sooner_than_a_rise() -> None:
    """Bad news first, as peak-EWMA: with the same deviation per interval a fall is
    believed after fewer intervals than a rise."""
    found = {}
    for direction in (-1, 1):
        estimator = CapacityEstimator()
        feed(estimator, steady(100.0, 30))
        shifted = 100.0 * (1 + direction * 0.15)
        for k, interval in enumerate(steady(shifted, 30, start=30.0)):
            estimator.observe("s1", Interval(interval.at, shifted * 10.0, 10.0))
            if estimator.changes("s1"):
                found[direction] = k + 1
                break
    assert found[-1] < found[1]


def test_no_confidence_during_the_blackout_after_a_change() -> None:
    settings = CapacitySettings(blackout_intervals=3)
    rng = random.Random(3)
    estimator = CapacityEstimator(settings)
    feed(estimator, busy_intervals(rng, 50.0, 30))
    reasons = []
    for interval in busy_intervals(rng, 10.0, 12, start=30.0):
        changed = estimator.changes("s1")
        estimator.observe("s1", interval)
        if changed or estimator.changes("s1"):
            reasons.append(estimator.estimate("s1", interval.at).reason)
    assert [r.startswith("blackout") for r in reasons[:3]] == [True, True, True]
    assert not any(r.startswith("blackout") for r in reasons[3:])


def test_after_a_change_confidence_returns_without_a_second_warm_up() -> None:
    """Catches a restarted window held to the first warm-up (five intervals): under
    capacity that changes every few ticks that froze most servers' weights."""
    settings = CapacitySettings(min_intervals=5, blackout_intervals=1)
    rng = random.Random(5)
    estimator = CapacityEstimator(settings)
    feed(estimator, busy_intervals(rng, 50.0, 30))
    confident_after = None
    for k, interval in enumerate(busy_intervals(rng, 10.0, 12, start=30.0)):
        estimator.observe("s1", interval)
        if estimator.changes("s1") and estimator.estimate("s1", interval.at).confidence > 0:
            confident_after = k + 1
            break
    assert confident_after is not None
    assert confident_after <= 4  # the fall's run, one blackout interval, no new warm-up
    assert estimator.estimate("s1", 100.0 + 0.0).capacity == pytest.approx(10.0, rel=0.25)


def test_warming_up_expiring_and_idle_intervals_give_no_confidence() -> None:
    settings = CapacitySettings(min_intervals=5, max_age_seconds=60.0)
    estimator = CapacityEstimator(settings)
    assert estimator.estimate("s1", 0.0).confidence == 0.0
    intervals = busy_intervals(random.Random(1), 40.0, 4)
    feed(estimator, intervals)
    assert estimator.estimate("s1", 4.0).reason.startswith("warming up")
    estimator.observe("s1", Interval(5.0, 0.0, 0.0))  # idle: says nothing
    estimator.observe("s1", Interval(6.0, float("nan"), 0.5))  # malformed: skipped
    assert estimator.estimate("s1", 6.0).intervals == 4
    feed(estimator, busy_intervals(random.Random(2), 40.0, 6, start=6.0))
    assert estimator.estimate("s1", 12.0).confidence > 0
    expired = estimator.estimate("s1", 12.0 + 61.0)
    assert (expired.confidence, expired.reason.startswith("expired")) == (0.0, True)


def test_servers_are_estimated_apart_and_can_be_forgotten() -> None:
    rng = random.Random(9)
    estimator = CapacityEstimator()
    feed(estimator, busy_intervals(rng, 20.0, 30), "slow")
    feed(estimator, busy_intervals(rng, 80.0, 30), "fast")
    slow = estimator.estimate("slow", 30.0).capacity
    fast = estimator.estimate("fast", 30.0).capacity
    assert slow is not None
    assert fast is not None
    assert 3.0 < fast / slow < 5.0
    estimator.forget("slow")
    assert estimator.estimate("slow", 30.0).capacity is None


def test_after_a_fall_the_unconfident_figure_may_lower_and_is_the_newest_intervals() -> None:
    """Catches a fall's new figure dropped before it is confident, and the run's first,
    partly-old interval lifting the new figure: until the window is confident the
    newest interval is the lower, and after the blackout the partly-old one leaves."""
    settings = CapacitySettings(blackout_intervals=1)
    estimator = CapacityEstimator(settings)
    feed(estimator, [Interval(k + 1.0, 100.0, 1.0) for k in range(30)])
    # Half an interval at the old speed, then a quarter of it: 62.5, then 25.
    estimator.observe("s1", Interval(31.0, 62.5, 1.0))
    estimator.observe("s1", Interval(32.0, 25.0, 1.0))
    first = estimator.estimate("s1", 32.0)
    assert estimator.changes("s1") == 1
    assert first.fell
    assert first.confidence == 0.0
    assert first.capacity == pytest.approx(25.0)
    estimator.observe("s1", Interval(33.0, 24.0, 1.0))  # blackout over
    after = estimator.estimate("s1", 33.0)
    # Without the straddling 62.5 the two intervals after it carry the estimate.
    assert not after.fell
    assert after.confidence > 0
    assert after.capacity == pytest.approx(24.5)
    for k in range(10):
        estimator.observe("s1", Interval(34.0 + k, 25.0, 1.0))
    settled = estimator.estimate("s1", 43.0)
    assert settled.confidence > 0
    assert not settled.fell
    assert settled.capacity == pytest.approx(25.0, rel=0.2)


def test_a_rise_gives_no_figure_to_act_on_until_it_is_confident() -> None:
    """Catches ``fell`` set after an upward change: good news waits for confidence."""
    estimator = CapacityEstimator(CapacitySettings(blackout_intervals=1))
    feed(estimator, [Interval(k + 1.0, 25.0, 1.0) for k in range(30)])
    for k in range(12):
        estimator.observe("s1", Interval(31.0 + k, 100.0, 1.0))
        estimate = estimator.estimate("s1", 31.0 + k)
        if estimator.changes("s1") and estimate.confidence == 0:
            assert not estimate.fell
    assert estimator.changes("s1") == 1


@pytest.mark.parametrize("direction", ["fall", "rise"])
def test_a_changes_first_interval_leaves_the_window_once_the_rest_can_carry_it(
    direction: str,
) -> None:
    """Catches the interval that straddles a change kept in the new window: part of it
    ran at the old speed, and in a ratio of sums it pulls the new figure toward the old
    one for as long as the window holds it."""
    old, new = (100.0, 25.0) if direction == "fall" else (25.0, 100.0)
    rng = random.Random(7)
    estimator = CapacityEstimator(CapacitySettings(blackout_intervals=1))
    feed(estimator, busy_intervals(rng, old, 40))
    # Half of this interval at each speed.
    estimator.observe("s1", Interval(41.0, 0.5 * (old + new) * 0.8, 0.8))
    after = busy_intervals(rng, new, 20, start=41.0)
    fed = 0
    while not estimator.changes("s1"):
        estimator.observe("s1", after[fed])
        fed += 1
    feed(estimator, after[fed : fed + 3])  # the blackout, and two to be confident alone
    estimate = estimator.estimate("s1", after[fed + 2].at)
    assert estimate.confidence > 0
    # Exactly the intervals after the straddling one, and near the new speed.
    assert estimate.capacity == pytest.approx(ratio_of_sums(after[: fed + 3])[0])
    assert estimate.capacity == pytest.approx(new, rel=0.2)
    feed(estimator, after[fed + 3 :])
    final = estimator.estimate("s1", after[-1].at).capacity
    assert final == pytest.approx(ratio_of_sums(after)[0])
