"""A small client for the daemon's HTTP API, used by the CLI's operator commands.

It uses ``urllib`` only, so ``veloflux-agent pause`` works wherever the agent is
installed. Failures come back as two errors the CLI can explain: the daemon could not
be reached (is it running?), or it answered and refused (with its own reason).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from veloflux.daemon.api.fields import ACTOR_HEADER
from veloflux.errors import VelofluxError

# An agent listening on every address is still reached through loopback.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_OVERRIDES = "/api/v1/overrides"


class ApiError(VelofluxError):
    """Base of the client's errors: the operator command did not take effect."""


class ApiUnreachable(ApiError):
    """No VeloFlux API answered at the address: the daemon is down, or something else is there."""


class ApiRefused(ApiError):
    """The daemon answered with an error status; ``message`` is its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the agent refused ({status}): {message}")
        self.status = status
        self.message = message


class ApiClient:
    """One method per operator command; each is a single HTTP request."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None,
        timeout_seconds: float = 5.0,
        actor: str | None = None,
    ) -> None:
        host = _WILDCARD_TO_LOOPBACK.get(host, host)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._token = token
        self._actor = actor  # who the daemon's audit log names for this client's changes
        self._timeout_seconds = timeout_seconds
        # Loopback traffic must never be sent to an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def status(self) -> dict[str, Any]:
        return self._object(self._request("GET", "/status"))

    def overrides(self) -> list[dict[str, Any]]:
        overrides = self._object(self._request("GET", _OVERRIDES)).get("overrides")
        if not isinstance(overrides, list):
            raise self._not_the_api("its answer has no list of overrides")
        return overrides

    def set_override(self, server: str, weight: int, ttl: str | None) -> dict[str, Any]:
        body = {"server": server, "weight": weight, "ttl": ttl}
        return self._object(self._request("POST", _OVERRIDES, body))

    def clear_overrides(self, server: str | None) -> list[str]:
        path = _OVERRIDES if server is None else f"{_OVERRIDES}/{quote(server, safe='/')}"
        cleared = self._object(self._request("DELETE", path)).get("cleared")
        if not isinstance(cleared, list) or not all(isinstance(k, str) for k in cleared):
            raise self._not_the_api("its answer has no list of cleared overrides")
        return cleared

    def pause(self, reason: str) -> dict[str, Any]:
        return self._object(self._request("POST", "/api/v1/pause", {"reason": reason}))

    def resume(self) -> dict[str, Any]:
        return self._object(self._request("POST", "/api/v1/resume", {}))

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> object:
        request = urllib.request.Request(f"http://{self.address}{path}", method=method)
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        if self._token is not None:
            request.add_header("Authorization", f"Bearer {self._token}")
        if self._actor is not None:
            request.add_header(ACTOR_HEADER, self._actor)
        try:
            with self._opener.open(request, timeout=self._timeout_seconds) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiRefused(exc.code, _error_message(exc)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise self._not_the_api("it answered with something that is not JSON") from None

    def _object(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._not_the_api("it answered with JSON that is not an object")
        return value

    def _not_the_api(self, why: str) -> ApiUnreachable:
        return ApiUnreachable(f"{self.address} does not look like the VeloFlux API: {why}")

    def _unreachable(self, exc: Exception) -> ApiUnreachable:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            why = f"no answer within {self._timeout_seconds:g}s; the daemon may be stuck"
        elif isinstance(reason, ConnectionRefusedError):
            why = "connection refused; is `veloflux-agent run` running and listening there?"
        else:
            why = f"{reason}; is `veloflux-agent run` running and listening there?"
        return ApiUnreachable(f"cannot reach the VeloFlux API at {self.address}: {why}")


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's ``{"error": ...}`` reason, or the HTTP reason phrase if it sent none."""
    try:
        payload = json.loads(exc.read())
    except (ValueError, OSError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return str(exc.reason)
