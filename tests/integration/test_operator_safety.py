"""#18, operator safety, against a real HAProxy: what an SRE does by hand during an
incident is seen, respected and audited by a running daemon.

(`revert` beside a running daemon and the audit story of pause/revert/resume are in
test_daemon_cli.py, whose daemon runs as a separate process, as an operator runs it.)
"""

from __future__ import annotations

import getpass
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from integration.haproxy_proc import HAProxyProcess, free_port
from tests.integration.daemon_helpers import (
    AgentFiles,
    DaemonProcess,
    agent_config,
    api_address,
    request,
    running_daemon,
    samples,
    wait_turns,
    wait_until,
    write_config,
)
from tests.integration.helpers import run_cli, set_weights, weights
from tests.unit.learning_factories import FAST, WEAK, synthetic_observation, synthetic_raw
from veloflux.history.journal import Journal
from veloflux.model.pipeline import train_from_journal
from veloflux.model.registry import Registry
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

APP = ["app/s1", "app/s2", "app/s3", "app/s4"]


def test_a_weight_set_by_hand_is_held_audited_and_counted_then_handed_back(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """#18 (3): before, `set server app/s1 weight 3` was stepped back toward the plan at
    the next tick with no event and no metric. Now the daemon holds it for
    `policy.external_change_hold`, counts, audits and shows it, then steps it again."""
    files = AgentFiles(tmp_path)
    config = write_config(
        files,
        agent_config(
            haproxy.admin_socket,
            files,
            haproxy={"timeout": "400ms"},
            policy={"static_weights": {"app/s1": 20}, "external_change_hold": "4s"},
        ),
    )
    with running_daemon(config) as daemon:
        read = lambda: samples(daemon)  # noqa: E731
        wait_until(lambda: weights(haproxy.admin_socket, APP)["app/s1"] == 20, "s1 at 20")
        set_weights(haproxy.admin_socket, {"app/s1": 3})
        wait_until(
            lambda: read().value("veloflux_external_changes_total", backend="app") == 1,
            "the change to be counted",
        )
        wait_turns(read, 3, "ticks during the hold")
        assert weights(haproxy.admin_socket, APP)["app/s1"] == 3
        status: dict[str, Any] = request(api_address(daemon), "GET", "/status").json()
        (hold,) = status["external_holds"]
        assert (hold["server"], hold["written"], hold["found"]) == ("app/s1", 20, 3)
        (s1,) = [s for p in status["plan"]["pools"] for s in p["servers"] if s["server"] == "s1"]
        assert s1["reason"].startswith("held: weight set outside VeloFlux (3; it had written 20)")
        assert read().get("veloflux_external_holds") == 1
        # The hold ends: the daemon steps s1 back toward its static weight (3 -> 4 -> ...).
        wait_until(lambda: weights(haproxy.admin_socket, APP)["app/s1"] > 3, "the hold to end", 15)
        # The tick audits what it wrote just after writing it: wait for that line.
        wait_until(
            lambda: any(
                e["action"] == "tick" and e["server"] == "s1" and e["old"] == 3
                for e in files.audit_entries(actions=True)
            ),
            "the first write after the hold in the audit log",
        )
    audit = files.audit_entries(actions=True)
    (change,) = [e for e in audit if e["action"] == "external_change"]
    assert (change["server"], change["old"], change["new"]) == ("app/s1", 20, 3)
    assert change["actor"] == "external"
    assert change["held_until"]
    later = [e for e in audit if e["action"] == "tick" and e["server"] == "s1" and e["old"] == 3]
    assert later, "the daemon's first write after the hold is audited"


def _two_models(models: Path, history: Path) -> tuple[str, str]:
    """Two versions in the registry (trained for real on a synthetic journal): the
    first promoted by its training, the second kept as a candidate."""
    registry = Registry(models, lambda: datetime.now(UTC), Events())
    with Journal(history, Events()) as journal:
        first = train_from_journal(journal, registry, FAST)
        time.sleep(1.1)  # versions are named to the second
        second = train_from_journal(journal, registry, WEAK)
    assert first.promoted, first.reason
    return first.entry.version, second.entry.version


def test_a_scripted_incident_leaves_the_whole_story_in_the_audit_log(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """#18 (2): the daemon running; an operator pauses with a reason, pins, reverts,
    resumes, promotes a model and rolls it back, all from the CLI. Before, only the
    daemon's own writes reached the audit log. Now every step is there, in order,
    with who did it."""
    files = AgentFiles(tmp_path / "agent")
    history = tmp_path / "synthetic.sqlite"
    raw = synthetic_raw()
    with Journal(history, Events()) as journal:
        for when in sorted(raw["time"].unique()):
            journal.append(synthetic_observation(raw, pd.Timestamp(when)))
    config = write_config(
        files,
        agent_config(
            haproxy.admin_socket,
            files,
            listen=f"127.0.0.1:{free_port()}",
            haproxy={"timeout": "400ms"},
        ),
    )
    first, second = _two_models(files.models, history)
    user = f"cli:{getpass.getuser()}"
    with running_daemon(config):
        assert run_cli("override", "set", "-c", config, "app/s2", "7").code == 0
        wait_until(lambda: weights(haproxy.admin_socket, APP)["app/s2"] == 7, "the pin")
        steps: list[tuple[str | Path, ...]] = [
            ("pause", "-c", config, "--reason", "incident 42"),
            ("override", "clear", "-c", config, "app/s2"),
            ("revert", "-c", config, "--reason", "incident 42"),
            ("resume", "-c", config),
            ("model", "promote", "-c", config, second, "--force", "--reason", "try it"),
            ("model", "rollback", "-c", config, "--reason", "p99 worse"),
        ]
        for step in steps:
            done = run_cli(*step)
            assert done.code == 0, (step, done.stderr)
    story = [
        (e["action"], e["actor"], e.get("server"))
        for e in files.audit_entries(actions=True)
        if e["action"] != "tick"
    ]
    assert story == [
        ("override_set", user, "app/s2"),
        ("pause", user, None),
        ("override_clear", user, "app/s2"),
        ("revert", user, "s2"),
        ("resume", user, None),
        ("model_promote", user, None),
        ("model_rollback", user, None),
    ]
    lines = files.audit_entries(actions=True)
    promote = next(e for e in lines if e["action"] == "model_promote")
    assert (promote["old"], promote["new"]) == (first, second)
    assert "forced past the gate" in promote["reason"] or promote["reason"] == "try it"
    rollback = next(e for e in lines if e["action"] == "model_rollback")
    assert (rollback["old"], rollback["new"]) == (second, first)
    assert next(e for e in lines if e["action"] == "pause")["reason"] == "incident 42"


def test_json_logs_carry_the_ticks_figures_and_one_line_per_failed_tick(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    """#18 (8): with `--log-format json` the figures were packed into `message`, and a
    failed tick logged three WARNING lines (the source's event, the tick's event, the
    tick). Now a tick line has its figures as fields, and a failed tick one line."""
    files = AgentFiles(tmp_path)
    port = free_port()
    config = write_config(
        files,
        agent_config(
            haproxy.admin_socket,
            files,
            listen=f"127.0.0.1:{port}",
            haproxy={"timeout": "400ms"},
        ),
    )
    with DaemonProcess(config, port, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        ticks = wait_until(
            lambda: [r for r in daemon.records() if r.get("event") == "tick"], "a tick line"
        )
        tick = ticks[0]
        assert tick["pools"] == {"fallback": 1, "unmanaged": 2}
        assert (tick["servers"], tick["paused"], tick["dry_run"]) == (8, False, False)
        assert {"written", "failed", "lowest_confidence", "model", "duration_ms"} <= set(tick)
        haproxy.kill()
        failed = wait_until(
            lambda: [r for r in daemon.records() if r.get("event") == "tick_failed"][3:],
            "four failed ticks",
        )
        assert failed[0]["reason"] == "source"
        since = daemon.records()
        first = next(i for i, r in enumerate(since) if r.get("event") == "tick_failed")
        warnings = [r for r in since[first:] if r.get("level") == "warning"]
        assert warnings, "the failed ticks are logged"
        assert all(r.get("event") == "tick_failed" for r in warnings), warnings[:4]
        # #18 (7): /status's last_tick mixed the last good tick's time with the later
        # failure's error; last_attempt and last_success say them apart.
        status = daemon.get("/status").json()
        assert status["last_attempt"]["ok"] is False
        assert status["last_attempt"]["error"].startswith("source: ")
        assert status["last_success"]["at"] < status["last_attempt"]["at"]
