"""The daemon's forecasts: refreshed from its journal, served at ``/api/v1/forecast``
in the shape an autoscaler reads, and exported as metrics; a refresh that cannot run
says why and keeps the last good figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.haproxy_proc import HAProxyProcess
from integration.synthetic import SyntheticPool
from tests.integration.daemon_helpers import (
    AgentFiles,
    agent_config,
    api_address,
    request,
    running_daemon,
    samples,
    wait_turns,
    write_config,
)
from tests.integration.helpers import recent_journal

pytestmark = pytest.mark.integration

SPEC = SyntheticPool(servers=4, intervals=4 * 1440, interval_seconds=60.0, seed=12)


def test_the_daemon_serves_and_exports_each_pools_forecast(
    haproxy: HAProxyProcess, tmp_path: Path
) -> None:
    files = AgentFiles(tmp_path / "agent")
    data = agent_config(haproxy.admin_socket, files, haproxy={"backends": ["app"]})
    data["forecast"] = {"horizons": ["15m", "1h"], "refresh": "1h"}
    config = write_config(files, data)

    with running_daemon(config) as daemon:
        address = api_address(daemon)
        before = request(address, "GET", "/api/v1/forecast").json()
        assert before["pools"] == {}
        wait_turns(lambda: samples(daemon), 2, "two ticks into the journal")
        daemon.refresh_forecasts()  # a journal of seconds: said, nothing made up
        short = request(address, "GET", "/api/v1/forecast").json()
        assert short["pools"]["app"]["problem"].startswith("pool app: 0.0 days of history")
        assert "horizons" not in short["pools"]["app"]
        assert samples(daemon).get("veloflux_pool_recommended_servers", pool="app") is None

        recent_journal(files.history, SPEC)
        daemon.refresh_forecasts()
        body = request(address, "GET", "/api/v1/forecast").json()
        assert body["error"] is None
        app = body["pools"]["app"]
        assert set(app["horizons"]) == {"15m", "1h"}
        assert app["horizons"]["1h"]["requests_per_second"] > 0
        assert "reason" in app

        metrics = samples(daemon)
        point = metrics.get(
            "veloflux_pool_forecast_requests_per_second", pool="app", horizon="1h", quantile="0.5"
        )
        upper = metrics.get(
            "veloflux_pool_forecast_requests_per_second", pool="app", horizon="1h", quantile="0.9"
        )
        assert point == pytest.approx(app["horizons"]["1h"]["requests_per_second"], rel=1e-3)
        assert upper is not None
        assert point is not None
        assert upper > point
