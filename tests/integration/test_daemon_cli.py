"""The operator commands against a real `veloflux-agent run` beside a real HAProxy.

The daemon runs as an operator runs it (a subprocess, its own config file, a fixed
API port); `override`, `pause`, `resume` and `status` are run as commands too, and
HAProxy's weights are read straight from its socket, never through VeloFlux.
"""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.haproxy_proc import free_port, stop_process
from integration.stack import DemoServer, LocalStack
from tests.integration.daemon_helpers import Samples, request, wait_turns, wait_until
from tests.integration.helpers import run_cli, weights

pytestmark = pytest.mark.integration

SERVERS = (DemoServer("s1"), DemoServer("s2"), DemoServer("s3"))
KEYS = ["app/s1", "app/s2", "app/s3"]


def metrics_reader(config: Path) -> Callable[[], Samples]:
    """A scrape of the daemon's ``/metrics`` at the address its config gives."""
    host, _, port = yaml.safe_load(config.read_text())["api"]["listen"].rpartition(":")

    def read() -> Samples:
        reply = request((host, int(port)), "GET", "/metrics")
        assert reply.status == 200, reply.text
        return Samples(reply.text)

    return read


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[LocalStack, Path, subprocess.Popen[str]]]:
    token = tmp_path / "token"
    token.write_text("let-me-in\n")
    token.chmod(0o600)  # a token other users can read is refused
    with LocalStack(tmp_path / "stack", SERVERS) as stack:
        config = stack.write_agent_config(
            tmp_path / "v.yaml",
            interval="500ms",
            token_file=token,
            listen=f"127.0.0.1:{free_port()}",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "veloflux", "run", "-c", str(config), "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: run_cli("status", "-c", config).code == 0, "the daemon's API", 20)
            yield stack, config, proc
        finally:
            stop_process(proc, 15)
            if proc.stderr is not None:
                proc.stderr.close()


def test_pin_pause_resume_and_clear_through_the_cli(
    daemon: tuple[LocalStack, Path, subprocess.Popen[str]],
) -> None:
    stack, config, _ = daemon
    socket_path = stack.admin_socket
    wait_until(lambda: run_cli("status", "-c", config).json()["ready"], "readiness", 10)

    pinned = run_cli("override", "set", "-c", config, "app/s2", "7", "--ttl", "1h")
    assert pinned.code == 0, pinned.stderr
    assert pinned.json()["weight"] == 7
    assert pinned.json()["expires_at"]
    wait_until(lambda: weights(socket_path, KEYS)["app/s2"] == 7, "the pin in HAProxy", 10)
    status = run_cli("status", "-c", config).json()
    assert [o["server"] for o in status["overrides"]] == ["app/s2"]

    paused = run_cli("pause", "-c", config, "--reason", "incident 42")
    assert paused.code == 0, paused.stderr
    # While paused, a new pin is accepted but not written, however many ticks run: the
    # daemon's own tick counter proves they ran (a tick under way when the pin came
    # counts as one; the others began after it).
    assert run_cli("override", "set", "-c", config, "app/s3", "9").code == 0
    read = metrics_reader(config)
    wait_turns(read, 3, "ticks while paused")
    assert weights(socket_path, KEYS)["app/s3"] == 100
    assert read().get("veloflux_paused") == 1
    assert run_cli("status", "-c", config).json()["pause_reason"] == "incident 42"

    assert run_cli("resume", "-c", config).code == 0
    wait_until(lambda: weights(socket_path, KEYS)["app/s3"] == 9, "the pin after resume", 10)

    # The live daemon's metrics pass promtool's checks and show the pin.
    address = yaml.safe_load(config.read_text())["api"]["listen"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read()
    assert b'veloflux_server_weight{backend="app",server="s3"} 9.0' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make deps` installs Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    cleared = run_cli("override", "clear", "-c", config)
    assert cleared.code == 0, cleared.stderr
    assert sorted(cleared.json()["cleared"]) == ["app/s2", "app/s3"]
    assert run_cli("status", "-c", config).json()["overrides"] == []


def test_refused_requests_exit_1_and_write_nothing(
    daemon: tuple[LocalStack, Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    stack, config, proc = daemon
    wait_until(lambda: run_cli("status", "-c", config).json()["ready"], "readiness", 10)
    before = weights(stack.admin_socket, KEYS)

    unknown = run_cli("override", "set", "-c", config, "app/nope", "5")
    assert unknown.code == 1
    assert "unknown server" in unknown.stderr

    not_a_pin = run_cli("override", "clear", "-c", config, "app/s1")
    assert not_a_pin.code == 1
    assert "no override" in not_a_pin.stderr

    (tmp_path / "wrong").write_text("guess\n")
    (tmp_path / "wrong").chmod(0o600)
    wrong = config.read_text().replace(str(tmp_path / "token"), str(tmp_path / "wrong"))
    wrong_config = tmp_path / "wrong.yaml"
    wrong_config.write_text(wrong)
    refused = run_cli("pause", "-c", wrong_config)
    assert refused.code == 1
    assert "401" in refused.stderr or "token" in refused.stderr.lower()

    # Ticks went on after the refusals (the daemon's own counter says so) and wrote
    # nothing.
    wait_turns(metrics_reader(config), 2, "ticks after the refused requests")
    assert weights(stack.admin_socket, KEYS) == before
    assert proc.poll() is None  # still running


def test_no_daemon_means_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "v.yaml"
    config.write_text(
        "haproxy:\n  socket: unix:///nonexistent/admin.sock\n"
        f"api:\n  listen: 127.0.0.1:{free_port()}\n"
    )
    result = run_cli("status", "-c", config)
    assert result.code == 2
    assert "veloflux-agent run" in result.stderr


def test_revert_pauses_the_daemon_so_the_static_weights_stay(
    daemon: tuple[LocalStack, Path, subprocess.Popen[str]],
) -> None:
    """#18 (1): before, `revert` wrote static weights and the daemon put its pin back
    within one tick. Now it pauses the daemon first; three ticks later every server is
    still at its static weight, and the audit log tells who did what, in order."""
    stack, config, _ = daemon
    socket_path = stack.admin_socket
    wait_until(lambda: run_cli("status", "-c", config).json()["ready"], "readiness", 10)
    assert run_cli("override", "set", "-c", config, "app/s2", "7").code == 0
    wait_until(lambda: weights(socket_path, KEYS)["app/s2"] == 7, "the pin in HAProxy", 10)

    fights = run_cli("apply", "-c", config)
    assert fights.code == 2, fights.stderr
    assert "--force" in fights.stderr
    assert "pause" in fights.stderr

    reverted = run_cli("revert", "-c", config, "--reason", "incident 7", "--output", "json")
    assert reverted.code == 0, reverted.stderr
    assert "paused the daemon" in reverted.stderr
    assert weights(socket_path, KEYS) == dict.fromkeys(KEYS, 100)
    wait_turns(metrics_reader(config), 3, "ticks after the revert")
    assert weights(socket_path, KEYS) == dict.fromkeys(KEYS, 100)
    status = run_cli("status", "-c", config).json()
    assert status["paused"] is True
    assert status["pause_reason"] == "revert: incident 7"

    # Beside a paused daemon, apply no longer fights anyone.
    assert run_cli("apply", "-c", config).code == 0
    assert run_cli("resume", "-c", config).code == 0
    wait_until(lambda: weights(socket_path, KEYS)["app/s2"] == 7, "the pin after resume", 10)

    def read_audit() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in (stack.workdir / "audit.jsonl").read_text().splitlines()
            if line.strip()
        ]

    def s2_story() -> list[tuple[str, str]]:
        # s2's story (the paused daemon's `apply` may or may not move a weight: left out).
        return [
            (e["action"], e["actor"])
            for e in read_audit()
            if e.get("server") in (None, "s2", "app/s2") and e["action"] != "apply"
        ]

    # A tick writes HAProxy first and audits what it confirmed after, so the weight can
    # be seen a moment before its audit line: wait for the line, then read the story.
    wait_until(lambda: s2_story()[-1] == ("tick", "veloflux"), "the tick's audit line", 10)
    audit = read_audit()
    story = s2_story()
    user = f"cli:{getpass.getuser()}"
    # The daemon's first write of the pin, the operator's steps, the daemon's rewrite.
    assert story[0] == ("override_set", user)
    assert story[1] == ("tick", "veloflux")
    assert story[2:5] == [("pause", user), ("revert", user), ("resume", user)]
    assert story[-1] == ("tick", "veloflux")
    revert_line = next(e for e in audit if e["action"] == "revert" and e["server"] == "s2")
    assert (revert_line["old"], revert_line["new"]) == (7, 100)
    assert revert_line["operator_reason"] == "incident 7"
    pause_line = next(e for e in audit if e["action"] == "pause")
    assert pause_line["reason"] == "revert: incident 7"
    assert pause_line["token"].startswith("sha256:")


def test_revert_beside_a_daemon_it_cannot_pause_refuses_unless_forced(
    daemon: tuple[LocalStack, Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """A daemon that answers but cannot be paused (this config has no token): exit 2
    with what to do, nothing written; ``--force`` writes and warns."""
    stack, config, _ = daemon
    socket_path = stack.admin_socket
    wait_until(lambda: run_cli("status", "-c", config).json()["ready"], "readiness", 10)
    assert run_cli("override", "set", "-c", config, "app/s1", "5").code == 0
    wait_until(lambda: weights(socket_path, KEYS)["app/s1"] == 5, "the pin in HAProxy", 10)
    tokenless = tmp_path / "tokenless.yaml"
    tokenless.write_text(
        "\n".join(line for line in config.read_text().splitlines() if "token_file" not in line)
    )

    refused = run_cli("revert", "-c", tokenless)
    assert refused.code == 2
    assert "api.token_file" in refused.stderr
    assert "--force" in refused.stderr
    assert weights(socket_path, KEYS)["app/s1"] == 5

    forced = run_cli("revert", "-c", tokenless, "--force")
    assert forced.code == 0, forced.stderr
    assert "will put its own weights back" in forced.stderr
    assert run_cli("status", "-c", config).json()["paused"] is False


def test_status_prints_a_table_for_people_and_json_for_scripts(
    daemon: tuple[LocalStack, Path, subprocess.Popen[str]],
) -> None:
    """#18 (9): `status` printed only raw JSON. Piped it still does (scripts read it);
    `--output table` (the default at a terminal) reads at a glance."""
    _, config, _ = daemon
    wait_until(lambda: run_cli("status", "-c", config).json()["ready"], "readiness", 10)
    assert run_cli("pause", "-c", config, "--reason", "change 7").code == 0
    table = run_cli("status", "-c", config, "--output", "table")
    assert table.code == 0, table.stderr
    for text in ("VeloFlux agent", "paused: change 7", "last attempt", "source haproxy"):
        assert text in table.stdout, text
    assert all(s in table.stdout for s in ("s1", "s2", "s3"))
    piped = run_cli("status", "-c", config)
    assert piped.json()["pause_reason"] == "change 7"
    assert piped.json()["last_attempt"]["ok"] is True
