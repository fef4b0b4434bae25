"""The dashboard at ``/`` in a real browser: Debian's Chromium, headless, driven by
Playwright, against the agent daemon of the native compose stack (HAProxy, Envoy,
Prometheus, the demo backends and ``veloflux-agent run`` as processes, from the compose
stack's own files; ``integration/compose_native.py``).

The page must show every pool and server the agent plans, draw the recent ticks, show a
slowed backend's weight falling within a few ticks of the proxy's, pause and resume the
agent with the token and be refused without it, be read-only when the agent has no
token file, and never send a request anywhere but the agent.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from integration.browser import headless_chromium
from integration.compose_native import NativeStack
from tests.integration.daemon_helpers import (
    AgentFiles,
    agent_config,
    running_daemon,
    wait_until,
    write_config,
)
from tests.integration.helpers import weights
from veloflux.daemon.controls import OperatorControls
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOKEN = "dashboard-test-token-5b1e"
VIEWPORTS = {"wide": (1280, 900), "narrow": (390, 844)}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeStack]:
    workdir = tmp_path_factory.mktemp("dashboard")
    token = workdir / "api-token"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    token.chmod(0o600)
    env = {"VELOFLUX_API__TOKEN_FILE": str(token)}
    with NativeStack(workdir / "stack", agent_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def load(stack: NativeStack) -> None:
    """Traffic through both proxies for the module's tests (bounded in count and time)."""
    stack.load_both(150.0, 150.0, 22500)


class Page:
    """One open dashboard, with every request the browser made and every console error."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page, self.origin = page, origin
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console {message.type}: {message.text}")
                if message.type == "error"
                else None
            ),
        )

    def polls(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.polls || 0)"))

    def wait_polls(self, more: int, timeout: float = 30) -> None:
        target = self.polls() + more
        wait_until(lambda: self.polls() >= target, f"{more} more polls of the page", timeout)

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).first.inner_text())

    def result_after(self, click: str) -> str:
        """Click ``click`` and return the control's outcome once it has one (not the
        "sending" line shown while the request is in flight)."""
        self.page.evaluate("document.getElementById('control-result').textContent = ''")
        self.page.click(click)

        def outcome() -> str:
            result = self.page.locator("#control-result")
            pending = "pending" in (result.get_attribute("class") or "")
            return "" if pending else str(result.inner_text()).strip()

        return wait_until(outcome, f"the outcome of {click}", 10)

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.origin + "/")]


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium


def open_page(browser: Any, url: str, viewport: tuple[int, int]) -> Page:
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    page = Page(context.new_page(), url)
    page.page.goto(url + "/")
    page.wait_polls(2)
    return page


def planned_servers(stack: NativeStack) -> dict[str, list[str]]:
    plan = get_json(stack.agent_url + "/status")["plan"]
    return {pool["backend"]: [s["server"] for s in pool["servers"]] for pool in plan["pools"]}


def line_points(d: str) -> list[tuple[float, float]]:
    """The points of an SVG path's ``d`` (M/L commands, absolute)."""
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)]
    return list(zip(numbers[::2], numbers[1::2], strict=False))


def test_the_page_shows_every_pool_and_server_and_follows_a_slowed_backend(
    stack: NativeStack, load: None, browser: Any, tmp_path: Path
) -> None:
    page = open_page(browser, stack.agent_url, VIEWPORTS["wide"])
    servers = wait_until(lambda: planned_servers(stack), "a plan", 30)
    assert set(servers) == {"app", "app-envoy"}
    for pool, names in servers.items():
        card = page.page.locator(f'section.pool[data-pool="{pool}"]')
        assert card.count() == 1, pool
        assert card.locator(".mode-badge").inner_text().strip()
        for name in names:
            assert card.locator(f'tr.server-row[data-server="{name}"]').count() == 1, name
    page.wait_polls(2)
    first_line = page.page.locator('section.pool[data-pool="app"] path.weight-line').first
    d = first_line.get_attribute("d") or ""
    assert len(line_points(d)) >= 3, d  # the recent ticks are drawn
    for chart in ("rung-chart", "latency-chart", "error-chart"):
        assert page.page.locator(f'section.pool[data-pool="app"] svg.{chart}').count() == 1

    # s3 slowed: once HAProxy has its lowered weight, the page shows it within a few ticks.
    slow = json.dumps({"service": {"mean_ms": 80}}).encode()
    request = urllib.request.Request(f"{stack.backend_url(8083)}/-/config", slow, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
    socket = f"unix://{stack.socket}"
    lowered = wait_until(
        lambda: (w := weights(socket, ["app/s3"])["app/s3"]) <= 60 and w, "s3 cut", 90
    )
    interval = float(get_json(stack.agent_url + "/status")["interval_seconds"])
    cell = 'section.pool[data-pool="app"] tr.server-row[data-server="s3"] td.weight'
    shown = wait_until(
        lambda: (text := page.text(cell).strip()).isdigit() and int(text) <= 60 and int(text),
        f"the page showing s3 at or below 60 (HAProxy: {lowered})",
        timeout=3 * interval + 10,
    )
    assert shown <= 60
    s3 = page.page.locator('section.pool[data-pool="app"] path.weight-line[data-server="s3"]')
    points = line_points(s3.get_attribute("d") or "")
    assert points[-1][1] > min(y for _, y in points), "the chart's s3 line did not fall"
    page.page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    assert page.errors == []
    assert page.foreign_requests() == []
    assert {"/status", "/api/v1/history", "/static/dashboard.js"} <= {
        url.removeprefix(stack.agent_url).partition("?")[0] for url in page.requests
    }


def test_pause_and_resume_through_the_page_need_the_token(
    stack: NativeStack, browser: Any, tmp_path: Path
) -> None:
    page = open_page(browser, stack.agent_url, VIEWPORTS["narrow"])
    assert not page.page.locator("#readonly-note").is_visible()
    page.page.fill("#pause-reason", "browser test")

    refused = page.result_after("#pause")  # no token typed
    assert "401" in refused, refused
    page.page.fill("#token", "not-the-token")
    assert "401" in page.result_after("#pause")
    assert get_json(stack.agent_url + "/status")["paused"] is False

    page.page.fill("#token", TOKEN)
    page.result_after("#pause")
    status = wait_until(lambda: get_json(stack.agent_url + "/status")["paused"], "paused", 10)
    assert status is True
    assert get_json(stack.agent_url + "/status")["pause_reason"] == "browser test"
    page.wait_polls(1)
    assert "paused" in page.text("#state-badge").lower()
    audit = get_json(stack.agent_url + "/api/v1/audit?limit=5")["entries"]
    assert (audit[0]["action"], audit[0]["actor"]) == ("pause", "dashboard")
    page.page.screenshot(path=str(tmp_path / "dashboard-narrow-paused.png"), full_page=True)

    page.result_after("#resume")
    wait_until(lambda: not get_json(stack.agent_url + "/status")["paused"], "resumed", 10)
    page.wait_polls(1)
    assert "running" in page.text("#state-badge").lower()
    # Narrow: the page fits the screen's width (tables scroll inside their boxes).
    width = page.page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORTS["narrow"][0] + 1, width
    # Chromium logs each refused request (the two 401s above) as a console error.
    refusals = [e for e in page.errors if "status of 401 (Unauthorized)" in e]
    assert len(refusals) == 2
    assert [e for e in page.errors if e not in refusals] == []
    assert page.foreign_requests() == []


def test_without_a_token_file_the_page_is_read_only(
    stack: NativeStack, browser: Any, tmp_path: Path
) -> None:
    """A second daemon on the same HAProxy, with no token file (and paused, so that it
    never writes beside the stack's agent)."""
    files = AgentFiles(tmp_path / "readonly")
    files.root.mkdir(parents=True)
    OperatorControls(files.state, lambda: datetime.now(UTC), Events()).pause("read-only test")
    data = agent_config(f"unix://{stack.socket}", files, interval="1s", token=False)
    data["haproxy"]["backends"] = ["app"]
    with running_daemon(write_config(files, data)) as daemon:
        address = daemon.api_address
        assert address is not None
        page = open_page(browser, f"http://{address[0]}:{address[1]}", VIEWPORTS["wide"])
        assert page.page.locator("#readonly-note").is_visible()
        for control in ("#pause", "#resume", "#token"):
            locator = page.page.locator(control)
            assert not (locator.is_visible() and locator.is_enabled()), control
        assert page.page.locator('section.pool[data-pool="app"]').count() == 1
        assert page.errors == []
        assert page.foreign_requests() == []
