"""History against a real HAProxy: rates and interval latencies from its own counters.

Two demo backends with constant service times (5 ms and 40 ms) behind HAProxy. The
load comes in batches of known size, each sent to one server (the other's weight is 0
meanwhile), and one observation is journalled after each batch, once HAProxy has
counted all of it; then ``derive_rates``. The recovered request counts must be the
batch sizes exactly; each server's recovered interval latency must lie between its
service time and what the load generator measured for the same requests (bounds that
hold by construction however busy the machine is: the backend sleeps that long before
answering, and HAProxy sees the answer before the client does); and a reload must show
up as a reset, never as a negative number.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from integration.loadgen import LoadResult, run_load_sync
from integration.stack import DemoServer, LocalStack
from tests.integration.daemon_helpers import wait_until
from veloflux.domain.observation import Observation
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.source import HAProxySource
from veloflux.history.journal import Journal
from veloflux.history.rates import EMA_SAMPLES, derive_rates
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

SERVICE_S = {"fast": 0.005, "slow": 0.040}
# (server, requests) per interval; each server stays under HAProxy's 512-request window,
# where its average is a plain running mean.
BATCHES = (("fast", 60), ("slow", 60), ("fast", 100), ("slow", 100))


def only_to(stack: LocalStack, server: str) -> None:
    """Every new request to ``server``: the other one's weight is 0."""
    commands = [f"set weight app/{name} {100 if name == server else 0}" for name in SERVICE_S]
    assert RuntimeAPI(stack.admin_socket).run_many(commands) == ["", ""]


def counted(source: HAProxySource, answered: float | None = None) -> Observation:
    """An observation once HAProxy has counted ``answered`` requests in all (any count
    if None) and has none in flight, so that every request's time is in the averages."""

    def settled() -> Observation | None:
        observation = source.observe()
        rows = observation.servers_of("app")
        total = sum(row.requests_total for row in rows)
        idle = all(row.sessions == 0 for row in rows)
        return observation if idle and answered in (None, total) else None

    observation = wait_until(settled, f"HAProxy to have counted {answered} requests, idle")
    assert observation is not None
    return observation


def tolerance_s(before: float, requests: float) -> float:
    """How far an interval mean recovered from HAProxy's averages can stray from the
    mean of the requests' own times: each average is in whole ms, rounded up, and
    inverting a running mean multiplies that by about (count after) / requests; a
    request's own time is in whole ms too."""
    return (2 + 2 * (before + requests) / requests) / 1000


def test_rates_and_interval_latency_from_real_haproxy_counters(tmp_path: Path) -> None:
    assert all(sum(n for s, n in BATCHES if s == name) < EMA_SAMPLES for name in SERVICE_S)
    servers = tuple(
        DemoServer(name, mean_ms=seconds * 1000, distribution="constant", concurrency=16)
        for name, seconds in SERVICE_S.items()
    )
    events = Events()
    loads: list[LoadResult] = []
    with (
        LocalStack(tmp_path / "stack", servers) as stack,
        Journal(tmp_path / "history.db", events) as journal,
    ):
        source = HAProxySource(
            RuntimeAPI(stack.admin_socket), lambda: datetime.now(UTC), events, backends=["app"]
        )
        first = counted(source)
        journal.append(first)
        answered = sum(row.requests_total for row in first.servers_of("app"))
        for seed, (server, requests) in enumerate(BATCHES, start=1):
            only_to(stack, server)
            # An hour's schedule: max_requests ends it, and the timeout is far beyond
            # any answer, so every request is sent and answered whatever the machine.
            load = run_load_sync(stack.url, 200, 3600, requests, timeout_s=30, seed=seed)
            assert (load.ok, load.served_by) == (requests, {server: requests}), load
            loads.append(load)
            answered += load.completed
            journal.append(counted(source, answered))
        before_reload = journal.count()
        span = journal.span()
        assert span is not None
        last_before_reload = span[1]
        assert stack.haproxy is not None
        stack.haproxy.reload()
        journal.append(source.observe())
        journal.append(source.observe())
        history = journal.read()

    assert len(history) == before_reload + 4
    assert not events.count("history_write_failed")
    rates = derive_rates(history)
    live = rates[rates["time"] <= last_before_reload]
    across = rates[rates["time"] > last_before_reload]

    # Every interval holds its batch, exactly, and only on the server it was sent to.
    intervals = sorted(live["time"].unique())
    assert len(intervals) == len(BATCHES)
    served = dict.fromkeys(SERVICE_S, 0.0)
    for at, (server, requests), load in zip(intervals, BATCHES, loads, strict=True):
        rows = live[live["time"] == at].set_index("server")
        assert rows["requests"].to_dict() == {
            name: (requests if name == server else 0) for name in SERVICE_S
        }
        assert (rows["request_rate"] * rows["interval_seconds"]).to_dict() == pytest.approx(
            rows["requests"].to_dict()
        )
        assert pd.isna(
            rows.loc[[n for n in SERVICE_S if n != server], "interval_response_time"]
        ).all()
        # The interval's latency: no less than the service time (the backend sleeps that
        # long first), no more than the client's mean for the same requests.
        latency = rows.loc[server, "interval_response_time"]
        slack = tolerance_s(served[server], requests)
        client_mean = load.latency_ms["mean"]
        assert client_mean is not None
        assert SERVICE_S[server] - slack <= latency <= client_mean / 1000 + slack, (
            server,
            latency,
            client_mean,
        )
        served[server] += requests

    assert not live["reset"].any()
    assert len(across) == 4
    reload_rows = across[across["reset"]]
    assert sorted(reload_rows["server"]) == ["fast", "slow"]
    assert reload_rows["requests"].isna().all()
    assert reload_rows["request_rate"].isna().all()
    assert (across.loc[~across["reset"], "request_rate"] == 0).all()
    numeric = rates.select_dtypes("number").drop(columns=["proxy_pid"])
    assert not (numeric < 0).any().any()
