"""``veloflux-agent forecast`` on a journal of four days: the JSON an autoscaler reads,
the table an operator reads, and a pool with too little history named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from integration.synthetic import SyntheticPool
from tests.integration.helpers import recent_journal, run_cli

pytestmark = pytest.mark.integration

# Four days of minutes, three servers, a daily curve: enough for a daily season.
SPEC = SyntheticPool(servers=3, intervals=4 * 1440, interval_seconds=60.0, seed=8)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forecast")
    recent_journal(root / "history.sqlite", SPEC)
    path = root / "veloflux.yaml"
    path.write_text(
        "interval: 60s\nhaproxy:\n  socket: unix:///nonexistent/admin.sock\n"
        f"ai:\n  history_path: {root / 'history.sqlite'}\n  model_dir: {root / 'models'}\n"
        "forecast:\n  horizons: [15m, 1h]\n"
    )
    return path


def test_the_json_has_each_pools_forecast_and_recommendation(config: Path) -> None:
    done = run_cli("forecast", "-c", config, "--output", "json", timeout=120)
    assert done.code == 0, done.stderr
    app = json.loads(done.stdout)["pools"]["app"]
    assert app["problem"] is None
    assert app["season"] == "day"
    assert set(app["horizons"]) == {"15m", "1h"}
    for horizon in app["horizons"].values():
        assert horizon["method"] in ("naive", "smoother", "boosted")
        assert horizon["lower_80"] < horizon["requests_per_second"] < horizon["upper_80"]
        assert horizon["validation"]["naive"]["points"] > 1000
    # The synthetic pool has no utilization signal: no count is made up.
    assert app["recommended_servers"] is None
    assert app["in_rotation"] == 3
    assert "no server has a capacity estimate" in app["reason"]


def test_the_table_and_a_named_pool_without_history(config: Path) -> None:
    done = run_cli("forecast", "-c", config, "--pool", "app", "--pool", "api", timeout=120)
    assert done.code == 0, done.stderr
    assert "app +15m" in done.stdout
    assert "req/s [" in done.stdout
    assert "api: no forecast: no request history in the journal" in done.stdout


def test_a_horizon_past_a_day_is_refused(config: Path) -> None:
    done = run_cli("forecast", "-c", config, "--horizon", "2d")
    assert done.code == 2
    assert "--horizon" in done.stderr
