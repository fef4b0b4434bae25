"""The model's authority, earned online: a switchback test of its tilt, per pool.

On the capacity rung the model may only tilt the capacity weights (a bounded factor
per server), and only as far as the tilt has shown, in this pool and now, that it
lowers the pool's cost. Time is cut into blocks of a few ticks; blocks come in pairs,
one with the tilt and one without, in an order drawn per pair (so that a periodic load
pattern cannot line up with the arms). The first interval of each block is a
transition and is not counted; the others' cost (mean latency plus the error penalty
times the error ratio, as the agent measured it) is averaged per block, and each pair
gives the tilt's relative gain. A one-sided test on the recent pairs' gains decides:

- ``testing``: too few pairs, or no clear answer yet: the tilt runs at half strength
  (its log factors halved) in one block of four. Near a good split a deviation costs
  about its square, so this costs an eighth or less of what the full tilt would in
  every block, the price of finding out (a tilt that never earns a grant pays it for
  as long as it runs; the simulator's flicker under round robin showed it);
- ``granted``: the mean gain is above ``min_gain`` and clears the test (t >= 3): the
  tilt runs at full strength in three blocks of four, the fourth kept as a control so
  the test goes on;
- ``revoked``: the mean gain is a regression beyond ``max_regression`` and clears the
  test the other way (t <= -2: a harm is believed on less evidence than a gain): the
  tilt runs at half strength in one block of eight, to notice if it improves.

Either decision lasts while the evidence holds (|t| >= 1.5) and no longer. Repeated
looks at a moving window make a chance excursion past any threshold likely sooner or
later; a high bar to enter and a lower one to stay keep the share of time a useless
tilt spends granted small (tests/unit/test_switchback.py measures it).

This is the statistical do-no-harm guarantee of the model: what it cannot show, it
does not get, and what it gets it must keep showing.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from dataclasses import dataclass, field

from veloflux.domain.advice import SwitchbackState

TESTING, GRANTED, REVOKED = "testing", "granted", "revoked"


@dataclass(frozen=True)
class SwitchbackSettings:
    block_ticks: int = 4
    window_pairs: int = 16  # the test judges the most recent pairs
    min_pairs: int = 4
    threshold: float = 3.0  # one-sided t statistic to grant
    revoke_threshold: float = 2.0  # and to revoke: bad news is believed sooner
    keep: float = 1.5  # a grant (revocation) lasts while t stays above (below -) this
    min_gain: float = 0.01  # a grant needs at least this mean gain, not only a t
    max_regression: float = 0.02


# Per state: blocks with the tilt in each round of blocks, the round's length, and
# the share of its bound the tilt runs at.
_ROUNDS = {TESTING: (1, 4, 0.5), GRANTED: (3, 4, 1.0), REVOKED: (1, 8, 0.5)}


@dataclass
class _Block:
    tilt: bool
    costs: list[float] = field(default_factory=list)


class Switchback:
    """One pool's test. Each tick: ``record`` the cost of the interval that just
    ended, then ``next_arm`` says whether the coming interval runs the tilt."""

    def __init__(self, pool: str, settings: SwitchbackSettings | None = None) -> None:
        self._settings = settings or SwitchbackSettings()
        self._rng = random.Random(zlib.crc32(pool.encode()))
        self._gains: deque[float] = deque(maxlen=self._settings.window_pairs)
        self._state = TESTING
        self._plan: list[bool] = []  # arms of the blocks still to come
        self._block: _Block | None = None  # the block under way
        self._ticks = 0  # ticks of the block under way so far
        self._pending: _Block | None = None  # a finished block waiting for its pair
        self._last_arm: bool | None = None  # the arm of the interval now ending
        self._started = False

    @property
    def state(self) -> str:
        return self._state

    def record(self, cost: float | None) -> None:
        """The cost of the interval that just ended (None: unknown, not counted)."""
        block = self._block
        if block is None or self._last_arm is None or self._last_arm != block.tilt:
            return
        # The block's first interval carries the switch itself: not counted.
        if self._ticks > 1 and cost is not None and math.isfinite(cost) and cost > 0:
            block.costs.append(cost)

    def next_arm(self) -> SwitchbackState:
        """Advance one tick: the arm for the coming interval, and the test's state."""
        s = self._settings
        if self._block is None or self._ticks >= s.block_ticks:
            self._close_block()
            self._block = _Block(self._next_block_arm())
            self._ticks = 0
        self._ticks += 1
        self._last_arm = self._block.tilt
        return self.snapshot(self._block.tilt)

    @property
    def scale(self) -> float:
        """The share of its bound the tilt runs at in the current state."""
        return _ROUNDS[self._state][2]

    def pause(self) -> None:
        """The tilt cannot run this tick (no model, no capacity): the block under way
        is dropped unjudged, so no pair mixes a tick without the model into it."""
        self._block = None
        self._pending = None
        self._plan = []
        self._ticks = 0
        self._last_arm = None

    def snapshot(self, tilt_on: bool = False) -> SwitchbackState:
        mean, t = self._test()
        return SwitchbackState(self._state, len(self._gains), mean, t, tilt_on, self.scale)

    def _next_block_arm(self) -> bool:
        if not self._plan:
            tilted, size, _ = _ROUNDS[self._state]
            arms = [True] * tilted + [False] * (size - tilted)
            self._rng.shuffle(arms)
            if not self._started:  # the first block shows what the model would do
                arms.sort(reverse=True)
                self._started = True
            self._plan = arms
        return self._plan.pop(0)

    def _close_block(self) -> None:
        block = self._block
        if block is None or not block.costs:
            return
        if self._pending is not None and self._pending.tilt != block.tilt:
            with_tilt, without = (block, self._pending) if block.tilt else (self._pending, block)
            base = sum(without.costs) / len(without.costs)
            tilted = sum(with_tilt.costs) / len(with_tilt.costs)
            self._gains.append(1.0 - tilted / base)
            self._pending = None
            self._decide()
        else:
            self._pending = block  # the latest block of an arm waits for the other arm

    def _test(self) -> tuple[float | None, float | None]:
        n = len(self._gains)
        if n < 2:
            return (self._gains[0] if n else None), None
        mean = sum(self._gains) / n
        variance = sum((g - mean) ** 2 for g in self._gains) / (n - 1)
        se = math.sqrt(variance / n)
        return mean, (mean / se if se > 0 else math.copysign(math.inf, mean or 1.0))

    def _decide(self) -> None:
        """Grant or revoke on strong evidence; lose either once the evidence weakens
        (``keep``): a decision is not kept for past merit, and a chance excursion of
        the statistic, which repeated looks make likely sooner or later, does not stay
        granted."""
        s = self._settings
        if len(self._gains) < s.min_pairs:
            return
        mean, t = self._test()
        if mean is None or t is None:
            return
        if mean > s.min_gain and t >= s.threshold:
            self._state = GRANTED
        elif mean < -s.max_regression and t <= -s.revoke_threshold:
            self._state = REVOKED
        elif (self._state == GRANTED and t < s.keep) or (self._state == REVOKED and t > -s.keep):
            self._state = TESTING
