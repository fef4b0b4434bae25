"""The local stack end to end: demo backends behind a real HAProxy, driven by the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.loadgen import run_load_sync
from integration.stack import DemoServer, LocalStack
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration


def test_traffic_follows_the_weights_the_agent_writes(tmp_path: Path) -> None:
    servers = (DemoServer("fast", weight=10, mean_ms=1), DemoServer("slow", weight=10, mean_ms=1))
    with LocalStack(tmp_path / "stack", servers) as stack:
        config = stack.write_agent_config(
            tmp_path / "v.yaml",
            "policy:\n  static_weights: {app/fast: 30, app/slow: 10}\n  max_step_ratio: 10\n",
        )
        result = run_cli("apply", "-c", config, "--output", "json")
        assert result.code == 0, result.stderr
        load = run_load_sync(stack.url, rate_rps=200, duration_s=5, max_requests=400, seed=3)
    assert load.errors == 0
    assert load.completed == 400
    share = load.served_by["fast"] / load.completed
    # Smooth weighted round robin at 30:10 sends 3 of every 4 requests to "fast".
    assert share == pytest.approx(0.75, abs=0.02)


def test_backend_behaviour_changes_while_haproxy_serves_it(tmp_path: Path) -> None:
    servers = (DemoServer("a", mean_ms=1), DemoServer("b", mean_ms=1))
    with LocalStack(tmp_path / "stack", servers) as stack:
        healthy = run_load_sync(stack.url, rate_rps=200, duration_s=3, max_requests=200, seed=1)
        stack.reconfigure("b", {"error_rate": 1.0})
        failing = run_load_sync(stack.url, rate_rps=200, duration_s=3, max_requests=200, seed=2)
    assert healthy.errors == 0
    # Round robin over two servers: about half the requests land on the failing one.
    assert failing.status_counts.get("500", 0) == pytest.approx(100, abs=5)
