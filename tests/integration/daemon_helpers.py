"""Driving ``veloflux-agent run`` in tests: configs, daemons in-process or as processes.

Every wait is a poll with a deadline (``wait_until``), never a bare sleep, and every
daemon is stopped however the test ends. Metrics are read from the text the daemon
serves on ``/metrics``, so a daemon in this process and one in a child process are
checked the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from veloflux.config.load import load_config
from veloflux.daemon.audit import WEIGHT_ACTIONS
from veloflux.daemon.service import Daemon, DaemonOptions
from veloflux.daemon.training_job import Trainer

T = TypeVar("T")
TOKEN = "test-token-7f3a9c"
Address = tuple[str, int]


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Poll ``predicate`` until it returns something truthy; return it, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        time.sleep(0.05)
        last = predicate()
    return last


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class AgentFiles:
    """Where one daemon keeps its state, all inside the test's temp directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "veloflux.yaml"

    @property
    def history(self) -> Path:
        return self.root / "history" / "history.sqlite"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "operator.json"

    @property
    def token(self) -> Path:
        return self.root / "token"

    def audit_entries(self, actions: bool = False) -> list[dict[str, Any]]:
        """The weight writes of the audit log, or with ``actions`` every line (the
        operator's pauses, pins and model promotions too)."""
        if not self.audit.exists():
            return []
        lines = self.audit.read_text(encoding="utf-8").splitlines()
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if actions or e.get("action") in WEIGHT_ACTIONS]


def agent_config(
    socket_address: str,
    files: AgentFiles,
    *,
    interval: str = "500ms",
    listen: str = "127.0.0.1:0",
    token: bool = True,
    policy: Mapping[str, Any] | None = None,
    haproxy: Mapping[str, Any] | None = None,
    ai: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A daemon config as data: short interval, API on loopback, state in ``files``."""
    api: dict[str, Any] = {"listen": listen, "state_path": str(files.state)}
    if token:
        files.root.mkdir(parents=True, exist_ok=True)
        files.token.write_text(TOKEN + "\n", encoding="utf-8")
        files.token.chmod(0o600)  # a token other users can read is refused
        api["token_file"] = str(files.token)
    return {
        "interval": interval,
        "haproxy": {"socket": socket_address, "timeout": "2s", **(haproxy or {})},
        "ai": {
            "history_path": str(files.history),
            "model_dir": str(files.models),
            "audit_log": str(files.audit),
            **(ai or {}),
        },
        "policy": dict(policy or {}),
        "api": api,
    }


def write_config(files: AgentFiles, data: Mapping[str, Any]) -> Path:
    files.root.mkdir(parents=True, exist_ok=True)
    files.config.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return files.config


# --- reading the daemon ----------------------------------------------------------------


class Samples:
    """One scrape of ``/metrics``: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self._values[key] = float(sample.value)

    def get(self, name: str, **labels: str) -> float | None:
        return self._values.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """A counter's value; a series not exported yet counts as 0."""
        return self.get(name, **labels) or 0.0

    def event(self, kind: str) -> float:
        return self.value("veloflux_events_total", kind=kind)

    @property
    def turns(self) -> float:
        """Ticks that ended, successful or not: how far the loop has turned."""
        failed = sum(
            v for (name, _), v in self._values.items() if name == "veloflux_tick_failures_total"
        )
        return self.value("veloflux_ticks_total") + failed


def samples(daemon: Daemon) -> Samples:
    return Samples(daemon.metrics.render().decode())


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def request(
    address: Address,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    """One request to the daemon's API; headers are sent exactly as given."""
    connection = HTTPConnection(*address, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None and not any(k.lower() == "content-length" for k in headers or {}):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw_exchange(address: Address, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are (no HTTP client to tidy them up); read until the server closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def api_address(daemon: Daemon) -> Address:
    address = daemon.api_address
    assert address is not None, "the daemon serves no API"
    return address


# --- daemons ---------------------------------------------------------------------------


@contextmanager
def running_daemon(config: Path, trainer: Trainer | None = None) -> Iterator[Daemon]:
    """A daemon in this process (no signal handlers), shut down however the test ends."""
    options = DaemonOptions(config, install_signals=False)
    if trainer is not None:
        options = DaemonOptions(config, trainer=trainer, install_signals=False)
    daemon = Daemon(load_config(config), options)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.shutdown()


def wait_turns(read: Callable[[], Samples], count: int, what: str, timeout: float = 15.0) -> None:
    """Wait until the loop has ended ``count`` more ticks (good or bad) than now."""
    target = read().turns + count
    wait_until(lambda: read().turns >= target, f"{count} more ticks: {what}", timeout)


class DaemonProcess:
    """``python -m veloflux run --log-format json`` as a child process, on a known port.

    ``prefix`` runs the daemon under another command (``unshare ...``) that must end
    by exec-ing it, so that signals sent to the child reach the daemon itself.
    """

    def __init__(self, config: Path, port: int, log: Path, prefix: Sequence[str] = ()) -> None:
        self.config = config
        self.address: Address = ("127.0.0.1", port)
        self.log = log
        self._prefix = tuple(prefix)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "the daemon was not started"
        return self._proc

    def start(self) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
        args = [*self._prefix, sys.executable, "-m", "veloflux", "run", "-c", str(self.config)]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*args, "--log-format", "json"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        return self

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far; a line that is not JSON is kept as its text."""
        if not self.log.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            out.append(record if isinstance(record, dict) else {"raw": line, "message": line})
        return out

    def messages(self) -> list[str]:
        return [str(r.get("message", "")) for r in self.records()]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.messages()[-lines:])

    def wait_log(self, predicate: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
        def found() -> str | None:
            self._check_running()
            return next((m for m in self.messages() if predicate(m)), None)

        try:
            message = wait_until(found, what, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlog:\n{self.log_tail()}") from None
        assert message is not None
        return message

    def _check_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"the daemon exited with {code}:\n{self.log_tail()}")

    def get(self, path: str) -> Reply:
        return request(self.address, "GET", path)

    def scrape(self) -> Samples:
        self._check_running()
        return Samples(self.get("/metrics").text)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            self._check_running()
            try:
                return self.get("/-/ready").status == 200
            except OSError:
                return False

        wait_until(ready, "the daemon to be ready", timeout)

    def send(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within {timeout:g}s:\n{self.log_tail()}") from None

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def pending_connections(socket_path: Path) -> int:
    """Connections to a unix listening socket not accepted yet (from /proc/net/unix).

    HAProxy binds ``admin.sock.PID.tmp`` and renames it, so the kernel knows the
    listener by that name; a client waiting in its backlog shows the same name.
    """
    prefix = f"{socket_path}."
    count = 0
    with open("/proc/net/unix", encoding="utf-8") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            listening = fields[3] == "00010000"
            if len(fields) >= 8 and fields[7].startswith(prefix) and not listening:
                count += 1
    return count
