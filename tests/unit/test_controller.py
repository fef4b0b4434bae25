"""The damped log-weight controller: converges without overshoot, keeps the pool's
total, holds inside its deadband, and leaves alone what it cannot drive."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloflux.decide.controller import ControllerSettings, Target, desired_weights

PROPERTY = settings(max_examples=200, deadline=None)

pools = st.dictionaries(
    st.sampled_from([f"s{i}" for i in range(8)]),
    st.tuples(st.floats(1, 256), st.floats(0.1, 1000)),
    min_size=1,
)


def log_errors(weights: dict[str, float], amounts: dict[str, float]) -> dict[str, float]:
    """Each server's log of (its goal share / its share)."""
    total_w, total_a = sum(weights.values()), sum(amounts.values())
    return {s: math.log(amounts[s] / total_a) - math.log(weights[s] / total_w) for s in weights}


@PROPERTY
@given(pools, st.floats(0.05, 1.0))
def test_it_converges_on_a_static_pool_without_oscillating(
    pool: dict[str, tuple[float, float]], gain: float
) -> None:
    """Each step keeps the pool's total, keeps the servers' order of log-errors (no one
    swings past another) and shrinks their spread by ``1 - gain``; in the end every
    share is its target's."""
    weights = {s: w for s, (w, _) in pool.items()}
    amounts = {s: c for s, (_, c) in pool.items()}
    targets = {s: Target(c) for s, c in amounts.items()}
    total = sum(weights.values())
    rule = ControllerSettings(gain=gain, deadband_errors=0.0)
    for _ in range(300):
        before = log_errors(weights, amounts)
        weights = desired_weights(weights, targets, rule)
        after = log_errors(weights, amounts)
        assert sum(weights.values()) == pytest.approx(total, rel=1e-9)
        spread_before = max(before.values()) - min(before.values())
        spread_after = max(after.values()) - min(after.values())
        assert spread_after <= (1 - gain) * spread_before + 1e-9
        for a in before:
            for b in before:
                if before[a] > before[b] + 1e-9:
                    assert after[a] >= after[b] - 1e-9
    for error in log_errors(weights, amounts).values():
        assert abs(error) < 1e-3


@PROPERTY
@given(pools, st.floats(0.05, 1.0))
def test_no_weight_moves_by_more_than_the_gain_allows(
    pool: dict[str, tuple[float, float]], gain: float
) -> None:
    """Before the pool's total is restored, each log-weight moves by at most ``gain``
    times its error; the restoring scale is common to all the servers that move."""
    weights = {s: w for s, (w, _) in pool.items()}
    amounts = {s: c for s, (_, c) in pool.items()}
    targets = {s: Target(c) for s, c in amounts.items()}
    nxt = desired_weights(weights, targets, ControllerSettings(gain=gain, deadband_errors=0))
    errors = log_errors(weights, amounts)
    largest = max(abs(e) for e in errors.values())
    for s, w in nxt.items():
        assert abs(math.log(w / weights[s])) <= 2 * gain * largest + 1e-9


def test_a_difference_inside_the_deadband_is_held() -> None:
    weights = {"a": 100.0, "b": 100.0}
    noisy = {"a": Target(110.0, 0.1), "b": Target(90.0, 0.1)}  # 10% apart, 10% errors
    assert desired_weights(weights, noisy, ControllerSettings(deadband_errors=2.0)) == weights
    sure = {"a": Target(110.0, 0.01), "b": Target(90.0, 0.01)}
    moved = desired_weights(weights, sure, ControllerSettings(deadband_errors=2.0))
    assert moved["a"] > 100.0 > moved["b"]


def test_servers_without_a_weight_or_a_target_are_left_to_the_planner() -> None:
    weights = {"a": 50.0, "b": 0.0, "c": 50.0}
    targets = {"a": Target(1.0), "b": Target(1.0), "d": Target(1.0)}
    assert set(desired_weights(weights, targets, ControllerSettings())) == {"a"}
    assert desired_weights({}, targets, ControllerSettings()) == {}


@pytest.mark.parametrize(("gain", "deadband"), [(0.0, 1.0), (1.5, 1.0), (0.5, -1.0)])
def test_settings_out_of_range_are_refused(gain: float, deadband: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        ControllerSettings(gain=gain, deadband_errors=deadband)


def test_an_urgent_target_is_reached_at_once_past_gain_and_deadband() -> None:
    """Catches a confirmed capacity fall damped like noise: a server at a quarter of its
    speed kept most of its share for several ticks and built a queue in each."""
    weights = {"a": 100.0, "b": 100.0}
    targets = {"a": Target(100.0, 0.5), "b": Target(25.0, 0.5, urgent=True)}
    settings = ControllerSettings(gain=0.5, deadband_errors=2.0)
    moved = desired_weights(weights, targets, settings, total=200.0)
    assert moved["a"] == 100.0  # within its deadband: held
    assert moved["b"] == pytest.approx(25.0 / 125.0 * 200.0)  # its share of the total, at once
