"""The independent invariant checker: ``python -m integration.invariants -c CONFIG ...``.

A process of its own beside the daemon, so that what it reports does not depend on the
agent being alive, honest or even correct about itself. Every 100 ms it reads each
proxy with its own small clients (HAProxy's runtime API: ``show info``, ``show servers
state``, ``show stat``; Envoy's admin API: ``/server_info`` and ``/clusters``; the EDS
file as it is on disk), tails the audit log, the daemon's JSON log (for when ticks ran)
and the fault scheduler's event log, and hands everything to the rules in
``integration.invariant_rules``. It imports nothing from VeloFlux: a bug in the agent's
parsers or planner must not be copied into its judge.

Outputs: ``--violations`` (one JSON line per violation: time, rule, view, pool,
server, evidence), ``--states`` (a JSON line each time the proxies start or stop
showing the agent's weights: what recovery is measured on) and ``--summary`` (counts,
written when it stops: on SIGTERM, or when ``--stop-file`` appears).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
import traceback
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

from integration.invariant_rules import (
    STATIC_ALGORITHMS,
    Checker,
    Policy,
    Reading,
    Server,
    Snapshot,
    TickLine,
    Violation,
    duration,
)

POLL_SECONDS = 0.1
IO_TIMEOUT = 0.5


# --- HAProxy, read with a client of its own -------------------------------------------------


def haproxy_command(address: str, command: str, timeout: float = IO_TIMEOUT) -> str:
    """One runtime API command over ``unix://PATH`` or ``tcp://HOST:PORT``."""
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX)
        target: Any = address[len("unix://") :]
    else:
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        sock = socket.socket(socket.AF_INET)
        target = (host, int(port))
    with sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced, inherited, config, resolution
# maintenance; forced and inherited drain.
_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20
_DRAIN_BITS = 0x08 | 0x10


def parse_servers_state(text: str, backends: Sequence[str]) -> dict[str, dict[str, Server]]:
    """``show servers state`` -> backend -> server -> weight, state, initial weight."""
    pools: dict[str, dict[str, Server]] = {}
    columns: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            columns = line[2:].split()
            continue
        fields = line.split()
        if not columns or len(fields) < len(columns):
            continue
        row = dict(zip(columns, fields, strict=False))
        backend = row["be_name"]
        if backend not in backends:
            continue
        admin, op = int(row["srv_admin_state"]), int(row["srv_op_state"])
        if admin & _MAINT_BITS:
            state = "MAINT"
        elif admin & _DRAIN_BITS:
            state = "DRAIN"
        else:
            state = "UP" if op in (2, 3) else "DOWN"
        pools.setdefault(backend, {})[row["srv_name"]] = Server(
            int(row["srv_uweight"]), state, int(row["srv_iweight"])
        )
    return pools


def parse_algorithms(text: str) -> dict[str, str]:
    """``show stat`` -> backend -> its ``balance`` algorithm."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    found = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") == "BACKEND":
            found[row["pxname"]] = row.get("algo", "")
    return found


def parse_identity(text: str) -> str:
    """``show info`` -> the process: pid and start time (a reload or restart changes it)."""
    info = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return f"pid {info.get('Pid', '?')} started {info.get('Start_time_sec', '?')}"


@dataclass
class HAProxyView:
    """One HAProxy replica."""

    address: str
    backends: Sequence[str]
    _algorithms: dict[str, str] = field(default_factory=dict)
    _identity: str = ""

    def read(self) -> Reading:
        try:
            # One connection, so one process answers both: a reload between two
            # connections would pair the old process's identity with the new one's
            # weights, and its reset would look like a write.
            both = haproxy_command(self.address, "show info;show servers state")
            info, _, state = both.partition("\n\n")
            identity = parse_identity(info)
            if identity != self._identity or not self._algorithms:
                self._algorithms = parse_algorithms(haproxy_command(self.address, "show stat"))
                self._identity = identity
        except (OSError, ValueError):
            return Reading(self.address, "haproxy", False)
        if "be_name" not in state:
            return Reading(self.address, "haproxy", False)
        pools = parse_servers_state(state, self.backends)
        algorithms = {b: a for b, a in self._algorithms.items() if b in self.backends}
        return Reading(self.address, "haproxy", True, identity, pools, algorithms)


# --- Envoy: its admin API and the EDS file ---------------------------------------------------


def http_json(url: str, timeout: float = IO_TIMEOUT) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def parse_clusters(document: Any, clusters: Sequence[str]) -> dict[str, dict[str, Server]]:
    """``/clusters?format=json`` -> cluster -> ``ADDRESS:PORT`` -> weight and state (an
    endpoint DRAINING stands at 0: how the agent writes a planned 0)."""
    pools: dict[str, dict[str, Server]] = {}
    for cluster in document.get("cluster_statuses", []):
        if cluster.get("name") not in clusters:
            continue
        hosts = pools.setdefault(cluster["name"], {})
        for host in cluster.get("host_statuses", []):
            sock = host["address"]["socket_address"]
            name = f"{sock['address']}:{sock['port_value']}"
            health = host.get("health_status", {}).get("eds_health_status", "")
            weight = int(host.get("weight", 1))
            hosts[name] = Server(0 if health == "DRAINING" else weight, "UP")
    return pools


def parse_eds(document: Any) -> dict[str, Server]:
    """An EDS file (a DiscoveryResponse holding one ClusterLoadAssignment) -> endpoints."""
    found: dict[str, Server] = {}
    for resource in document.get("resources", []):
        for group in resource.get("endpoints", []):
            for lb in group.get("lb_endpoints", []):
                sock = lb["endpoint"]["address"]["socket_address"]
                name = f"{sock['address']}:{sock['port_value']}"
                weight = int(lb.get("load_balancing_weight", 1))
                draining = lb.get("health_status") == "DRAINING"
                found[name] = Server(0 if draining else weight, "UP")
    return found


@dataclass
class EnvoyView:
    admin: str
    clusters: Sequence[str]

    def read(self) -> Reading:
        try:
            info = http_json(f"{self.admin}/server_info")
            document = http_json(f"{self.admin}/clusters?format=json")
        except (OSError, ValueError):
            return Reading("envoy", "envoy", False)
        uptime = float(info.get("uptime_all_epochs", "0s").rstrip("s") or 0)
        started = round((time.time() - uptime) / 5)  # Envoy says whole seconds
        epoch = info.get("command_line_options", {}).get("restart_epoch", 0)
        identity = f"epoch {epoch} started ~{started * 5}"
        pools = parse_clusters(document, self.clusters)
        return Reading("envoy", "envoy", True, identity, pools, dict.fromkeys(pools, "eds"))


@dataclass
class EdsView:
    directory: Path
    clusters: Sequence[str]

    def read(self) -> Reading:
        pools = {}
        for cluster in self.clusters:
            path = self.directory / f"{cluster}.yaml"
            try:
                text = path.read_text(encoding="utf-8")
                try:
                    document = json.loads(text)
                except ValueError:
                    document = yaml.safe_load(text)
                pools[cluster] = parse_eds(document)
            except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
                return Reading("eds", "envoy", False)
        return Reading("eds", "envoy", True, "", pools, dict.fromkeys(pools, "eds"))


# --- tailing JSON lines ----------------------------------------------------------------------


class Tail:
    """New whole JSON lines of a file since the last call; follows a rotation (the file
    replaced by a new one: the rest of the old one is read first, from ``.1``).

    The offset only ever stops at the end of a whole line, and an unfinished line is
    read again from its start next time rather than kept: a writer that undoes a torn
    append (truncating back to the line's start) and appends again is then read
    right, which a reader that kept the torn bytes would splice into garbage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode: int | None = None
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            stat = self.path.stat()
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        if self._inode is not None and stat.st_ino != self._inode:
            rotated = self.path.with_name(self.path.name + ".1")
            out += self._read_from(rotated, self._offset)[0]
            self._offset = 0
        self._inode = stat.st_ino
        self._offset = min(self._offset, stat.st_size)
        lines, self._offset = self._read_from(self.path, self._offset)
        return out + lines

    @staticmethod
    def _read_from(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
        try:
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
        except OSError:
            return [], offset
        whole = data.rfind(b"\n") + 1
        out = []
        for line in data[:whole].split(b"\n"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out, offset + whole


def tick_line(record: Mapping[str, Any]) -> TickLine | None:
    """A tick of the daemon from its JSON log line (``event: tick``), or None."""
    if record.get("event") != "tick":
        return None
    try:
        end = datetime.fromisoformat(str(record["time"])).timestamp()
        duration = float(record.get("duration_ms") or 0.0) / 1000
    except (KeyError, ValueError):
        return None
    failed = tuple(str(f) for f in record.get("proxies_failed") or ())
    return TickLine(end - duration, end, bool(record.get("paused")), failed)


# --- the checker process ---------------------------------------------------------------------


@dataclass
class Setup:
    """What the config says to watch, read from its YAML (not with VeloFlux's loader)."""

    policy: Policy
    interval: float
    views: list[Any]
    families: dict[str, list[str]]
    audit_names: dict[str, str]
    managed: dict[str, list[str]]
    audit_log: Path


def read_setup(config_path: Path) -> Setup:
    data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    views: list[Any] = []
    families: dict[str, list[str]] = {}
    audit_names: dict[str, str] = {}
    managed: dict[str, list[str]] = {}
    haproxy = data.get("haproxy")
    if haproxy:
        backends = list(haproxy.get("backends") or [])
        for address in [haproxy["socket"], *(haproxy.get("replicas") or [])]:
            views.append(HAProxyView(address, backends))
            families.setdefault("haproxy", []).append(address)
            audit_names[address] = address
        managed["haproxy"] = backends
    envoy = data.get("envoy")
    if envoy:
        clusters = [c["name"] for c in envoy.get("clusters") or []]
        views += [EnvoyView(envoy["admin"], clusters), EdsView(Path(envoy["eds_dir"]), clusters)]
        families["envoy"] = ["envoy", "eds"]
        managed["envoy"] = clusters
    ai = data.get("ai") or {}
    audit = Path(ai.get("audit_log", "/var/lib/veloflux/audit.jsonl"))
    interval = duration(data.get("interval", "15s"), 15.0)
    return Setup(Policy.from_config(data), interval, views, families, audit_names, managed, audit)


def consistent(snap: Snapshot, setup: Setup, expected: Mapping[tuple[str, str], int]) -> bool:
    """Whether every view answers and shows, for every server of a managed dynamic pool,
    the weight VeloFlux last wrote to it (or, never written, the same as its family's
    other views): what "the proxies show the agent's weights" means for recovery."""
    for family, views in setup.families.items():
        for pool in setup.managed.get(family, []):
            seen: dict[str, set[int | None]] = {}
            for view in views:
                reading = snap.readings.get(view)
                if reading is None or not reading.up:
                    return False
                if reading.algorithms.get(pool) in STATIC_ALGORITHMS:
                    break
                for server, s in reading.pools.get(pool, {}).items():
                    if s.state in ("MAINT", "DRAIN"):
                        continue
                    seen.setdefault(server, set()).add(s.weight)
            for server, weights in seen.items():
                want = expected.get((pool, server))
                if len(weights) != 1 or (want is not None and weights != {want}):
                    return False
    return True


class Runner:
    """The polling loop: read, feed the rules, write what they found."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.setup = read_setup(opts.config)
        s = self.setup
        self.checker = Checker(
            s.policy, s.families, s.audit_names, s.interval, s.managed, grace=opts.grace
        )
        self.record: IO[str] | None = None
        self.audit = Tail(opts.audit or s.audit_log)
        self.events = Tail(opts.events) if opts.events else None
        self.ticks = Tail(opts.daemon_log) if opts.daemon_log else None
        # What VeloFlux last set on each server, with when: from its audit lines (its
        # writes and its holds of weights set by hand) and from the writes the checker
        # presumed its own when their lines were lost to a full disk.
        self.expected: dict[tuple[str, str], tuple[float, int]] = {}
        self.stop = False
        self.polls = 0
        self.changes = 0
        self.audit_lines = 0
        self.max_gap = 0.0
        self.errors = 0
        self._last: Snapshot | None = None
        self._consistent: bool | None = None

    def run(self) -> int:
        out = self.opts.violations.open("a", encoding="utf-8")
        states = self.opts.states.open("a", encoding="utf-8") if self.opts.states else None
        if self.opts.record is not None:
            self.record = self.opts.record.open("a", encoding="utf-8")
        last = time.time()
        try:
            while not self.stop and not (self.opts.stop_file and self.opts.stop_file.exists()):
                started = time.time()
                self.max_gap = max(self.max_gap, started - last)
                last = started
                try:
                    found = self.step(started)
                except Exception:  # counted and shown; the watch must go on
                    self.errors += 1
                    traceback.print_exc()
                    found = []
                self._write(out, found)
                if states is not None:
                    self._state(states)
                time.sleep(max(0.0, POLL_SECONDS - (time.time() - started)))
            self._write(out, self.checker.finish(time.time()))
        finally:
            out.close()
            if states is not None:
                states.close()
            if self.record is not None:
                self.record.close()
        self._summary()
        return 0

    def step(self, now: float) -> list[Violation]:
        before = len(self.checker.violations)
        faults = self.events.read() if self.events is not None else []
        ticks = self.ticks.read() if self.ticks is not None else []
        readings = {}
        for view in self.setup.views:
            reading = view.read()
            readings[reading.view] = reading
        snap = Snapshot(time.time(), readings)
        self._feed(faults, ticks, snap, [])
        audit = [(entry, time.time()) for entry in self.audit.read()]
        self._feed([], [], None, audit)
        if self.record is not None:
            self.record.write(json.dumps(recorded(faults, ticks, snap, audit)) + "\n")
        self._last = snap
        return self.checker.violations[before:]

    def _feed(
        self,
        faults: Sequence[Mapping[str, Any]],
        ticks: Sequence[Mapping[str, Any]],
        snap: Snapshot | None,
        audit: Sequence[tuple[Mapping[str, Any], float]],
    ) -> None:
        """One poll's inputs, in the order they were read: what ``replay`` repeats."""
        for record in faults:
            self.checker.add_fault(record)
        for record in ticks:
            tick = tick_line(record)
            if tick is not None:
                self.checker.add_tick(tick)
        if snap is not None:
            self.polls += 1
            pending = len(self.checker.pending)
            self.checker.add_snapshot(snap)
            self.changes += max(0, len(self.checker.pending) - pending)
        for entry, read_at in audit:
            self.audit_lines += 1
            self._expect(entry)
            self.checker.add_audit(entry, read_at)

    def _expect(self, entry: Mapping[str, Any]) -> None:
        action = entry.get("action", "tick")
        new = entry.get("new")
        if not isinstance(new, int) or isinstance(new, bool):
            return
        if action in ("tick", "apply", "revert", "on_exit"):
            key = (str(entry.get("backend")), str(entry.get("server")))
        elif action == "external_change":
            pool, _, server = str(entry.get("server")).partition("/")
            key = (pool, server)
        else:
            return
        self.expected[key] = (time.time(), new)

    def _expected(self) -> dict[tuple[str, str], int]:
        latest = dict(self.expected)
        for (_view, pool, server), (at, weight) in self.checker.last_written.items():
            if (pool, server) not in latest or latest[(pool, server)][0] < at:
                latest[(pool, server)] = (at, weight)
        return {key: weight for key, (_at, weight) in latest.items()}

    def _write(self, out: IO[str], found: Sequence[Violation]) -> None:
        for violation in found:
            out.write(json.dumps(violation.to_json()) + "\n")
        if found:
            out.flush()

    def _state(self, out: IO[str]) -> None:
        if self._last is None:
            return
        now = consistent(self._last, self.setup, self._expected())
        if now != self._consistent:
            self._consistent = now
            out.write(json.dumps({"time": round(self._last.time, 3), "consistent": now}) + "\n")
            out.flush()

    def _summary(self) -> None:
        if self.opts.summary is None:
            return
        by_rule: dict[str, int] = {}
        for v in self.checker.violations:
            by_rule[v.rule] = by_rule.get(v.rule, 0) + 1
        summary = {
            "polls": self.polls,
            "changes_seen": self.changes,
            "audit_lines": self.audit_lines,
            "violations": len(self.checker.violations),
            "by_rule": by_rule,
            "max_poll_gap_seconds": round(self.max_gap, 3),
            "errors": self.errors,
        }
        self.opts.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def recorded(
    faults: Sequence[Mapping[str, Any]],
    ticks: Sequence[Mapping[str, Any]],
    snap: Snapshot,
    audit: Sequence[tuple[Mapping[str, Any], float]],
) -> dict[str, Any]:
    """One poll as a JSON object (``--record``), so that a run can be judged again
    offline (``--replay``) by a corrected checker, without running it again."""
    readings = {
        name: {
            "family": r.family,
            "up": r.up,
            "identity": r.identity,
            "pools": {
                pool: {name: [s.weight, s.state, s.initial] for name, s in servers.items()}
                for pool, servers in r.pools.items()
            },
            "algorithms": dict(r.algorithms),
        }
        for name, r in snap.readings.items()
    }
    return {"time": snap.time, "faults": list(faults), "ticks": list(ticks),
            "readings": readings, "audit": [list(pair) for pair in audit]}  # fmt: skip


def snapshot_of(data: Mapping[str, Any]) -> Snapshot:
    readings = {
        name: Reading(
            name,
            r["family"],
            r["up"],
            r["identity"],
            {
                pool: {n: Server(w, st, init) for n, (w, st, init) in servers.items()}
                for pool, servers in r["pools"].items()
            },
            r["algorithms"],
        )
        for name, r in data["readings"].items()
    }
    return Snapshot(float(data["time"]), readings)


def replay(opts: argparse.Namespace) -> int:
    """Judge a recorded run again: every poll fed as it was read, nothing polled."""
    runner = Runner(opts)
    out = opts.violations.open("w", encoding="utf-8")
    last = 0.0
    with out, opts.replay.open(encoding="utf-8") as recording:
        for line in recording:
            data = json.loads(line)
            before = len(runner.checker.violations)
            snap = snapshot_of(data)
            runner._feed(data["faults"], data["ticks"], snap, [])
            runner._feed([], [], None, [tuple(pair) for pair in data["audit"]])
            runner._write(out, runner.checker.violations[before:])
            last = snap.time
        runner._write(out, runner.checker.finish(last))
    runner._summary()
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True, help="the agent's YAML")
    parser.add_argument("--violations", type=Path, required=True, help="JSON lines out")
    parser.add_argument("--events", type=Path, help="the fault scheduler's event log")
    parser.add_argument("--daemon-log", type=Path, help="the daemon's JSON log (its ticks)")
    parser.add_argument("--audit", type=Path, help="the audit log (default: the config's)")
    parser.add_argument("--states", type=Path, help="JSON lines: agent's weights shown or not")
    parser.add_argument("--summary", type=Path, help="counts, written on exit")
    parser.add_argument("--stop-file", type=Path, help="stop when this file appears")
    parser.add_argument("--grace", type=float, default=12.0, help="seconds a change waits")
    parser.add_argument("--record", type=Path, help="write every poll's inputs here")
    parser.add_argument("--replay", type=Path, help="judge a --record file again, offline")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.replay is not None:
        return replay(opts)
    runner = Runner(opts)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        runner.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
