"""What the HTTP API accepts: the token file, and each request field, checked and named.

Everything from the network is untrusted, so each field is checked on its own and a
refusal names the field (``weight: 300 is outside 0..256``): an operator's script
gets an answer it can act on. Kept apart from the server so the rules read in one
place.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veloflux.config.checks import read_token_file
from veloflux.errors import ConfigError, ConfigProblem, UnsafeName
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT
from veloflux.util.durations import parse_duration
from veloflux.util.names import parse_server_key, server_key

MAX_WEIGHT = HAPROXY_MAX_WEIGHT
DEFAULT_PAUSE_REASON = "paused through the API"
_MAX_REASON_CHARS = 500
# A pin's longest expiry: far beyond any real one, and inside what a date can hold (a ttl
# of 10**12 days overflowed it when the pin was made: a 500). openapi.json's pattern for
# ttl (at most five digits before the point) stays below it in every unit.
MAX_TTL_SECONDS = 100_000 * 86400.0
# Who the client says it is, for the audit log: ``veloflux-agent`` sends ``cli:<user>``.
ACTOR_HEADER = "X-VeloFlux-Actor"
_MAX_ACTOR_CHARS = 64


def read_token(path: Path | None) -> str | None:
    """The bearer token from ``path``; None (write endpoints off) when no file is set."""
    if path is None:
        return None
    token, problem = read_token_file(path)
    if problem:
        raise ConfigError([ConfigProblem("api.token_file", problem)])
    return token


def token_fingerprint(token: str) -> str:
    """Which token let a request in, for the audit log, without writing the token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass(eq=False)
class Refused(Exception):
    """An answer with an error status: the message for the client, a label to count by."""

    status: int
    message: str
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def bad(message: str) -> Refused:
    return Refused(400, message, "bad_request")


# --- field checks: each names the field it refuses -------------------------------------


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(repr(key)[:60] for key in unknown[:5])
        raise bad(f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")


def server_field(value: object) -> str:
    if not isinstance(value, str):
        raise bad("server: required, a string of the form BACKEND/SERVER")
    try:
        return server_key(*parse_server_key(value))
    except UnsafeName as exc:
        raise bad(f"server: {exc}") from None


def weight_field(value: object) -> int:
    # JSON has one number type: 5.0 is the integer 5 (as JSON Schema and openapi.json read it).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"weight: required, an integer in 0..{MAX_WEIGHT}")
    if not 0 <= value <= MAX_WEIGHT:
        raise bad(f"weight: {value} is outside 0..{MAX_WEIGHT}")
    return value


def ttl_field(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad("ttl: must be a duration such as 30m or 1h, or null for no expiry")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise bad(f"ttl: {exc}") from None
    if seconds <= 0:
        raise bad("ttl: must be longer than zero; use null for no expiry")
    if seconds > MAX_TTL_SECONDS:
        raise bad("ttl: at most 100000d; use null for no expiry")
    return seconds


def reason_field(value: object) -> str:
    if value is None:
        return DEFAULT_PAUSE_REASON
    if not isinstance(value, str) or not value.isprintable() or len(value) > _MAX_REASON_CHARS:
        raise bad(f"reason: must be one line of printable text, at most {_MAX_REASON_CHARS} chars")
    return value.strip() or DEFAULT_PAUSE_REASON


def actor_field(value: str | None) -> str:
    """The client's name for itself (``ACTOR_HEADER``), or ``api`` when it gives none."""
    if value is None or not value.strip():
        return "api"
    value = value.strip()
    if not (value.isascii() and value.isprintable()) or len(value) > _MAX_ACTOR_CHARS:
        raise bad(f"{ACTOR_HEADER}: must be printable ASCII, at most {_MAX_ACTOR_CHARS} chars")
    return value


def loopback_host(host: str | None) -> bool:
    """Whether a request's ``Host`` header names this machine's loopback (``localhost``,
    127.0.0.0/8 or ``[::1]``, any port), or is absent.

    An API that listens on loopback answers only such requests: a web page in a browser
    on the host can point its own name at 127.0.0.1 (DNS rebinding) and read the agent
    as its own origin, but the browser then sends the page's name as the Host. Clients
    without a Host header (HTTP/1.0) are not browsers."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [v6]:port
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
