"""Split a pool's forecast request rate across its servers by water-filling.

Each server's predicted cost of serving rate ``r`` is ``r * c(r)``, with ``c`` the
predicted per-request cost (latency plus a penalty for errors) from the model's curves.
Handing the rate out in small increments, each to the server whose total cost rises
least, is greedy water-filling (docs/architecture.md, "Optimizer"). With per-request
costs that never fall as load rises, the greedy split is the same as filling the
servers' cost segments in order of their marginal cost, which numpy does at once: sort
every segment's slope, take segments until the rate is handed out, split the last one.
For a 1,000-server pool that is under a millisecond (``water_fill`` in the split of
bench/bench_learning.py's per-tick figure, docs/benchmarks.md).

Naive "weight = 1/latency" is deliberately absent: it herds traffic onto whichever
server looked fastest a moment ago and oscillates.
"""

from __future__ import annotations

import numpy as np

# Candidate rates as multiples of each server's current rate: a trust region. The
# model has only seen loads near what each server gets today (static weights barely
# vary it), and trees are flat outside what they saw, so a prediction at four times
# today's load would be a guess. Moving at most 50% per tick and learning from each
# tick keeps every decision where the model has evidence.
TRUST_MULTIPLES = np.array([0.0, 0.5, 0.75, 1.0, 1.25, 1.5])
STATUS_QUO = 3  # the grid's column at each server's current rate (multiple 1.0)


def rate_grid(current_rates: np.ndarray, total_rate: float) -> np.ndarray:
    """(servers, points) candidate rates within each server's trust region.

    A server with no current traffic (new, or weighted down to nothing) is given a
    region around a small part of the fair share, so it can be brought back slowly.
    """
    current = np.nan_to_num(np.asarray(current_rates, dtype=float), nan=0.0)
    fair = total_rate / max(len(current), 1)
    anchor = np.where(current > 0, current, 0.25 * fair)
    capacity = float((anchor * TRUST_MULTIPLES[-1]).sum())
    if 0 < capacity < total_rate:  # a surge beyond every region: widen them all alike
        anchor = anchor * (total_rate / capacity)
    grid: np.ndarray = anchor[:, None] * TRUST_MULTIPLES[None, :]
    return grid


def water_fill(
    rates: np.ndarray, cost_per_request: np.ndarray, total_rate: float, keep_floor: bool = True
) -> np.ndarray:
    """The rate each server gets, summing to ``total_rate`` (or to all the grid holds).

    ``rates`` and ``cost_per_request`` are (servers, points), rates ascending from 0.
    Costs are made non-decreasing first, so marginal costs are too and every server's
    segments are taken in order. Segments whose marginal cost ties with the last one
    taken share what is left in proportion to their length, so identical servers get
    identical rates. With ``keep_floor`` every server keeps at least its grid's second
    point (the bottom of its trust region): no server is emptied in one tick on the
    strength of a prediction.
    """
    cost = np.maximum.accumulate(np.nan_to_num(cost_per_request, nan=np.inf), axis=1)
    lengths = np.diff(rates, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # d(r c(r))/dr over a segment, written so a flat cost gives exactly that cost.
        slopes = cost[:, 1:] + rates[:, :-1] * np.diff(cost, axis=1) / lengths
    slopes = np.where(lengths > 0, np.nan_to_num(slopes, nan=np.inf), np.inf)
    slopes = np.maximum.accumulate(slopes, axis=1)
    if keep_floor:
        slopes[:, 0] = -np.inf
    owner = np.repeat(np.arange(rates.shape[0]), lengths.shape[1])
    flat_len, flat_slope = lengths.reshape(-1), slopes.reshape(-1)
    usable = (flat_slope < np.inf) & (flat_len > 0)
    owner, flat_len, flat_slope = owner[usable], flat_len[usable], flat_slope[usable]
    assigned = np.zeros(rates.shape[0])
    if len(flat_len) == 0:
        return assigned
    order = np.argsort(flat_slope, kind="stable")
    cumulative = np.cumsum(flat_len[order])
    if cumulative[-1] <= total_rate:  # more traffic than the grid holds: fill it all
        np.add.at(assigned, owner, flat_len)
        return assigned
    marginal = flat_slope[order[int(np.searchsorted(cumulative, total_rate))]]
    tied = np.isclose(flat_slope, marginal, rtol=1e-12, atol=0.0)
    below = (flat_slope < marginal) & ~tied
    np.add.at(assigned, owner[below], flat_len[below])
    left = total_rate - float(flat_len[below].sum())
    np.add.at(assigned, owner[tied], flat_len[tied] * (left / float(flat_len[tied].sum())))
    return assigned


def total_cost(rates: np.ndarray, cost_per_request: np.ndarray, assigned: np.ndarray) -> float:
    """The predicted total cost, sum of ``r * c(r)``, of giving each server ``assigned``.

    ``r * c(r)`` is interpolated linearly between the grid's points, the same
    piecewise-linear cost ``water_fill`` minimises, so the cost of the status quo (a
    grid point) and of the water-filled split are judged on one scale.
    """
    cost = np.maximum.accumulate(np.nan_to_num(cost_per_request, nan=np.inf), axis=1)
    with np.errstate(invalid="ignore"):
        load = np.where(rates > 0, rates * cost, 0.0)
    rows = np.arange(rates.shape[0])
    at = np.clip((rates <= assigned[:, None]).sum(axis=1) - 1, 0, rates.shape[1] - 2)
    x0, x1 = rates[rows, at], rates[rows, at + 1]
    y0, y1 = load[rows, at], load[rows, at + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(x1 > x0, (assigned - x0) / (x1 - x0), 0.0)
        value = np.where(t > 0, y0 + t * (y1 - y0), y0)
    return float(value.sum())
