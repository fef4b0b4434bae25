"""The CLI against a real HAProxy: dry-run, apply, revert, and every refusal path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from integration.haproxy_proc import HAProxyProcess, free_port
from tests.conftest import write_config
from tests.integration.helpers import run_cli, set_weights, weights
from veloflux.haproxy.runtime import RuntimeAPI

pytestmark = pytest.mark.integration

APP = ["app/s1", "app/s2", "app/s3", "app/s4"]


def test_dry_run_json_lists_every_server_with_its_true_weight(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    set_weights(haproxy.admin_socket, {"app/s1": 7, "app/s3": 3})
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket)
    result = run_cli("dry-run", "-c", config, "--output", "json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert set(doc) >= {"generated_at", "pools"}
    pools = {p["backend"]: p for p in doc["pools"]}
    assert set(pools) == {"app", "legacy", "sticky"}
    truth = weights(haproxy.admin_socket, APP)
    shown = {f"app/{s['server']}": s["current_weight"] for s in pools["app"]["servers"]}
    assert shown == truth == {"app/s1": 7, "app/s2": 20, "app/s3": 3, "app/s4": 40}
    assert pools["app"]["mode"] == "fallback"
    assert all(s["reason"].startswith("no model") for s in pools["app"]["servers"])
    # Static weights default to HAProxy's configured (initial) weights.
    assert [s["static_weight"] for s in pools["app"]["servers"]] == [10, 20, 30, 40]
    assert pools["legacy"]["mode"] == "unmanaged"
    assert pools["sticky"]["mode"] == "unmanaged"
    # Nothing was written.
    assert weights(haproxy.admin_socket, APP) == truth


def test_apply_writes_step_limited_weights_that_get_weight_confirms(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "v.yaml",
        haproxy.admin_socket,
        "policy:\n  static_weights: {app/s1: 40, app/s2: 5}\n  max_step_ratio: 0.5\n",
    )
    result = run_cli("apply", "-c", config, "--output", "json")
    assert result.code == 0, result.stderr
    doc = result.json()
    planned = {f"app/{s['server']}": s["planned_weight"] for s in doc["pools"][0]["servers"]}
    # s1: 10 -> 40 limited to +5; s2: 20 -> 5 limited to -10; s3, s4 already static.
    assert planned == {"app/s1": 15, "app/s2": 10, "app/s3": 30, "app/s4": 40}
    assert weights(haproxy.admin_socket, APP) == planned
    assert doc["apply"] == {"written": 2, "failed": 0, "failures": []}
    # Further ticks converge exactly on the static weights.
    for _ in range(4):
        assert run_cli("apply", "-c", config).code == 0
    assert weights(haproxy.admin_socket, APP) == {
        "app/s1": 40,
        "app/s2": 5,
        "app/s3": 30,
        "app/s4": 40,
    }


def test_revert_restores_static_weights_at_once(haproxy: HAProxyProcess, tmp_path: Path) -> None:
    set_weights(haproxy.admin_socket, {"app/s1": 200, "app/s2": 1, "app/s4": 2})
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket)
    result = run_cli("revert", "-c", config)
    assert result.code == 0, result.stderr
    assert weights(haproxy.admin_socket, APP) == {
        "app/s1": 10,
        "app/s2": 20,
        "app/s3": 30,
        "app/s4": 40,
    }


def test_static_algorithm_and_maintenance_servers_are_left_alone(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    api = RuntimeAPI(haproxy.admin_socket)
    assert api.run("set server app/s2 state maint") == ""
    assert api.run("set server app/s3 state drain") == ""
    config = write_config(
        tmp_path / "v.yaml",
        haproxy.admin_socket,
        "policy:\n  static_weights: {app/s2: 1, app/s3: 1, legacy/l1: 50, sticky/h1: 50}\n",
    )
    before = weights(haproxy.admin_socket, [*APP, "legacy/l1", "sticky/h1"])
    for command in ("apply", "revert"):
        result = run_cli(command, "-c", config, "--output", "json")
        assert result.code == 0, result.stderr
    after = weights(haproxy.admin_socket, [*APP, "legacy/l1", "sticky/h1"])
    assert after == before
    servers = {
        f"{p['backend']}/{s['server']}": s for p in result.json()["pools"] for s in p["servers"]
    }
    assert servers["app/s2"]["state"] == "MAINT"
    assert servers["app/s3"]["state"] == "DRAIN"
    assert servers["legacy/l1"]["reason"] == "unmanaged (static-rr)"


def test_injection_attempt_in_config_is_refused_before_any_connection(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "v.yaml",
        "unix:///nonexistent/admin.sock",
        "policy:\n  static_weights: {'app/s1;set server app/s2 weight 0': 3}\n",
    )
    result = run_cli("dry-run", "-c", config)
    assert result.code == 1
    assert "policy.static_weights.app/s1;set server app/s2 weight 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_dead_socket_exits_2_naming_socket_and_reason(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket)
    haproxy.kill()  # the socket file stays behind with nobody listening
    for command in ("dry-run", "apply", "revert"):
        result = run_cli(command, "-c", config)
        assert result.code == 2, (command, result)
        assert haproxy.admin_socket in result.stderr
        assert "refused" in result.stderr
        assert "Traceback" not in result.stderr
    missing = write_config(tmp_path / "m.yaml", f"unix://{tmp_path}/absent.sock")
    result = run_cli("dry-run", "-c", missing)
    assert result.code == 2
    assert "no such socket" in result.stderr


def test_user_level_socket_can_preview_but_not_write(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "v.yaml", haproxy.user_socket, "policy:\n  static_weights: {app/s1: 12}\n"
    )
    assert run_cli("dry-run", "-c", config).code == 0
    result = run_cli("apply", "-c", config)
    assert result.code == 2
    assert "level user" in result.stderr
    assert haproxy.user_socket in result.stderr
    assert weights(haproxy.admin_socket, ["app/s1"]) == {"app/s1": 10}


def test_tcp_admin_socket_works(haproxy: HAProxyProcess, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "v.yaml", haproxy.tcp_admin, "policy:\n  static_weights: {app/s1: 12}\n"
    )
    result = run_cli("apply", "-c", config)
    assert result.code == 0, result.stderr
    assert weights(haproxy.admin_socket, ["app/s1"]) == {"app/s1": 12}


def test_unknown_backend_in_allow_list_exits_1_naming_it(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "v.yaml",
        haproxy.admin_socket,
        "  backends: [app, nope]\npolicy:\n  static_weights: {app/s1: 12}\n",
    )
    result = run_cli("apply", "-c", config)
    assert result.code == 1
    assert "haproxy.backends.1: backend 'nope' does not exist" in result.stderr
    assert weights(haproxy.admin_socket, APP)["app/s1"] == 10
    # #18 (4): the daemon, too, refuses to start on it (it used to skip the backend).
    listen = f"api:\n  listen: 127.0.0.1:{free_port()}\n  state_path: {tmp_path}/op.json\n"
    config.write_text(config.read_text() + listen)
    daemon = run_cli("run", "-c", config, timeout=60)
    assert daemon.code == 1, daemon.stderr
    assert "haproxy.backends.1: backend 'nope' does not exist" in daemon.stderr
    assert weights(haproxy.admin_socket, APP)["app/s1"] == 10


def test_a_server_name_the_proxy_lacks_is_a_config_error_for_every_command(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """#18 (4): before, ``app/S1`` (a typo of s1) and ``app/s9`` passed dry-run with exit
    0 and nothing on stderr while the operator believed s1 pinned. Now dry-run, apply
    and the daemon refuse with exit 1, naming each key; nothing is written."""
    config = write_config(
        tmp_path / "v.yaml",
        haproxy.admin_socket,
        "policy:\n  overrides: {app/S1: 5}\n  static_weights: {app/s9: 10, app/s2: 20}\n"
        f"api:\n  listen: 127.0.0.1:{free_port()}\n  state_path: {tmp_path}/operator.json\n",
    )
    for command in ("dry-run", "apply"):
        result = run_cli(command, "-c", config)
        assert result.code == 1, (command, result.stderr)
        assert "policy.overrides.app/S1: no server 'S1' in 'app'" in result.stderr
        assert "policy.static_weights.app/s9: no server 's9'" in result.stderr
        assert "app/s2" not in result.stderr
    assert weights(haproxy.admin_socket, APP)["app/s1"] == 10
    daemon = run_cli("run", "-c", config, timeout=60)
    assert daemon.code == 1, daemon.stderr
    assert "policy.overrides.app/S1" in daemon.stderr
    assert weights(haproxy.admin_socket, APP) == {
        "app/s1": 10, "app/s2": 20, "app/s3": 30, "app/s4": 40,
    }  # fmt: skip


def test_allow_list_limits_the_plan(haproxy: HAProxyProcess, tmp_path: Path) -> None:
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket, "  backends: [legacy]\n")
    result = run_cli("dry-run", "-c", config, "--output", "json")
    assert result.code == 0, result.stderr
    assert [p["backend"] for p in result.json()["pools"]] == ["legacy"]


def test_check_config_names_all_three_mistakes(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "interval: fast\n"
        "haproxy:\n  socket: unix:///run/haproxy/admin.sock\n  timout: 2s\n"
        "policy:\n  max_step_ratio: 0\n"
    )
    result = run_cli("check-config", "-c", config)
    assert result.code == 1
    assert "interval: 'fast' is not a duration" in result.stderr
    assert "haproxy.timout: unknown key" in result.stderr
    assert "policy.max_step_ratio: must be > 0" in result.stderr
    good = write_config(tmp_path / "good.yaml", "unix:///run/haproxy/admin.sock")
    ok = run_cli("check-config", "-c", good)
    assert (ok.code, ok.stdout.strip()) == (0, "OK")


def test_config_path_from_environment(haproxy: HAProxyProcess, tmp_path: Path) -> None:
    import os

    config = write_config(tmp_path / "v.yaml", "unix:///wrong.sock")
    env = dict(
        os.environ, VELOFLUX_CONFIG=str(config), VELOFLUX_HAPROXY__SOCKET=haproxy.admin_socket
    )
    result = run_cli("dry-run", "--output", "json", env=env)
    assert result.code == 0, result.stderr
    assert result.json()["pools"][0]["backend"] == "app"


def test_record_says_how_many_samples_carried_traffic(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """#18 (9): before, an idle proxy gave "recorded 15 samples" and `train` then found
    0 usable rows. Now record says none carried traffic, and what to do."""
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket).read_text()
    path = tmp_path / "fast.yaml"
    path.write_text(config.replace("interval: 10s", "interval: 500ms").replace("2s", "400ms"))
    result = run_cli("record", "-c", path, "--duration", "1s")
    assert result.code == 0, result.stderr
    recorded = int(result.stdout.split("recorded ")[1].split()[0])
    assert recorded >= 8  # at least two observations of the proxy's eight servers
    assert "0 of them with traffic" in result.stdout
    assert "no request reached the servers" in result.stderr


def test_check_config_prints_every_problem_and_warning_of_a_broken_file_in_one_run(
    tmp_path: Path,
) -> None:
    """#18 (5): one broken file took three runs (schema, then cross-field, then names)
    and passed configs that `run` then refused. Now one run names all of them."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "interval: 10s\n"
        "haproxy:\n  socket: unix:///run/haproxy/admin.sock\n  timeout: 30s\n"
        "  backends: app\n  consistent_hash_backends: [sticky]\n  colour: blue\n"
        "ai:\n  keep_models: many\n  history_retention: 1h\n"
        "policy:\n  overrides: {cache/c1: 3}\n  min_weight: 50\n  max_weight: 10\n"
        "  stale_after: 5s\n  on_exit: maybe\n"
        f"api:\n  token_file: {tmp_path / 'no-token'}\n"
    )
    env = {**os.environ, "VELOFLUX_POLCY__MAX_STEP_RATIO": "0.3"}
    result = run_cli("check-config", "-c", config, env=env)
    assert result.code == 1
    for expected in (
        "haproxy.colour: unknown key",  # the schema
        "ai.keep_models: must be a whole number",
        "policy.on_exit: must be 'keep' or 'static'",
        "haproxy.backends: must be a list of backend names",
        "policy: min_weight (50) is above max_weight (10)",  # across fields
        "policy.stale_after: 5s is shorter than interval (10s)",
        "api.token_file: cannot read",
        "VELOFLUX_POLCY__MAX_STEP_RATIO: 'polcy' is not a config section",  # names
        "haproxy.timeout: 30s is longer than interval (10s)",  # warnings
        "ai.history_retention: 1h is shorter than the time between retrainings",
    ):
        assert expected in result.stderr, expected
    assert result.stderr.count("error:") == 1  # printed once


def test_every_command_takes_the_same_log_options(haproxy: HAProxyProcess, tmp_path: Path) -> None:
    """#18 (8): only `run` had `--log-format`; the group now gives it to every command,
    with the tick's figures as fields."""
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket)
    result = run_cli("--log-format", "json", "--log-level", "info", "dry-run", "-c", config)
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (tick,) = [line for line in lines if line.get("event") == "tick"]
    assert (tick["dry_run"], tick["servers"], tick["written"]) == (True, 8, None)
    assert tick["message"].startswith("tick pools[")
