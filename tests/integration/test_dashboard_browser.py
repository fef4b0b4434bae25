"""The dashboard at ``/`` in a real browser: Debian's Chromium, headless, driven by
Playwright, against the agent daemon of the native compose stack (HAProxy, Envoy,
Prometheus, the demo backends and ``veloflux-agent run`` as processes, from the compose
stack's own files; ``integration/compose_native.py``).

The page must show every pool and server the agent plans, draw the recent ticks, show a
slowed backend's weight falling within a few ticks of the proxy's, pause and resume the
agent with the token and be refused without it, be read-only when the agent has no
token file, and never send a request anywhere but the agent.

Its forecast panel is checked against a daemon of its own (HAProxy only) whose journal
holds three days of a synthetic pool's load: the page must show the recommended count,
the horizons, their medians, intervals and methods, and the reasoning sentence that
``/api/v1/forecast`` serves; and say so when forecasts are off.
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
from integration.haproxy_proc import HAProxyProcess
from integration.synthetic import SyntheticPool
from tests.integration.daemon_helpers import (
    AgentFiles,
    agent_config,
    api_address,
    running_daemon,
    samples,
    wait_until,
    write_config,
)
from tests.integration.helpers import recent_samples, weights, write_journal
from veloflux.daemon.controls import OperatorControls
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOKEN = "dashboard-test-token-5b1e"
VIEWPORTS = {"wide": (1280, 900), "narrow": (390, 844)}
# Three days and three hours of a pool's load at one minute: past the three days a
# daily season needs, and no more (a day of journal takes seconds to write).
FORECAST_HISTORY = SyntheticPool(
    servers=4, intervals=3 * 1440 + 180, interval_seconds=60.0, seed=12, pool_rate=300.0
)


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
    data["forecast"] = {"enabled": False}
    with running_daemon(write_config(files, data)) as daemon:
        address = daemon.api_address
        assert address is not None
        page = open_page(browser, f"http://{address[0]}:{address[1]}", VIEWPORTS["wide"])
        assert page.page.locator("#readonly-note").is_visible()
        for control in ("#pause", "#resume", "#token"):
            locator = page.page.locator(control)
            assert not (locator.is_visible() and locator.is_enabled()), control
        assert page.page.locator('section.pool[data-pool="app"]').count() == 1
        forecast = page.page.locator('section.pool[data-pool="app"] .forecast')
        wait_until(lambda: forecast.get_attribute("data-state") == "unavailable", "the note")
        assert forecast.inner_text().strip() == (
            "no forecast: forecasts are off (forecast.enabled: false)"
        )
        assert forecast.locator("svg, table").count() == 0
        assert page.errors == []
        assert page.foreign_requests() == []


def forecast_journal(path: Path) -> None:
    """FORECAST_HISTORY as the fixture HAProxy's pool ``app`` (servers s1..s4) would have
    left it, each server with a session limit of 8: the capacity rung then estimates
    each one's capacity from the history (Little's law), so the pool can be sized."""
    raw = recent_samples(FORECAST_HISTORY)
    raw["server"] = raw["server"].map(lambda name: f"s{int(name[1:]) + 1}")
    raw["max_sessions"] = 8.0
    write_journal(path, raw)


def shown_as(text: str, value: float) -> bool:
    """Whether ``text`` is ``value`` rounded to as many decimals as it shows."""
    decimals = len(text.strip().partition(".")[2])
    return abs(float(text) - value) <= 0.5 / 10.0**decimals + 1e-9


def test_the_forecast_panel_shows_what_the_forecast_endpoint_serves(
    haproxy: HAProxyProcess, browser: Any, tmp_path: Path
) -> None:
    files = AgentFiles(tmp_path / "forecast")
    forecast_journal(files.history)
    # A tick a minute: the capacity estimates are replayed from the journal's last hour
    # (the history's), not from a few seconds of ticks of an idle HAProxy.
    data = agent_config(
        haproxy.admin_socket, files, interval="1m", token=False, haproxy={"backends": ["app"]}
    )
    data["forecast"] = {"horizons": ["15m", "1h", "1d"], "refresh": "1h"}
    with running_daemon(write_config(files, data)) as daemon:
        host, port = api_address(daemon)
        origin = f"http://{host}:{port}"
        wait_until(lambda: samples(daemon).turns >= 1, "the first tick")
        daemon.refresh_forecasts()
        page = open_page(browser, origin, VIEWPORTS["narrow"])
        reads = [url for url in page.requests if url.startswith(origin + "/api/v1/forecast")]
        assert len(reads) == 1, reads  # once at load; again only a minute later
        panel = page.page.locator('section.pool[data-pool="app"] .forecast')
        wait_until(lambda: panel.get_attribute("data-state") == "shown", "the forecast drawn")

        def drawn() -> Any:
            """The endpoint's answer if it is the refresh the page drew (the daemon's own
            first refresh may land in between: then the page reads it within a minute)."""
            answer = get_json(origin + "/api/v1/forecast")
            return (
                answer
                if answer["generated_at"] == panel.get_attribute("data-generated-at")
                else None
            )

        body = wait_until(drawn, "the page and the endpoint on the same refresh", 75)
        app = body["pools"]["app"]
        assert body["error"] is None
        assert isinstance(app["recommended_servers"], int), app["reason"]
        assert panel.locator(".recommended").inner_text() == str(app["recommended_servers"])
        assert panel.locator(".in-rotation").inner_text() == str(app["in_rotation"])
        assert panel.locator(".forecast-reason").inner_text() == app["reason"]
        assert "servers needed" in app["reason"]

        rows = panel.locator("tr[data-horizon]")
        assert [r.get_attribute("data-horizon") for r in rows.all()] == ["15m", "1h", "1d"]
        assert set(app["horizons"]) == {"15m", "1h", "1d"}
        medians = []
        for name in ("15m", "1h", "1d"):  # the API's keys are sorted: 15m, 1d, 1h
            horizon = app["horizons"][name]
            row = panel.locator(f'tr[data-horizon="{name}"]')
            median = row.locator("td.median")
            assert float(median.get_attribute("data-value") or "nan") == pytest.approx(
                horizon["requests_per_second"], abs=1e-9
            )
            text = median.inner_text()
            assert shown_as(text, horizon["requests_per_second"]), (name, text, horizon)
            lower, upper = row.locator("td.interval").inner_text().split("–")
            assert shown_as(lower, horizon["lower_80"]), (name, lower, horizon)
            assert shown_as(upper, horizon["upper_80"]), (name, upper, horizon)
            assert row.locator("td.method").inner_text() == horizon["method"]
            tooltip = panel.locator(f'g.forecast-horizon[data-horizon="{name}"] title')
            assert f"median {text} req/s" in (tooltip.text_content() or ""), name
            medians.append(horizon["requests_per_second"])
        # One dot per horizon, higher on the chart for a higher median.
        heights = [float(c.get_attribute("cy") or "nan") for c in panel.locator("circle").all()]
        assert len(heights) == 3
        for i in range(3):
            for j in range(i + 1, 3):
                assert (heights[i] - heights[j]) * (medians[i] - medians[j]) <= 0.5, heights
        assert panel.locator("path.forecast-band").count() == 1

        width = page.page.evaluate("document.documentElement.scrollWidth")
        assert width <= VIEWPORTS["narrow"][0] + 1, width
        page.page.screenshot(path=str(tmp_path / "dashboard-forecast.png"), full_page=True)
        assert page.errors == []
        assert page.foreign_requests() == []
