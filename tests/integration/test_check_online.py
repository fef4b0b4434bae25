"""``check-config --online`` against a real HAProxy and a real Envoy (issue #18).

Offline, check-config cannot know whether the proxy has the backends, clusters and
servers a config names, or whether the socket is at level admin: a config that said OK
was then refused by ``dry-run`` one name at a time, or by every write. ``--online``
reads each proxy once, read-only, and says all of it in one run: exit 1 when the
proxies answered but the names or the level are wrong, exit 2 when a proxy could not
be reached. Nothing is written: the weights stay, no journal or audit log appears.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.envoy_proc import EnvoyProcess
from integration.haproxy_proc import HAProxyProcess
from tests.conftest import write_config
from tests.integration.helpers import run_cli, weights
from veloflux.envoy.eds import Endpoint

pytestmark = pytest.mark.integration

APP = ["app/s1", "app/s2", "app/s3", "app/s4"]
STATIC = {"app/s1": 10, "app/s2": 20, "app/s3": 30, "app/s4": 40}


def state_dir(config: Path) -> Path:
    """Where ``write_config`` puts the journal, the models and the audit log."""
    return config.parent / f"{config.stem}-state"


def test_a_good_config_is_ok_online_and_nothing_is_written(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    # static weights that differ from HAProxy's: an apply would write them.
    config = write_config(
        tmp_path / "v.yaml",
        haproxy.admin_socket,
        "  backends: [app, legacy]\npolicy:\n  static_weights: {app/s1: 25}\n"
        "  overrides: {app/s2: 5}\n",
    )
    result = run_cli("check-config", "-c", config, "--online")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"OK (online: haproxy at {haproxy.admin_socket})"
    assert weights(haproxy.admin_socket, APP) == STATIC
    assert not state_dir(config).exists()  # no journal, no audit log, no model directory


def test_without_the_flag_check_config_opens_no_connection(tmp_path: Path) -> None:
    config = write_config(tmp_path / "v.yaml", f"unix://{tmp_path}/nobody.sock")
    result = run_cli("check-config", "-c", config)
    assert (result.code, result.stdout.strip()) == (0, "OK")


def test_every_name_the_proxy_lacks_is_listed_with_its_path_in_one_run(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "v.yaml",
        haproxy.admin_socket,
        "  backends: [app, nope]\npolicy:\n  overrides: {app/S1: 5}\n"
        "  static_weights: {app/s9: 3}\n",
    )
    result = run_cli("check-config", "-c", config, "--online")
    assert result.code == 1, result.stderr
    where = haproxy.admin_socket
    for expected in (
        f"haproxy.backends.1: backend 'nope' does not exist in HAProxy at {where}",
        f"policy.overrides.app/S1: no server 'S1' in 'app' at {where}",
        f"policy.static_weights.app/s9: no server 's9' in 'app' at {where}",
    ):
        assert expected in result.stderr, expected
    assert "3 configuration problem(s)" in result.stderr
    assert result.stderr.count("error:") == 1  # one report, not one line per problem
    assert "OK" not in result.stdout
    assert weights(haproxy.admin_socket, APP) == STATIC
    assert not state_dir(config).exists()


def test_a_user_level_socket_is_a_problem_naming_its_level(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """dry-run works on it and every write is refused: the config is wrong for VeloFlux."""
    config = write_config(
        tmp_path / "v.yaml", haproxy.user_socket, "policy:\n  static_weights: {app/s1: 12}\n"
    )
    result = run_cli("check-config", "-c", config, "--online")
    assert result.code == 1, result.stderr
    level = f"haproxy.socket: the runtime API at {haproxy.user_socket} is at level user"
    assert level in result.stderr
    assert "level admin" in result.stderr
    assert weights(haproxy.admin_socket, APP) == STATIC


def test_a_dead_socket_exits_2_naming_it(tmp_path: Path) -> None:
    dead = f"unix://{tmp_path}/dead.sock"
    config = write_config(tmp_path / "v.yaml", dead)
    result = run_cli("check-config", "-c", config, "--online")
    assert result.code == 2, result.stderr
    reason = f"HAProxy runtime API {dead}: no such socket file"
    assert f"haproxy.socket: cannot be read: {reason}" in result.stderr
    assert not state_dir(config).exists()


def test_an_invalid_file_is_refused_before_any_connection(tmp_path: Path) -> None:
    """Exit 1 for the file's problems, even with a dead socket: the file comes first."""
    config = write_config(
        tmp_path / "v.yaml", f"unix://{tmp_path}/dead.sock", "policy:\n  max_step_ratio: 0\n"
    )
    result = run_cli("check-config", "-c", config, "--online")
    assert result.code == 1
    assert "policy.max_step_ratio: must be > 0" in result.stderr
    assert "dead.sock" not in result.stderr


def test_an_unknown_envoy_cluster_and_endpoint_are_listed(tmp_path: Path) -> None:
    endpoints = [Endpoint("127.0.0.1", 18081, 3), Endpoint("127.0.0.1", 18082, 1)]
    with EnvoyProcess(tmp_path / "envoy", {"app": endpoints}) as envoy:
        config = tmp_path / "v.yaml"
        state = state_dir(config)
        config.write_text(
            f"interval: 10s\nenvoy:\n  admin: {envoy.admin_url}\n  eds_dir: {envoy.eds_dir}\n"
            "  clusters:\n"
            "    - name: app\n      endpoints:\n"
            "        - {address: 127.0.0.1, port: 18081, weight: 3}\n"
            "        - {address: 127.0.0.1, port: 18082, weight: 1}\n"
            "    - name: nope\n      endpoints:\n"
            "        - {address: 127.0.0.1, port: 18083}\n"
            f"ai:\n  history_path: {state}/history.sqlite\n  model_dir: {state}/models\n"
            f"  audit_log: {state}/audit.jsonl\n"
            "policy:\n  static_weights: {app/127.0.0.1:18089: 2}\n",
            encoding="utf-8",
        )
        eds_before = {p.name: p.read_text() for p in envoy.eds_dir.iterdir()}
        result = run_cli("check-config", "-c", config, "--online")
        assert result.code == 1, result.stderr
        where = envoy.admin_url
        for expected in (
            f"envoy.clusters.1: cluster 'nope' does not exist in Envoy at {where}",
            "policy.static_weights.app/127.0.0.1:18089: no server '127.0.0.1:18089' in "
            f"'app' at {where}",
        ):
            assert expected in result.stderr, expected
        assert {p.name: p.read_text() for p in envoy.eds_dir.iterdir()} == eds_before
        assert not state.exists()


def test_with_both_proxies_each_is_read_and_a_dead_one_does_not_hide_the_other(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """Each proxy judges the names of its own pools; with Envoy down, exit 2, and what
    HAProxy can judge is still reported in the same run."""
    with EnvoyProcess(tmp_path / "envoy", {"web": [Endpoint("127.0.0.1", 18081, 1)]}) as envoy:
        config = write_config(
            tmp_path / "v.yaml",
            haproxy.admin_socket,
            f"  backends: [app]\nenvoy:\n  admin: {envoy.admin_url}\n"
            f"  eds_dir: {envoy.eds_dir}\n"
            "  clusters:\n    - name: web\n      endpoints:\n"
            "        - {address: 127.0.0.1, port: 18081}\n"
            "policy:\n  static_weights: {app/s1: 12, web/127.0.0.1:18081: 2}\n",
        )
        good = run_cli("check-config", "-c", config, "--online")
        assert good.code == 0, good.stderr
        assert good.stdout.strip() == (
            f"OK (online: haproxy at {haproxy.admin_socket}, envoy at {envoy.admin_url})"
        )
        text = config.read_text().replace("app/s1", "app/s9").replace(":18081: 2", ":18089: 2")
        config.write_text(text, encoding="utf-8")
        both = run_cli("check-config", "-c", config, "--online")
        assert both.code == 1, both.stderr
        where = haproxy.admin_socket
        assert f"policy.static_weights.app/s9: no server 's9' in 'app' at {where}" in both.stderr
        endpoint = "web/127.0.0.1:18089: no server '127.0.0.1:18089' in 'web'"
        assert f"policy.static_weights.{endpoint} at {envoy.admin_url}" in both.stderr
    down = run_cli("check-config", "-c", config, "--online")
    assert down.code == 2, down.stderr
    assert f"envoy.admin: cannot be read: Envoy admin at {envoy.admin_url}" in down.stderr
    assert "policy.static_weights.app/s9: no server 's9' in 'app'" in down.stderr
    assert "18089" not in down.stderr  # Envoy's to judge, and it did not answer
    assert weights(haproxy.admin_socket, APP) == STATIC
    assert not state_dir(config).exists()
