"""Water-filling: the forecast rate split by predicted cost, inside each server's trust region."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from veloflux.decide.optimize import STATUS_QUO, TRUST_MULTIPLES, rate_grid, total_cost, water_fill

PROPERTY = settings(max_examples=150, deadline=None)


def flat_costs(grid: np.ndarray, per_request: list[float]) -> np.ndarray:
    """Per-request cost rising linearly with the rate: ``c_i * (1 + r / r_max_i)``."""
    base = np.asarray(per_request, dtype=float)[:, None]
    top = np.maximum(grid[:, -1:], 1e-12)
    cost: np.ndarray = base * (1.0 + grid / top)
    return cost


# --- the trust region -----------------------------------------------------------------------


def test_rate_grid_is_the_trust_region_around_each_current_rate() -> None:
    grid = rate_grid(np.array([10.0, 40.0]), total_rate=50.0)
    assert grid.shape == (2, len(TRUST_MULTIPLES))
    assert np.allclose(grid[0], 10.0 * TRUST_MULTIPLES)
    assert np.allclose(grid[1], 40.0 * TRUST_MULTIPLES)
    assert (np.diff(grid, axis=1) >= 0).all()
    assert (grid[:, 0] == 0).all()


def test_rate_grid_gives_an_idle_or_unknown_server_a_small_part_of_the_fair_share() -> None:
    grid = rate_grid(np.array([60.0, 0.0, np.nan]), total_rate=60.0)
    fair = 60.0 / 3
    assert np.allclose(grid[1], 0.25 * fair * TRUST_MULTIPLES)
    assert np.allclose(grid[2], 0.25 * fair * TRUST_MULTIPLES)
    assert np.isfinite(grid).all()


def test_rate_grid_widens_every_region_alike_when_the_total_exceeds_their_capacity() -> None:
    current = np.array([10.0, 20.0, 30.0])
    total = 3.0 * current.sum()  # a surge: twice what the regions (1.5x) hold
    grid = rate_grid(current, total)
    assert grid[:, -1].sum() == pytest.approx(total)
    factors = grid[:, -1] / (current * TRUST_MULTIPLES[-1])
    assert np.allclose(factors, factors[0])
    assert factors[0] == pytest.approx(2.0)


def test_rate_grid_is_unchanged_when_the_total_fits() -> None:
    current = np.array([10.0, 20.0, 30.0])
    grid = rate_grid(current, total_rate=current.sum() * 1.2)
    assert np.allclose(grid[:, -1], current * TRUST_MULTIPLES[-1])


@PROPERTY
@given(
    # Rates are counts over an interval of seconds: 0, or far above the subnormal range.
    hnp.arrays(float, st.integers(1, 12), elements=st.just(0.0) | st.floats(1e-3, 1e4)),
    st.just(0.0) | st.floats(min_value=1e-6, max_value=1e5),  # rates, not subnormals
)
def test_rate_grid_always_holds_the_total(current: np.ndarray, total: float) -> None:
    grid = rate_grid(current, total)
    assert np.isfinite(grid).all()
    assert (np.diff(grid, axis=1) >= 0).all()
    assert grid[:, -1].sum() >= total * (1 - 1e-9)


# --- water-filling by example ------------------------------------------------------------------


def test_the_total_is_handed_out_exactly() -> None:
    grid = rate_grid(np.array([10.0, 20.0, 30.0]), 60.0)
    assigned = water_fill(grid, flat_costs(grid, [0.02, 0.02, 0.02]), 60.0)
    assert assigned.sum() == pytest.approx(60.0, abs=1e-9)


def test_a_server_with_a_lower_cost_curve_gets_more() -> None:
    grid = rate_grid(np.array([20.0, 20.0]), 40.0)
    assigned = water_fill(grid, flat_costs(grid, [0.010, 0.030]), 40.0)
    assert assigned[0] > assigned[1]
    assert assigned.sum() == pytest.approx(40.0)
    assert assigned[0] == pytest.approx(grid[0, -1])  # the cheap one is filled to its edge


def test_a_server_that_fails_requests_gets_less_once_errors_cost_something() -> None:
    grid = rate_grid(np.array([20.0, 20.0]), 40.0)
    latency = flat_costs(grid, [0.020, 0.020])
    errors = np.vstack([np.full(grid.shape[1], 0.001), np.full(grid.shape[1], 0.2)])
    penalty_seconds = 1.0
    assigned = water_fill(grid, latency + penalty_seconds * errors, 40.0)
    assert assigned[1] < assigned[0]
    assert assigned[1] == pytest.approx(grid[1, 1])  # down to the floor of its region
    without_penalty = water_fill(grid, latency + 0.0 * errors, 40.0)
    assert without_penalty[0] == pytest.approx(without_penalty[1])


def test_the_floor_holds_even_for_a_server_far_costlier_than_the_rest() -> None:
    grid = rate_grid(np.array([10.0, 10.0, 10.0]), 30.0)
    cost = flat_costs(grid, [0.01, 0.01, 100.0])
    assigned = water_fill(grid, cost, 30.0)
    assert assigned[2] == pytest.approx(grid[2, 1])
    emptied = water_fill(grid, cost, 30.0, keep_floor=False)
    assert emptied[2] == pytest.approx(0.0)
    assert emptied.sum() == pytest.approx(30.0)


def test_a_server_without_predictions_keeps_only_its_floor() -> None:
    grid = rate_grid(np.array([10.0, 10.0]), 20.0)
    cost = flat_costs(grid, [0.02, 0.02])
    cost[1, 2:] = np.nan
    assigned = water_fill(grid, cost, 15.0)
    assert assigned[1] == pytest.approx(grid[1, 1])
    assert assigned[0] == pytest.approx(10.0)


def test_equal_curves_at_the_current_total_give_equal_shares() -> None:
    grid = rate_grid(np.array([10.0, 10.0, 10.0, 10.0]), 40.0)
    assigned = water_fill(grid, flat_costs(grid, [0.02] * 4), 40.0)
    assert np.allclose(assigned, 10.0)


def test_a_total_beyond_the_grid_fills_the_grid_and_no_more() -> None:
    grid = np.array([[0.0, 5.0, 10.0], [0.0, 5.0, 10.0]])
    assigned = water_fill(grid, np.full(grid.shape, 0.02), 100.0)
    assert (assigned <= grid[:, -1] + 1e-9).all(), assigned


# --- properties -----------------------------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    """A grid from random current rates, non-decreasing random costs, a total it can hold."""
    n = draw(st.integers(min_value=1, max_value=10))
    current = np.asarray(
        draw(st.lists(st.floats(min_value=0.1, max_value=1e3), min_size=n, max_size=n))
    )
    steps = draw(
        hnp.arrays(float, (n, len(TRUST_MULTIPLES)), elements=st.floats(min_value=0, max_value=1))
    )
    start = np.asarray(draw(st.lists(st.floats(1e-4, 1.0), min_size=n, max_size=n)))[:, None]
    costs = start + np.cumsum(steps, axis=1)
    fraction = draw(st.floats(min_value=0.0, max_value=1.0))
    grid = rate_grid(current, float(current.sum()))
    floors, tops = float(grid[:, 1].sum()), float(grid[:, -1].sum())
    total = floors + fraction * (tops - floors)
    return grid, costs, total


@PROPERTY
@given(problems())
def test_water_fill_conserves_the_total_and_stays_inside_every_region(
    problem: tuple[np.ndarray, np.ndarray, float],
) -> None:
    grid, costs, total = problem
    assigned = water_fill(grid, costs, total)
    assert abs(assigned.sum() - total) <= 1e-9 * max(1.0, total)
    tolerance = 1e-9 * max(1.0, total)
    assert (assigned >= grid[:, 1] - tolerance).all()  # the floor: second grid point
    assert (assigned <= grid[:, -1] + tolerance).all()  # never past the grid


@PROPERTY
@given(problems(), st.floats(min_value=0.0, max_value=1.0))
def test_water_fill_conserves_any_total_the_grid_can_hold(
    problem: tuple[np.ndarray, np.ndarray, float], fraction: float
) -> None:
    grid, costs, _ = problem
    total = fraction * float(grid[:, -1].sum())
    assigned = water_fill(grid, costs, total, keep_floor=False)
    assert abs(assigned.sum() - total) <= 1e-9 * max(1.0, total)
    assert (assigned >= -1e-12).all()
    assert (assigned <= grid[:, -1] + 1e-9 * max(1.0, total)).all()


@PROPERTY
@given(problems(), st.floats(min_value=1e-3, max_value=1.0))
def test_a_uniformly_cheaper_server_never_gets_less(
    problem: tuple[np.ndarray, np.ndarray, float], discount: float
) -> None:
    grid, costs, total = problem
    same = np.vstack([grid[0], grid[0]])
    curve = costs[0] + discount
    cheaper, dearer = curve - discount * 0.999, curve
    assigned = water_fill(same, np.vstack([cheaper, dearer]), min(total, same[:, -1].sum()))
    assert assigned[0] >= assigned[1] - 1e-9


@PROPERTY
@given(problems(), st.floats(min_value=1.0, max_value=10.0))
def test_raising_one_servers_costs_never_gives_it_more(
    problem: tuple[np.ndarray, np.ndarray, float], factor: float
) -> None:
    grid, costs, total = problem
    assume(len(grid) >= 2)
    before = water_fill(grid, costs, total)
    dearer = costs.copy()
    dearer[0] *= factor
    after = water_fill(grid, dearer, total)
    assert after[0] <= before[0] + 1e-9 * max(1.0, total)


@PROPERTY
@given(
    st.integers(min_value=2, max_value=8),
    st.floats(min_value=0.1, max_value=1e3),
    st.floats(min_value=0.5, max_value=1.5),
    st.floats(min_value=1e-4, max_value=1.0),
    st.floats(min_value=1e-6, max_value=1.0),
)
def test_equal_rising_curves_give_equal_shares_within_one_grid_segment(
    n: int, rate: float, load: float, base: float, slope: float
) -> None:
    """Tied segments are handed out in turn, so equal servers differ by one segment at most."""
    grid = rate_grid(np.full(n, rate), n * rate)
    costs = base + slope * grid / rate  # the same latency curve for every server
    total = n * rate * load
    assigned = water_fill(grid, costs, total)
    segment = float(np.diff(grid[0])[1:].max())  # past the floor
    assert assigned.max() - assigned.min() <= segment * (1 + 1e-9)
    assert assigned.sum() == pytest.approx(total)


@pytest.mark.parametrize("costs", ["flat", "steep then flat"])
def test_equal_curves_with_flat_stretches_give_equal_shares(costs: str) -> None:
    n, rate = 3, 10.0
    grid = rate_grid(np.full(n, rate), n * rate)
    if costs == "flat":  # a tree that learned no load effect in this region
        curve = np.full(grid.shape[1], 0.02)
    else:  # one step up, then flat: the running maximum ties the later segments
        curve = np.where(TRUST_MULTIPLES >= 1.0, 0.05, 0.02)
    assigned = water_fill(grid, np.tile(curve, (n, 1)), n * rate)
    segment = float(np.diff(grid[0])[1:].max())  # past the floor
    assert assigned.max() - assigned.min() <= segment * (1 + 1e-9), assigned


# --- the predicted gain's scale -------------------------------------------------------------


def test_the_status_quo_costs_the_sum_of_rate_times_cost_at_its_grid_point() -> None:
    grid = rate_grid(np.array([10.0, 30.0]), 40.0)
    costs = np.array([[1.0, 1.0, 2.0, 3.0, 5.0, 8.0], [0.5, 0.5, 0.6, 0.7, 0.9, 1.2]])
    assert TRUST_MULTIPLES[STATUS_QUO] == 1.0
    assert total_cost(grid, costs, grid[:, STATUS_QUO]) == pytest.approx(10 * 3.0 + 30 * 0.7)
    # Between grid points, rate x cost is interpolated: halfway from 10 to 12.5 req/s.
    between = total_cost(grid[:1], costs[:1], np.array([11.25]))
    assert between == pytest.approx((10 * 3.0 + 12.5 * 5.0) / 2)


@PROPERTY
@given(
    hnp.arrays(float, 4, elements=st.floats(min_value=1.0, max_value=100.0)),
    hnp.arrays(float, 4, elements=st.floats(min_value=1e-3, max_value=1.0)),
    hnp.arrays(float, 4, elements=st.floats(min_value=0.0, max_value=0.1)),
)
def test_water_filling_never_costs_more_than_the_status_quo(
    current: np.ndarray, fixed: np.ndarray, per_rate: np.ndarray
) -> None:
    grid = rate_grid(current, float(current.sum()))
    costs = fixed[:, None] + per_rate[:, None] * grid  # rate x cost convex in rate
    assigned = water_fill(grid, costs, float(current.sum()))
    before = total_cost(grid, costs, grid[:, STATUS_QUO])
    assert total_cost(grid, costs, assigned) <= before * (1 + 1e-9)
