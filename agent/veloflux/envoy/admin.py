"""A small client for Envoy's admin API: GET a path, get JSON back, or a clear error.

The admin API is plain HTTP on (normally) loopback. Every call has a timeout, and every
way it can fail (refused, slow, an HTTP error, a body that is not JSON) becomes one
``EnvoyAdminError`` whose message names the address and what went wrong, so the source
and sink can count it and carry on. A body that is not JSON is the subclass
``EnvoyNotJson``: Envoy answered, but with garbage, which callers count as malformed
input rather than as an unreachable proxy.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from veloflux.errors import VelofluxError

_MAX_BODY_BYTES = 256 * 1024 * 1024  # /clusters lists every endpoint with its stats


class EnvoyAdminError(VelofluxError):
    """The admin API could not be read: unreachable, slow, an error status, or not JSON."""


class EnvoyNotJson(EnvoyAdminError):
    """The admin API answered, but the body is not JSON (not Envoy, or a broken proxy)."""


class EnvoyAdmin:
    """GETs against one Envoy's admin address (``http://HOST:PORT``)."""

    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        self.address = base_url.rstrip("/")
        self._timeout = timeout_seconds
        # Never route loopback admin calls through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get_json(self, path: str) -> Any:
        """``GET path`` and parse the body as JSON."""
        body = self.get_text(path)
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise EnvoyNotJson(
                f"Envoy admin at {self.address}{path}: not JSON ({exc.msg} at {exc.pos})"
            ) from None
        except (ValueError, RecursionError) as exc:
            # Valid JSON that Python will not decode: an integer of thousands of digits
            # (ValueError) or arrays nested deeper than the interpreter's stack.
            raise EnvoyNotJson(
                f"Envoy admin at {self.address}{path}: not JSON this agent can read "
                f"({str(exc)[:100]})"
            ) from None

    def get_text(self, path: str) -> str:
        url = f"{self.address}{path}"
        try:
            with self._opener.open(url, timeout=self._timeout) as reply:
                data: bytes = reply.read(_MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise EnvoyAdminError(f"Envoy admin at {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer within {self._timeout:g}s"
            raise EnvoyAdminError(f"Envoy admin at {self.address} unreachable: {reason}") from None
        if len(data) > _MAX_BODY_BYTES:
            raise EnvoyAdminError(
                f"Envoy admin at {url}: answer larger than {_MAX_BODY_BYTES} bytes"
            )
        return data.decode("utf-8", errors="replace")
