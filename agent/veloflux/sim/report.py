"""What a simulation reports: latency quantiles, errors, timeouts, throughput and
balance after the warm-up, per seed, then the mean over seeds with a 95% interval.

Requests are counted from the end of the warm-up to ``duration - deadline`` (a later
one could not have timed out yet). Latency is what the client saw: a request slower
than the deadline counts as a timeout and its latency as the deadline (the client gave
up there); a request still unfinished at the end counts the same. Errors (fast 5xx,
refused connections) count in ``error_rate``, not as timeouts, and their (short)
latencies stay in the quantiles, as a proxy's own histogram would keep them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from veloflux.sim.engine import RunResult
from veloflux.sim.scenario import Scenario

FIGURES = (
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "slo_p99_ms",
    "success_p99_ms",
    "error_rate",
    "timeout_rate",
    "throughput_rps",
    "max_over_mean_utilization",
)


def figures(
    run: RunResult, scenario: Scenario, busy_at_warmup: Sequence[float]
) -> dict[str, float]:
    """One run's figures after the warm-up."""
    deadline = scenario.deadline_ms / 1000.0
    end = scenario.duration_s - deadline
    counted = (run.arrival >= scenario.warmup_s) & (run.arrival < end)
    latency = run.latency[counted]
    error = run.error[counted]
    unfinished = np.isnan(latency)
    timeout = (unfinished | (latency > deadline)) & ~error
    seen = np.where(unfinished, deadline, np.minimum(latency, deadline))
    n = max(len(seen), 1)
    span = max(end - scenario.warmup_s, 1e-9)
    quantiles = np.quantile(seen, [0.5, 0.95, 0.99, 0.999]) if len(seen) else [math.nan] * 4
    missed = np.where(error, deadline, seen)
    slo_p99 = float(np.quantile(missed, 0.99)) if len(missed) else math.nan
    answered = seen[~error]
    success_p99 = float(np.quantile(answered, 0.99)) if len(answered) else math.nan
    measured = scenario.duration_s - scenario.warmup_s
    utilization = [  # the share of its slots' time each server spent serving
        (busy - before) / (slots * measured)
        for busy, before, slots in zip(
            run.busy_seconds, busy_at_warmup, run.concurrency, strict=True
        )
    ]
    mean_util = float(np.mean(utilization)) if utilization else 0.0
    return {
        "p50_ms": float(quantiles[0]) * 1000,
        "p95_ms": float(quantiles[1]) * 1000,
        "p99_ms": float(quantiles[2]) * 1000,
        "p999_ms": float(quantiles[3]) * 1000,
        "slo_p99_ms": slo_p99 * 1000,
        "success_p99_ms": success_p99 * 1000,
        "error_rate": float(error.sum()) / n,
        "timeout_rate": float(timeout.sum()) / n,
        "throughput_rps": float((~error & ~timeout).sum()) / span,
        "max_over_mean_utilization": max(utilization) / mean_util if mean_util > 0 else math.nan,
    }


def interval(values: Sequence[float]) -> dict[str, Any]:
    """The mean and its 95% confidence interval (Student's t over the seeds), over the
    seeds that have the figure (a model that never trained has no MAE); ``null`` when
    none has: JSON has no NaN."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if len(data) == 0:
        return {"mean": None, "ci95": [None, None]}
    mean = float(np.mean(data))
    if len(data) < 2:
        return {"mean": mean, "ci95": [mean, mean]}
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(data) - 1) * np.std(data, ddof=1) / math.sqrt(len(data)))
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def summary(
    scenario: Scenario,
    dispatcher: str,
    strategy: str,
    per_seed: Sequence[dict[str, float]],
    seeds: Sequence[int],
    notes: Sequence[dict[str, float]] = (),
) -> dict[str, Any]:
    """The ``simulate --output json`` object."""
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "dispatcher": dispatcher,
        "strategy": strategy,
        "seeds": list(seeds),
    }
    for name in FIGURES:
        out[name] = interval([run[name] for run in per_seed])
    keys = sorted({k for note in notes for k in note})
    for key in keys:
        out[key] = interval([note.get(key, math.nan) for note in notes])
    return out
