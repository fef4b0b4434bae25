"""The soak's independent checker, live against a real HAProxy: what it must catch.

The short soak (test_soak.py) passes when the checker finds nothing, which proves
little unless the same process, polling a real proxy, does find a broken rule. Here no
agent runs: the test plays a rogue writer through the runtime socket and writes the
audit lines itself, so each rule is broken on purpose, and ``python -m
integration.invariants`` must name each one (and stay quiet on the write that keeps the
rules).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.haproxy_proc import (
    BackendSpec,
    HAProxyProcess,
    ServerSpec,
    spawn_logged,
    stop_process,
)
from integration.soak import ROOT, _haproxy

pytestmark = pytest.mark.integration

DEADLINE_S = 20.0
POLICY = {"min_weight": 1, "max_weight": 200, "max_step_ratio": 0.5, "min_servers_in_rotation": 2}


class Watched:
    def __init__(self, workdir: Path, proxy: HAProxyProcess) -> None:
        self.workdir = workdir
        self.proxy = proxy
        self.audit = workdir / "audit.jsonl"
        self.violations = workdir / "violations.jsonl"

    def send(self, command: str) -> str:
        return _haproxy(self.proxy.admin_socket, command)

    def audit_tick(self, server: str, old: int, new: int) -> None:
        """The audit line a tick of the agent would append for a write it made."""
        line = {
            "time": datetime.now(UTC).isoformat(),
            "backend": "app",
            "server": server,
            "old": old,
            "new": new,
            "mode": "capacity",
            "replica": self.proxy.admin_socket,
            "action": "tick",
            "actor": "veloflux",
        }
        with self.audit.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def found(self) -> list[dict[str, Any]]:
        if not self.violations.exists():
            return []
        return [json.loads(line) for line in self.violations.read_text().splitlines() if line]

    def wait_for(self, rule: str, server: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            for v in self.found():
                if v["rule"] == rule and v.get("server") == server:
                    return v
            time.sleep(0.1)
        pytest.fail(f"no {rule} for {server} within {DEADLINE_S:g}s: {self.found()}")


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    servers = tuple(ServerSpec(f"s{i}", f"127.0.0.1:{9 + i}", 100) for i in (1, 2, 3, 4))
    specs = [BackendSpec("app", servers)]
    with HAProxyProcess(tmp_path / "haproxy", specs, "app") as proxy:
        w = Watched(tmp_path, proxy)
        w.audit.touch()
        config = {
            "interval": "1s",
            "haproxy": {"socket": proxy.admin_socket, "backends": ["app"]},
            "policy": POLICY,
            "ai": {"audit_log": str(w.audit)},
        }
        (tmp_path / "veloflux.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        args = [
            sys.executable,
            "-m",
            "integration.invariants",
            "-c",
            str(tmp_path / "veloflux.yaml"),
            "--violations",
            str(w.violations),
            "--summary",
            str(tmp_path / "summary.json"),
            "--grace",
            "1",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        checker = spawn_logged(args, tmp_path / "checker.log", env)
        try:
            time.sleep(1.0)  # a few polls of the proxy as it was configured
            assert checker.poll() is None, (tmp_path / "checker.log").read_text()
            yield w
        finally:
            stop_process(checker)
            summary = json.loads((tmp_path / "summary.json").read_text())
            assert summary["errors"] == 0, (tmp_path / "checker.log").read_text()


def test_the_live_checker_names_each_broken_rule_and_passes_a_lawful_write(
    watched: Watched,
) -> None:
    # A lawful tick: within the step limit (100 -> 150 at 0.5), with its audit line.
    watched.send("set weight app/s3 140")
    watched.audit_tick("s3", 100, 140)
    # A weight nobody accounts for.
    watched.send("set weight app/s1 60")
    unaudited = watched.wait_for("unaudited_change", "s1")
    assert "100 -> 60" in unaudited["evidence"]
    # A tick's write beyond the step limit, audited as it was made.
    watched.send("set weight app/s2 190")
    watched.audit_tick("s2", 100, 190)
    watched.wait_for("step_too_large", "s2")
    # A tick's write beyond max_weight, within its step.
    watched.send("set weight app/s4 150")
    watched.audit_tick("s4", 100, 150)
    time.sleep(1.5)
    watched.send("set weight app/s4 210")
    watched.audit_tick("s4", 150, 210)
    watched.wait_for("out_of_bounds", "s4")
    time.sleep(1.5)  # past the grace: the lawful write was judged too
    assert [v for v in watched.found() if v.get("server") == "s3"] == []
    # Ticks writing three of four servers to 0 where the policy keeps two in rotation:
    # the third leaves one. (These steps are too large as well, and named so.)
    for server, old in (("s1", 60), ("s3", 140), ("s4", 210)):
        watched.send(f"set weight app/{server} 0")
        watched.audit_tick(server, old, 0)
        time.sleep(0.5)  # a few polls apart: three ticks, not one
    watched.wait_for("below_min_in_rotation", "s4")
    assert not any(
        v["rule"] == "below_min_in_rotation" and v.get("server") == "s1" for v in watched.found()
    )
