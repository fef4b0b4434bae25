"""What the HTTP API accepts: the token file, and each request field, checked and named.

Everything from the network is untrusted, so each field is checked on its own and a
refusal names the field (``weight: 300 is outside 0..256``): an operator's script
gets an answer it can act on. Kept apart from the server so the rules read in one
place.
"""

from __future__ import annotations

import hashlib
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
