"""The HTTP API against a real in-process server on a free loopback port.

The daemon's state is faked through the two ports, so each test shows what a client
sees: the route table, the token rules, and that no malformed request gets past
validation, crashes the server or leaks a stack trace.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from veloflux import __version__
from veloflux.daemon.api.client import ApiClient, ApiRefused, ApiUnreachable
from veloflux.daemon.api.fields import (
    Refused,
    read_token,
    reason_field,
    token_fingerprint,
    ttl_field,
)
from veloflux.daemon.api.server import ApiServer
from veloflux.daemon.audit import Actor
from veloflux.errors import ConfigError, ControlRefused
from veloflux.util.events import Events

TOKEN = "s3cret-token"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSED = "api_request_refused"
HANG_GUARD_SECONDS = 5.0  # not a performance bound: only keeps a broken server from hanging


class FakeStatus:
    """A daemon whose health and readiness a test can flip."""

    def __init__(self) -> None:
        self.health: tuple[bool, str] = (True, "loop turned 1s ago")
        self.readiness: tuple[bool, str] = (True, "")
        self.fail_with: Exception | None = None
        self.history_asked: list[tuple[int, list[str]]] = []

    def status(self) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        return {"mode": "run", "pools": {"web": {"confidence": 0.9}}}

    def healthy(self) -> tuple[bool, str]:
        return self.health

    def ready(self) -> tuple[bool, str]:
        return self.readiness

    def history_json(self, since: int, pools: Sequence[str]) -> bytes:
        self.history_asked.append((since, list(pools)))
        return b'{"ticks": []}'

    def audit_entries(self, limit: int) -> list[dict[str, Any]]:
        return [{"action": "pause", "n": n} for n in range(limit)]


class FakeControls:
    """Records every call; ``web/ghost`` is a server the daemon does not know."""

    def __init__(self) -> None:
        self.pinned: dict[str, dict[str, Any]] = {}
        self.paused: str | None = None
        self.calls: list[tuple[str, Any]] = []
        self.actors: list[Actor] = []

    def overrides(self) -> list[dict[str, Any]]:
        return list(self.pinned.values())

    def set_override(
        self, server: str, weight: int, ttl_seconds: float | None, actor: Actor
    ) -> dict[str, Any]:
        self.calls.append(("set", (server, weight, ttl_seconds)))
        self.actors.append(actor)
        if server == "web/ghost":
            raise ControlRefused("no server web/ghost in any pool", 404)
        self.pinned[server] = {"server": server, "weight": weight, "ttl_seconds": ttl_seconds}
        return self.pinned[server]

    def clear_overrides(self, server: str | None, actor: Actor) -> list[str]:
        self.calls.append(("clear", server))
        self.actors.append(actor)
        if server is not None and server not in self.pinned:
            raise ControlRefused(f"no override for {server}", 404)
        cleared = [server] if server is not None else sorted(self.pinned)
        for key in cleared:
            del self.pinned[key]
        return cleared

    def pause(self, reason: str, actor: Actor) -> dict[str, Any]:
        self.calls.append(("pause", reason))
        self.actors.append(actor)
        self.paused = reason
        return {"paused": True, "reason": reason}

    def resume(self, actor: Actor) -> dict[str, Any]:
        self.calls.append(("resume", None))
        self.actors.append(actor)
        self.paused = None
        return {"paused": False}


class Harness:
    """A started server, its fakes, and ways to talk to it."""

    def __init__(self, token: str | None, request_timeout_seconds: float = 10.0) -> None:
        self.status = FakeStatus()
        self.controls = FakeControls()
        self.events = Events()
        self.server = ApiServer(
            "127.0.0.1",
            0,
            self.status,
            self.controls,
            lambda: (b"veloflux_up 1\n", METRICS_TYPE),
            self.events,
            token,
            max_body_bytes=4096,
            request_timeout_seconds=request_timeout_seconds,
        )
        self.server.start()
        self.host, self.port = self.server.address

    def client(self, token: str | None = TOKEN) -> ApiClient:
        return ApiClient(self.host, self.port, token, timeout_seconds=HANG_GUARD_SECONDS)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        token: str | None = TOKEN,
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        """One request with exactly the headers given (plus the token), no helpful defaults."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=HANG_GUARD_SECONDS)
        try:
            all_headers = dict(headers or {})
            conn.putrequest(
                method, path, skip_host="Host" in all_headers, skip_accept_encoding=True
            )
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            if body is not None and "Content-Length" not in all_headers:
                all_headers["Content-Length"] = str(len(body))
            for name, value in all_headers.items():
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response, response.read()
        finally:
            conn.close()

    def still_serving(self) -> bool:
        status, _, body = self.raw("GET", "/-/healthy")
        return status == 200 and body == b"ok\n"


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness(TOKEN)
    yield harness
    harness.server.stop()


@pytest.fixture
def tokenless() -> Iterator[Harness]:
    harness = Harness(None)
    yield harness
    harness.server.stop()


def error_of(body: bytes) -> str:
    payload = json.loads(body)
    assert isinstance(payload, dict)
    message = payload["error"]
    assert isinstance(message, str)
    return message


# --- read-only routes ------------------------------------------------------------------


def test_index_links_every_route_and_shows_the_version(api: Harness) -> None:
    status, response, body = api.raw("GET", "/")
    page = body.decode()
    assert status == 200
    assert response.getheader("Content-Type", "").startswith("text/html")
    for path in ("/metrics", "/-/healthy", "/-/ready", "/status", "/api/v1/overrides"):
        assert f'href="{path}"' in page
    assert __version__ in page
    assert "http" not in page.replace("http-equiv", "")  # no external assets


def test_metrics_passes_body_and_content_type_through(api: Harness) -> None:
    status, response, body = api.raw("GET", "/metrics")
    assert (status, body) == (200, b"veloflux_up 1\n")
    assert response.getheader("Content-Type") == METRICS_TYPE


def test_health_and_readiness_answer_ok_then_503_with_the_reason(api: Harness) -> None:
    assert api.raw("GET", "/-/healthy")[::2] == (200, b"ok\n")
    assert api.raw("GET", "/-/ready")[::2] == (200, b"ok\n")
    api.status.health = (False, "loop stalled for 95s")
    api.status.readiness = (False, "no observation yet")
    status, response, body = api.raw("GET", "/-/healthy")
    assert (status, body) == (503, b"loop stalled for 95s\n")
    assert response.getheader("Content-Type", "").startswith("text/plain")
    assert api.raw("GET", "/-/ready")[::2] == (503, b"no observation yet\n")


def test_head_answers_headers_without_a_body(api: Harness) -> None:
    status, response, body = api.raw("HEAD", "/-/healthy")
    assert (status, body) == (200, b"")
    assert response.getheader("Content-Length") == "3"


def test_status_is_json_and_needs_no_token(api: Harness) -> None:
    assert api.client(token=None).status() == {
        "mode": "run",
        "pools": {"web": {"confidence": 0.9}},
        "controls_enabled": True,  # the page offers its controls
    }
    status, response, _ = api.raw("GET", "/status?verbose=1", token=None)
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"


def test_overrides_are_listed_without_a_token(api: Harness) -> None:
    api.controls.pinned["web/a"] = {"server": "web/a", "weight": 5}
    status, response, body = api.raw("GET", "/api/v1/overrides", token=None)
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"overrides": [{"server": "web/a", "weight": 5}]}
    assert api.client(token=None).overrides() == [{"server": "web/a", "weight": 5}]


# --- operator controls -----------------------------------------------------------------


def test_set_override_parses_the_ttl(api: Harness) -> None:
    client = api.client()
    result = client.set_override("web/a", 0, "1h")
    assert result == {"server": "web/a", "weight": 0, "ttl_seconds": 3600.0}
    client.set_override("web/b", 256, None)
    assert api.controls.calls == [("set", ("web/a", 0, 3600.0)), ("set", ("web/b", 256, None))]


def test_set_override_without_a_ttl_key(api: Harness) -> None:
    body = json.dumps({"server": "web/a", "weight": 7}).encode()
    status, response, reply = api.raw("POST", "/api/v1/overrides", body)
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(reply)["ttl_seconds"] is None


def test_clear_one_and_clear_all(api: Harness) -> None:
    client = api.client()
    for server in ("web/a", "web/b", "api/c"):
        client.set_override(server, 3, None)
    assert client.clear_overrides("web/a") == ["web/a"]
    assert client.clear_overrides(None) == ["api/c", "web/b"]
    assert api.controls.pinned == {}


def test_a_change_names_the_actor_the_client_gave_and_the_token_that_let_it_in(
    api: Harness,
) -> None:
    """Kills: the actor header ignored, or the token written instead of its fingerprint."""
    named = ApiClient(api.host, api.port, TOKEN, HANG_GUARD_SECONDS, actor="cli:alice")
    named.pause("incident 9")
    api.client().resume()
    fingerprint = token_fingerprint(TOKEN)
    assert fingerprint.startswith("sha256:")
    assert TOKEN not in fingerprint
    assert api.controls.actors == [Actor("cli:alice", fingerprint), Actor("api", fingerprint)]
    status, _, body = api.raw("POST", "/api/v1/resume", headers={"X-VeloFlux-Actor": "x" * 65})
    assert status == 400
    assert b"X-VeloFlux-Actor" in body


def test_pause_and_resume(api: Harness) -> None:
    client = api.client()
    assert client.pause("deploying web") == {"paused": True, "reason": "deploying web"}
    assert api.controls.paused == "deploying web"
    assert client.resume() == {"paused": False}
    assert api.controls.paused is None


def test_pause_without_a_body_uses_a_default_reason(api: Harness) -> None:
    status, _, _ = api.raw("POST", "/api/v1/pause")
    assert status == 200
    assert api.controls.paused == "paused through the API"


def test_control_refused_passes_its_status_and_message_through(api: Harness) -> None:
    with pytest.raises(ApiRefused) as refused:
        api.client().set_override("web/ghost", 5, None)
    assert refused.value.status == 404
    assert refused.value.message == "no server web/ghost in any pool"
    status, _, body = api.raw("DELETE", "/api/v1/overrides/web/nothing")
    assert (status, error_of(body)) == (404, "no override for web/nothing")
    assert api.events.count(REFUSED, reason="control_refused") == 2
    assert api.still_serving()


# --- the token -------------------------------------------------------------------------


def assert_write_refused_401(api: Harness, token: str | None) -> None:
    """A write with ``token`` is answered 401 with a Bearer challenge and reaches nothing."""
    body = json.dumps({"server": "web/a", "weight": 1}).encode()
    status, response, reply = api.raw("POST", "/api/v1/overrides", body, token=token)
    assert status == 401
    assert response.getheader("WWW-Authenticate") == "Bearer"
    assert response.getheader("Content-Type") == "application/json"
    assert error_of(reply) == "missing or wrong bearer token"
    assert api.controls.calls == []
    assert api.events.count(REFUSED, reason="unauthorized") == 1
    assert api.still_serving()


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_write_without_the_right_token_is_401(api: Harness, token: str | None) -> None:
    assert_write_refused_401(api, token)


@pytest.mark.parametrize(
    "token", [TOKEN.upper(), TOKEN.capitalize(), TOKEN[:-1] + TOKEN[-1].upper()]
)
def test_a_token_differing_only_in_letter_case_is_401(api: Harness, token: str) -> None:
    """Kills: a case-insensitive comparison (``.lower()`` of both tokens)."""
    assert token != TOKEN
    assert token.lower() == TOKEN.lower()
    assert_write_refused_401(api, token)


@pytest.mark.parametrize(
    "token", [TOKEN + "x", "x" + TOKEN, TOKEN[:-1], TOKEN[1:], f"{TOKEN}{TOKEN}"]
)
def test_the_right_token_with_a_character_more_or_less_is_401(api: Harness, token: str) -> None:
    """Kills: a comparison that ignores a suffix or a prefix (``startswith``,
    ``endswith``, ``in``, either way round) instead of the whole token."""
    assert_write_refused_401(api, token)


def test_the_right_token_is_accepted(api: Harness) -> None:
    """The control for the refusals above: the same write with the exact token."""
    body = json.dumps({"server": "web/a", "weight": 1}).encode()
    assert api.raw("POST", "/api/v1/overrides", body, token=TOKEN)[0] == 200
    assert api.controls.calls == [("set", ("web/a", 1, None))]
    assert api.events.count(REFUSED) == 0


def test_other_schemes_are_refused(api: Harness) -> None:
    headers = {"Authorization": f"Basic {TOKEN}"}
    assert api.raw("POST", "/api/v1/resume", headers=headers, token=None)[0] == 401


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:9477", "10.0.0.5:9477", "127.0.0.1.evil.example"]
)
def test_a_loopback_api_answers_no_request_for_another_host(api: Harness, host: str) -> None:
    """DNS rebinding: a page that points its own name at 127.0.0.1 still sends that name
    as the Host; a loopback API answers it 421 and serves nothing, reads included."""
    status, _, body = api.raw("GET", "/status", headers={"Host": host}, token=None)
    assert status == 421
    assert "loopback" in json.loads(body)["error"]
    status, _, _ = api.raw("POST", "/api/v1/pause", b"{}", {"Host": host})
    assert status == 421
    assert api.controls.paused is None
    assert api.events.count("api_request_refused", reason="host") == 2


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost", "[::1]:1"])
def test_a_loopback_api_answers_requests_for_its_loopback_names(api: Harness, host: str) -> None:
    status, _, _ = api.raw("GET", "/status", headers={"Host": host.format(port=api.port)})
    assert status == 200


def test_an_api_listening_beyond_loopback_answers_any_host() -> None:
    """Behind a Service or a published port the Host is whatever name reached it."""
    server = ApiServer(
        "0.0.0.0", 0, FakeStatus(), FakeControls(), lambda: (b"", METRICS_TYPE), Events(), None
    )
    server.start()
    try:
        conn = http.client.HTTPConnection(
            "127.0.0.1", server.address[1], timeout=HANG_GUARD_SECONDS
        )
        conn.request("GET", "/status", headers={"Host": "veloflux.example:9477"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.stop()


def test_client_reports_a_wrong_token(api: Harness) -> None:
    with pytest.raises(ApiRefused) as refused:
        api.client(token="wrong").resume()
    assert refused.value.status == 401
    assert "bearer token" in str(refused.value)


def test_writes_are_403_when_no_token_is_configured(tokenless: Harness) -> None:
    for method, path in [
        ("POST", "/api/v1/overrides"),
        ("DELETE", "/api/v1/overrides"),
        ("DELETE", "/api/v1/overrides/web/a"),
        ("POST", "/api/v1/pause"),
        ("POST", "/api/v1/resume"),
    ]:
        status, _, body = tokenless.raw(method, path, b"{}", token="anything")
        assert status == 403
        assert error_of(body) == "operator controls are disabled: set api.token_file"
    assert tokenless.controls.calls == []
    assert tokenless.events.count(REFUSED, reason="controls_disabled") == 5
    assert tokenless.client(token=None).status()["mode"] == "run"
    with pytest.raises(ApiRefused) as refused:
        tokenless.client(token=None).pause("x")
    assert refused.value.status == 403


# --- malformed requests ----------------------------------------------------------------


def test_huge_body_is_refused_from_its_declared_length(api: Harness) -> None:
    headers = {"Content-Length": str(10**9)}
    status, _, body = api.raw("POST", "/api/v1/overrides", b"{}", headers)
    assert status == 413
    assert "exceeds the limit of 4096" in error_of(body)
    assert api.events.count(REFUSED, reason="body_too_large") == 1
    assert api.still_serving()


def test_body_without_content_length_is_411(api: Harness) -> None:
    status, _, body = api.raw("POST", "/api/v1/overrides")
    assert status == 411
    assert "Content-Length" in error_of(body)
    chunked = {"Transfer-Encoding": "chunked"}
    assert api.raw("POST", "/api/v1/pause", headers=chunked)[0] == 411
    assert api.events.count(REFUSED, reason="length_required") == 2
    assert api.still_serving()


def _override(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 2000 + b"]" * 2000, "JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"web/a"', "JSON object"),
        (b"", "body is required"),
        (_override(server="web/a", weight=300), "weight: 300 is outside 0..256"),
        (_override(server="web/a", weight=-1), "weight"),
        (_override(server="web/a", weight="ten"), "weight"),
        (_override(server="web/a", weight=True), "weight"),
        (_override(server="web/a", weight=1.5), "weight"),
        (_override(server="web/a"), "weight"),
        (_override(weight=3), "server"),
        (_override(server="web/a", weight=3, ttl="soon"), "ttl"),
        (_override(server="web/a", weight=3, ttl=3600), "ttl"),
        (_override(server="web/a", weight=3, ttl="0s"), "ttl"),
        (_override(server="web/a;disable server web/b", weight=3), "server"),
        (_override(server="web/a\nshow info", weight=3), "server"),
        (_override(server="web;x/a", weight=3), "server"),
        (_override(server="web-a", weight=3), "server"),
        (_override(server=["web/a"], weight=3), "server"),
        (_override(server="web/a", weight=3, priority="high"), "unknown field(s) 'priority'"),
    ],
)
def test_bad_override_bodies_are_400_naming_the_field(
    api: Harness, body: bytes, names: str
) -> None:
    status, response, reply = api.raw("POST", "/api/v1/overrides", body)
    assert status == 400
    assert response.getheader("Content-Type") == "application/json"
    message = error_of(reply)
    assert names in message
    assert "Traceback" not in message
    assert api.controls.calls == []
    assert api.events.count(REFUSED, reason="bad_request") == 1
    assert api.still_serving()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/pause", _override(reason=["x"])),
        ("/api/v1/pause", _override(reason="two\nlines")),
        ("/api/v1/pause", _override(reason="x" * 501)),
        ("/api/v1/pause", _override(why="x")),
        ("/api/v1/resume", _override(now=True)),
    ],
)
def test_bad_pause_and_resume_bodies_are_400(api: Harness, path: str, body: bytes) -> None:
    assert api.raw("POST", path, body)[0] == 400
    assert api.controls.calls == []
    assert api.still_serving()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/overrides/web/a%0Ashow%20info",
        "/api/v1/overrides/web/a%3Bdisable%20server%20web/b",
        "/api/v1/overrides/web",
        "/api/v1/overrides/",
    ],
)
def test_clearing_a_bad_name_is_400(api: Harness, path: str) -> None:
    status, _, body = api.raw("DELETE", path)
    assert status == 400
    assert error_of(body).startswith("server:")
    assert api.controls.calls == []
    assert api.still_serving()


def test_bad_content_length_is_400(api: Harness) -> None:
    headers = {"Content-Length": "-5"}
    assert api.raw("POST", "/api/v1/overrides", b"{}", headers)[0] == 400
    assert api.still_serving()


@pytest.mark.parametrize("path", ["/nope", "/status/", "/api/v1", "/api/v2/overrides", "//x"])
def test_unknown_path_is_404(api: Harness, path: str) -> None:
    status, response, body = api.raw("GET", path)
    assert status == 404
    assert response.getheader("Content-Type") == "application/json"
    assert "no such path" in error_of(body)
    assert api.events.count(REFUSED, reason="not_found") == 1
    assert api.still_serving()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("PUT", "/api/v1/overrides", "DELETE, GET, HEAD, POST"),
        ("GET", "/api/v1/pause", "POST"),
        ("GET", "/api/v1/overrides/web/a", "DELETE"),
        ("PATCH", "/-/ready", "GET, HEAD"),
        # Methods http.server knows no do_* for: 405 as well, never its 501.
        ("TRACE", "/status", "GET, HEAD"),
        ("BREW", "/api/v1/pause", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(api: Harness, method: str, path: str, allow: str) -> None:
    status, response, _ = api.raw(method, path, b"{}")
    assert status == 405
    assert response.getheader("Allow") == allow
    assert api.events.count(REFUSED, reason="method_not_allowed") == 1
    assert api.still_serving()


def test_a_failing_port_is_500_without_details(api: Harness) -> None:
    api.status.fail_with = RuntimeError("secret internals at /etc/veloflux")
    status, response, body = api.raw("GET", "/status")
    assert status == 500
    assert response.getheader("Content-Type") == "application/json"
    assert b"secret" not in body
    assert b"Traceback" not in body
    assert api.still_serving()


def test_a_silent_client_times_out_and_others_are_served() -> None:
    harness = Harness(TOKEN, request_timeout_seconds=0.3)
    try:
        with socket.create_connection((harness.host, harness.port)) as silent:
            silent.settimeout(HANG_GUARD_SECONDS)
            silent.sendall(b"POST /api/v1/pause HTTP/1.1\r\n")  # and then nothing
            assert harness.still_serving()
            assert silent.recv(1024) == b""  # the server gave up and closed
    finally:
        harness.server.stop()


# --- the server's life -----------------------------------------------------------------


def test_binds_a_real_port_and_stops_twice() -> None:
    harness = Harness(TOKEN)
    assert harness.host == "127.0.0.1"
    assert harness.port > 0
    harness.server.stop()
    harness.server.stop()
    with pytest.raises(ApiUnreachable):
        harness.client().status()


def test_stop_without_start_returns() -> None:
    server = ApiServer(
        "127.0.0.1", 0, FakeStatus(), FakeControls(), lambda: (b"", "text/plain"), Events(), None
    )
    server.stop()


def test_a_busy_port_is_a_config_error(api: Harness) -> None:
    with pytest.raises(ConfigError, match=r"api\.listen"):
        ApiServer(
            api.host, api.port, FakeStatus(), FakeControls(), lambda: (b"", ""), Events(), None
        )


def test_client_reaches_a_wildcard_address_through_loopback(api: Harness) -> None:
    assert ApiClient("0.0.0.0", api.port, None).status()["mode"] == "run"


def test_client_reports_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ApiUnreachable) as unreachable:
        ApiClient("127.0.0.1", port, TOKEN, timeout_seconds=HANG_GUARD_SECONDS).status()
    message = str(unreachable.value)
    assert f"127.0.0.1:{port}" in message
    assert "connection refused" in message  # answered at once, not waited out
    assert "no answer within" not in message
    assert "veloflux-agent run" in message


def test_client_reports_a_daemon_that_accepts_but_never_answers() -> None:
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(1)  # connections complete in the backlog; nobody reads them
        port = stuck.getsockname()[1]
        with pytest.raises(ApiUnreachable, match=r"no answer within 0\.3s"):
            ApiClient("127.0.0.1", port, None, timeout_seconds=0.3).status()


def test_client_reports_something_else_on_the_port() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]

        def answer_with_html() -> None:
            conn, _ = other.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html></html>")

        thread = threading.Thread(target=answer_with_html, daemon=True)
        thread.start()
        with pytest.raises(ApiUnreachable, match="does not look like the VeloFlux API"):
            ApiClient("127.0.0.1", port, None, timeout_seconds=HANG_GUARD_SECONDS).status()
        thread.join(HANG_GUARD_SECONDS)


def test_serves_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this environment")
    try:
        server = ApiServer(
            "::1", 0, FakeStatus(), FakeControls(), lambda: (b"", ""), Events(), None
        )
    except ConfigError:
        pytest.skip("cannot bind ::1 here")
    server.start()
    try:
        host, port = server.address
        assert host == "::1"
        assert ApiClient("::", port, None).status()["mode"] == "run"
    finally:
        server.stop()


# --- the token file --------------------------------------------------------------------


def test_read_token_none_when_no_file_is_set() -> None:
    assert read_token(None) is None


def test_read_token_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    path.chmod(0o640)  # a token other users can read is refused
    assert read_token(path) == TOKEN


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        (" \n\t", "is empty"),
        ("two words", "one word"),
    ],
)
def test_read_token_refuses_an_unusable_file(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as error:
        read_token(path)
    assert error.value.problems[0].path == "api.token_file"
    assert problem in error.value.problems[0].message


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"NONSENSE", b"400"),
        (b"GET / HTTP/x", b"400"),
        (b"GET / HTTP/2.0", b"505"),
    ],
)
def test_a_malformed_request_line_is_answered_as_json_and_counted(
    api: Harness, request_line: bytes, status: bytes
) -> None:
    with socket.create_connection((api.host, api.port)) as conn:
        conn.settimeout(HANG_GUARD_SECONDS)
        conn.sendall(request_line + b"\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 " + status + b" ")
    assert b"Content-Type: application/json" in head
    assert error_of(body)
    assert api.events.count(REFUSED, reason="malformed_request") == 1
    assert api.still_serving()


def test_server_header_hides_the_python_version(api: Harness) -> None:
    _, response, _ = api.raw("GET", "/-/healthy")
    assert response.getheader("Server") == "veloflux"


# --- the edges of each check (mutants of daemon/api that survived `make mutation`) ------------


@pytest.mark.parametrize("token", ["t\u00f6ken", "to\x07ken"])
def test_a_token_must_be_printable_ascii_not_merely_one_or_the_other(
    tmp_path: Path, token: str
) -> None:
    """Kills: ``isascii() and isprintable()`` made ``or``."""
    path = tmp_path / "token"
    path.write_text(token, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        read_token(path)
    assert (
        error.value.problems[0].message == f"{path}: the token must be one word of printable ASCII"
    )


def test_a_token_file_that_cannot_be_read_says_why(tmp_path: Path) -> None:
    """The OS's reason when there is one, else the decoder's. Kills: the reason dropped,
    taken from the wrong attribute, or joined with ``and``."""
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as error:
        read_token(missing)
    assert error.value.problems[0].message == f"cannot read {missing}: No such file or directory"
    garbled = tmp_path / "garbled"
    garbled.write_bytes(b"\xfftoken")
    with pytest.raises(ConfigError) as error:
        read_token(garbled)
    assert error.value.problems[0].message == (
        f"cannot read {garbled}: 'utf-8' codec can't decode byte 0xff in position 0: "
        "invalid start byte"
    )


def test_a_body_of_exactly_the_size_limit_is_read(api: Harness) -> None:
    """Kills: ``length > limit`` made ``>=``."""
    body = b'{"reason": "maintenance window"}'
    body += b" " * (4096 - len(body))
    status, _, _ = api.raw("POST", "/api/v1/pause", body)
    assert status == 200


def test_a_one_second_ttl_and_a_reason_of_the_longest_length_are_taken() -> None:
    """Kills: ``seconds <= 0`` made ``<= 1``, ``len(value) > 500`` made ``>=``."""
    assert ttl_field("1s") == 1.0
    assert reason_field("x" * 500) == "x" * 500


# --- found by fuzzing (tests/integration/test_api_fuzz.py) -------------------------------


def test_a_ttl_a_date_cannot_hold_is_refused_not_a_500() -> None:
    """A ttl of 10**12 days overflowed the expiry date when the pin was made."""
    assert ttl_field("100000d") == 100_000 * 86400.0
    with pytest.raises(Refused) as refused:
        ttl_field("1000000000000d")
    assert refused.value.status == 400
    assert "100000d" in refused.value.message


def test_a_weight_written_as_a_whole_float_is_that_integer(api: Harness) -> None:
    """JSON has one number type; openapi.json's integer takes 5.0, so the server does."""
    body = json.dumps({"server": "web/a", "weight": 5.0}).encode()
    status, _, _ = api.raw("POST", "/api/v1/overrides", body)
    assert status == 200
    assert api.controls.calls == [("set", ("web/a", 5, None))]
    body = json.dumps({"server": "web/a", "weight": 5.5}).encode()
    assert api.raw("POST", "/api/v1/overrides", body)[0] == 400


def test_two_different_content_lengths_are_refused(api: Harness) -> None:
    with socket.create_connection((api.host, api.port)) as conn:
        conn.settimeout(HANG_GUARD_SECONDS)
        conn.sendall(
            f"POST /api/v1/pause HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 2\r\nContent-Length: 20\r\n\r\n{}".encode()
        )
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert api.controls.paused is None


def test_an_empty_query_value_is_refused_not_the_default() -> None:
    harness = Harness(TOKEN)
    try:
        assert harness.raw("GET", "/api/v1/audit?limit=")[0] == 400
        assert harness.raw("GET", "/api/v1/history?since=")[0] == 400
        assert harness.raw("GET", "/api/v1/audit?limit=3")[0] == 200
    finally:
        harness.server.stop()


def test_a_client_trickling_its_request_is_dropped_at_the_request_timeout() -> None:
    """A timeout per read let a byte every half second hold a thread for ever."""
    harness = Harness(TOKEN, request_timeout_seconds=0.5)
    try:
        with socket.create_connection((harness.host, harness.port)) as conn:
            conn.settimeout(0.1)
            conn.sendall(b"GET /status HTTP/1.1\r\n")
            deadline = time.monotonic() + HANG_GUARD_SECONDS
            while True:
                if time.monotonic() > deadline:
                    pytest.fail("the server kept a trickling client past the deadline")
                try:
                    conn.sendall(b"X")
                    if conn.recv(1) == b"":
                        break  # closed
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        assert harness.still_serving()
    finally:
        harness.server.stop()
