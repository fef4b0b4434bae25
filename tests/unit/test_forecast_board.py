"""The daemon's forecast board: what ``/api/v1/forecast`` and the metrics say when
forecasts are on, and that turning them off (at start or by a reload) drops the last
ones instead of serving figures no refresh will replace."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from veloflux.agent.forecasting import PoolOutlook
from veloflux.config.load import validate_config
from veloflux.daemon import forecasts
from veloflux.daemon.forecasts import OFF, ForecastBoard
from veloflux.forecast.outlook import HorizonForecast, PoolForecast
from veloflux.util.events import Events

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def outlook() -> PoolOutlook:
    hour = HorizonForecast(3600.0, NOW, "smoother", 120.0, 100.0, 150.0, {})
    forecast = PoolForecast("app", NOW, "day", (hour,), 160.0, NOW)
    return PoolOutlook("app", forecast, None)


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch) -> ForecastBoard:
    monkeypatch.setattr(forecasts, "forecast_pools", lambda *_a, **_k: [outlook()])
    return ForecastBoard(lambda: NOW)


def refresh(board: ForecastBoard) -> None:
    config = validate_config({"haproxy": {"socket": "unix:///nonexistent.sock"}})
    board.refresh(config, Events())


def forecast_samples(board: ForecastBoard) -> list[Any]:
    return [s for family in board.collect() for s in family.samples]


def test_a_refresh_is_served_and_exported(board: ForecastBoard) -> None:
    refresh(board)
    body = board.to_json()
    assert body["error"] is None
    assert body["pools"]["app"]["horizons"]["1h"]["requests_per_second"] == 120.0
    assert len(forecast_samples(board)) == 3  # the quantiles 0.1, 0.5 and 0.9


def test_turned_off_the_board_says_so_and_drops_the_last_forecasts(board: ForecastBoard) -> None:
    refresh(board)
    board.switch(False)
    assert board.to_json() == {
        "generated_at": None,
        "pools": {},
        "error": OFF,
        "refresh_duration_seconds": None,
    }
    assert forecast_samples(board) == []
    refresh(board)  # a refresh that was already running when forecasts went off
    assert board.to_json()["pools"] == {}
    board.switch(True)
    assert board.to_json()["error"] is None
    refresh(board)
    assert set(board.to_json()["pools"]) == {"app"}
