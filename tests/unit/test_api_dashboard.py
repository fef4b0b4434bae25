"""The dashboard's routes on the API: the page and its files with a strict
Content-Security-Policy, the history and audit JSON with their query checked, and
whether the page may offer its controls. The page itself runs in a real browser in
``tests/integration/test_dashboard_browser.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.unit.test_api import TOKEN, Harness, error_of
from veloflux.daemon.api.dashboard import CONTENT_SECURITY_POLICY


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness(TOKEN)
    yield harness
    harness.server.stop()


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [
        ("/", "text/html", b'src="/static/dashboard.js"'),
        ("/static/dashboard.js", "text/javascript", b"/api/v1/history"),
        ("/static/dashboard.css", "text/css", b"{"),
    ],
)
def test_the_page_and_its_files_are_served_with_a_strict_policy(
    api: Harness, path: str, content_type: str, needle: bytes
) -> None:
    """Kills: an asset missing from the package, served as the wrong type (a browser
    with nosniff refuses a script served as text/plain), or served without the policy
    that keeps the page from loading or sending anything elsewhere."""
    status, response, body = api.raw("GET", path, token=None)
    assert status == 200
    assert response.getheader("Content-Type", "").startswith(content_type)
    assert response.getheader("Content-Security-Policy") == CONTENT_SECURITY_POLICY
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("X-Frame-Options") == "DENY"
    assert needle in body


def test_the_policy_allows_this_origin_only() -> None:
    """Kills: a policy loosened to let the page reach another host or run inline code."""
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("asset", ["/static/dashboard.js", "/static/dashboard.css"])
def test_the_assets_name_no_other_host(api: Harness, asset: str) -> None:
    """Kills: a CDN script, font or stylesheet slipped into the page's own files."""
    body = api.raw("GET", asset, token=None)[2].decode()
    body = body.replace('"http://www.w3.org/2000/svg"', "")  # SVG's namespace, not a request
    assert "http://" not in body
    assert "https://" not in body
    assert "//cdn" not in body


def test_history_passes_since_and_pools_through(api: Harness) -> None:
    """Kills: the query string dropped on the way to the timeline (every poll would
    get the whole hour) or the pools filter lost."""
    status, response, body = api.raw("GET", "/api/v1/history?since=17&pool=web&pool=api")
    assert (status, json.loads(body)) == (200, {"ticks": []})
    assert response.getheader("Content-Type") == "application/json"
    assert api.status.history_asked == [(17, ["web", "api"])]
    assert api.raw("GET", "/api/v1/history")[0] == 200
    assert api.status.history_asked[-1] == (0, [])


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("since=-1", "since: one integer"),
        ("since=abc", "since: one integer"),
        ("since=1&since=2", "since: one integer"),
        ("since=99999999999999999999", "since: one integer"),
        ("from=3", "unknown parameter(s) 'from'"),
        ("since", "malformed"),
    ],
)
def test_a_bad_history_query_is_400_naming_the_parameter(
    api: Harness, query: str, problem: str
) -> None:
    """Kills: a garbage query answered with a default (a script would read the wrong
    window without knowing) or with a 500."""
    status, _, body = api.raw("GET", f"/api/v1/history?{query}")
    assert status == 400
    assert problem in error_of(body)
    assert api.status.history_asked == []


def test_too_many_pools_in_one_request_are_refused(api: Harness) -> None:
    query = "&".join(f"pool=p{n}" for n in range(101))
    assert api.raw("GET", f"/api/v1/history?{query}")[0] == 400


def test_audit_returns_the_newest_entries_up_to_the_limit(api: Harness) -> None:
    """Kills: the limit ignored, or unbounded (a request could read the whole log)."""
    status, _, body = api.raw("GET", "/api/v1/audit?limit=3")
    assert status == 200
    assert [e["n"] for e in json.loads(body)["entries"]] == [0, 1, 2]
    assert len(json.loads(api.raw("GET", "/api/v1/audit")[2])["entries"]) == 50
    for bad in ("limit=0", "limit=201", "limit=x"):
        assert api.raw("GET", f"/api/v1/audit?{bad}")[0] == 400


def test_status_says_whether_the_controls_are_on() -> None:
    """Kills: the page offering controls that can only fail (no token file), or hiding
    them when they work."""
    for token, enabled in ((TOKEN, True), (None, False)):
        harness = Harness(token)
        try:
            status = json.loads(harness.raw("GET", "/status", token=None)[2])
            assert status["controls_enabled"] is enabled
        finally:
            harness.server.stop()


@pytest.mark.parametrize("path", ["/api/v1/history", "/api/v1/audit", "/static/dashboard.js"])
def test_the_dashboards_routes_are_read_only(api: Harness, path: str) -> None:
    assert api.raw("POST", path, b"{}")[0] == 405
