"""Replicas of one proxy driven as one pool, for real: two HAProxy processes with the same
config (different sockets and frontends, load through both), and two Envoy processes
reading one EDS directory.

One plan, the same weights read back from every replica; a replica killed is named
while the other is driven; restarted, it is brought to the current weights within one
tick; a replica with another server list holds the pool with the reason. The merge
itself (sums, weighted times, states) is tested in ``tests/unit/test_replicas.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.envoy_proc import EnvoyProcess
from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec
from integration.loadgen import run_load_sync
from integration.stack import DemoServer, LocalStack
from tests.integration.daemon_helpers import (
    AgentFiles,
    agent_config,
    api_address,
    request,
    running_daemon,
    samples,
    wait_turns,
    write_config,
)
from tests.integration.helpers import run_cli, weights
from veloflux.agent.build import build_source, utc_now
from veloflux.config.load import load_config
from veloflux.envoy.admin import EnvoyAdmin
from veloflux.envoy.eds import Endpoint
from veloflux.envoy.replies import parse_clusters
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.source import HAProxySource
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

WEB = ["app/s1", "app/s2"]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[HAProxyProcess, HAProxyProcess]]:
    """Demo backends s1 and s2 behind HAProxy A (the stack's) and B, one config."""
    servers = (DemoServer("s1", weight=10, mean_ms=5), DemoServer("s2", weight=20, mean_ms=5))
    with LocalStack(tmp_path / "stack", servers) as stack:
        assert stack.haproxy is not None
        replica = HAProxyProcess(tmp_path / "b", stack.haproxy.backends).start()
        try:
            yield stack.haproxy, replica
        finally:
            replica.stop()


def haproxy_config(a: HAProxyProcess, b: HAProxyProcess, tmp_path: Path, **policy: Any) -> Path:
    files = AgentFiles(tmp_path / "agent")
    data = agent_config(
        a.admin_socket, files, interval="500ms", policy={"max_step_ratio": 10, **policy}
    )
    data["haproxy"] |= {"replicas": [b.admin_socket], "backends": ["app"]}
    return write_config(files, data)


def test_two_haproxy_replicas_are_merged_planned_once_and_given_the_same_weights(
    pair: tuple[HAProxyProcess, HAProxyProcess], tmp_path: Path
) -> None:
    a, b = pair
    for seed, proxy in enumerate((a, b)):  # bounded: 150 requests in at most 5 s each
        assert run_load_sync(proxy.frontend_url, 60.0, 5.0, 150, seed=seed).completed > 0
    config = haproxy_config(a, b, tmp_path, static_weights={"app/s1": 30})

    # The merged reading counts both replicas' traffic.
    merged = {r.server: r for r in build_source(load_config(config), Events()).observe().rows}
    sources = [HAProxySource(RuntimeAPI(p.admin_socket), utc_now, Events()) for p in (a, b)]
    each = [{r.server: r for r in source.observe().rows} for source in sources]
    for server in ("s1", "s2"):
        total = each[0][server].requests_total + each[1][server].requests_total
        assert merged[server].requests_total == total > each[0][server].requests_total

    preview = run_cli("dry-run", "-c", config, "--output", "json")
    assert preview.code == 0, preview.stderr
    assert [(r["name"], r["up"]) for r in preview.json()["replicas"]] == [
        (a.admin_socket, True),
        (b.admin_socket, True),
    ]
    applied = run_cli("apply", "-c", config, "--output", "json")
    assert applied.code == 0, applied.stderr
    assert applied.json()["apply"] == {"written": 2, "failed": 0, "failures": []}
    assert (
        weights(a.admin_socket, WEB)
        == weights(b.admin_socket, WEB)
        == {
            "app/s1": 30,
            "app/s2": 20,
        }
    )
    audit = AgentFiles(tmp_path / "agent").audit_entries()
    assert {(e["server"], e["new"], e["replica"]) for e in audit} == {
        ("s1", 30, a.admin_socket),
        ("s1", 30, b.admin_socket),
    }


def test_a_dead_replica_is_named_and_a_restarted_one_is_resynced_within_a_tick(
    pair: tuple[HAProxyProcess, HAProxyProcess], tmp_path: Path
) -> None:
    a, b = pair
    config = haproxy_config(a, b, tmp_path, static_weights={"app/s1": 30})
    with running_daemon(config) as daemon:
        address = api_address(daemon)
        wait_turns(lambda: samples(daemon), 2, "the first ticks")
        assert weights(b.admin_socket, WEB) == {"app/s1": 30, "app/s2": 20}

        b.kill()
        wait_turns(lambda: samples(daemon), 2, "ticks with B dead")
        status = json.loads(request(address, "GET", "/status").body)
        replicas = {r["name"]: r for r in status["sources"]["haproxy"]["replicas"]}
        assert replicas[a.admin_socket]["up"] is True
        assert replicas[b.admin_socket]["up"] is False
        assert replicas[b.admin_socket]["problem"]
        assert status["sources"]["haproxy"]["up"] is True  # A is still driven
        metrics = request(address, "GET", "/metrics").body.decode()
        assert f'veloflux_replica_up{{replica="{b.admin_socket}"}} 0.0' in metrics

        written = len(AgentFiles(tmp_path / "agent").audit_entries())
        b.start()  # a new process: its configured weights, 10 and 20
        wait_turns(lambda: samples(daemon), 2, "a tick after B returned")
        assert weights(b.admin_socket, WEB) == weights(a.admin_socket, WEB)
        assert weights(b.admin_socket, WEB)["app/s1"] == 30
    resynced = AgentFiles(tmp_path / "agent").audit_entries()[written:]
    assert {(e["replica"], e["server"], e["old"], e["new"]) for e in resynced} == {
        (b.admin_socket, "s1", 10, 30)  # only B, only what it lacked
    }


def test_a_replica_with_other_servers_holds_the_pool_and_says_why(
    pair: tuple[HAProxyProcess, HAProxyProcess], tmp_path: Path
) -> None:
    a, _ = pair
    extra = (*a.backends[0].servers, ServerSpec("s3", "127.0.0.1:9", 10))
    other = HAProxyProcess(tmp_path / "c", [BackendSpec("app", extra)]).start()
    try:
        config = haproxy_config(a, other, tmp_path, static_weights={"app/s1": 30})
        applied = run_cli("apply", "-c", config, "--output", "json")
        assert applied.code == 0, applied.stderr
        pool = applied.json()["pools"][0]
        assert pool["mode"] == "unmanaged"
        assert "replicas disagree on the servers of 'app'" in pool["reason"]
        assert "has s3" in pool["reason"]
        assert applied.json()["apply"]["written"] == 0
        assert weights(a.admin_socket, WEB)["app/s1"] == 10
    finally:
        other.stop()


# --- Envoy: two instances, one EDS directory ------------------------------------------------

ENDPOINTS = [Endpoint("127.0.0.1", 18081, 3), Endpoint("127.0.0.1", 18082, 1)]


def envoy_weights(admin_url: str, cluster: str = "app") -> list[float]:
    clusters = parse_clusters(EnvoyAdmin(admin_url, 2).get_json("/clusters?format=json"))
    return [h.weight for h in sorted(clusters[cluster], key=lambda h: h.port)]


def envoy_config(a: EnvoyProcess, replicas: list[str], tmp_path: Path, w2: int) -> Path:
    path = tmp_path / "envoy-agent.yaml"
    state = tmp_path / "envoy-state"
    path.write_text(
        f"envoy:\n  admin: {a.admin_url}\n  replicas: {json.dumps(replicas)}\n"
        f"  eds_dir: {a.eds_dir}\n  confirm_timeout: 5s\n"
        "  clusters:\n    - name: app\n      endpoints:\n"
        "        - {address: 127.0.0.1, port: 18081, weight: 1}\n"
        f"        - {{address: 127.0.0.1, port: 18082, weight: {w2}}}\n"
        f"ai:\n  history_path: {state}/history.sqlite\n  model_dir: {state}/models\n"
        f"  audit_log: {state}/audit.jsonl\n"
        "policy:\n  max_step_ratio: 10\n",
        encoding="utf-8",
    )
    return path


def test_two_envoy_replicas_on_one_eds_directory_are_confirmed_through_each_admin(
    tmp_path: Path,
) -> None:
    eds = tmp_path / "eds"
    with (
        EnvoyProcess(tmp_path / "a", {"app": ENDPOINTS}, eds_dir=eds) as a,
        EnvoyProcess(tmp_path / "b", {"app": ENDPOINTS}, eds_dir=eds) as b,
    ):
        config = envoy_config(a, [b.admin_url], tmp_path, w2=4)
        applied = run_cli("apply", "-c", config, "--output", "json")
        assert applied.code == 0, applied.stderr
        assert applied.json()["apply"]["failed"] == 0
        assert envoy_weights(a.admin_url) == envoy_weights(b.admin_url) == [1, 4]

        b.stop()
        config = envoy_config(a, [b.admin_url], tmp_path, w2=6)
        applied = run_cli("apply", "-c", config, "--output", "json")
        assert applied.code == 0, applied.stderr
        assert [(r["name"], r["up"]) for r in applied.json()["replicas"]] == [
            (a.admin_url, True),
            (b.admin_url, False),
        ]
        assert envoy_weights(a.admin_url) == [1, 6]

        b.start()  # reads the shared directory: the current weights at once
        applied = run_cli("apply", "-c", config, "--output", "json")
        assert applied.code == 0, applied.stderr
        assert applied.json()["apply"]["failed"] == 0
        assert envoy_weights(b.admin_url) == envoy_weights(a.admin_url) == [1, 6]


def test_an_envoy_replica_without_the_cluster_holds_it(tmp_path: Path) -> None:
    eds = tmp_path / "eds"
    with (
        EnvoyProcess(tmp_path / "a", {"app": ENDPOINTS}, eds_dir=eds) as a,
        EnvoyProcess(tmp_path / "c", {"other": ENDPOINTS}, eds_dir=tmp_path / "eds-c") as c,
    ):
        config = envoy_config(a, [c.admin_url], tmp_path, w2=4)
        applied = run_cli("apply", "-c", config, "--output", "json")
        assert applied.code == 0, applied.stderr
        pool = applied.json()["pools"][0]
        assert pool["mode"] == "unmanaged"
        assert "replicas disagree" in pool["reason"]
        assert envoy_weights(a.admin_url) == [3, 1]
