"""The dashboard at ``/``: the page, its two static files, and the JSON it draws.

The page is plain HTML, CSS and JavaScript drawing SVG, shipped inside the wheel
(``static/``) and served from memory: no build step, no third-party code to audit or
license, nothing fetched from anywhere but this agent. A strict Content-Security-Policy
says so to the browser too: scripts, styles and requests from this origin only, no
inline code, no framing.

What it reads is public to scripts as well: ``/status``, ``/api/v1/history`` (the
recent ticks, ``veloflux.daemon.timeline``), ``/api/v1/audit`` (the audit log's
newest entries) and, once a minute, ``/api/v1/forecast`` (``veloflux.daemon.forecasts``,
which changes once per ``forecast.refresh``). The controls it offers are the API's own
write endpoints, behind the same bearer token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from html import escape
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

from veloflux import __version__
from veloflux.daemon.api.fields import bad
from veloflux.daemon.api.messages import JSON, Reply, Request, json_reply

HISTORY_PATH = "/api/v1/history"
AUDIT_PATH = "/api/v1/audit"
MAX_AUDIT_ENTRIES = 200
_MAX_POOLS = 100
_MAX_SEQ = 2**53  # JSON numbers stay exact below it

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class HistoryPort(Protocol):
    """What the dashboard's JSON reads from the daemon."""

    def history_json(self, since: int, pools: Sequence[str]) -> bytes: ...
    def audit_entries(self, limit: int) -> list[dict[str, Any]]: ...


Endpoint = Callable[[Request], Reply]


def _read_asset(name: str) -> bytes:
    return resources.files("veloflux.daemon.api").joinpath("static", name).read_bytes()


class Dashboard:
    """The page's routes; the assets are read once, when the API starts."""

    def __init__(self, history: HistoryPort) -> None:
        self._history = history
        self._assets = {
            path: Reply(200, _read_asset(name), content_type, _PAGE_HEADERS)
            for path, (name, content_type) in _ASSETS.items()
        }
        page = self._assets["/"]  # the version in the page, so it reads without scripts
        version = escape(__version__).encode()
        self._assets["/"] = replace(page, body=page.body.replace(b"__VERSION__", version))

    def routes(self) -> dict[str, dict[str, Endpoint]]:
        routes = {path: {"GET": _serve(reply)} for path, reply in self._assets.items()}
        routes[HISTORY_PATH] = {"GET": self._history_reply}
        routes[AUDIT_PATH] = {"GET": self._audit_reply}
        return routes

    def _history_reply(self, request: Request) -> Reply:
        query = _query(request, {"since", "pool"})
        since = _integer(query, "since", 0, _MAX_SEQ, default=0)
        pools = query.get("pool", [])
        if len(pools) > _MAX_POOLS:
            raise bad(f"pool: at most {_MAX_POOLS} pools per request")
        return Reply(200, self._history.history_json(since, pools), JSON)

    def _audit_reply(self, request: Request) -> Reply:
        query = _query(request, {"limit"})
        limit = _integer(query, "limit", 1, MAX_AUDIT_ENTRIES, default=50)
        return json_reply(200, {"entries": self._history.audit_entries(limit)})


def _serve(reply: Reply) -> Endpoint:
    return lambda _: reply


def _query(request: Request, allowed: set[str]) -> dict[str, list[str]]:
    try:
        query = parse_qs(
            request.query,
            keep_blank_values=True,  # "?limit=" is not the default limit but no limit at all
            strict_parsing=bool(request.query),
            max_num_fields=200,
        )
    except ValueError:
        raise bad("the query string is malformed") from None
    unknown = sorted(set(query) - allowed)
    if unknown:
        names = ", ".join(repr(key)[:60] for key in unknown[:5])
        raise bad(f"unknown parameter(s) {names}; allowed: {', '.join(sorted(allowed))}")
    return query


def _integer(query: dict[str, list[str]], name: str, low: int, high: int, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    text = values[-1].strip()
    if len(values) > 1 or not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise bad(f"{name}: one integer in {low}..{high}")
    return int(text)
