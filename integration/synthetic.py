"""Synthetic journal history: many servers, many intervals, in seconds instead of days.

For tests and benchmarks that need more history than a test can record in real time.
Each server is a small queue with its own capacity; the pool's offered load follows a
daily wave with noise; each server's latency rises with its utilisation
(``service / (1 - utilisation)``, capped), some servers fail a share of requests, and
the journal columns are produced the way HAProxy produces them: cumulative counters,
and response times as a 512-request moving average rounded to whole milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

EMA_SAMPLES = 512


@dataclass(frozen=True)
class SyntheticPool:
    """The shape of the history to make."""

    servers: int = 10
    intervals: int = 1000
    interval_seconds: float = 10.0
    pool_rate: float = 400.0  # requests/s, mean over the day
    daily_amplitude: float = 0.3
    seed: int = 1
    failing_share: float = 0.1  # share of servers that fail some requests
    pool: str = "app"


def synthetic_samples(spec: SyntheticPool) -> pd.DataFrame:
    """Journal-format samples (one row per server per interval)."""
    rng = np.random.default_rng(spec.seed)
    n, t = spec.servers, spec.intervals
    service = rng.uniform(0.01, 0.03, n)  # seconds per request at no load
    capacity = rng.uniform(0.6, 1.4, n) * spec.pool_rate / n * 1.6  # requests/s
    failing = rng.random(n) < spec.failing_share
    error_p = np.where(failing, rng.uniform(0.05, 0.3, n), 0.001)
    times = 1_790_000_000.0 + np.arange(t) * spec.interval_seconds
    wave = 1 + spec.daily_amplitude * np.sin(2 * np.pi * times / 86400.0)
    offered = spec.pool_rate * wave * rng.lognormal(0, 0.1, t)
    weights = capacity / capacity.sum()
    share = weights[None, :] * rng.lognormal(0, 0.15, (t, n))
    share /= share.sum(axis=1, keepdims=True)
    rate = offered[:, None] * share  # (t, n)
    util = np.minimum(rate / capacity[None, :], 0.97)
    latency = service[None, :] / (1 - util) * rng.lognormal(0, 0.2, (t, n))
    requests = rng.poisson(rate * spec.interval_seconds)
    errors = rng.binomial(requests, error_p[None, :])
    ema = _moving_average(latency, requests)
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(np.repeat(times, n), unit="s", utc=True),
            "source": "haproxy",
            "pool": spec.pool,
            "server": np.tile([f"s{i}" for i in range(n)], t),
            "address": "",
            "state": "UP",
            "backup": False,
            "weight": np.tile(np.rint(weights * 100 * n / n), t).astype(float),
            "initial_weight": 100.0,
            "algorithm": "roundrobin",
            "sessions": (rate * latency).reshape(-1),
            "queue": 0.0,
            "session_rate": rate.reshape(-1),
            "sessions_total": np.cumsum(requests, axis=0).reshape(-1).astype(float),
            "requests_total": np.cumsum(requests, axis=0).reshape(-1).astype(float),
            "responses_5xx_total": np.cumsum(errors, axis=0).reshape(-1).astype(float),
            "response_errors_total": 0.0,
            "connect_errors_total": 0.0,
            "queue_time": 0.0,
            "connect_time": 0.0,
            "response_time": np.round(ema * 1000).reshape(-1) / 1000,
            "total_time": np.round(ema * 1000).reshape(-1) / 1000,
            "since_state_change": 0.0,
            "check_status": "",
            "problem": "",
            "max_sessions": np.nan,
            "proxy_pid": 1,
            "proxy_started": 1_790_000_000.0,
        }
    )
    return frame


def _moving_average(latency: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """HAProxy's per-request EMA after each interval's ``requests`` of mean ``latency``."""
    a = 1 - 1 / EMA_SAMPLES
    out = np.empty_like(latency)
    avg = latency[0].copy()
    for i in range(latency.shape[0]):
        decay = a ** requests[i]
        avg = latency[i] + (avg - latency[i]) * decay
        out[i] = avg
    return out
