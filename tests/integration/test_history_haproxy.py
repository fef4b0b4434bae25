"""History against a real HAProxy: rates and interval latencies from its own counters.

Two demo backends with constant service times (5 ms and 40 ms) behind HAProxy, seeded
Poisson load, one observation a second journalled to SQLite, then ``derive_rates``:
the recovered request rates must match what the load generator offered, the recovered
interval latencies must tell the slow server from the fast one, and a reload must show
up as a reset, never as a negative number.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from integration.loadgen import LoadResult, arrival_offsets, run_load_sync
from integration.stack import DemoServer, LocalStack
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.source import HAProxySource
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

RATE_RPS, DURATION_S, SEED = 150.0, 8.0, 11
PACE_S = 1.0


def _offered_per_interval(rates: pd.DataFrame, load_started: float) -> pd.DataFrame:
    """Requests HAProxy saw per observation interval (both servers) beside the number
    the seeded schedule offered in the same wall-clock window."""
    per_time = rates.groupby("time").agg(
        requests=("requests", "sum"), interval=("interval_seconds", "first")
    )
    sent_at = load_started + np.fromiter(arrival_offsets(RATE_RPS, DURATION_S, SEED), float)
    ends = np.array([t.timestamp() for t in per_time.index])
    starts = ends - per_time["interval"].to_numpy()
    per_time["offered"] = [
        ((sent_at > a) & (sent_at <= b)).sum() for a, b in zip(starts, ends, strict=True)
    ]
    return per_time


def test_rates_and_interval_latency_from_real_haproxy_counters(tmp_path: Path) -> None:
    servers = (
        DemoServer("fast", mean_ms=5, distribution="constant", concurrency=16),
        DemoServer("slow", mean_ms=40, distribution="constant", concurrency=16),
    )
    events = Events()
    results: list[LoadResult] = []
    with (
        LocalStack(tmp_path / "stack", servers) as stack,
        Journal(tmp_path / "history.db", events) as journal,
    ):
        source = HAProxySource(
            RuntimeAPI(stack.admin_socket), lambda: datetime.now(UTC), events, backends=["app"]
        )
        journal.append(source.observe())
        load = threading.Thread(
            target=lambda: results.append(
                run_load_sync(stack.url, RATE_RPS, DURATION_S, max_requests=2000, seed=SEED)
            )
        )
        load_started = time.time()
        load.start()
        deadline = time.monotonic() + DURATION_S + 10
        tick = time.monotonic()
        while load.is_alive() and time.monotonic() < deadline:
            tick += PACE_S
            load.join(timeout=max(0.0, tick - time.monotonic()))  # the observation pacing
            journal.append(source.observe())
        assert not load.is_alive(), "the load generator overran its deadline"
        before_reload = journal.count()
        span = journal.span()
        assert span is not None
        last_before_reload = span[1]
        assert stack.haproxy is not None
        stack.haproxy.reload()
        journal.append(source.observe())
        journal.append(source.observe())
        history = journal.read()

    (load_result,) = results
    assert load_result.errors == 0
    assert load_result.timeouts == 0
    assert len(history) == before_reload + 4
    assert not events.count("history_write_failed")
    rates = derive_rates(history)
    live = rates[rates["time"] <= last_before_reload]
    across = rates[rates["time"] > last_before_reload]

    # Every request HAProxy forwarded is accounted for, once.
    assert live["requests"].sum() == load_result.completed

    per_interval = _offered_per_interval(live, load_started)
    busy = per_interval[per_interval["offered"] >= 50]
    assert len(busy) >= 5
    ratio = busy["requests"] / busy["offered"]
    assert ratio.between(0.8, 1.2).all(), per_interval
    full = busy.iloc[1:-1]  # intervals wholly inside the load window
    mean_rate = full["requests"].sum() / full["interval"].sum()
    assert mean_rate == pytest.approx(RATE_RPS, rel=0.2)

    latency = live.pivot_table(index="time", columns="server", values="interval_response_time")
    counts = live.pivot_table(index="time", columns="server", values="requests")
    both = latency[(counts["fast"] >= 50) & (counts["slow"] >= 50)]
    assert len(both) >= 4
    assert (both["slow"] > 3 * both["fast"]).all(), both
    # And close to the truth, not just ordered: whole-ms readings, k ~ 75 per interval.
    assert 0.002 <= both["fast"].median() <= 0.012
    assert 0.035 <= both["slow"].median() <= 0.060

    assert not live["reset"].any()
    assert len(across) == 4
    reload_rows = across[across["reset"]]
    assert sorted(reload_rows["server"]) == ["fast", "slow"]
    assert reload_rows["requests"].isna().all()
    assert reload_rows["request_rate"].isna().all()
    assert (across.loc[~across["reset"], "request_rate"] == 0).all()
    numeric = rates.select_dtypes("number").drop(columns=["proxy_pid"])
    assert not (numeric < 0).any().any()
