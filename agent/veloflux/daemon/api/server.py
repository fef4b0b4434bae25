"""The agent's HTTP API: metrics, health, status and the operator controls.

The standard library serves it, not a framework: it is a handful of routes, and every
dependency beside production traffic is one more thing that can break. The daemon's
state arrives through two small ports, so this module never imports the loop and tests
drive it with fakes.

Everything from the network is untrusted. A body is bounded before it is read, a name is
checked before it could reach a HAProxy command, every refusal is answered with a JSON
reason and counted, and no stack trace ever leaves the process. A request has
``request_timeout_seconds`` in all to arrive, not per read: a client that trickles a byte
at a time cannot hold a thread any longer than a silent one.

Every route, parameter, body and answer is described in ``openapi.json`` (OpenAPI 3.1,
served at ``/api/v1/openapi.json``); ``tests/integration/test_api_fuzz.py`` checks the
server against it.
"""

from __future__ import annotations

import functools
import hmac
import io
import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import unquote

from veloflux.daemon.api.dashboard import Dashboard, Endpoint, HistoryPort
from veloflux.daemon.api.fields import (
    ACTOR_HEADER,
    Refused,
    actor_field,
    bad,
    loopback_host,
    reason_field,
    reject_unknown,
    server_field,
    token_fingerprint,
    ttl_field,
    weight_field,
)
from veloflux.daemon.api.messages import JSON, TEXT, Reply, Request, json_reply
from veloflux.daemon.audit import Actor
from veloflux.errors import ConfigError, ConfigProblem, ControlRefused
from veloflux.util.events import Events

_log = logging.getLogger("veloflux.api")

OVERRIDES_PATH = "/api/v1/overrides"
# Each pool's forecast and recommended servers (``daemon/forecasts.py``): read by an
# autoscaler (KEDA's metrics-api scaler: ``pools.NAME.recommended_servers``).
FORECAST_PATH = "/api/v1/forecast"
OPENAPI_PATH = "/api/v1/openapi.json"
_WRITE_METHODS = frozenset({"POST", "DELETE"})


class StatusPort(HistoryPort, Protocol):
    """What the API reads from the daemon."""

    def status(self) -> dict[str, Any]: ...
    def healthy(self) -> tuple[bool, str]: ...
    def ready(self) -> tuple[bool, str]: ...


class ControlPort(Protocol):
    """What operators may change; any method may raise ``ControlRefused``. Every change
    names its ``actor``, for the audit log."""

    def overrides(self) -> list[dict[str, Any]]: ...
    def set_override(
        self, server: str, weight: int, ttl_seconds: float | None, actor: Actor
    ) -> dict[str, Any]: ...
    def clear_overrides(self, server: str | None, actor: Actor) -> list[str]: ...
    def pause(self, reason: str, actor: Actor) -> dict[str, Any]: ...
    def resume(self, actor: Actor) -> dict[str, Any]: ...


MetricsText = Callable[[], tuple[bytes, str]]


def _loggable(text: str, limit: int = 200) -> str:
    """One log line whatever the client sent: control characters escaped, length capped."""
    return text.encode("unicode_escape").decode("ascii")[:limit]


class _Api:
    """Routes one parsed request to an endpoint and turns every refusal into an answer."""

    def __init__(
        self,
        status: StatusPort,
        controls: ControlPort,
        metrics: MetricsText,
        events: Events,
        token: str | None,
        max_body_bytes: int,
    ) -> None:
        self._status, self._controls, self._metrics_text = status, controls, metrics
        self._events, self._token, self._max_body_bytes = events, token, max_body_bytes
        self._token_id = token_fingerprint(token) if token else ""
        self.loopback_only = False  # set by ApiServer from the address it listens on
        document = resources.files("veloflux.daemon.api").joinpath("openapi.json")
        openapi = Reply(200, document.read_bytes(), JSON)
        self._routes: dict[str, dict[str, Endpoint]] = Dashboard(status).routes() | {
            "/metrics": {"GET": self._metrics},
            "/-/healthy": {"GET": lambda _: self._probe(self._status.healthy())},
            "/-/ready": {"GET": lambda _: self._probe(self._status.ready())},
            "/status": {"GET": self._status_reply},
            OVERRIDES_PATH: {
                "GET": lambda _: json_reply(200, {"overrides": self._controls.overrides()}),
                "POST": self._set_override,
                "DELETE": lambda request: self._cleared(request, None),
            },
            "/api/v1/pause": {"POST": self._pause},
            "/api/v1/resume": {"POST": self._resume},
            FORECAST_PATH: {"GET": lambda _: json_reply(200, self._forecast())},
            OPENAPI_PATH: {"GET": lambda _: openapi},
        }
        self._forecast: Callable[[], dict[str, Any]] = lambda: {
            "pools": {},
            "error": "forecasts are off (forecast.enabled: false)",
        }

    def serve_forecast(self, forecast: Callable[[], dict[str, Any]]) -> None:
        """Answer ``/api/v1/forecast`` from ``forecast`` (the daemon's board)."""
        self._forecast = forecast

    def handle(self, request: Request) -> Reply:
        try:
            return self._answer(request)
        except Refused as refused:
            return self.refuse(request.method, request.path, refused)
        except Exception:
            _log.exception("API %s %s failed", request.method, _loggable(request.path))
            return json_reply(500, {"error": "internal error; the agent's log has the details"})

    def _answer(self, request: Request) -> Reply:
        hosts: list[str] = request.headers.get_all("Host") or []
        if self.loopback_only and not all(loopback_host(h) for h in hosts):
            raise Refused(421, "this agent answers requests to its loopback address only", "host")
        endpoint = self._endpoint(request)
        if request.method in _WRITE_METHODS:
            self._authorize(request)
        try:
            return endpoint(request)
        except ControlRefused as exc:
            status = exc.status if 400 <= exc.status < 600 else 400
            raise Refused(status, str(exc), "control_refused") from None
        except TimeoutError:
            raise Refused(408, "the body did not arrive in time", "timeout") from None

    def refuse(self, method: str, path: str, refused: Refused) -> Reply:
        """Count and log a refusal, and answer it as JSON."""
        where = _loggable(f"{method} {path}")
        message = f"{where} -> {refused.status}: {_loggable(refused.message, 300)}"
        self._events.record("api_request_refused", message, reason=refused.reason)
        return json_reply(refused.status, {"error": refused.message}, refused.headers)

    def _endpoint(self, request: Request) -> Endpoint:
        methods = self._routes.get(request.path)
        if methods is None and request.path.startswith(OVERRIDES_PATH + "/"):
            methods = {"DELETE": self._clear_one}
        if methods is None:
            raise Refused(404, f"no such path: {request.path[:200]}", "not_found")
        endpoint = methods.get("GET" if request.method == "HEAD" else request.method)
        if endpoint is None:
            allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            message = f"{request.method} is not allowed on {request.path}; allowed: {allow}"
            raise Refused(405, message, "method_not_allowed", (("Allow", allow),))
        return endpoint

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            message = "operator controls are disabled: set api.token_file"
            raise Refused(403, message, "controls_disabled")
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        valid = hmac.compare_digest(given.strip().encode(), self._token.encode())
        if scheme.lower() != "bearer" or not valid:
            challenge = (("WWW-Authenticate", "Bearer"),)
            raise Refused(401, "missing or wrong bearer token", "unauthorized", challenge)

    def _actor(self, request: Request) -> Actor:
        """Who asks: the name the client gives (``veloflux-agent`` sends ``cli:<user>``),
        else ``api``, with the fingerprint of the token that let it in."""
        return Actor(actor_field(request.headers.get(ACTOR_HEADER)), self._token_id)

    def _json_object(self, request: Request, *, required: bool) -> dict[str, Any]:
        length = self._content_length(request, required=required)
        if length == 0:
            if required:
                raise bad("a JSON object body is required")
            return {}
        raw = request.body.read(length)
        if len(raw) < length:
            raise bad("the body ended before Content-Length bytes arrived")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise bad("the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise bad("the body must be a JSON object")
        return value

    def _content_length(self, request: Request, *, required: bool) -> int:
        """Check the declared size before reading a byte: a huge body is never buffered."""
        declared = request.headers.get_all("Content-Length") or []
        if len({value.strip() for value in declared}) > 1:
            raise bad("Content-Length is given more than once, with different values")
        text = request.headers.get("Content-Length")
        if text is None:
            if required or request.headers.get("Transfer-Encoding"):
                message = "send the body with a Content-Length header"
                raise Refused(411, message, "length_required")
            return 0
        if not (text.strip().isascii() and text.strip().isdigit()):
            raise bad("Content-Length must be a non-negative integer")
        length = int(text)
        if length > self._max_body_bytes:
            message = f"the body of {length} bytes exceeds the limit of {self._max_body_bytes}"
            raise Refused(413, message, "body_too_large")
        return length

    # --- endpoints ---------------------------------------------------------------------

    def _status_reply(self, _: Request) -> Reply:
        controls = {"controls_enabled": self._token is not None}
        return json_reply(200, self._status.status() | controls)

    def _metrics(self, _: Request) -> Reply:
        body, content_type = self._metrics_text()
        return Reply(200, body, content_type)

    @staticmethod
    def _probe(result: tuple[bool, str]) -> Reply:
        ok, reason = result
        return Reply(200 if ok else 503, f"{'ok' if ok else reason or 'not ok'}\n".encode(), TEXT)

    def _set_override(self, request: Request) -> Reply:
        body = self._json_object(request, required=True)
        reject_unknown(body, {"server", "weight", "ttl"})
        key = server_field(body.get("server"))
        weight = weight_field(body.get("weight"))
        ttl_seconds = ttl_field(body.get("ttl"))
        actor = self._actor(request)
        return json_reply(200, self._controls.set_override(key, weight, ttl_seconds, actor))

    def _clear_one(self, request: Request) -> Reply:
        key = server_field(unquote(request.path[len(OVERRIDES_PATH) + 1 :]))
        return self._cleared(request, key)

    def _cleared(self, request: Request, key: str | None) -> Reply:
        cleared = self._controls.clear_overrides(key, self._actor(request))
        return json_reply(200, {"cleared": cleared})

    def _pause(self, request: Request) -> Reply:
        body = self._json_object(request, required=False)
        reject_unknown(body, {"reason"})
        reason = reason_field(body.get("reason"))
        return json_reply(200, self._controls.pause(reason, self._actor(request)))

    def _resume(self, request: Request) -> Reply:
        reject_unknown(self._json_object(request, required=False), set())
        return json_reply(200, self._controls.resume(self._actor(request)))


# --- sockets ---------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's backlog is 5: a burst of connections beyond it (dashboards, a scrape,
    # probes) had its SYNs dropped and waited for retransmits, seconds for a probe.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: _Api, timeout_seconds: float) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api, self.request_timeout_seconds = api, timeout_seconds
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN: a DNS query that can stall start-up.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        # The default prints a traceback to stderr; a client that went away is not news.
        _log.debug("API connection from %s failed", client_address, exc_info=True)


class _Deadline(io.RawIOBase):
    """The connection's bytes, each read given only what is left of the request's time.

    A timeout per read alone lets a client that sends a byte every few seconds hold its
    thread for ever; a deadline for the whole request does not. Past it, a read raises
    ``TimeoutError``: while the request line or headers arrive, http.server then drops
    the connection; while the body arrives, the API answers 408.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        super().__init__()
        self._sock, self._seconds = sock, seconds
        self.deadline = math.inf

    def start(self) -> None:
        self.deadline = time.monotonic() + self._seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(min(left, self._seconds))
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # A slow or silent client cannot pin a thread: every write times out, and the
        # whole request must arrive within the timeout (``_Deadline``).
        seconds = self.server.request_timeout_seconds
        self.connection.settimeout(seconds)
        self.rfile.close()
        self._deadline = _Deadline(self.connection, seconds)
        self.rfile = io.BufferedReader(self._deadline)

    def handle_one_request(self) -> None:
        self._deadline.start()
        super().handle_one_request()

    def __getattr__(self, name: str) -> Callable[[], None]:
        # http.server answers a method it has no do_* for with 501, a server error; the
        # router answers any method a path does not serve with 405 and the methods it does.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        request = Request(self.command, path, self.headers, self.rfile, query)
        self._send(self.server.api.handle(request))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # A malformed request never reaches the router; answer and count it the same way.
        refused = Refused(code, message or HTTPStatus(code).phrase, "malformed_request")
        self.close_connection = True
        self.request_version = "HTTP/1.0"  # a status line even when the request line was garbage
        self._send(self.server.api.refuse(self.command or "-", getattr(self, "path", "-"), refused))

    def version_string(self) -> str:
        return "veloflux"  # no Python version for strangers

    def _send(self, reply: Reply) -> None:
        self.connection.settimeout(self.server.request_timeout_seconds)  # the reads' is spent
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)


class ApiServer:
    """The HTTP API on its own daemon thread; bound at construction so ``address`` is real."""

    def __init__(
        self,
        host: str,
        port: int,
        status: StatusPort,
        controls: ControlPort,
        metrics: MetricsText,
        events: Events,
        token: str | None,
        max_body_bytes: int = 65536,
        request_timeout_seconds: float = 10.0,
        forecast: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        api = _Api(status, controls, metrics, events, token, max_body_bytes)
        api.loopback_only = loopback_host(host)
        if forecast is not None:
            api.serve_forecast(forecast)
        try:
            self._server = _HttpServer((host, port), api, request_timeout_seconds)
        except OSError as exc:
            problem = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            raise ConfigError([ConfigProblem("api.listen", problem)]) from None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        return str(self._server.server_address[0]), int(self._server.server_address[1])

    def start(self) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError("this API server was stopped; create a new one")
            if self._thread is None:
                serve = functools.partial(self._server.serve_forever, poll_interval=0.1)
                self._thread = threading.Thread(target=serve, name="veloflux-api", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._thread is not None:  # shutdown() would wait forever if never served
                self._server.shutdown()
                self._thread.join()
            self._server.server_close()
