"""The real-HAProxy benchmark's floors: what the service time alone allows a p99.

docs/benchmarks.md compares each phase's p99 with these, so a wrong floor would make a
target look out of reach (or within it) for no reason.
"""

from __future__ import annotations

import math

import pytest

from bench.run_haproxy import exceeded, largest_share, p99_of


def test_the_p99_of_one_exponential_is_its_mean_times_ln_100() -> None:
    """Catches a bisection that stops at the wrong tail: Exp(30 ms) passes 30 ln 100."""
    assert p99_of([(1.0, 30.0)]) == pytest.approx(30.0 * math.log(100.0), rel=1e-6)


def test_a_slow_servers_share_raises_the_mixtures_p99() -> None:
    """Catches shares that are ignored or swapped: 1% of requests 4x slower raise the
    p99, and the mixture's tail at its p99 is exactly 1%."""
    alone, mixed = p99_of([(1.0, 30.0)]), p99_of([(0.1, 120.0), (0.9, 30.0)])
    assert mixed > alone
    assert exceeded(mixed, [(0.1, 120.0), (0.9, 30.0)]) == pytest.approx(0.01, rel=1e-6)


def test_the_largest_share_is_the_one_whose_p99_is_the_limit() -> None:
    """Catches a share that does not invert ``p99_of``."""
    share = largest_share(165.0, 120.0, 30.0)
    assert 0.0 < share < 0.1
    assert p99_of([(share, 120.0), (1 - share, 30.0)]) == pytest.approx(165.0, rel=1e-4)
