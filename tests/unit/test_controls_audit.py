"""Operator pins and pause (persisted, expiring) and the audit log (confirmed writes, rotation)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.factories import TAKEN_AT, Pool, Server, observation, policy
from veloflux.daemon.audit import Actor, AuditLog, entries
from veloflux.daemon.controls import OperatorControls
from veloflux.decide.planner import plan_weights
from veloflux.domain.weightplan import ApplyReport, WeightPlan, WriteResult
from veloflux.errors import ControlRefused
from veloflux.util.events import Events


class Clock:
    def __init__(self) -> None:
        self.now = TAKEN_AT

    def __call__(self) -> datetime:
        return self.now


def controls(path: Path, clock: Clock | None = None) -> tuple[OperatorControls, Events]:
    events = Events()
    return OperatorControls(path, clock or Clock(), events), events


def test_pins_and_pause_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "operator.json"
    first, _ = controls(path)
    first.set_override("app/s1", 7, None)
    first.set_override("app/s2", 0, 3600)
    first.pause("maintenance window")
    again, _ = controls(path)
    state = again.snapshot()
    assert state.weights == {"app/s1": 7, "app/s2": 0}
    assert state.overrides["app/s2"].expires_at == TAKEN_AT + timedelta(hours=1)
    assert state.paused
    assert state.pause_reason == "maintenance window"
    again.resume()
    assert not controls(path)[0].snapshot().paused


def test_a_pin_with_a_ttl_expires_and_the_expiry_is_counted(tmp_path: Path) -> None:
    clock = Clock()
    ctl, events = controls(tmp_path / "op.json", clock)
    ctl.set_override("app/s1", 5, 60)
    ctl.set_override("app/s2", 6, None)
    clock.now += timedelta(seconds=59)
    assert set(ctl.snapshot().weights) == {"app/s1", "app/s2"}
    clock.now += timedelta(seconds=1)
    assert ctl.snapshot().weights == {"app/s2": 6}
    assert events.count("override_expired") == 1
    assert controls(tmp_path / "op.json")[0].snapshot().weights == {"app/s2": 6}


@pytest.mark.parametrize(
    ("server", "weight", "ttl", "field"),
    [
        ("app/s1;disable server app/s2", 5, None, "server"),
        ("no-slash", 5, None, "server"),
        ("app/s1", 257, None, "weight"),
        ("app/s1", -1, None, "weight"),
        ("app/s1", 5, 0.0, "ttl"),
    ],
)
def test_bad_pins_are_refused_with_the_field_named(
    tmp_path: Path, server: str, weight: int, ttl: float | None, field: str
) -> None:
    ctl, _ = controls(tmp_path / "op.json")
    with pytest.raises(ControlRefused, match=f"^{field}") as refused:
        ctl.set_override(server, weight, ttl)
    assert refused.value.status == 400
    assert ctl.snapshot().weights == {}
    assert not (tmp_path / "op.json").exists()


def test_clearing_one_all_or_an_unknown_pin(tmp_path: Path) -> None:
    ctl, _ = controls(tmp_path / "op.json")
    ctl.set_override("app/s1", 1, None)
    ctl.set_override("app/s2", 2, None)
    ctl.set_override("app/s3", 3, None)
    assert ctl.clear_overrides("app/s2") == ["app/s2"]
    with pytest.raises(ControlRefused) as missing:
        ctl.clear_overrides("app/s2")
    assert missing.value.status == 404
    assert ctl.clear_overrides(None) == ["app/s1", "app/s3"]
    assert ctl.snapshot().weights == {}


@pytest.mark.parametrize(
    "content", ["{not json", '{"overrides": [{"server": "a;b/c", "weight": 1}]}', "[]"]
)
def test_an_unreadable_state_file_starts_paused_and_says_why(tmp_path: Path, content: str) -> None:
    path = tmp_path / "op.json"
    path.write_text(content)
    ctl, events = controls(path)
    state = ctl.snapshot()
    assert state.paused
    assert str(path) in state.pause_reason
    assert "resume" in state.pause_reason
    assert events.count("operator_state_unreadable") == 1
    assert path.read_text() == content  # left for the operator until they resume


def test_a_state_file_that_cannot_be_written_refuses_the_change(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    ctl, events = controls(blocked / "op.json")  # a path under a regular file
    with pytest.raises(ControlRefused) as refused:
        ctl.set_override("app/s1", 4, None)
    assert refused.value.status == 500
    assert ctl.snapshot().weights == {}  # not adopted unless saved
    assert events.count("operator_state_write_failed") == 1


# --- audit -----------------------------------------------------------------------------------


def _plan_and_report() -> tuple[WeightPlan, ApplyReport]:
    obs = observation([Pool("app", [Server("s1", weight=10), Server("s2", weight=10)])])
    plan = plan_weights(obs, policy(static_weights={"app/s1": 20, "app/s2": 10}))
    report = ApplyReport(
        (
            WriteResult("app", "s1", 10, 15, 15, ""),
            WriteResult("app", "s2", 10, 12, None, "No such server."),
        )
    )
    return plan, report


def test_only_confirmed_writes_are_audited_with_mode_and_reason() -> None:
    plan, report = _plan_and_report()
    (entry,) = entries(plan, report)
    assert entry["backend"] == "app"
    assert entry["server"] == "s1"
    assert (entry["old"], entry["new"]) == (10, 15)
    assert entry["mode"] == "fallback"
    assert entry["reason"].startswith("no model")
    assert entry["time"] == TAKEN_AT.isoformat()
    assert set(entry) == {
        "time", "backend", "server", "old", "new", "mode", "confidence", "model_version", "reason",
    }  # fmt: skip


def test_the_audit_log_appends_json_lines_and_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    log = AuditLog(path, Events(), max_bytes=600, backups=2)
    plan, report = _plan_and_report()
    for _ in range(12):
        assert log.record(plan, report) == 1
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        text = (path.parent / name).read_text()
        assert len(text.encode()) <= 600
        assert all(json.loads(line)["server"] == "s1" for line in text.splitlines())


def test_a_failed_audit_append_is_counted_and_the_agent_goes_on(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    events = Events()
    log = AuditLog(blocked / "audit.jsonl", events, max_bytes=4096, backups=1)
    plan, report = _plan_and_report()
    assert log.record(plan, report) == 0
    assert events.count("audit_write_failed") == 1


FULL_DISK_CHILD = """
import resource, signal, sys
from pathlib import Path
from tests.unit.test_controls_audit import _plan_and_report
from veloflux.daemon.audit import AuditLog
from veloflux.util.events import Events

path = Path(sys.argv[1])
events = Events()
log = AuditLog(path, events, max_bytes=1 << 20, backups=1)
plan, report = _plan_and_report()
assert log.record(plan, report) == 1
# The kernel refuses to grow the file past 40 more bytes: the next append is cut short
# mid-line (a short write, then EFBIG), as a full disk cuts it.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 40, hard))
assert log.record(plan, report) == 0
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk is freed
assert log.record(plan, report) == 1
print(events.count("audit_write_failed"))
"""


def test_an_append_cut_by_a_full_disk_leaves_no_fragment(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "1"  # the cut append was counted
    lines = path.read_text().splitlines()
    # The line before the cut and the one after it are whole; the cut one is gone.
    assert [json.loads(line)["server"] for line in lines] == ["s1", "s1"]


def test_a_line_left_unfinished_by_a_crash_does_not_swallow_the_next(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, Events(), max_bytes=1 << 20, backups=1)
    plan, report = _plan_and_report()
    assert log.record(plan, report) == 1
    with path.open("a") as f:
        f.write('{"time":"2026-12-07T21:25:13+00:00","backend":"app","ser')  # kill -9 here
    assert log.record(plan, report) == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0])["server"] == json.loads(lines[2])["server"] == "s1"
    assert lines[1].endswith('"ser')
    assert log.tail(10)[0]["server"] == "s1"


def test_operator_actions_and_weight_writes_name_their_actor(tmp_path: Path) -> None:
    """Kills: an action line without its actor, token or reason; a weight line that
    does not say which path wrote it."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, Events(), max_bytes=1 << 20, backups=1, clock=lambda: TAKEN_AT)
    plan, report = _plan_and_report()
    operator = Actor("cli:alice", token="sha256:0123abcd")
    assert log.action("pause", operator, "incident 42", was_paused=False) == 1
    assert log.record(plan, report, action="revert", actor=Actor("cli:alice"),
                      operator_reason="incident 42") == 1  # fmt: skip
    assert log.record(plan, report) == 1
    pause, revert, tick = (json.loads(line) for line in path.read_text().splitlines())
    assert pause == {
        "time": TAKEN_AT.isoformat(), "action": "pause", "actor": "cli:alice",
        "token": "sha256:0123abcd", "reason": "incident 42", "was_paused": False,
    }  # fmt: skip
    assert (revert["action"], revert["actor"], revert["operator_reason"]) == (
        "revert",
        "cli:alice",
        "incident 42",
    )
    assert "token" not in revert
    assert (tick["action"], tick["actor"]) == ("tick", "veloflux")
    assert "operator_reason" not in tick


def test_two_writers_appending_to_one_log_never_split_a_line(tmp_path: Path) -> None:
    """The daemon and a `revert` from a shell share the file (two instances stand in
    for the two processes; the lock is on the directory, not the instance). Kills: an
    unlocked rotation dropping or splitting lines."""
    path = tmp_path / "audit.jsonl"
    daemon = AuditLog(path, Events(), max_bytes=2000, backups=50)
    shell = AuditLog(path, Events(), max_bytes=2000, backups=50)
    threads = [
        threading.Thread(
            target=lambda log=log, name=name: [
                log.action("pause", Actor(name), f"line {i}") for i in range(100)
            ]
        )
        for log, name in ((daemon, "veloflux"), (shell, "cli:bob"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line) for p in tmp_path.iterdir() for line in p.read_text().splitlines()]
    assert len(lines) == 200
    assert sorted((e["actor"], e["reason"]) for e in lines) == sorted(
        (name, f"line {i}") for name in ("veloflux", "cli:bob") for i in range(100)
    )


def test_the_audit_tail_is_newest_first_across_a_rotation_and_skips_garbage(
    tmp_path: Path,
) -> None:
    """What the dashboard's audit table reads. Kills: oldest-first order, the entries
    of ``.1`` lost right after a rotation, a torn or garbage line failing the request,
    or a read unbounded by ``max_bytes``."""
    log = AuditLog(tmp_path / "audit.jsonl", Events(), max_bytes=400, backups=2)
    for n in range(8):
        log.action("pause", Actor("ops"), f"reason {n}")
    assert (tmp_path / "audit.jsonl.1").exists()  # it rotated on the way
    with (tmp_path / "audit.jsonl").open("a") as file:
        file.write("not json\n[1, 2]\n")
    reasons = [e["reason"] for e in log.tail(5)]
    assert reasons == ["reason 7", "reason 6", "reason 5", "reason 4", "reason 3"]
    assert [e["reason"] for e in log.tail(2)] == ["reason 7", "reason 6"]
    # Only the last 150 bytes of each file: the line cut by the seek is dropped.
    small = log.tail(50, max_bytes=150)
    assert 0 < len(small) < 8
    assert small[0]["reason"] == "reason 7"
    assert AuditLog(tmp_path / "none.jsonl", Events(), 400, 2).tail(5) == []
