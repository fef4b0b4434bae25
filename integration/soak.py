"""The chaos soak: the daemon on the native stack while a seeded scheduler breaks
everything around it, and the independent checker (``integration.invariants``) watches.

``run_soak`` is shared by ``bench/soak.py`` (the long run, whose figures go into
docs/reliability.md) and ``tests/integration/test_soak.py`` (a few minutes in the test
suite). The stack: demo backends under bounded load, two HAProxy replicas with one
config (backend ``app``, roundrobin, and ``fixed``, static-rr, which VeloFlux must never
write), Envoy (cluster ``app-envoy`` from an EDS directory), Prometheus scraping them
all (the capacity rung's utilization signal), and ``veloflux-agent run`` at a 1 s
interval as a child process. The state directory and the EDS directory are small
tmpfs mounts of their own when this process may mount (root): a full disk is then a
real ENOSPC, and an unwritable EDS directory a real read-only file system.

Every action of the scheduler is a start line and an end line in ``events.jsonl``,
written before it acts and after it is done: the checker exempts exactly what was
injected, and the figures (recovery per fault kind) are computed from the same log.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from integration.envoy_proc import EnvoyProcess
from integration.haproxy_proc import (
    BackendSpec,
    HAProxyProcess,
    ServerSpec,
    StackError,
    free_port,
    spawn_logged,
    stop_process,
)
from integration.loadgen import run_load_sync
from integration.prometheus_proc import PrometheusProcess, ScrapeJob
from integration.stack import reconfigure_backend, spawn_backends
from veloflux.envoy.eds import Endpoint

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "soak-token-5d1e"
SERVERS = (("s1", 20.0), ("s2", 20.0), ("s3", 50.0))  # name, mean service time (ms)
STATIC_WEIGHT = 100
POLICY: dict[str, Any] = {
    "min_weight": 1,
    "max_weight": 200,
    "max_step_ratio": 0.5,
    "min_servers_in_rotation": 2,
    "external_change_hold": "20s",
}
# Valid policies a SIGHUP may bring (every static weight stays within the bounds).
POLICY_VARIANTS: tuple[dict[str, Any], ...] = (
    {},
    {"max_step_ratio": 0.25},
    {"max_step_ratio": 1.0, "max_weight": 256},
    {"min_weight": 5, "max_weight": 150},
    {"min_servers_in_rotation": 1, "max_step_ratio": 0.3},
)
# Broken files a SIGHUP may bring: the daemon must refuse each and keep its config.
INVALID_CONFIGS = ("yaml", "min_above_max", "unknown_key", "step_zero")

# Fault kinds, each with its weight in the draw.
FAULT_WEIGHTS: dict[str, int] = {
    "haproxy_reload": 3,
    "haproxy_restart": 2,
    "haproxy_kill": 2,
    "replica_gone": 2,
    "envoy_restart": 2,
    "eds_unwritable": 2,
    "prometheus_stop": 1,
    "prometheus_sigstop": 1,
    "disk_full": 2,
    "reload_config": 3,
    "backend_slow": 2,
    "backend_fail": 2,
    "backend_restart": 1,
    "maint": 2,
    "hand_set": 2,
    "pause": 2,
    "pin": 2,
    "revert": 1,
    "daemon_kill": 1,
}
# What each kind holds while it runs: two faults never act on one thing at once.
RESOURCES: dict[str, str] = {
    "haproxy_reload": "haproxy",
    "haproxy_restart": "haproxy",
    "haproxy_kill": "haproxy",
    "replica_gone": "haproxy",
    "maint": "haproxy",
    "hand_set": "haproxy",
    "envoy_restart": "envoy",
    "eds_unwritable": "envoy",
    "prometheus_stop": "prometheus",
    "prometheus_sigstop": "prometheus",
    "disk_full": "disk",
    "reload_config": "daemon",  # a restart must never read a broken file
    "backend_slow": "backends",
    "backend_fail": "backends",
    "backend_restart": "backends",
    "pause": "operator",
    "pin": "operator",
    "revert": "operator",
    "daemon_kill": "daemon",
}


@dataclass(frozen=True)
class SoakOptions:
    duration: float  # seconds of chaos (the stack's start and stop come on top)
    workdir: Path
    seed: int = 1
    gap: tuple[float, float] = (2.0, 6.0)  # seconds between two fault draws
    load_rps: float = 25.0  # per entry point (two HAProxy frontends, Envoy)
    train_every: str = "15m"
    kinds: tuple[str, ...] = tuple(FAULT_WEIGHTS)


# --- small helpers ---------------------------------------------------------------------------


def _sleep_until(deadline: float, stop: threading.Event) -> bool:
    """Sleep until ``deadline`` (monotonic); False when told to stop first."""
    return not stop.wait(max(0.0, deadline - time.monotonic()))


def _run(args: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root, with the capability kept)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/veloflux-soak-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = _run(["mount", "-t", "tmpfs", "-o", "size=64k", "veloflux-probe", str(probe)])
        if done.returncode != 0:
            return False
        _run(["umount", str(probe)])
        return True
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class EventLog:
    """The scheduler's event log: a start line before an action, an end line after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._next = 0
        self.records: list[dict[str, Any]] = []

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def start(self, kind: str, target: str = "", **data: Any) -> int:
        with self._lock:
            self._next += 1
            ident = self._next
        self._write(
            {
                "id": ident,
                "kind": kind,
                "phase": "start",
                "time": time.time(),
                "target": target,
                **data,
            }
        )
        return ident

    def end(self, ident: int, kind: str, target: str = "", ok: bool = True, **data: Any) -> None:
        self._write(
            {
                "id": ident,
                "kind": kind,
                "phase": "end",
                "time": time.time(),
                "target": target,
                "ok": ok,
                **data,
            }
        )

    @contextlib.contextmanager
    def action(self, kind: str, target: str = "", **data: Any) -> Iterator[dict[str, Any]]:
        """Log around a block; the block fills ``result`` (``ok`` and data for the end)."""
        ident = self.start(kind, target, **data)
        result: dict[str, Any] = {"ok": True}
        try:
            yield result
        except Exception as exc:
            result.update(ok=False, error=str(exc)[:300])
            raise
        finally:
            extra = {k: v for k, v in result.items() if k != "ok"}
            self.end(ident, kind, target, bool(result["ok"]), **data, **extra)


# --- the stack -------------------------------------------------------------------------------


class Backends:
    """The demo backends, one child process on fixed ports, so it can be restarted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {name: free_port() for name, _ in SERVERS}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        specs = [
            f"{name}=127.0.0.1:{self.ports[name]},concurrency=8,mean_ms={mean}"
            for name, mean in SERVERS
        ]
        self._proc, _ = spawn_backends(self.workdir, specs, timeout)

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)

    def reconfigure(self, name: str, patch: Mapping[str, Any]) -> None:
        reconfigure_backend(f"http://127.0.0.1:{self.ports[name]}", patch)


class Daemon:
    """``python -m veloflux run`` as a child process: started, killed, restarted; an
    exit nobody asked for is a crash."""

    def __init__(self, config: Path, log: Path, port: int, code: Path) -> None:
        self.code = code
        self.config = config
        self.log = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes: list[dict[str, Any]] = []
        self.lives: list[dict[str, Any]] = []  # each process: pid, start, end, rss
        self._lock = threading.Lock()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
        env["PYTHONPATH"] = str(self.code)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "veloflux",
                    "run",
                    "-c",
                    str(self.config),
                    "--log-format",
                    "json",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.lives.append({"pid": self.proc.pid, "start": time.time(), "rss": []})

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                url = f"http://127.0.0.1:{self.port}/-/ready"
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL, as a crash would (the process alone, by its id)."""
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
            self.lives[-1]["end"] = time.time()

    def check(self) -> None:
        """An exit nobody asked for: counted as a crash, and the daemon started again."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is None:
                if proc is not None:
                    self.lives[-1]["rss"].append((time.time(), rss_mb(proc.pid)))
                return
            self.crashes.append({"time": time.time(), "code": proc.returncode})
            self.lives[-1]["end"] = time.time()
            self.proc = None
        self.start()

    def stop(self) -> int | None:
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            self.lives[-1]["rss"].append((time.time(), rss_mb(proc.pid)))
            stop_process(proc, timeout=20.0)
        self.lives[-1]["end"] = time.time()
        return proc.returncode


class Stack:
    """Backends, two HAProxy replicas, Envoy, Prometheus, and the agent's config."""

    def __init__(self, workdir: Path, mount: bool, train_every: str) -> None:
        self.workdir = workdir
        self.mount = mount
        self.train_every = train_every
        self.state = workdir / "state"
        self.eds = workdir / "eds"
        self.config = workdir / "veloflux.yaml"
        self.backends = Backends(workdir)
        self.api_port = free_port()
        self.haproxy: dict[str, HAProxyProcess] = {}
        self.envoy: EnvoyProcess | None = None
        self.prometheus: PrometheusProcess | None = None
        self.mounted: list[Path] = []
        self.valid_config: dict[str, Any] = {}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for directory, size in ((self.state, "256m"), (self.eds, "1m")):
            directory.mkdir(parents=True, exist_ok=True)
            if self.mount:
                done = _run(
                    [
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        f"size={size},mode=0755",
                        "veloflux-soak",
                        str(directory),
                    ]
                )
                if done.returncode != 0:
                    raise StackError(f"mount {directory}: {done.stderr.strip()}")
                self.mounted.append(directory)
        self.backends.start()
        ports = self.backends.ports
        app = tuple(
            ServerSpec(name, f"127.0.0.1:{ports[name]}", STATIC_WEIGHT) for name, _ in SERVERS
        )
        fixed = tuple(ServerSpec(name, f"127.0.0.1:{ports[name]}", 10) for name, _ in SERVERS)
        specs = [BackendSpec("app", app), BackendSpec("fixed", fixed, algorithm="static-rr")]
        for replica in ("a", "b"):
            proxy = HAProxyProcess(self.workdir / f"haproxy-{replica}", specs, "app").start()
            self.haproxy[proxy.admin_socket] = proxy
        endpoints = [Endpoint("127.0.0.1", ports[name], STATIC_WEIGHT) for name, _ in SERVERS]
        self.envoy = EnvoyProcess(
            self.workdir / "envoy", {"app-envoy": endpoints}, eds_dir=self.eds
        ).start()
        jobs = {
            "haproxy": ScrapeJob(tuple(f"127.0.0.1:{p.exporter_port}" for p in self.proxies)),
            "envoy": ScrapeJob((f"127.0.0.1:{self.envoy.admin_port}",), path="/stats/prometheus"),
            "backends": ScrapeJob(tuple(f"127.0.0.1:{p}" for p in ports.values())),
        }
        self.prometheus = PrometheusProcess(self.workdir / "prometheus", jobs).start(30.0)
        (self.workdir / "token").write_text(TOKEN + "\n", encoding="utf-8")
        (self.workdir / "token").chmod(0o600)
        self.valid_config = self.config_data({})
        self.write_config(self.valid_config)

    @property
    def proxies(self) -> list[HAProxyProcess]:
        return list(self.haproxy.values())

    def config_data(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        assert self.envoy is not None
        assert self.prometheus is not None
        ports = self.backends.ports
        sockets = list(self.haproxy)
        query = (
            'irate(veloflux_demo_busy_seconds_total{job="backends"}[3s])'
            ' / veloflux_demo_concurrency_limit{job="backends"}'
        )
        return {
            "interval": "1s",
            "haproxy": {
                "socket": sockets[0],
                "replicas": sockets[1:],
                "timeout": "800ms",
                "backends": ["app", "fixed"],
            },
            "envoy": {
                "admin": self.envoy.admin_url,
                "eds_dir": str(self.eds),
                "timeout": "800ms",
                "confirm_timeout": "3s",
                "clusters": [
                    {
                        "name": "app-envoy",
                        "endpoints": [
                            {"address": "127.0.0.1", "port": ports[name], "weight": STATIC_WEIGHT}
                            for name, _ in SERVERS
                        ],
                    }
                ],
            },
            "prometheus": {
                "url": self.prometheus.url,
                "timeout": "800ms",
                "default_features": False,
                "features": {"utilization": query},
                "instance_map": {f"127.0.0.1:{ports[name]}": f"app/{name}" for name, _ in SERVERS},
            },
            "capacity": {"utilization_feature": "utilization"},
            "policy": {**POLICY, **policy},
            "ai": {
                "history_path": str(self.state / "history.sqlite"),
                "model_dir": str(self.state / "models"),
                "audit_log": str(self.state / "audit.jsonl"),
                "audit_max_bytes": 64 * 1024 * 1024,
                "training_interval": self.train_every,
            },
            "api": {
                "listen": f"127.0.0.1:{self.api_port}",
                "state_path": str(self.state / "operator.json"),
                "token_file": str(self.workdir / "token"),
            },
        }

    def write_config(self, data: Mapping[str, Any] | str) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(dict(data), sort_keys=False)
        temporary = self.config.with_name(".veloflux.yaml.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.config)

    def stop(self) -> None:
        for stopper in (
            lambda: self.prometheus.stop() if self.prometheus else None,
            lambda: self.envoy.stop() if self.envoy else None,
            *[proxy.stop for proxy in self.proxies],
            self.backends.stop,
        ):
            with contextlib.suppress(Exception):
                stopper()

    def keep_state(self) -> None:
        """Copy the state directory's files out before its tmpfs goes away."""
        kept = self.workdir / "state-kept"
        kept.mkdir(exist_ok=True)
        for path in self.state.glob("*"):
            if path.is_file() and path.name != "filler":
                with contextlib.suppress(OSError):
                    shutil.copy2(path, kept / path.name)

    def unmount(self) -> None:
        for directory in self.mounted:
            _run(["mount", "-o", "remount,rw", str(directory)])
            if _run(["umount", str(directory)]).returncode != 0:
                _run(["umount", "-l", str(directory)])
        self.mounted = []


# --- the faults --------------------------------------------------------------------------------


class Spawner:
    """One long-lived thread that starts every process the faults restart. Envoy is
    sent SIGTERM when the thread that started it ends (its parent-death signal is the
    thread's, not the process's), so a fault's own short-lived thread must not start it.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="soak-spawner")

    def run(self, fn: Any) -> Any:
        return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Chaos:
    """The seeded scheduler and every fault it can inject."""

    def __init__(self, stack: Stack, daemon: Daemon, log: EventLog, opts: SoakOptions) -> None:
        self.stack = stack
        self.daemon = daemon
        self.log = log
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.spawn = Spawner()
        self.stop = threading.Event()
        self.busy: set[str] = set()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.kinds = [k for k in opts.kinds if k in FAULT_WEIGHTS]
        if not stack.mount:
            self.kinds = [k for k in self.kinds if k not in ("disk_full", "eds_unwritable")]

    def run(self, deadline: float) -> None:
        """Draw a fault every few seconds until ``deadline``, then cut the holds short
        and wait for every fault to undo itself. A supervisor restarts a daemon that
        exited on its own all along (a crash, counted)."""
        done = threading.Event()
        supervisor = threading.Thread(target=self._supervise, args=(done,), daemon=True)
        supervisor.start()
        try:
            self._draw(deadline)
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(120)
            done.set()
            supervisor.join(10)
            self.spawn.close()

    def _supervise(self, done: threading.Event) -> None:
        while not done.wait(1.0):
            self.daemon.check()

    def _draw(self, deadline: float) -> None:
        while _sleep_until(time.monotonic() + self.rng.uniform(*self.opts.gap), self.stop):
            if time.monotonic() >= deadline:
                break
            free = [k for k in self.kinds if RESOURCES[k] not in self.busy]
            if not free:
                continue
            kind = self.rng.choices(free, [FAULT_WEIGHTS[k] for k in free])[0]
            seed = self.rng.randrange(1 << 30)
            resource = RESOURCES[kind]
            with self._lock:
                self.busy.add(resource)
            thread = threading.Thread(
                target=self._inject, args=(kind, resource, random.Random(seed)), daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _inject(self, kind: str, resource: str, rng: random.Random) -> None:
        try:
            getattr(self, f"_{kind}")(rng)
        except Exception as exc:  # a fault that failed to inject is reported, not fatal
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.busy.discard(resource)

    def _hold(self, rng: random.Random, low: float, high: float) -> None:
        self.stop.wait(rng.uniform(low, high))

    # HAProxy

    def _replica(self, rng: random.Random) -> tuple[str, HAProxyProcess]:
        address = rng.choice(sorted(self.stack.haproxy))
        return address, self.stack.haproxy[address]

    def _haproxy_reload(self, rng: random.Random) -> None:
        address, proxy = self._replica(rng)
        with self.log.action("haproxy_reload", address):
            self.spawn.run(proxy.reload)

    def _haproxy_restart(self, rng: random.Random) -> None:
        address, proxy = self._replica(rng)
        with self.log.action("haproxy_restart", address):
            proxy.stop()
            self.spawn.run(proxy.start)

    def _haproxy_kill(self, rng: random.Random) -> None:
        address, proxy = self._replica(rng)
        with self.log.action("haproxy_kill", address):
            proxy.kill()
            self._hold(rng, 0.5, 3.0)
            self.spawn.run(proxy.start)

    def _replica_gone(self, rng: random.Random) -> None:
        address, proxy = self._replica(rng)
        with self.log.action("replica_gone", address):
            proxy.kill()
            self._hold(rng, 8.0, 30.0)
            self.spawn.run(proxy.start)

    def _maint(self, rng: random.Random) -> None:
        server = f"app/{rng.choice(SERVERS)[0]}"
        state = rng.choice(("maint", "drain"))
        with self.log.action("maint", "", server=server, state=state):
            for proxy in self.stack.proxies:
                _haproxy(proxy.admin_socket, f"set server {server} state {state}")
            self._hold(rng, 5.0, 20.0)
            for proxy in self.stack.proxies:
                _haproxy(proxy.admin_socket, f"set server {server} state ready")

    def _hand_set(self, rng: random.Random) -> None:
        """A weight set by hand on one replica or both (an agent-check, a person)."""
        server = f"app/{rng.choice(SERVERS)[0]}"
        weight = rng.randint(1, 200)
        targets = self.stack.proxies if rng.random() < 0.5 else [self._replica(rng)[1]]
        for proxy in targets:
            with self.log.action("hand_set", proxy.admin_socket, server=server, weight=weight):
                _haproxy(proxy.admin_socket, f"set server {server} weight {weight}")

    # Envoy

    def _envoy_restart(self, rng: random.Random) -> None:
        envoy = self.stack.envoy
        assert envoy is not None
        with self.log.action("envoy_restart", "envoy"):
            envoy.stop()
            self._hold(rng, 0.5, 5.0)
            self.spawn.run(envoy.start)

    def _eds_unwritable(self, rng: random.Random) -> None:
        directory = str(self.stack.eds)
        with self.log.action("eds_unwritable", "envoy") as result:
            done = _run(["mount", "-o", "remount,ro", directory])
            if done.returncode != 0:
                result.update(ok=False, error=done.stderr.strip())
                return
            try:
                self._hold(rng, 5.0, 25.0)
            finally:
                _run(["mount", "-o", "remount,rw", directory])

    # Prometheus

    def _prometheus_stop(self, rng: random.Random) -> None:
        prometheus = self.stack.prometheus
        assert prometheus is not None
        with self.log.action("prometheus_stop", "prometheus"):
            prometheus.stop()
            self._hold(rng, 5.0, 25.0)
            self.spawn.run(lambda: prometheus.start(30.0))

    def _prometheus_sigstop(self, rng: random.Random) -> None:
        prometheus = self.stack.prometheus
        assert prometheus is not None
        proc = prometheus._proc
        if proc is None:
            return
        with self.log.action("prometheus_sigstop", "prometheus"):
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                self._hold(rng, 3.0, 20.0)
            finally:
                os.kill(proc.pid, signal.SIGCONT)

    # The state directory

    def _disk_full(self, rng: random.Random) -> None:
        filler = self.stack.state / "filler"
        try:
            with self.log.action("disk_full", "state") as result:
                result["filled_mb"] = round(_fill(filler) / 2**20, 1)
                self._hold(rng, 5.0, 25.0)
                filler.unlink()
        finally:
            filler.unlink(missing_ok=True)

    # The config

    def _reload_config(self, rng: random.Random) -> None:
        stack, daemon = self.stack, self.daemon
        valid = rng.random() < 0.6
        if valid:
            data = stack.config_data(rng.choice(POLICY_VARIANTS))
            text: str = yaml.safe_dump(data, sort_keys=False)
            broken = ""
        else:
            broken = rng.choice(INVALID_CONFIGS)
            data = stack.config_data({})
            text = _broken(data, broken)
        with self.log.action("reload_config", "daemon", valid=valid, broken=broken) as result:
            proc = daemon.proc
            if proc is None or proc.poll() is not None:
                result.update(ok=False, error="no daemon")
                return
            mark = _log_size(daemon.log)
            stack.write_config(text)
            proc.send_signal(signal.SIGHUP)
            outcome = _wait_reload(daemon.log, mark, 15.0)
            result["outcome"] = outcome
            result["adopted"] = outcome == "adopted"
            if outcome == "adopted":
                result["config"] = data
                stack.valid_config = data
            else:  # the file on disk is valid again, for a restart
                stack.write_config(stack.valid_config)

    # Backends

    def _backend_slow(self, rng: random.Random) -> None:
        name = rng.choice(SERVERS)[0]
        mean = dict(SERVERS)[name]
        with self.log.action("backend_slow", name):
            self.stack.backends.reconfigure(name, {"service": {"mean_ms": mean * 6}})
            self._hold(rng, 8.0, 30.0)
            self.stack.backends.reconfigure(name, {"service": {"mean_ms": mean}})

    def _backend_fail(self, rng: random.Random) -> None:
        name = rng.choice(SERVERS)[0]
        with self.log.action("backend_fail", name):
            self.stack.backends.reconfigure(name, {"error_rate": rng.choice((0.3, 0.8, 1.0))})
            self._hold(rng, 8.0, 30.0)
            self.stack.backends.reconfigure(name, {"error_rate": 0.0})

    def _backend_restart(self, rng: random.Random) -> None:
        with self.log.action("backend_restart", "backends"):
            self.stack.backends.kill()
            self._hold(rng, 0.5, 3.0)
            self.spawn.run(self.stack.backends.start)

    # The operator, through the CLI

    def _cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
        env["PYTHONPATH"] = str(self.daemon.code)
        command = [sys.executable, "-m", "veloflux", *args, "-c", str(self.stack.config)]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )

    def _operator(self, kind: str, *args: str, **data: Any) -> bool:
        with self.log.action(kind, "daemon", **data) as result:
            done = self._cli(*args)
            result.update(
                ok=done.returncode == 0, code=done.returncode, stderr=done.stderr.strip()[-300:]
            )
        return done.returncode == 0

    def _resume(self) -> None:
        """Resume until it takes (a full disk refuses the state change): bounded."""
        for _ in range(30):
            if self._operator("resume", "resume"):
                return
            time.sleep(2.0)

    def _pause(self, rng: random.Random) -> None:
        if self._operator("pause", "pause", "--reason", "chaos"):
            self._hold(rng, 2.0, 15.0)
            self._resume()

    def _pin(self, rng: random.Random) -> None:
        pool, names = rng.choice(
            (
                ("app", [n for n, _ in SERVERS]),
                ("app-envoy", [f"127.0.0.1:{p}" for p in self.stack.backends.ports.values()]),
            )
        )
        server = f"{pool}/{rng.choice(names)}"
        weight = rng.randint(1, 200)
        if self._operator(
            "pin", "override", "set", server, str(weight), server=server, weight=weight
        ):
            self._hold(rng, 5.0, 25.0)
            for _ in range(30):
                if self._operator("unpin", "override", "clear", server, server=server):
                    return
                time.sleep(2.0)

    def _revert(self, rng: random.Random) -> None:
        """Revert pauses a daemon that answers: only then, so the daemon is held alive
        meanwhile (its resource is taken) and the log says whether it was paused."""
        with self._lock:
            if "daemon" in self.busy:
                return
            self.busy.add("daemon")
        try:
            if not self.daemon.wait_ready(5.0):
                return
            if self._operator("revert", "revert", "--reason", "chaos"):
                self._hold(rng, 2.0, 10.0)
                self._resume()
        finally:
            with self._lock:
                self.busy.discard("daemon")

    # The daemon itself

    def _daemon_kill(self, rng: random.Random) -> None:
        with self.log.action("daemon_kill", "daemon") as result:
            self.daemon.kill()
            self._hold(rng, 0.2, 3.0)
            self.spawn.run(self.daemon.start)
            result["ready"] = self.daemon.wait_ready(60.0)


def _haproxy(address: str, command: str) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2.0)
        sock.connect(address.removeprefix("unix://"))
        sock.sendall(command.encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def _fill(path: Path) -> int:
    """Fill the file system ``path`` is on until it refuses (ENOSPC): bytes written.
    Unbuffered writes, so the refusal comes here and not at a later flush."""
    written = 0
    block = b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            while True:
                try:
                    written += os.write(fd, block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def _broken(data: Mapping[str, Any], how: str) -> str:
    """A config file the daemon must refuse, ``how`` it is broken."""
    copy = json.loads(json.dumps(data))
    if how == "yaml":
        return yaml.safe_dump(copy, sort_keys=False) + "policy: [unclosed\n"
    if how == "min_above_max":
        copy["policy"] |= {"min_weight": 150, "max_weight": 100}
    elif how == "unknown_key":
        copy["policy"]["max_stepp_ratio"] = 0.5
    else:
        copy["policy"]["max_step_ratio"] = 0
    return yaml.safe_dump(copy, sort_keys=False)


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _wait_reload(log: Path, offset: int, timeout: float) -> str:
    """What the daemon said of a SIGHUP: ``adopted``, ``refused``, or ``unknown``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
        if "config reloaded from" in text:
            return "adopted"
        if "config_reload_refused" in text:
            return "refused"
        time.sleep(0.1)
    return "unknown"


# --- load ------------------------------------------------------------------------------------


def _load(urls: Sequence[str], rate: float, stop: threading.Event, seed: int) -> None:
    """Bounded Poisson load to every entry point, in 15 s rounds, until told to stop."""
    rounds = 0
    while not stop.is_set():
        rounds += 1
        threads = [
            threading.Thread(
                target=_load_round, args=(url, rate, seed * 1000 + rounds * 10 + i), daemon=True
            )
            for i, url in enumerate(urls)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)


def _load_round(url: str, rate: float, seed: int) -> None:
    with contextlib.suppress(Exception):
        run_load_sync(url, rate, 15.0, int(rate * 15 * 1.5), 64, 2.0, seed)


# --- the run -----------------------------------------------------------------------------------


@dataclass
class SoakRun:
    """Where a run keeps its files, and what it measured."""

    workdir: Path
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> Path:
        return self.workdir / "events.jsonl"

    @property
    def daemon_log(self) -> Path:
        return self.workdir / "daemon.log"

    @property
    def violations(self) -> Path:
        return self.workdir / "violations.jsonl"

    @property
    def states(self) -> Path:
        return self.workdir / "states.jsonl"

    @property
    def summary(self) -> Path:
        return self.workdir / "checker.json"


def snapshot_code(workdir: Path) -> Path:
    """A copy of the agent's package for this run: every start of the daemon and every
    CLI command of the run imports the same code, whatever is edited meanwhile.
    ``$VELOFLUX_SOAK_SOURCE`` names another directory holding ``veloflux/`` (a
    candidate fix, tried before it is committed)."""
    source = Path(os.environ.get("VELOFLUX_SOAK_SOURCE") or ROOT / "agent") / "veloflux"
    code = workdir / "code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(source, code / "veloflux", ignore=shutil.ignore_patterns("__pycache__"))
    return code


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Start everything, inject faults for ``opts.duration`` seconds, stop, and return
    the figures (``figures``). Every process started here is stopped here."""
    run = SoakRun(opts.workdir)
    opts.workdir.mkdir(parents=True, exist_ok=True)
    mount = can_mount()
    stack = Stack(opts.workdir, mount, opts.train_every)
    log = EventLog(run.events)
    checker: subprocess.Popen[bytes] | None = None
    daemon: Daemon | None = None
    stop_load = threading.Event()
    try:
        stack.start()
        snapshot = snapshot_code(opts.workdir)
        daemon = Daemon(stack.config, run.daemon_log, stack.api_port, snapshot)
        daemon.start()
        if not daemon.wait_ready(60.0):
            raise StackError(f"the daemon did not become ready:\n{_tail(run.daemon_log)}")
        # The config as the daemon started with it (reloads rewrite the file): what the
        # checker judges from, and what judging the run again must start from too.
        shutil.copy2(stack.config, opts.workdir / "veloflux.initial.yaml")
        checker = _start_checker(run, stack)
        urls = [p.frontend_url for p in stack.proxies]
        assert stack.envoy is not None
        urls.append(stack.envoy.url)
        load = threading.Thread(target=_load, args=(urls, opts.load_rps, stop_load, opts.seed))
        load.start()
        started = time.time()
        chaos = Chaos(stack, daemon, log, opts)
        chaos.run(time.monotonic() + opts.duration)
        daemon.check()
        time.sleep(5.0)  # the last fault's recovery, seen by the checker
        chaos_end = time.time()
        stop_load.set()
        load.join(60)
        checker_alive = checker.poll() is None
        stop_process(checker, timeout=60.0)  # its summary is written on SIGTERM
        checker = None
        code = daemon.stop()
        figures = compute_figures(run, stack, daemon, log, chaos, started, chaos_end, code)
        figures["checker_ran_to_the_end"] = checker_alive
        figures["mounts"] = mount
        figures["seed"] = opts.seed
        (opts.workdir / "figures.json").write_text(json.dumps(figures, indent=1, default=str))
        return figures
    finally:
        stop_load.set()
        if checker is not None:
            stop_process(checker, timeout=60.0)  # its summary is written on SIGTERM
        if daemon is not None:
            daemon.stop()
        stack.stop()
        if stack.mounted:
            stack.keep_state()
        stack.unmount()


def _start_checker(run: SoakRun, stack: Stack) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "integration.invariants",
        "-c",
        str(stack.config),
        "--violations",
        str(run.violations),
        "--events",
        str(run.events),
        "--daemon-log",
        str(run.daemon_log),
        "--states",
        str(run.states),
        "--summary",
        str(run.summary),
        "--record",
        str(run.workdir / "polls.jsonl"),
    ]
    return spawn_logged(args, run.workdir / "checker.log", dict(os.environ, PYTHONPATH=str(ROOT)))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- figures -----------------------------------------------------------------------------------


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
    return out


def _epoch(text: object) -> float:
    return datetime.fromisoformat(str(text)).timestamp()


def compute_figures(
    run: SoakRun,
    stack: Stack,
    daemon: Daemon,
    log: EventLog,
    chaos: Chaos,
    started: float,
    ended: float,
    exit_code: int | None,
) -> dict[str, Any]:
    records = _json_lines(run.daemon_log)
    ticks = [r for r in records if r.get("event") == "tick"]
    failed = [r for r in records if r.get("event") == "tick_failed"]
    tick_spans = [
        (_epoch(r["time"]) - float(r.get("duration_ms") or 0) / 1000, _epoch(r["time"]), r)
        for r in ticks
    ]
    faults = _faults(log.records)
    violations = _json_lines(run.violations)
    states = _json_lines(run.states)
    recovery = _recovery(faults, tick_spans, states, ended)
    journal = _journal(stack.state / "history.sqlite", tick_spans, faults)
    lives = [life for life in daemon.lives if life["rss"]]
    longest = max(lives, key=lambda life: len(life["rss"]), default=None)
    rss = {
        "first_start_mb": _first_rss(daemon.lives),
        "last_end_mb": round(daemon.lives[-1]["rss"][-1][1], 1) if lives else None,
        "longest_life_seconds": round(longest["rss"][-1][0] - longest["start"]) if longest else 0,
        "longest_life_start_mb": _settled_rss(longest) if longest else None,
        "longest_life_end_mb": round(longest["rss"][-1][1], 1) if longest else None,
    }
    by_kind: dict[str, int] = {}
    for fault in faults:
        by_kind[fault["kind"]] = by_kind.get(fault["kind"], 0) + 1
    by_rule: dict[str, int] = {}
    for v in violations:
        by_rule[v["rule"]] = by_rule.get(v["rule"], 0) + 1
    checker = {}
    with contextlib.suppress(OSError, ValueError):
        checker = json.loads(run.summary.read_text())
    torn = _torn_lines(stack.state / "audit.jsonl")
    glued = in_torn_lines(stack.state / "audit.jsonl", violations)
    return {
        "duration_seconds": round(ended - started),
        "ticks": len(ticks),
        "ticks_failed": len(failed),
        "ticks_paused": sum(1 for r in ticks if r.get("paused")),
        "faults": len(faults),
        "faults_by_kind": dict(sorted(by_kind.items())),
        "faults_failed_to_inject": chaos.errors,
        "violations": len(violations),
        "violations_by_rule": by_rule,
        "violation_examples": violations[:20],
        "audit_torn_lines": torn,
        "violations_in_torn_audit_lines": glued,
        "recovery": recovery,
        "daemon_crashes": len(daemon.crashes),
        "crash_details": daemon.crashes,
        "daemon_kills": by_kind.get("daemon_kill", 0),
        "daemon_exit_code": exit_code,
        "journal": journal,
        "rss": rss,
        "checker": checker,
    }


def in_torn_lines(path: Path, violations: Sequence[Mapping[str, Any]]) -> int:
    """How many ``unaudited_change`` violations are writes whose audit line is in the
    log after all, glued to a torn one (an append cut short on a full disk), where no
    reader of the log can parse it: one cause, told apart from any other."""
    torn = []
    with contextlib.suppress(OSError):
        for line in path.read_bytes().splitlines():
            try:
                json.loads(line)
            except ValueError:
                torn.append(line.decode(errors="replace"))
    found = 0
    for v in violations:
        words = str(v.get("evidence", "")).split()
        if v.get("rule") != "unaudited_change" or len(words) < 3 or words[1] != "->":
            continue
        wanted = f'"server":"{v["server"]}","old":{words[0]},"new":{words[2]}'
        if any(wanted in line and str(v["view"]) in line for line in torn):
            found += 1
    return found


def _torn_lines(path: Path) -> int:
    """Audit lines that are not one JSON object each (a write cut short, a line glued
    to it): what no reader of the log can use."""
    torn = 0
    with contextlib.suppress(OSError):
        for line in path.read_bytes().splitlines():
            try:
                json.loads(line)
            except ValueError:
                torn += 1
    return torn


def _faults(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    starts = {r["id"]: r for r in records if r["phase"] == "start"}
    out = []
    for r in records:
        if r["phase"] == "end" and r["id"] in starts and r.get("ok", True):
            out.append({**r, "start": starts[r["id"]]["time"], "end": r["time"]})
    return out


def _first_rss(lives: Sequence[Mapping[str, Any]]) -> float | None:
    for life in lives:
        if life["rss"]:
            return round(float(life["rss"][0][1]), 1)
    return None


def _settled_rss(life: Mapping[str, Any]) -> float | None:
    """A process's RSS a minute in (its imports and first ticks done), or its first."""
    samples = life["rss"]
    for at, value in samples:
        if at - life["start"] >= 60:
            return round(float(value), 1)
    return round(float(samples[0][1]), 1) if samples else None


def _recovery(
    faults: Sequence[Mapping[str, Any]],
    ticks: Sequence[tuple[float, float, Mapping[str, Any]]],
    states: Sequence[Mapping[str, Any]],
    ended: float,
) -> dict[str, dict[str, Any]]:
    """Per fault kind, seconds from the fault's end until (1) a tick that began after it
    ended successfully, unpaused, with no proxy failing, and (2) from that tick's end on,
    the checker saw every proxy answer and show the weights VeloFlux last wrote (the
    replicas and Envoy's two views equal). Faults whose recovery did not come before
    the run ended are counted apart."""
    changes = [(float(s["time"]), bool(s["consistent"])) for s in states]

    def consistent_from(t: float) -> float | None:
        current = None
        for at, value in changes:
            if at <= t:
                current = value
            elif current:
                return t
            elif value:
                return at
        return t if current else None

    per_kind: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for fault in faults:
        end = float(fault["end"])
        tick = next(
            (
                tick_end
                for start, tick_end, r in ticks
                if start >= end and not r.get("paused") and not r.get("proxies_failed")
            ),
            None,
        )
        at = consistent_from(tick) if tick is not None else None
        if at is None or at > ended:
            missing[fault["kind"]] = missing.get(fault["kind"], 0) + 1
            continue
        per_kind.setdefault(fault["kind"], []).append(at - end)
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(per_kind) | set(missing)):
        values = sorted(per_kind.get(kind, []))
        out[kind] = {
            "measured": len(values),
            "median_s": round(values[len(values) // 2], 2) if values else None,
            "worst_s": round(values[-1], 2) if values else None,
            "not_recovered": missing.get(kind, 0),
        }
    return out


def _journal(
    path: Path,
    ticks: Sequence[tuple[float, float, Mapping[str, Any]]],
    faults: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Ticks whose HAProxy observation has no row in the journal: lost. A tick on a
    full disk, or in the second before a ``kill -9`` (the writer thread's last rows), is
    lost by design and counted apart; any other is a finding."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            times = sorted(
                t for (t,) in conn.execute("SELECT DISTINCT time FROM samples WHERE pool = 'app'")
            )
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    import bisect

    full = [(f["start"], f["end"] + 2.0) for f in faults if f["kind"] == "disk_full"]
    kills = [f["start"] for f in faults if f["kind"] == "daemon_kill"]
    lost_full = lost_kill = lost_other = 0
    examples: list[object] = []
    recorded = 0
    for start, end, r in ticks:
        if any("haproxy" in str(f) for f in r.get("proxies_failed") or ()):
            continue
        i = bisect.bisect_left(times, start - 0.05)
        if i < len(times) and times[i] <= end + 0.05:
            recorded += 1
        elif any(a <= end <= b for a, b in full):
            lost_full += 1
        elif any(0 <= k - end <= 2.0 for k in kills):
            lost_kill += 1
        else:
            lost_other += 1
            if len(examples) < 5:
                examples.append(r.get("time"))
    return {
        "ticks_observing_haproxy": recorded + lost_full + lost_kill + lost_other,
        "rows_found": recorded,
        "lost_on_full_disk": lost_full,
        "lost_at_kill": lost_kill,
        "lost_otherwise": lost_other,
        "lost_examples": examples,
    }
