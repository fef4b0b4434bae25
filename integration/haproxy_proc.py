"""Start and stop a real HAProxy on loopback, with a generated config and temp sockets.

Used by the test fixtures, ``make demo`` and the benchmarks, so that all three run
the same proxy the same way. Readiness is polled with a deadline, never a bare sleep.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StackError(RuntimeError):
    """The local stack could not be started or stopped as asked."""


@dataclass(frozen=True)
class ServerSpec:
    """One ``server`` line: a name, a loopback address and a configured weight; with
    ``maxconn``, HAProxy queues what is beyond it in the proxy."""

    name: str
    address: str
    weight: int = 1
    check: bool = False
    backup: bool = False
    maxconn: int | None = None


@dataclass(frozen=True)
class BackendSpec:
    """One ``backend`` section."""

    name: str
    servers: tuple[ServerSpec, ...]
    algorithm: str = "roundrobin"
    hash_type: str = ""
    extra: tuple[str, ...] = field(default=())


_PORTS = random.Random()  # its own state: a test that seeds `random` must not pick ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Drawn at random from below the kernel's ephemeral range, not from ``bind(0)``:
    between this call and the moment a proxy binds the port, a load generator's
    outgoing connection may take any ephemeral port as its source, and did (Envoy failed
    with "Address already in use"). Ports below the range are never handed out that
    way, and a random draw keeps concurrent test runs apart."""
    first = ephemeral_range()[0]
    low, high = max(1024, first - 20000), first - 1
    for _ in range(200) if high - low > 1000 else ():
        port = _PORTS.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def spawn_logged(
    args: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own (a signal to the test's group does not
    reach it), stdin closed, stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            start_new_session=True,
        )


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if path is None:
        raise StackError("haproxy is not installed (make deps installs Debian's haproxy)")
    return path


def render_config(
    workdir: Path,
    backends: Sequence[BackendSpec],
    frontend_port: int,
    exporter_port: int,
    tcp_admin_port: int,
    default_backend: str | None,
) -> str:
    """A complete haproxy.cfg: admin and user-level sockets, exporter, server-state file."""
    lines = [
        "global",
        f"    stats socket {workdir}/admin.sock mode 600 level admin",
        f"    stats socket {workdir}/user.sock mode 600 level user",
        f"    stats socket ipv4@127.0.0.1:{tcp_admin_port} level admin",
        f"    server-state-file {workdir}/server-state",
        f"    pidfile {workdir}/haproxy.pid",
        "    maxconn 4000",
        "",
        "defaults",
        "    mode http",
        "    load-server-state-from-file global",
        "    option http-keep-alive",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout queue 10s",
        "",
        "frontend exporter",
        f"    bind 127.0.0.1:{exporter_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    no log",
        "",
    ]
    if default_backend is not None:
        lines += [
            "frontend main",
            f"    bind 127.0.0.1:{frontend_port}",
            f"    default_backend {default_backend}",
            "",
        ]
    for backend in backends:
        lines += [f"backend {backend.name}", f"    balance {backend.algorithm}"]
        if backend.hash_type:
            lines.append(f"    hash-type {backend.hash_type}")
        lines += [f"    {line}" for line in backend.extra]
        for server in backend.servers:
            options = [f"weight {server.weight}"]
            if server.check:
                options.append("check inter 1s")
            if server.backup:
                options.append("backup")
            if server.maxconn is not None:
                options.append(f"maxconn {server.maxconn}")
            lines.append(f"    server {server.name} {server.address} {' '.join(options)}")
        lines.append("")
    return "\n".join(lines)


class HAProxyProcess:
    """A real ``haproxy -db`` child process; ``start()``, ``reload()``, ``stop()``."""

    def __init__(
        self,
        workdir: Path,
        backends: Sequence[BackendSpec],
        default_backend: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.backends = tuple(backends)
        self.default_backend = (
            default_backend
            if default_backend
            else (self.backends[0].name if self.backends else None)
        )
        self.frontend_port = free_port()
        self.exporter_port = free_port()
        self.tcp_admin_port = free_port()
        self.config_path = self.workdir / "haproxy.cfg"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "haproxy.log"

    @property
    def admin_socket(self) -> str:
        return f"unix://{self.workdir}/admin.sock"

    @property
    def user_socket(self) -> str:
        return f"unix://{self.workdir}/user.sock"

    @property
    def tcp_admin(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_admin_port}"

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise StackError("haproxy is not running")
        return self._proc.pid

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = render_config(
            self.workdir,
            self.backends,
            self.frontend_port,
            self.exporter_port,
            self.tcp_admin_port,
            self.default_backend,
        )
        self.config_path.write_text(text + "\n", encoding="utf-8")
        (self.workdir / "server-state").write_text("1\n")
        check = subprocess.run(
            [haproxy_binary(), "-c", "-q", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise StackError(f"haproxy rejected {self.config_path}:\n{check.stderr}")

    def start(self, timeout_s: float = 10.0, attempts: int = 3) -> HAProxyProcess:
        """Start HAProxy and wait until its admin socket answers. A port taken between
        ``free_port`` and the bind (by another test run) is retried on fresh ports, up to
        ``attempts`` times; any other failure is raised with HAProxy's log."""
        for attempt in range(1, attempts + 1):
            self.write_config()
            self._log.unlink(missing_ok=True)  # this attempt's words only
            self._proc = self._spawn([])
            try:
                self._wait_ready(self._proc, timeout_s)
                return self
            except StackError as exc:
                if attempt == attempts or "cannot bind socket" not in str(exc):
                    raise
                self.frontend_port, self.exporter_port = free_port(), free_port()
                self.tcp_admin_port = free_port()
        raise AssertionError("unreachable")

    def reload(self, timeout_s: float = 10.0) -> int:
        """Start a new process that takes over (``-sf old``): counters and runtime weights reset."""
        old = self._proc
        if old is None:
            raise StackError("haproxy is not running")
        new = self._spawn(["-sf", str(old.pid)])
        self._proc = new
        self._wait_ready(new, timeout_s)
        _wait_exit(old, timeout_s)
        return new.pid

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would: sockets are left behind."""
        if self._proc is not None:
            self._proc.kill()
            _wait_exit(self._proc, 5.0)
            self._proc = None

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGUSR1)  # soft stop: finish in-flight requests
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def __enter__(self) -> HAProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, extra: list[str]) -> subprocess.Popen[bytes]:
        log = open(self._log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            return subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(self.config_path), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        sock_path = str(self.workdir / "admin.sock")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"haproxy exited with {proc.returncode}:\n{self.log_text()}")
            if _answers_as(sock_path, proc.pid):
                return
            time.sleep(0.02)
        raise StackError(f"haproxy not ready within {timeout_s}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _answers_as(sock_path: str, pid: int) -> bool:
    """True when the admin socket answers ``show info`` from process ``pid``."""
    if not os.path.exists(sock_path):
        return False
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(sock_path)
            sock.sendall(b"show info\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return False
    return f"Pid: {pid}\n".encode() in data


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)
