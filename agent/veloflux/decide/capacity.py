"""Each server's capacity, without a model: successful completions per busy second.

A server that completed ``c`` requests while busy for ``b`` seconds (utilization x
interval length, the slots it has counted as one) serves ``c / b`` requests per
second of full use. That is the signal the utilization heuristic of gRPC and Envoy
reads, and the one rung of the confidence ladder that needs no training: weights
proportional to capacity equalize utilization across the pool.

The estimate is a ratio of sums over a window of recent intervals (an interval's own
ratio is too noisy at a few requests), with its standard error. Capacity changes (a
slow deploy, a noisy neighbour, a recovery) are found by comparing each new
interval's ratio with the window's median, in robust standard deviations: quickly
downward (one interval far below, or two clearly below) and slowly upward (several
intervals above in a row), as peak-EWMA is quick to believe bad news and slow to
believe good. After a change the window restarts from the intervals that showed it,
and the estimate is given no confidence for a blackout of a few intervals (after a
fall, the new, lower figure may still lower the weight until it is confident). The
run's first interval, which straddles the change, leaves the window as soon as the
intervals after it can carry the estimate alone; data
older than ``max_age_seconds`` expires. Idle intervals say nothing about capacity and
are skipped.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

# MAD x 1.4826 estimates a normal distribution's standard deviation.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class CapacitySettings:
    """How much history an estimate rests on, and how a change is told from noise."""

    window_intervals: int = 60
    min_intervals: int = 5  # fewer intervals in the first window: no confidence
    # After a change the window restarts from the run of intervals that showed it: that
    # run is evidence already, and its standard error says how much.
    min_intervals_after_change: int = 2
    max_age_seconds: float = 180.0  # the newest interval older than this: expired
    min_busy_seconds: float = 1e-3  # an interval less busy than this is idle: skipped
    # After a change, no confidence for this many intervals (after a fall the new
    # figure may still lower a weight). One: under capacity that drifts every few
    # ticks, longer blackouts and warm-ups kept most servers unconfident, their
    # weights frozen, and cost more than the noise they kept out (drift-slower in the
    # simulator: SLO p99 1.1x static weights' with 3 and 5 intervals, 0.93x with these).
    blackout_intervals: int = 1
    # A CUSUM of each interval's deviation from the window's median, in standard
    # deviations, less ``slack`` per interval: a change once the evidence passes the
    # threshold. Downward needs less evidence than upward (bad news first).
    slack_sigmas: float = 1.0
    down_threshold: float = 5.0
    up_threshold: float = 8.0
    max_relative_error: float = 0.25  # a standard error this large gives confidence 0


@dataclass(frozen=True)
class Interval:
    """One server's work in one interval: when it ended, successful completions, and
    the seconds it was busy (utilization x the interval's length)."""

    at: float
    completions: float
    busy_seconds: float
    # The busy measurement's own resolution, relative (one standard deviation): a
    # busy share from a moving average shown in whole milliseconds carries that
    # rounding, which no count of requests averages away.
    resolution: float = 0.0


@dataclass(frozen=True)
class CapacityEstimate:
    """Requests per busy second, its standard error, and how far to trust it (0..1);
    ``reason`` says why confidence is low ("" when it is not)."""

    capacity: float | None
    stderr: float | None
    confidence: float
    intervals: int
    reason: str = ""
    # After a downward change, until the new regime's estimate is confident: the new,
    # lower figure is good enough to take load off the server, not yet to give it more.
    fell: bool = False


@dataclass
class _Series:
    intervals: deque[Interval]
    below: float = 0.0  # evidence that capacity fell (CUSUM, in standard deviations)
    above: float = 0.0  # evidence that it rose
    fell: list[Interval] = field(default_factory=list)  # the intervals behind ``below``
    rose: list[Interval] = field(default_factory=list)  # and behind ``above``
    blackout: int = 0  # intervals still to pass before the estimate is trusted
    changes: int = 0
    fell_last: bool = False  # the last change found was downward
    # The first interval of the run that showed the last change: the change began
    # somewhere inside it, so part of it ran at the old speed.
    straddle: Interval | None = None


class CapacityEstimator:
    """Capacity per server from the intervals it is fed, one ``observe`` per server per
    tick; ``estimate`` is cheap and changes nothing."""

    def __init__(self, settings: CapacitySettings | None = None) -> None:
        self._settings = settings or CapacitySettings()
        self._series: dict[str, _Series] = {}

    def observe(self, server: str, interval: Interval) -> None:
        """Add one interval (an idle or malformed one is skipped)."""
        s = self._settings
        if not (
            math.isfinite(interval.completions)
            and math.isfinite(interval.busy_seconds)
            and interval.completions >= 0
            and interval.busy_seconds >= s.min_busy_seconds
        ):
            return
        series = self._series.setdefault(server, _Series(deque(maxlen=s.window_intervals)))
        if series.blackout > 0:
            series.blackout -= 1
        run = self._change(series, interval)
        if run:
            series.intervals.clear()
            series.intervals.extend(run)  # the new regime starts with the run that showed it
            series.blackout = s.blackout_intervals
            series.changes += 1
            series.fell_last = run is series.fell
            series.straddle = run[0]
            series.below = series.above = 0.0
            series.fell, series.rose = [], []
            return
        series.intervals.append(interval)

    def estimate(self, server: str, now: float) -> CapacityEstimate:
        """The server's capacity as of ``now`` (epoch seconds of the same clock)."""
        s = self._settings
        series = self._series.get(server)
        if series is None or not series.intervals:
            return CapacityEstimate(None, None, 0.0, 0, "no busy interval yet")
        window = list(series.intervals)
        needed = s.min_intervals if series.changes == 0 else s.min_intervals_after_change
        if series.straddle is not None and window[0] is series.straddle and len(window) > needed:
            # A change's first interval ran partly at the old speed and, in a ratio of
            # sums, pulls the new figure toward the old one. It counts only until the
            # intervals after it are enough to be confident without it; it stays in
            # the window the change test reads, as every interval does.
            window = window[1:]
        capacity, stderr = ratio_of_sums(window)
        n = len(window)
        if now - window[-1].at > s.max_age_seconds:
            return CapacityEstimate(capacity, stderr, 0.0, n, "expired: no recent busy interval")
        relative = stderr / capacity if capacity > 0 and stderr is not None else math.inf
        confidence = max(0.0, min(1.0, 1.0 - relative / s.max_relative_error))
        if series.blackout == 0 and n >= needed and confidence > 0:
            return CapacityEstimate(capacity, stderr, confidence, n)
        if series.blackout > 0:
            reason = "blackout after a capacity " + ("drop" if series.fell_last else "rise")
        elif n < needed:
            reason = f"warming up ({n} intervals)"
        elif capacity <= 0 or stderr is None:
            return CapacityEstimate(capacity, stderr, 0.0, n, "no completion in the window")
        else:
            reason = f"standard error {relative:.0%} of the estimate"
        if not (series.changes > 0 and series.fell_last):
            return CapacityEstimate(capacity, stderr, 0.0, n, reason)
        # Bad news is acted on before it is precise: after a fall, a figure not yet
        # confident may still lower the weight (a server at a quarter of its speed
        # builds a queue every interval it keeps its old share), never raise it. It is
        # the lower of the new window's ratio and its newest interval's, since the run
        # that showed the fall begins with intervals only partly at the new speed.
        newest = window[-1]
        capacity = min(capacity, newest.completions / newest.busy_seconds)
        return CapacityEstimate(capacity, stderr, 0.0, n, reason, fell=True)

    def changes(self, server: str) -> int:
        """How many capacity changes were found for ``server`` (for tests and status)."""
        series = self._series.get(server)
        return series.changes if series else 0

    def forget(self, server: str) -> None:
        """Drop a server that left the pool."""
        self._series.pop(server, None)

    def _change(self, series: _Series, interval: Interval) -> list[Interval]:
        """Add ``interval``'s evidence; the intervals of the run that shows a change of
        capacity once there is enough of it, else an empty list.

        The spread is the window's own (median absolute deviation), but never below
        the noise of counting: an interval that was busy ``b`` seconds at capacity
        ``C`` completes about ``C b`` requests, give or take their square root, so its
        ratio varies by ``sqrt(C / b)`` at least, and by the busy measurement's own
        resolution. Without that floor a short, lucky window (or one whose readings
        all rounded the same way) would call ordinary noise a change.
        """
        s = self._settings
        if len(series.intervals) < s.min_intervals:
            return []
        ratios = [i.completions / i.busy_seconds for i in series.intervals]
        median = statistics.median(ratios)
        spread = _MAD_TO_SIGMA * statistics.median(abs(r - median) for r in ratios)
        counting = math.sqrt(max(median, 0.0) / interval.busy_seconds)
        sigma = max(spread, math.hypot(counting, median * interval.resolution), 1e-9)
        z = (interval.completions / interval.busy_seconds - median) / sigma
        series.below = max(0.0, series.below - z - s.slack_sigmas)
        series.above = max(0.0, series.above + z - s.slack_sigmas)
        series.fell = [*series.fell, interval] if series.below > 0 else []
        series.rose = [*series.rose, interval] if series.above > 0 else []
        if series.below >= s.down_threshold:
            return series.fell
        if series.above >= s.up_threshold:
            return series.rose
        return []


def ratio_of_sums(window: list[Interval]) -> tuple[float, float | None]:
    """Completions per busy second over ``window``, and its standard error (the ratio
    estimator's, from the residuals ``c - R b``); None with fewer than two intervals."""
    busy = sum(i.busy_seconds for i in window)
    ratio = sum(i.completions for i in window) / busy
    n = len(window)
    if n < 2:
        return ratio, None
    residuals = sum((i.completions - ratio * i.busy_seconds) ** 2 for i in window)
    mean_busy = busy / n
    return ratio, math.sqrt(residuals / (n * (n - 1))) / mean_busy
