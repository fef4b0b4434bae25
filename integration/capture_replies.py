"""Capture real replies of HAProxy, Envoy and Prometheus as small fixture files, for the
fuzz tests (``tests/unit/test_fuzz_*.py``) to mutate.

A fuzz test that starts from made-up replies only tests what its author thought the
proxies say; one that starts from what they really said also keeps the fields,
spellings and orders nobody thought of. So this starts each program on loopback, sends
a little traffic through the proxies (one HAProxy server and one Envoy endpoint point at
a port nobody answers on, so DOWN and failed checks are in the replies too), and saves
exactly the bytes each one answered to the requests the agent makes:

- HAProxy's runtime API: ``show info``, ``show stat -1 6 -1``, ``show servers state``;
- Envoy's admin API: ``/server_info`` (trimmed to a few keys: the whole answer is mostly
  the command line and build details), ``/clusters?format=json``, the plain
  ``/clusters``, and ``/stats?format=json`` filtered to the stats the agent reads;
- Prometheus's HTTP API, scraping HAProxy's exporter: an instant query of the kind a
  feature sends, a range query of the kind ``train --from-prometheus`` sends, and the
  answer to a query Prometheus refuses.

``python -m integration.capture_replies [--out tests/fixtures/replies]`` (about 20 s).
The files are checked in; run this again only to refresh them after an upgrade of one
of the programs.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from integration.envoy_proc import EnvoyProcess
from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec, free_port
from integration.prometheus_proc import PrometheusProcess
from veloflux.envoy.eds import Endpoint

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "replies"
REQUESTS = 40
# What the agent reads of /stats (envoy/source.py, envoy/sink.py), and a few neighbours.
ENVOY_STATS = (
    r"^cluster\.app\.(update_attempt|update_success|update_rejected|upstream_rq_total"
    r"|upstream_cx_active|upstream_rq_time)$"
)
SERVER_INFO_KEYS = ("version", "state", "uptime_current_epoch", "uptime_all_epochs")
INSTANT_QUERY = 'rate(haproxy_server_http_responses_total{proxy="app",code="2xx"}[1m])'
RANGE_QUERY = 'haproxy_server_weight{proxy=~"app"}'
BAD_QUERY = "rate(haproxy_server_http_responses_total[1m]"


class _Hello(BaseHTTPRequestHandler):
    """A backend that answers every GET with a short 200."""

    def do_GET(self) -> None:
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _backends(count: int) -> Iterator[list[int]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Hello) for _ in range(count)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [int(server.server_address[1]) for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def _traffic(url: str) -> None:
    for _ in range(REQUESTS):
        _get(url)


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.2)


def _runtime(socket_path: Path, command: str) -> bytes:
    """One command on HAProxy's runtime API, its reply exactly as it came."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5.0)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def capture_haproxy(workdir: Path, ports: list[int], out: Path) -> HAProxyProcess:
    """Start HAProxy (left running for Prometheus to scrape) and save its three replies."""
    dead = free_port()
    servers = tuple(
        ServerSpec(f"s{i}", f"127.0.0.1:{port}", weight, check=True)
        for i, (port, weight) in enumerate(zip([*ports, dead], (100, 50, 100), strict=True), 1)
    )
    proxy = HAProxyProcess(workdir, [BackendSpec("app", servers)]).start()
    _runtime(workdir / "admin.sock", "set server app/s2 state drain")
    _traffic(proxy.frontend_url)

    def s3_down() -> bool:
        rows = _runtime(workdir / "admin.sock", "show stat").decode().splitlines()
        return any(row.startswith("app,s3,") and ",DOWN," in row for row in rows)

    _wait(s3_down, "HAProxy's check to mark s3 DOWN")
    for command, name in (
        ("show info", "haproxy_show_info.txt"),
        ("show stat -1 6 -1", "haproxy_show_stat.txt"),  # backends and servers, as the agent asks
        ("show servers state", "haproxy_show_servers_state.txt"),
    ):
        (out / name).write_bytes(_runtime(workdir / "admin.sock", command))
    return proxy


def capture_envoy(workdir: Path, ports: list[int], out: Path) -> None:
    endpoints = [Endpoint("127.0.0.1", port, 3 - i) for i, port in enumerate(ports)]
    endpoints.append(Endpoint("127.0.0.1", free_port(), 1))
    with EnvoyProcess(workdir, {"app": endpoints}) as envoy:
        _traffic(envoy.url)
        stats = f"{envoy.admin_url}/stats?" + urllib.parse.urlencode(
            {"format": "json", "filter": ENVOY_STATS}
        )

        def flushed() -> bool:
            document = json.loads(_get(stats)[1])
            for stat in document.get("stats", []):
                for histogram in stat.get("histograms", {}).get("computed_quantiles", []):
                    if histogram["values"][0].get("cumulative") is not None:
                        return True
            return False

        _wait(flushed, "Envoy's histograms to flush")  # every 5 s by default
        info = json.loads(_get(f"{envoy.admin_url}/server_info")[1])
        trimmed = {key: info[key] for key in SERVER_INFO_KEYS if key in info}
        options = info.get("command_line_options", {})
        trimmed["command_line_options"] = {
            key: options[key] for key in ("restart_epoch", "concurrency", "mode") if key in options
        }
        (out / "envoy_server_info.json").write_text(json.dumps(trimmed, indent=1) + "\n")
        (out / "envoy_clusters.json").write_bytes(
            _get(f"{envoy.admin_url}/clusters?format=json")[1]
        )
        (out / "envoy_clusters.txt").write_bytes(_get(f"{envoy.admin_url}/clusters")[1])
        (out / "envoy_stats.json").write_bytes(_get(stats)[1])


def capture_prometheus(workdir: Path, proxy: HAProxyProcess, out: Path) -> None:
    exporter = f"127.0.0.1:{proxy.exporter_port}"
    with PrometheusProcess(workdir, {"haproxy": [exporter]}) as prometheus:
        api = f"{prometheus.url}/api/v1"
        prometheus.wait_for_series(INSTANT_QUERY, timeout_s=30)
        _traffic(proxy.frontend_url)

        def counted() -> bool:  # the rate over a scrape that saw the traffic
            return any(float(item["value"][1]) > 0 for item in prometheus.query(INSTANT_QUERY))

        _wait(counted, "a scrape after the traffic")
        end = time.time()
        query = urllib.parse.urlencode({"query": INSTANT_QUERY, "time": f"{end:.3f}"})
        (out / "prometheus_instant.json").write_bytes(_get(f"{api}/query?{query}")[1])
        query = urllib.parse.urlencode(
            {"query": RANGE_QUERY, "start": f"{end - 4:.3f}", "end": f"{end:.3f}", "step": "1s"}
        )
        (out / "prometheus_range.json").write_bytes(_get(f"{api}/query_range?{query}")[1])
        status, body = _get(f"{api}/query?" + urllib.parse.urlencode({"query": BAD_QUERY}))
        if status != 400:
            raise RuntimeError(f"Prometheus answered {status} to a bad query, not 400")
        (out / "prometheus_bad_query.json").write_bytes(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="veloflux-replies-") as tmp, _backends(2) as ports:
        proxy = capture_haproxy(Path(tmp) / "haproxy", ports, out)
        try:
            capture_envoy(Path(tmp) / "envoy", ports, out)
            capture_prometheus(Path(tmp) / "prometheus", proxy, out)
        finally:
            proxy.stop()
    for path in sorted(out.iterdir()):
        print(f"{path.stat().st_size:6d}  {path}")


if __name__ == "__main__":
    main()
