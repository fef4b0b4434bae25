"""The daemon's HTTP API under fuzzing: against its OpenAPI document, and over raw sockets.

A daemon runs in this process against a real HAProxy. ``schemathesis`` (as a command,
in a process of its own: loaded into this one it patches Hypothesis for the whole
session) sends every operation of ``openapi.json`` valid and invalid parameters, bodies
and headers, with the bearer token and without, and fails on a 5xx, an answer the
document does not describe (status, content type, headers, body), a request the
document calls invalid that is accepted, a valid one that is refused, a method that is
not 405, auth that is ignored, or a request that gets no answer within 5 s.

Then what no HTTP client sends: random methods, versions and header bytes, oversized
request lines, headers and bodies, requests cut off anywhere, bytes trickled one at a
time, stalled and pipelined connections. The server must answer 4xx (505 only for a
request that claims HTTP/2 or later, which is that status's meaning) or close the
connection, never 5xx, never hang past its request timeout, and serve a well-formed
request afterwards. The timeout tests use a second server over the same daemon with a
1 s request timeout, so that waiting for one costs a second, not the default ten.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec
from tests.integration.daemon_helpers import (
    TOKEN,
    Address,
    AgentFiles,
    agent_config,
    api_address,
    bearer,
    request,
    running_daemon,
    wait_until,
    write_config,
)
from tests.unit.mutations import fuzz
from veloflux.daemon.api.server import ApiServer
from veloflux.daemon.service import Daemon

pytestmark = pytest.mark.integration

OPENAPI = (
    Path(__file__).resolve().parents[2] / "agent" / "veloflux" / "daemon" / "api" / "openapi.json"
)
SHORT_TIMEOUT_S = 1.0  # the second server's request timeout
CLOSE_DEADLINE_S = 10.0  # a connection the server should drop is dropped before this
MAX_BODY = 65536  # api.max_body_bytes' default, which the test config keeps
# schemathesis: a positive reason (Python's str.isprintable) cannot be stated as a
# pattern: unassigned code points are valid JSON strings the server refuses on purpose.
SCHEMATHESIS_CONFIG = """
[checks]
enabled = true

[[operations]]
include-path = "/api/v1/pause"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


class Servers:
    """The daemon's own API and a second server over the same daemon, 1 s request timeout."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.main: Address = api_address(daemon)
        self._short = ApiServer(
            "127.0.0.1",
            0,
            daemon.ops,
            daemon.ops,
            lambda: (daemon.metrics.render(), "text/plain"),
            daemon.events,
            TOKEN,
            request_timeout_seconds=SHORT_TIMEOUT_S,
        )
        self._short.start()
        self.short: Address = self._short.address

    def stop(self) -> None:
        self._short.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("api-fuzz")
    pool = tuple(ServerSpec(f"s{i}", "127.0.0.1:9", 10) for i in (1, 2, 3))
    legacy = tuple(ServerSpec(f"l{i}", "127.0.0.1:9", 5) for i in (1, 2))
    proxy = HAProxyProcess(
        root / "haproxy",
        [BackendSpec("app", pool), BackendSpec("legacy", legacy, algorithm="static-rr")],
    ).start()
    files = AgentFiles(root / "agent")
    config = write_config(files, agent_config(proxy.admin_socket, files, interval="1s"))
    try:
        with running_daemon(config) as daemon:
            address = api_address(daemon)
            wait_until(lambda: request(address, "GET", "/-/ready").status == 200, "ready")
            both = Servers(daemon)
            try:
                yield both
            finally:
                both.stop()
    finally:
        proxy.stop()


def still_serving(address: Address) -> bool:
    reply = request(address, "GET", "/-/healthy")
    return reply.status == 200 and reply.body == b"ok\n"


# --- against the OpenAPI document -------------------------------------------------------


def schemathesis_binary() -> str:
    return str(Path(sys.executable).with_name("schemathesis"))


@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without-token"])
def test_every_operation_answers_as_the_openapi_document_says(
    servers: Servers, tmp_path: Path, token: bool
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG, encoding="utf-8")
    host, port = servers.main
    command = [
        schemathesis_binary(),
        "--no-color",
        f"--config-file={config}",
        "run",
        str(OPENAPI),
        f"--url=http://{host}:{port}",
        "--phases=examples,coverage,fuzzing",
        "--max-examples=50",
        "--seed=20261207",
        "--request-timeout=5",
        "--workers=1",
        "--suppress-health-check=all",
        *(["--header", f"Authorization: Bearer {TOKEN}"] if token else []),
    ]
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert still_serving(servers.main)


def test_the_document_is_served_as_it_is_packaged(servers: Servers) -> None:
    reply = request(servers.main, "GET", "/api/v1/openapi.json")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.body == OPENAPI.read_bytes()


# --- raw sockets ------------------------------------------------------------------------


def exchange(address: Address, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data`` as is, then (by default) close our side; read until the server
    closes. A server that neither answers nor closes fails the test at the deadline."""
    with socket.create_connection(address, timeout=CLOSE_DEADLINE_S) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The server refused before reading everything (EPIPE, ECONNRESET, or ENOTCONN
            # from shutdown() once it has closed): its answer may still be readable.
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # closed with our unread bytes in its buffer: a close, not a hang
        except TimeoutError:
            pytest.fail(f"no answer and no close within {CLOSE_DEADLINE_S:g}s: {data[:200]!r}")
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """The status of an HTTP/1.x answer; None when the server closed without one (or
    answered an HTTP/0.9 request, whose answer has no status line)."""
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def claims_http2_or_later(data: bytes) -> bool:
    line = data.split(b"\n", 1)[0].strip()
    version = line.rsplit(b" ", 1)[-1]
    if not version.startswith(b"HTTP/"):
        return False
    try:
        return int(version[5:].split(b".")[0]) >= 2
    except ValueError:
        return False


def assert_no_server_error(data: bytes, answer: bytes) -> None:
    status = status_of(answer)
    if status is not None and status >= 500:
        assert status == 505, (data[:300], answer[:300])
        assert claims_http2_or_later(data), (data[:300], answer[:300])


PATHS = [
    "/",
    "/status",
    "/metrics",
    "/-/healthy",
    "/api/v1/history?since=1&pool=app",
    "/api/v1/audit?limit=3",
    "/api/v1/overrides",
    "/api/v1/overrides/app/s1",
    "/api/v1/pause",
    "/api/v1/resume",
    "/api/v1/forecast",
    "/api/v1/openapi.json",
]
methods = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"DELETE", b"PUT", b"PATCH", b"OPTIONS", b"TRACE", b"BREW"]
) | st.from_regex(rb"\A[!-~]{1,12}\Z")
paths = (
    st.sampled_from(PATHS).map(str.encode)
    | st.from_regex(rb"\A/[!-~]{0,60}\Z")
    | st.binary(max_size=40).map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\n", b""))
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1", b""])
header_names = st.sampled_from(
    [b"Content-Length", b"Authorization", b"Transfer-Encoding", b"X-VeloFlux-Actor",
     b"Connection", b"Expect", b"Host", b"Content-Type"]
) | st.from_regex(rb"\A[!-9;-~]{1,20}\Z")  # fmt: skip
header_values = (
    st.sampled_from(
        [b"10", b"-1", b"99999999999999999999", b"1e3", b"\xb2", b"chunked", b"keep-alive",
         b"100-continue", b"Bearer " + TOKEN.encode(), b"Bearer wrong", b"cli:\x00root", b""]
    )
    | st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
)  # fmt: skip
bodies = st.sampled_from(
    [b"", b"{}", b'{"reason": "fuzz"}', b'{"server": "app/s1", "weight": 5}', b"[" * 5000]
) | st.binary(max_size=200)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request as bytes: any method, path and version, odd headers, any body, maybe
    cut anywhere."""
    line = b" ".join(p for p in (draw(methods), draw(paths), draw(versions)) if p)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    body = draw(bodies)
    if draw(st.booleans()):
        headers.append((b"Content-Length", str(len(body)).encode()))
    head = line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    data = head + body
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


@settings(fuzz(500), suppress_health_check=[HealthCheck.too_slow], database=None)
@given(raw_requests())
def test_any_request_is_answered_4xx_or_closed_never_5xx(servers: Servers, data: bytes) -> None:
    answer = exchange(servers.short, data)
    assert_no_server_error(data, answer)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", id="request-line-70k"),
        pytest.param(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n", id="header-70k"),
        pytest.param(
            b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", id="150-headers"
        ),
        pytest.param(b"GET / HTTP/1.1\r\n folded\r\n\r\n", id="continuation-first"),
        pytest.param(b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nX-\xff\xfe: \x00\x01\r\n\r\n", id="binary-header"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-hello"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
        pytest.param(
            b"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 5\r\nContent-Length: 500\r\n\r\n{}   ",
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            id="chunked",
        ),
    ],
)  # fmt: skip
def test_malformed_requests_are_refused_and_the_server_goes_on(
    servers: Servers, data: bytes
) -> None:
    answer = exchange(servers.short, data)
    assert_no_server_error(data, answer)  # http.server reads odd headers leniently: a 200 is fine
    assert still_serving(servers.short)
    assert still_serving(servers.main)


def test_a_body_over_the_limit_is_413_before_it_is_read(servers: Servers) -> None:
    body = b"x" * (MAX_BODY * 4)
    head = (
        f"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answer = exchange(servers.main, head + body)
    assert status_of(answer) in (413, None)  # None: reset before our read, still refused
    answer = exchange(servers.main, head)  # the size alone is enough to refuse
    assert status_of(answer) == 413
    assert still_serving(servers.main)


def test_a_request_sent_a_byte_at_a_time_is_served(servers: Servers) -> None:
    body = b'{"reason": "sent slowly"}'
    data = (
        f"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(servers.main, timeout=CLOSE_DEADLINE_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        answer = sock.recv(65536)
    assert status_of(answer) == 200
    assert request(servers.main, "POST", "/api/v1/resume", b"", bearer()).status == 200


def _closed_within_deadline(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Keep sending ``trickle`` a byte at a time (or nothing) until the server answers or
    closes; fail if it has done neither by the deadline."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + CLOSE_DEADLINE_S
    received = b""
    sent = 0
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        except ConnectionResetError:
            return received
        if chunk == b"":
            return received
        if chunk:
            received += chunk
            continue
        if trickle:
            try:
                sock.sendall(trickle[sent % len(trickle) : sent % len(trickle) + 1])
            except (BrokenPipeError, ConnectionResetError):
                return received
            sent += 1
    pytest.fail(f"the server kept the connection past {CLOSE_DEADLINE_S:g}s")


STALLS = {
    "silent": (b"", b""),
    "request-line-cut": (b"GET /sta", b""),
    "headers-cut": (b"GET /status HTTP/1.1\r\nHost: localhost\r\n", b""),
    "body-short": (
        f"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 100\r\n\r\n{".encode(),
        b"",
    ),
    "headers-trickled": (b"GET /status HTTP/1.1\r\n", b"X-Slow: aaaaaaaa\r\n"),
    "body-trickled": (
        f"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 60000\r\n\r\n".encode(),
        b"a",
    ),
}


def test_stalled_and_trickling_clients_are_dropped_at_the_request_timeout(
    servers: Servers,
) -> None:
    """Each stall in a thread of its own, so that the test waits one timeout, not six."""
    answers: dict[str, bytes | BaseException] = {}

    def stall(name: str, start: bytes, trickle: bytes) -> None:
        try:
            with socket.create_connection(servers.short, timeout=CLOSE_DEADLINE_S) as sock:
                sock.sendall(start)
                answers[name] = _closed_within_deadline(sock, trickle)
        except BaseException as exc:  # pytest.fail included: reported below by name
            answers[name] = exc

    threads = [
        threading.Thread(target=stall, args=(name, *parts)) for name, parts in STALLS.items()
    ]
    for thread in threads:
        thread.start()
    assert still_serving(servers.short)  # while six connections hang on it
    for thread in threads:
        thread.join()
    failed = {n: a for n, a in answers.items() if isinstance(a, BaseException)}
    assert not failed, failed
    for name, answer in answers.items():
        assert isinstance(answer, bytes)
        status = status_of(answer)
        assert status is None or status == 408, (name, answer[:200])
    assert still_serving(servers.short)


def test_pipelined_requests_get_one_answer_and_a_close(servers: Servers) -> None:
    one = b"GET /-/healthy HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
    answer = exchange(servers.main, one * 20, half_close=False)
    assert answer.count(b"HTTP/1.0 200") == 1
    assert still_serving(servers.main)


def test_many_idle_connections_do_not_stop_the_server(servers: Servers) -> None:
    """A burst of connections is queued, not dropped: with socketserver's backlog of 5,
    the SYNs past it were dropped and each such connect waited a retransmit (1 s, 2 s...).
    The kernel completes a queued handshake however busy the agent is, so a connect
    timeout shorter than the first retransmit tells the two apart."""
    idle = [socket.create_connection(servers.short, timeout=0.9) for _ in range(50)]
    try:
        assert still_serving(servers.short)
        for sock in idle:
            _closed_within_deadline(sock)
    finally:
        for sock in idle:
            sock.close()
    assert still_serving(servers.short)
