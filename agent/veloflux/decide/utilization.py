"""What each server did between two observations: the capacity rung's raw material.

A proxy's counters say how many requests a server completed and failed, and its
current sessions and queue say how many are still in flight; a utilization signal
(a Prometheus feature: the server's busy share, 0..1, as the server itself or its
host reports it) says how busy it was meanwhile. Completions over busy seconds is the
server's capacity; what arrived over the interval is the load offered to it, which,
unlike completions, keeps growing past capacity, so overload can show.

Without a utilization signal, a server with a session limit (HAProxy's ``maxconn``,
the ``max_sessions`` column) gives one through Little's law: the proxy never has more
than ``maxconn`` requests in service there (the rest wait in the proxy's queue), so the
mean number in service over an interval is its requests x their mean response time
(HAProxy's ``Tr``, which excludes the queue: the interval's mean, recovered from the
moving average) and its busy share is that over ``maxconn``. Capacity is then
``maxconn / Tr``: a server that slows down shows it at once, with no agent on it.

Whatever the signal, a server whose backlog grew over the interval by more than chance
was saturated: it served all it could, so it was busy the whole interval and its
completions are its capacity (saturation throughput). That reading comes from the
proxy's own counters at the tick, where a busy share scraped by Prometheus arrives
a scrape late and, averaged over the moments before a fall, reads the server as
faster than it has become.

A row that cannot be trusted (a problem, a state other than UP, a counter that went
back after a reload, a missing value) gives no interval: a gap is better than a lie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from veloflux.domain.observation import EXTERNAL_PREFIX, Observation, ServerRow
from veloflux.history.ema import EMA_SAMPLES, interval_mean

if TYPE_CHECKING:
    import numpy as np

# HAProxy shows its moving averages of time in whole milliseconds.
_SHOWN_RESOLUTION_SECONDS = 0.001
# A backlog grew by more than chance when the rise of what is in flight passes this
# many standard deviations of a stable server's (see ``backlog_grew``), and this count.
SATURATION_SIGMAS = 3.0
MIN_SATURATION_GROWTH = 5.0


@dataclass(frozen=True)
class Work:
    """One server's interval: successful completions, failed requests (5xx and refused
    connections), the work offered to it (completions plus the change of what is in
    flight), the seconds it was busy (utilization x length; None without a signal),
    and the interval's length."""

    completions: float
    errors: float
    offered: float
    busy_seconds: float | None
    seconds: float
    resolution: float = 0.0  # of busy_seconds, relative (see capacity.Interval)
    saturated: bool = False  # its backlog grew by more than chance (``backlog_grew``)


def has_limit(row: ServerRow) -> bool:
    """Whether the proxy caps the server's sessions (so Little's law gives its busy share)."""
    return math.isfinite(row.max_sessions) and row.max_sessions > 0


def has_signal(observation: Observation, column: str | None, pool: str) -> bool:
    """Whether ``pool``'s servers carry a busy signal: the utilization column, or a
    session limit on any of them."""
    if _utilizations(observation, column) is not None:
        return True
    return any(has_limit(row) for row in observation.servers_of(pool))


def _with_little_busy(
    work: dict[tuple[str, str], Work], pairs: list[tuple[ServerRow, ServerRow, float]]
) -> None:
    """Busy seconds of the servers with a session limit (``pairs``: the earlier row,
    the later one and the interval's requests), in place: requests x mean Tr /
    maxconn, with their resolution, half a shown millisecond of Tr, which inverting the
    moving average multiplies by about N / k when the k requests are fewer than its N.
    One vectorized inversion for all of them: a pool of a thousand servers pays it once
    per tick, not a thousand times."""
    if not pairs:
        return
    columns = list(
        zip(
            *((o.response_time, r.response_time, o.requests_total, k) for o, r, k in pairs),
            strict=True,
        )
    )
    means = interval_mean(*columns).tolist()
    for (_, row, requests), mean in zip(pairs, means, strict=True):
        if not math.isfinite(mean) or mean <= 0:  # no request, or TCP mode (Tr is 0)
            continue
        key = (row.pool, row.server)
        seconds = work[key].seconds
        rounding = 0.5 * _SHOWN_RESOLUTION_SECONDS * max(1.0, EMA_SAMPLES / requests)
        busy = min(requests * mean / row.max_sessions, seconds)
        work[key] = replace(work[key], busy_seconds=busy, resolution=rounding / mean)


def _counter_delta(before: float, after: float) -> float | None:
    if not (math.isfinite(before) and math.isfinite(after)) or after < before:
        return None
    return after - before


def _in_flight(row: ServerRow) -> float:
    sessions = row.sessions if math.isfinite(row.sessions) else 0.0
    queue = row.queue if math.isfinite(row.queue) else 0.0
    return sessions + queue


def backlog_grew(before: np.ndarray, after: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per reading: whether a server's in flight rising from ``before`` to ``after``
    over one interval shows a backlog growing, not a stable server's ordinary
    fluctuation (False where either is NaN). One test for every row at once: the
    capacity rung's tick and the outlier guard's history both read a whole pool.

    In flight at two instants an interval apart is, for a server keeping up, two
    nearly independent draws of a queue's length, whose spread grows with its mean: a
    single-slot queue's length is geometric, standard deviation about sqrt(m (1 + m))
    at mean m, the widest a server's can be. The mean is what Little's law
    ``expected`` (the interval's rate x the proxy's mean time per request; NaN where
    unknown) or the earlier reading says, whichever is higher: a low earlier reading
    by chance must not make an ordinary rise look like a backlog. The rise counts when
    it passes ``SATURATION_SIGMAS`` of the spread of a difference of two draws (padded
    by one request, so that an idle server's is not zero) and
    ``MIN_SATURATION_GROWTH``. At utilization 0.9 on one slot, the widest case, that
    flags about one interval in two hundred; the server was then busy nearly all of it
    anyway, so the reading is off by its small idle share at most.
    """
    import numpy as np  # here, not at the top: the CLI's start-up need not load numpy

    with np.errstate(invalid="ignore"):
        mean = np.fmax(np.fmax(before, np.nan_to_num(expected, nan=0.0)), 0.0)
        spread = np.sqrt(2.0 * (mean + 1.0) * (mean + 2.0))
        growth = after - before
        grew = (growth >= MIN_SATURATION_GROWTH) & (growth > SATURATION_SIGMAS * spread)
    return np.asarray(grew & np.isfinite(before) & np.isfinite(after), dtype=bool)


def _expected_in_flight(row: ServerRow, requests: float, seconds: float) -> float:
    """Little's law: the interval's request rate x the proxy's mean time per request
    (queue included where it shows it), NaN where it shows none."""
    each = row.total_time if math.isfinite(row.total_time) else row.response_time
    return requests / seconds * each if math.isfinite(each) and each >= 0 else math.nan


def utilization_column(feature: str | None) -> str | None:
    """The Observation's column for a configured utilization feature."""
    return EXTERNAL_PREFIX + feature if feature else None


def _utilizations(observation: Observation, column: str | None) -> tuple[float, ...] | None:
    if column is None or observation.external is None:
        return None
    for name, values in observation.external.values:
        if name == column:
            return values
    return None


def interval_work(
    previous: Observation, current: Observation, utilization: str | None
) -> dict[tuple[str, str], Work]:
    """Each trustworthy server's ``Work`` between ``previous`` and ``current``, by
    (pool, server). ``utilization`` is the Observation column holding each server's
    busy share (``utilization_column``), or None when there is no such signal (then a
    server with a session limit gives its busy seconds by Little's law)."""
    seconds = (current.taken_at - previous.taken_at).total_seconds()
    if seconds <= 0:
        return {}
    before = {(r.pool, r.server): r for r in previous.rows}
    shares = _utilizations(current, utilization)
    out: dict[tuple[str, str], Work] = {}
    limited: list[tuple[ServerRow, ServerRow, float]] = []
    growth: list[tuple[float, float, float]] = []  # in flight before, after, expected
    for i, row in enumerate(current.rows):
        old = before.get((row.pool, row.server))
        if old is None or row.problem or old.problem or row.state != "UP" or old.state != "UP":
            continue
        requests = _counter_delta(old.requests_total, row.requests_total)
        failed = _counter_delta(old.responses_5xx_total, row.responses_5xx_total)
        refused = _counter_delta(old.connect_errors_total, row.connect_errors_total)
        if requests is None or failed is None:
            continue
        completions = max(0.0, requests - failed)
        errors = failed + (refused or 0.0)
        was, now = _in_flight(old), _in_flight(row)
        offered = max(0.0, completions + now - was)
        growth.append((was, now, _expected_in_flight(row, requests, seconds)))
        busy = None
        if shares is not None:
            share = shares[i]
            if math.isfinite(share) and share >= 0:
                busy = min(share, 1.0) * seconds
        elif has_limit(row) and requests > 0:
            limited.append((old, row, requests))
        out[(row.pool, row.server)] = Work(completions, errors, offered, busy, seconds)
    _with_little_busy(out, limited)
    if not out:
        return out
    import numpy as np  # as in backlog_grew

    earlier, later, expected = np.array(growth, dtype=float).T
    grew = backlog_grew(earlier, later, expected)
    # A saturated server was busy the whole interval, whatever its signal read.
    for key, full in zip(list(out), grew.tolist(), strict=True):
        if full:
            out[key] = replace(out[key], busy_seconds=seconds, resolution=0.0, saturated=True)
    return out
