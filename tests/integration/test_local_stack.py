"""The local stack end to end: demo backends behind a real HAProxy (and Envoy), driven by
the agent."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from integration.haproxy_proc import BackendSpec, HAProxyProcess, ephemeral_range
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


def test_one_stack_with_both_proxies_and_one_agent_driving_them(tmp_path: Path) -> None:
    """HAProxy and Envoy side by side in front of the same demo backends, one config for
    the agent: both take the weights it writes, and traffic through each follows them."""
    servers = (DemoServer("fast", weight=10, mean_ms=1), DemoServer("slow", weight=10, mean_ms=1))
    with LocalStack(tmp_path / "stack", servers, proxies=("haproxy", "envoy")) as stack:
        assert stack.haproxy is not None
        assert stack.envoy is not None
        fast, slow = (f"127.0.0.1:{stack.ports[name]}" for name in ("fast", "slow"))
        config = stack.write_agent_config(
            tmp_path / "v.yaml",
            "policy:\n  max_step_ratio: 10\n  static_weights:\n"
            f"    app/fast: 30\n    app/slow: 10\n    app-envoy/{fast}: 30\n"
            f"    app-envoy/{slow}: 10\n",
        )
        result = run_cli("apply", "-c", config, "--output", "json")
        assert result.code == 0, result.stderr
        # fast 10 -> 30 in each proxy; slow is at its static weight already.
        assert result.json()["apply"] == {"written": 2, "failed": 0, "failures": []}
        assert {p["backend"] for p in result.json()["pools"]} == {"app", "app-envoy"}
        through_haproxy = run_load_sync(stack.url, 200, 3, max_requests=400, seed=3)
        through_envoy = run_load_sync(stack.envoy.url, 200, 3, max_requests=400, seed=4)
    for load in (through_haproxy, through_envoy):
        total = load.served_by.get("fast", 0) + load.served_by.get("slow", 0)
        assert total >= 380, load.served_by
        assert load.served_by["fast"] / total == pytest.approx(0.75, abs=0.05)


def test_haproxy_taking_a_port_someone_else_bound_starts_on_fresh_ports(tmp_path: Path) -> None:
    """Tests on two workers (and load generators' outgoing connections) can take a port
    between ``free_port`` and HAProxy's bind: the start is retried on fresh ports, from
    below the kernel's ephemeral range, instead of failing the test."""
    proxy = HAProxyProcess(tmp_path / "haproxy", [BackendSpec("app", ())])
    taken = proxy.frontend_port
    assert taken < ephemeral_range()[0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with proxy:
            assert proxy.frontend_port != taken
            assert "cannot bind socket" not in proxy.log_text()
            with socket.socket(socket.AF_UNIX) as admin:
                admin.connect(proxy.admin_socket.removeprefix("unix://"))
                admin.sendall(b"show info\n")
                assert b"Pid:" in admin.recv(65536)
