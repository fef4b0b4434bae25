"""Crash consistency: ``kill -9`` the daemon and a model promoter mid-write, then check
that everything they keep on disk reopens whole.

A power cut is rarer than a killed process (an OOM kill, a ``kill -9`` by a hurried
operator, a container runtime's timeout), and the state files were written to survive
one: the journal commits in WAL mode, the model registry and the operator state replace
whole files atomically, the audit log appends each batch with one ``write``. Unit
tests check each writer; this drives them all for real at once and kills them at a
random instant, so that some kills land inside a write, and checks after each:

* the journal opens with VeloFlux's own ``Journal``, ``PRAGMA integrity_check`` is
  ``ok``, no row another connection saw committed has gone, and at most one tick the
  daemon logged is missing (the one in the writer's queue or transaction);
* the registry's ``current`` loads and its checksums verify, and it is the last
  promotion acknowledged or the one in flight when the kill came;
* the operator state file parses and equals the last acknowledged action's state, or
  the one in flight;
* every audit line is whole JSON, except possibly a torn last line (counted).

``bench/crash.py`` runs it a hundred times and more; the test suite a few times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "crash-token-5b1e0d"
SERVERS = ("s1", "s2", "s3", "s4")
# A small audit log rotates every few dozen lines, so that kills land in rotations too.
AUDIT_MAX_BYTES, AUDIT_BACKUPS = 8192, 3
BACKENDS = (BackendSpec("app", tuple(ServerSpec(s, "127.0.0.1:9", 10) for s in SERVERS)),)


@dataclass(frozen=True)
class Rig:
    """One HAProxy, one state directory, the models to promote between."""

    root: Path
    config: Path
    port: int
    versions: tuple[str, ...]

    @property
    def history(self) -> Path:
        return self.root / "history.sqlite"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "operator.json"


@dataclass
class Outcome:
    """What one kill left behind; ``failures`` empty means a clean recovery."""

    delay_s: float
    restart_s: float = 0.0  # spawn to ready: reopening journal, state and registry
    ticks_logged: int = 0
    ticks_committed: int = 0
    ticks_lost: int = 0
    rows_lost: int = 0
    dropped: int = 0
    torn_audit: int = 0
    actions_acked: int = 0
    promotions_acked: int = 0
    promotion_in_flight: bool = False  # the kill came between a promote's start and return
    action_in_flight: bool = False  # ... between an API request and its answer
    temps: int = 0  # replacements' temp files in the state directory after this kill
    failures: list[str] = field(default_factory=list)


_DAEMON = (sys.executable, "-m", "veloflux", "run")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "agent"), str(ROOT)])
    return env


# --- the rig ------------------------------------------------------------------------------


def train_versions(models: Path, count: int = 2) -> tuple[str, ...]:
    """``count`` real model versions, trained by the project's pipeline on a small
    synthetic journal, so that a promotion verifies and loads what the daemon would."""
    import pandas as pd

    from integration.synthetic import SyntheticPool, synthetic_samples
    from veloflux.domain.observation import Observation, PoolInfo, ProxyIdentity
    from veloflux.history.journal import Journal
    from veloflux.model.pipeline import train_from_journal
    from veloflux.model.registry import Registry
    from veloflux.model.train import TrainSettings
    from veloflux.util.events import Events

    raw = synthetic_samples(SyntheticPool(servers=4, intervals=200, seed=3))
    proxy = ProxyIdentity("unix:///crash", 1, 1.7e9, 60.0, "2.8.0", "admin")
    history = models.parent / "training.sqlite"
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ticks = iter(range(10**6))
    registry = Registry(models, lambda: base + timedelta(minutes=next(ticks)), Events())
    versions: list[str] = []
    with Journal(history, Events()) as journal:
        for when in sorted(raw["time"].unique()):
            frame = raw[raw["time"] == when]
            info = (PoolInfo("app", "roundrobin", True),)
            at = pd.Timestamp(when).to_pydatetime()
            journal.append(Observation.from_frame(at, frame, info, proxy))
        for rounds in range(count):
            settings = TrainSettings(max_rounds=5 + rounds, min_rows=50, nthread=1)
            run = train_from_journal(journal, registry, settings)
            versions.append(run.entry.version)
    registry.promote(versions[0], "crash rig")
    history.unlink()
    return tuple(versions)


def write_config(root: Path, socket: str, interval: str = "150ms") -> tuple[Path, int]:
    """The daemon's config: a short interval so that appends flow, the API on loopback."""
    port = free_port()
    token = root / "token"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    token.chmod(0o600)
    data = {
        "interval": interval,
        "haproxy": {"socket": socket, "timeout": "1s"},
        "ai": {
            "history_path": str(root / "history.sqlite"),
            "model_dir": str(root / "models"),
            "audit_log": str(root / "audit.jsonl"),
            "audit_max_bytes": AUDIT_MAX_BYTES,
            "audit_backups": AUDIT_BACKUPS,
        },
        "api": {
            "listen": f"127.0.0.1:{port}",
            "state_path": str(root / "operator.json"),
            "token_file": str(token),
        },
    }
    config = root / "veloflux.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config, port


def start_haproxy(root: Path) -> HAProxyProcess:
    return HAProxyProcess(root / "haproxy", list(BACKENDS)).start()


def make_rig(root: Path, haproxy: HAProxyProcess) -> Rig:
    root.mkdir(parents=True, exist_ok=True)
    versions = train_versions(root / "models")
    config, port = write_config(root, haproxy.admin_socket)
    return Rig(root, config, port, versions)


# --- the writers ----------------------------------------------------------------------------


def promoter_main(models: str, versions: list[str]) -> None:
    """The child that promotes in a loop: ``ack VERSION`` once ``promote`` returned,
    ``try VERSION`` before it starts, so the parent knows the one in flight."""
    from veloflux.model.registry import Registry
    from veloflux.util.events import Events

    registry = Registry(Path(models), lambda: datetime.now(UTC), Events(), keep=len(versions) + 2)
    print("ready", flush=True)
    i = 0
    while True:
        version = versions[i % len(versions)]
        print(f"try {version}", flush=True)
        registry.promote(version, "crash loop")
        print(f"ack {version}", flush=True)
        i += 1


def _api(port: int, path: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=2) as reply:
        return int(reply.status)


class Operator(threading.Thread):
    """Pauses, resumes and pins through the API as fast as it answers, keeping the
    state each acknowledged action left and the one in flight."""

    def __init__(self, port: int, rng: random.Random, start: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self._port, self._rng = port, rng
        self.acked: dict[str, Any] = dict(start)
        self.in_flight: dict[str, Any] | None = None
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            state = {"paused": self.acked["paused"], "pins": dict(self.acked["pins"])}
            choice = self._rng.randrange(3)
            if choice == 0:
                path, body = ("/api/v1/resume", {}) if state["paused"] else ("/api/v1/pause", {})
                state["paused"] = not state["paused"]
            else:
                server, weight = f"app/{self._rng.choice(SERVERS)}", self._rng.randint(1, 60)
                path, body = "/api/v1/overrides", {"server": server, "weight": weight}
                state["pins"][server] = weight
            self.in_flight = state
            try:
                _api(self._port, path, body)
            except OSError:
                return  # the daemon was killed under the request
            self.acked, self.in_flight = state, None
            self.count += 1


class CommitWatcher(threading.Thread):
    """Reads the journal's row count from a connection of its own: a row it has seen
    was committed, so it must be there after the kill."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self._path = path
        self.seen = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=1)
        try:
            while not self.stop.wait(0.02):
                try:
                    self.seen = max(
                        self.seen, conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
                    )
                except sqlite3.Error:
                    continue
        finally:
            conn.close()


# --- one kill -------------------------------------------------------------------------------


def _journal_counts(path: Path) -> tuple[int, int]:
    """(rows, ticks) of the journal, read with a plain connection; (0, 0) before it exists."""
    if not path.exists():
        return 0, 0
    conn = sqlite3.connect(path, timeout=5)
    try:
        rows, ticks = conn.execute("SELECT COUNT(*), COUNT(DISTINCT time) FROM samples").fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        conn.close()
    return int(rows), int(ticks)


def _operator_state(path: Path) -> dict[str, Any]:
    """The state file as the comparison needs it: paused, and the pins' weights."""
    if not path.exists():
        return {"paused": False, "pins": {}}
    data = json.loads(path.read_text(encoding="utf-8"))
    pins = {str(o["server"]): int(o["weight"]) for o in data["overrides"]}
    return {"paused": bool(data["paused"]), "pins": pins}


def _wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


def _log_records(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def kill_once(rig: Rig, rng: random.Random, index: int, delay: tuple[float, float]) -> Outcome:
    """Start daemon, promoter and operator; ``kill -9`` daemon and promoter together at a
    moment uniform in ``delay`` seconds after the daemon answers; then check."""
    outcome = Outcome(delay_s=round(rng.uniform(*delay), 3))
    from veloflux.model.registry import Registry
    from veloflux.util.events import Events

    rows_before, ticks_before = _journal_counts(rig.history)
    registry = Registry(rig.models, lambda: datetime.now(UTC), Events())
    promoted_before = registry.current_version()
    log = rig.root / f"daemon-{index:04d}.log"
    with log.open("wb") as sink:
        daemon = subprocess.Popen(
            [*_DAEMON, "-c", str(rig.config), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink, env=_env(),
            start_new_session=True,
        )  # fmt: skip
    promoter = subprocess.Popen(
        [sys.executable, "-m", "integration.crash", "promote", str(rig.models), *rig.versions],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(),
        cwd=ROOT, text=True, start_new_session=True,
    )  # fmt: skip
    promotions: list[str] = []
    reader = threading.Thread(
        target=lambda: promotions.extend(line.strip() for line in promoter.stdout or ()),
        daemon=True,
    )
    reader.start()
    watcher = CommitWatcher(rig.history)
    operator = Operator(rig.port, rng, _operator_state(rig.state))
    try:
        spawned = time.perf_counter()
        _wait(lambda: _ready(rig.port) or daemon.poll() is not None, "the daemon", 30)
        outcome.restart_s = round(time.perf_counter() - spawned, 3)
        if daemon.poll() is not None:
            outcome.failures.append("daemon_exited")
            return outcome
        watcher.start()
        operator.start()
        time.sleep(outcome.delay_s)
    finally:
        for proc in (daemon, promoter):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in (daemon, promoter):
            proc.wait(10)
        operator.stop.set()
        watcher.stop.set()
    operator.join(5)
    watcher.join(5)
    reader.join(5)
    _check_journal(rig, outcome, watcher.seen, rows_before, ticks_before, _log_records(log))
    _check_model(rig, outcome, promoted_before, promotions)
    _check_state(rig, outcome, operator)
    _check_audit(rig, outcome)
    # A kill between a temp file's creation and its rename leaves it: counted, and swept
    # by the daemon and the registry once an hour old (util.files.sweep_temps).
    outcome.temps = sum(1 for _ in rig.root.rglob(".*.tmp"))
    outcome.actions_acked = operator.count
    if not outcome.failures:
        log.unlink()
    return outcome


def _check_journal(
    rig: Rig, outcome: Outcome, seen: int, rows_before: int, ticks_before: int,
    records: list[dict[str, Any]],
) -> None:  # fmt: skip
    """The journal opens with VeloFlux's own class, is intact, kept every row another
    connection saw committed, and misses at most the last tick the daemon logged."""
    from veloflux.history.journal import HistoryError, Journal
    from veloflux.util.events import Events

    try:
        with Journal(rig.history, Events()) as journal:
            rows = journal.count()
    except HistoryError as exc:
        outcome.failures.append(f"journal_open: {exc}")
        return
    conn = sqlite3.connect(rig.history)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if check != "ok":
        outcome.failures.append(f"journal_integrity: {check}")
    if rows < seen:
        outcome.failures.append(f"journal_committed_rows_lost: saw {seen}, found {rows}")
    rows_after, ticks_after = _journal_counts(rig.history)
    outcome.ticks_logged = sum(1 for r in records if r.get("event") == "tick")
    outcome.ticks_committed = ticks_after - ticks_before
    outcome.dropped = sum(1 for r in records if "history_write_dropped" in str(r.get("message")))
    outcome.ticks_lost = max(0, outcome.ticks_logged - outcome.ticks_committed)
    per_tick = (
        (rows_after - rows_before) / outcome.ticks_committed if outcome.ticks_committed else 0
    )
    outcome.rows_lost = round(outcome.ticks_lost * (per_tick or len(SERVERS)))
    if outcome.ticks_lost - outcome.dropped > 1:
        outcome.failures.append(f"journal_ticks_lost: {outcome.ticks_lost}")


def _check_model(rig: Rig, outcome: Outcome, before: str | None, lines: list[str]) -> None:
    """``current`` verifies and is the last promotion acknowledged or the one in flight."""
    from veloflux.errors import VelofluxError
    from veloflux.model.registry import Registry
    from veloflux.util.events import Events

    registry = Registry(rig.models, lambda: datetime.now(UTC), Events())
    try:
        registry.load()  # reads ``current`` and verifies its checksums
    except VelofluxError as exc:
        outcome.failures.append(f"model_unloadable: {exc}")
        return
    acked = [line.split()[1] for line in lines if line.startswith("ack ")]
    tried = [line.split()[1] for line in lines if line.startswith("try ")]
    outcome.promotions_acked = len(acked)
    allowed = {acked[-1] if acked else before}
    if len(tried) > len(acked):
        allowed.add(tried[-1])
        outcome.promotion_in_flight = True
    version = registry.current_version()
    if version not in allowed:
        outcome.failures.append(f"model_unexpected: {version} not in {sorted(map(str, allowed))}")


def _check_state(rig: Rig, outcome: Outcome, operator: Operator) -> None:
    """The operator state parses and is the last acknowledged action's, or the in-flight one's."""
    try:
        state = _operator_state(rig.state)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        outcome.failures.append(f"state_unreadable: {exc}")
        return
    outcome.action_in_flight = operator.in_flight is not None
    if state != operator.acked and state != operator.in_flight:
        outcome.failures.append(f"state_mismatch: {state} vs acked {operator.acked}")


def _check_audit(rig: Rig, outcome: Outcome) -> None:
    """Every line of the log and its rotated files is whole JSON; a torn last line of
    the live file is counted (the audit reader skips a line that does not parse), one
    anywhere else is a failure. A torn line is cut away so later kills start clean."""
    from veloflux.daemon.audit import AuditLog
    from veloflux.util.events import Events

    for path in sorted(rig.root.glob(f"{rig.audit.name}*")):
        data = path.read_bytes()
        lines = data.split(b"\n")
        for number, line in enumerate(lines):
            if not line:
                continue
            try:
                json.loads(line)
            except ValueError:
                if path == rig.audit and number == len(lines) - 1:
                    outcome.torn_audit += 1
                    with path.open("r+b") as handle:
                        handle.truncate(len(data) - len(line))
                else:
                    outcome.failures.append(f"audit_torn_inside: {path.name} line {number + 1}")
    if rig.audit.exists() and rig.audit.stat().st_size:
        log = AuditLog(rig.audit, Events(), AUDIT_MAX_BYTES, AUDIT_BACKUPS)
        if not log.tail(1):
            outcome.failures.append("audit_unreadable")


# --- a run ----------------------------------------------------------------------------------


def run(
    root: Path, kills: int, seed: int, delay: tuple[float, float] = (0.3, 2.5),
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:  # fmt: skip
    """``kills`` kills on one rig; the figures, and every outcome."""
    rng = random.Random(seed)
    haproxy = start_haproxy(root)
    try:
        rig = make_rig(root / "agent", haproxy)
        outcomes = []
        for index in range(kills):
            outcomes.append(kill_once(rig, rng, index, delay))
            if outcomes[-1].failures:
                progress(f"kill {index}: {outcomes[-1].failures}")
            elif index % 10 == 9:
                progress(f"{index + 1} kills, all clean so far")
    finally:
        haproxy.stop()
    return summarise(outcomes, seed, delay)


def summarise(outcomes: list[Outcome], seed: int, delay: tuple[float, float]) -> dict[str, Any]:
    kinds = Counter(f.split(":", 1)[0] for o in outcomes for f in o.failures)
    restarts = sorted(o.restart_s for o in outcomes)
    return {
        "seed": seed,
        "delay_s": list(delay),
        "kills": len(outcomes),
        "clean": sum(1 for o in outcomes if not o.failures),
        "failures": dict(kinds),
        "failure_examples": [f for o in outcomes for f in o.failures][:10],
        "ticks_logged": sum(o.ticks_logged for o in outcomes),
        "ticks_lost_max": max((o.ticks_lost for o in outcomes), default=0),
        "rows_lost_max": max((o.rows_lost for o in outcomes), default=0),
        "rows_lost_total": sum(o.rows_lost for o in outcomes),
        "kills_losing_a_tick": sum(1 for o in outcomes if o.ticks_lost),
        "dropped": sum(o.dropped for o in outcomes),
        "torn_audit_lines": sum(o.torn_audit for o in outcomes),
        "operator_actions_acked": sum(o.actions_acked for o in outcomes),
        "promotions_acked": sum(o.promotions_acked for o in outcomes),
        "temp_files_left": outcomes[-1].temps if outcomes else 0,
        "kills_mid_promotion": sum(o.promotion_in_flight for o in outcomes),
        "kills_mid_operator_action": sum(o.action_in_flight for o in outcomes),
        "restart_s_median": restarts[len(restarts) // 2] if restarts else 0.0,
        "restart_s_max": restarts[-1] if restarts else 0.0,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["promote"]:
        promoter_main(sys.argv[2], sys.argv[3:])
