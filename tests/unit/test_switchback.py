"""The switchback test of the model's tilt, run against simulated pools whose cost
with the tilt is known: it must grant a tilt that helps, revoke one that harms, and
keep testing (not grant) one that does nothing, however the noise falls."""

from __future__ import annotations

import numpy as np
import pytest

from veloflux.decide.switchback import GRANTED, REVOKED, TESTING, Switchback, SwitchbackSettings

TICKS = 600


def run(effect: float, seed: int, noise: float = 0.05, ticks: int = TICKS) -> Switchback:
    """A pool whose cost is 10 ms x (1 - effect x scale) while the tilt runs at
    ``scale`` of its strength, with lognormal noise per interval; the cost of each
    interval is reported at the next tick."""
    rng = np.random.default_rng(seed)
    test = Switchback("app")
    strength: float | None = None  # the tilt's strength in the interval now ending
    for _ in range(ticks):
        if strength is not None:
            test.record(0.010 * (1 - effect * strength) * rng.lognormal(0, noise))
        state = test.next_arm()
        strength = state.scale if state.tilt_on else 0.0
    return test


@pytest.mark.parametrize("seed", range(5))
def test_a_tilt_that_helps_is_granted(seed: int) -> None:
    """Catches a test that cannot grant (too strict, pairs never formed)."""
    assert run(effect=0.08, seed=seed).state == GRANTED


@pytest.mark.parametrize("seed", range(5))
def test_a_tilt_that_harms_is_revoked(seed: int) -> None:
    """Catches a test that keeps a harmful tilt running half of the time or more."""
    assert run(effect=-0.08, seed=seed).state == REVOKED


def test_a_tilt_that_does_nothing_is_seldom_granted() -> None:
    """The false-grant rate under pure noise: the guarantee the test exists for."""
    states = [run(effect=0.0, seed=seed).state for seed in range(40)]
    assert states.count(GRANTED) <= 4
    assert TESTING in states


def test_granted_runs_the_tilt_three_blocks_in_four_and_keeps_a_control() -> None:
    """Catches a grant that stops measuring (no control blocks) or never exploits."""
    test = run(effect=0.1, seed=1)
    assert test.state == GRANTED
    arms = [test.next_arm().tilt_on for _ in range(400)]
    assert 0.6 < sum(arms) / len(arms) < 0.9


def test_a_tilt_that_stops_helping_loses_its_grant() -> None:
    """Authority is not kept for past merit: the window of pairs moves on."""
    test = Switchback("app", SwitchbackSettings(window_pairs=8))
    rng = np.random.default_rng(4)
    arm = None
    for tick in range(1600):
        effect = 0.1 if tick < 600 else -0.1
        if arm is not None:
            test.record(0.010 * (1 - effect if arm else 1.0) * rng.lognormal(0, 0.05))
        arm = test.next_arm().tilt_on
        if tick == 599:
            assert test.state == GRANTED
    assert test.state == REVOKED


def test_a_pause_drops_the_block_under_way_unjudged() -> None:
    """Ticks without a model must not be paired against ticks with one."""
    test = Switchback("app")
    test.next_arm()
    test.record(0.01)
    test.pause()
    assert test.snapshot().pairs == 0
    assert test.snapshot().state == TESTING
