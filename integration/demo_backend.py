"""Demo HTTP backends whose speed, capacity and failure rate can be changed while they run.

The agent learns weights from how backends behave under load, so tests, the demo and the
benchmarks need backends that behave like small queueing servers (a bounded number of
requests in service, the rest waiting in FIFO order) and that can be made slower, narrower or
flakier at run time through ``PUT /-/config`` without restarting HAProxy's view of them.
Service is simulated with ``asyncio.sleep`` so many backends fit on a small box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from aiohttp import web

from integration.behaviour import _SERVICE_KEYS, BackendBehaviour, BehaviourError

MAX_CONFIG_BODY_BYTES = 64 * 1024
# Each answered request says when it got its service slot (1 for the backend's first),
# so that a test can see the order the queue admitted requests in without timing them.
ADMITTED_HEADER = "X-Demo-Admitted"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _FifoGate:
    """A semaphore whose limit can change while requests wait.

    asyncio.Semaphore cannot be resized, yet a new concurrency must apply to the very next
    request; waiters are admitted strictly in arrival order so the queue stays FIFO.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.in_service = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def set_limit(self, limit: int) -> None:
        self._limit = limit
        self._admit()

    async def acquire(self) -> None:
        if self.in_service < self._limit and not self._waiters:
            self.in_service += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was granted together with the cancellation
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_service -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self.in_service < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_service += 1
                waiter.set_result(None)


def _json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not allowed")  # NaN and Infinity are not JSON


async def _read_limited(request: web.BaseRequest, limit: int) -> bytes | None:
    """Read the body but give up past ``limit`` bytes, so a huge PUT cannot exhaust memory."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(16 * 1024):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class DemoBackend:
    """Run-time state of one backend: its behaviour, random stream, queue and counters."""

    def __init__(self, behaviour: BackendBehaviour) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.errors = 0
        self.busy_seconds = 0.0  # service time of the requests served: what it would report
        self.admitted = 0  # requests given a service slot so far
        self._rng = random.Random(behaviour.seed)
        self._gate = _FifoGate(behaviour.concurrency)
        self._ok_body = json.dumps({"backend": behaviour.name}).encode()
        self._error_body = json.dumps(
            {"backend": behaviour.name, "error": "simulated failure"}
        ).encode()

    def reconfigure(self, behaviour: BackendBehaviour) -> None:
        """Swap behaviour; requests already in service finish with the service time they drew."""
        if behaviour.seed != self.behaviour.seed:
            self._rng = random.Random(behaviour.seed)
        self.behaviour = behaviour
        self._gate.set_limit(behaviour.concurrency)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.behaviour.name,
            "requests": self.requests,
            "errors": self.errors,
            "in_service": self._gate.in_service,
            "waiting": self._gate.waiting,
            "busy_seconds": self.busy_seconds,
        }

    def metrics_text(self) -> str:
        """The same counters as ``stats()`` in Prometheus text format 0.0.4, so a Prometheus
        beside the proxy sees what each backend itself did, not only what the proxy saw.

        Each backend has its own port, so Prometheus's ``instance`` label tells them apart
        and no per-backend label is written here.
        """
        behaviour = self.behaviour
        samples = (
            ("requests_total", "counter", "Requests received for work.", self.requests),
            ("errors_total", "counter", "Requests answered with a simulated 500.", self.errors),
            ("in_flight", "gauge", "Requests in service now.", self._gate.in_service),
            (
                "busy_seconds_total",
                "counter",
                "Service time spent on requests, in seconds.",
                self.busy_seconds,
            ),
            ("queued", "gauge", "Requests waiting for a service slot now.", self._gate.waiting),
            (
                "concurrency_limit",
                "gauge",
                "Requests served at once; the rest queue.",
                behaviour.concurrency,
            ),
            (
                "service_time_mean_seconds",
                "gauge",
                "Configured mean service time.",
                behaviour.service.mean_ms / 1000,
            ),
        )
        lines: list[str] = []
        for suffix, kind, help_text, value in samples:
            name = f"veloflux_demo_{suffix}"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value!r}"]
        return "\n".join(lines) + "\n"

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """Control paths (``/-/...`` and ``GET /metrics``) first; every other request is
        simulated work."""
        method, path = request.method, request.path
        if path == "/-/health" and method == "GET":
            return web.Response(text="ok")
        if path == "/-/stats" and method == "GET":
            return _json_response(self.stats())
        if path == "/metrics" and method == "GET":
            return web.Response(text=self.metrics_text(), headers={"Content-Type": METRICS_TYPE})
        if path == "/-/config" and method == "GET":
            return _json_response(self.behaviour.to_json())
        if path == "/-/config" and method in ("PUT", "POST"):
            return await self._put_config(request)
        return await self._work(request)

    async def _put_config(self, request: web.BaseRequest) -> web.Response:
        body = await _read_limited(request, MAX_CONFIG_BODY_BYTES)
        if body is None:
            message = f"config body exceeds {MAX_CONFIG_BODY_BYTES} bytes"
            return _json_response({"error": message}, 400)
        try:
            behaviour = self.behaviour.patched(json.loads(body, parse_constant=_reject_constant))
        except BehaviourError as exc:
            return _json_response({"error": str(exc)}, 400)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
            return _json_response({"error": f"body is not valid JSON: {exc}"}, 400)
        self.reconfigure(behaviour)
        return _json_response(behaviour.to_json())

    async def _work(self, request: web.BaseRequest) -> web.Response:
        """Simulated work: fail fast per error_rate, otherwise queue for a slot and sleep."""
        self.requests += 1
        behaviour = self.behaviour
        if behaviour.error_rate > 0 and self._rng.random() < behaviour.error_rate:
            self.errors += 1
            if behaviour.error_latency_ms > 0:
                await asyncio.sleep(behaviour.error_latency_ms / 1000)
            return web.Response(status=500, body=self._error_body, content_type="application/json")
        await self._gate.acquire()
        self.admitted += 1
        admitted = str(self.admitted)
        try:
            service_ms = self.behaviour.service.sample_ms(self._rng)
            if service_ms > 0:
                await asyncio.sleep(service_ms / 1000)
            self.busy_seconds += service_ms / 1000
        finally:
            self._gate.release()
        headers = {ADMITTED_HEADER: admitted}
        return web.Response(body=self._ok_body, content_type="application/json", headers=headers)


WILDCARDS = frozenset({"0.0.0.0", "::"})


def loopback_bind_host(host: str, *, in_container: bool = False) -> str:
    """The address to bind; anything but loopback is refused, these are test fixtures.

    ``in_container`` (``--in-container``, the compose stack's backends) also allows the
    wildcard address: inside a container it means the container's own network only.
    """
    bare = host.strip("[]")
    if bare == "localhost":
        return "127.0.0.1"
    if in_container and bare in WILDCARDS:
        return bare
    try:
        if ipaddress.ip_address(bare).is_loopback:
            return bare
    except ValueError:
        pass
    raise BehaviourError(
        f"refusing to listen on {host!r}: demo backends bind loopback addresses only"
        + ("" if in_container else " (0.0.0.0 with --in-container, inside a container)")
    )


def _bind(host: str, port: int) -> socket.socket:
    """Bind ourselves so port 0 works and the real port is read from the socket, not guessed."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class DemoBackends:
    """Several backends served by one event loop, each on its own loopback port."""

    def __init__(
        self,
        specs: Sequence[tuple[str, int, BackendBehaviour]],
        shutdown_timeout_s: float = 1.0,
        *,
        in_container: bool = False,
    ) -> None:
        names = [behaviour.name for _, _, behaviour in specs]
        if len(set(names)) != len(names):
            raise BehaviourError(f"backend names must be unique, got {names}")
        self._specs = [
            (loopback_bind_host(host, in_container=in_container), port, behaviour)
            for host, port, behaviour in specs
        ]
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runners: list[web.ServerRunner] = []
        self.backends: dict[str, DemoBackend] = {}
        self.ports: dict[str, int] = {}

    async def start(self) -> dict[str, int]:
        """Bind every listener (all or nothing) and return the real port of each backend by name."""
        try:
            for host, port, behaviour in self._specs:
                backend = DemoBackend(behaviour)
                server = web.Server(backend.handle, access_log=None)
                runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout_s)
                await runner.setup()
                self._runners.append(runner)
                sock = _bind(host, port)
                await web.SockSite(runner, sock).start()
                self.backends[behaviour.name] = backend
                self.ports[behaviour.name] = sock.getsockname()[1]
        except BaseException:
            await self.stop()
            raise
        return dict(self.ports)

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def serve_backends(
    specs: Sequence[tuple[str, int, BackendBehaviour]],
) -> AsyncIterator[DemoBackends]:
    """``async with serve_backends(specs) as demo: demo.ports["s1"]`` for tests and scripts."""
    async with DemoBackends(specs) as demo:
        yield demo


def _option_value(raw: str) -> object:
    """``4`` is an int, ``0.5`` a float, ``lognormal`` stays a string; patched() checks."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_backend_spec(
    text: str, *, in_container: bool = False
) -> tuple[str, int, BackendBehaviour]:
    """Parse ``NAME=HOST:PORT[,key=value...]`` into (bind host, port, behaviour)."""
    head, *options = text.split(",")
    name, sep, address = head.partition("=")
    host, colon, port = address.rpartition(":")
    if not (sep and name and colon and host and port.isdigit() and int(port) < 65536):
        raise BehaviourError(f"backend {text!r} must look like NAME=HOST:PORT[,key=value...]")
    patch: dict[str, Any] = {}
    for option in options:
        key, eq, raw = (part.strip() for part in option.partition("="))
        if not eq:
            raise BehaviourError(f"backend option {option!r} must look like key=value")
        target = patch.setdefault("service", {}) if key in _SERVICE_KEYS else patch
        target[key] = _option_value(raw)
    behaviour = BackendBehaviour(name=name).patched(patch)
    return loopback_bind_host(host, in_container=in_container), int(port), behaviour


def write_ready_file(path: Path, ports: Mapping[str, int]) -> None:
    """Atomic so a launcher polling the path never reads a half-written file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "backends": dict(ports)}))
    os.replace(temporary, path)


async def _serve_until_signalled(
    specs: list[tuple[str, int, BackendBehaviour]], ready_file: Path | None, in_container: bool
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with DemoBackends(specs, in_container=in_container) as demo:
        if ready_file is not None:
            write_ready_file(ready_file, demo.ports)
        print(f"demo_backend: serving {demo.ports}", file=sys.stderr, flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integration.demo_backend",
        description="Serve demo HTTP backends on loopback until SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        required=True,
        metavar="NAME=HOST:PORT[,key=value...]",
        help="keys: concurrency, mean_ms, distribution, scv, error_rate, error_latency_ms, seed",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {pid, backends: {NAME: PORT}} here once bound",
    )
    parser.add_argument(
        "--in-container",
        action="store_true",
        help="also allow binding 0.0.0.0 / :: (inside a container: its own network only)",
    )
    args = parser.parse_args(argv)
    inside = args.in_container
    try:
        specs = [parse_backend_spec(text, in_container=inside) for text in args.backend]
        DemoBackends(specs, in_container=inside)  # unique names, before any socket opens
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(_serve_until_signalled(specs, args.ready_file, inside))
    except OSError as exc:
        print(f"demo_backend: cannot listen: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
