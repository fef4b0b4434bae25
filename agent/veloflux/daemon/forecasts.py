"""The daemon's forecasts: refreshed on ``forecast.refresh``, served at
``/api/v1/forecast`` and exported as metrics.

The board keeps the last good refresh and says how old it is; a refresh that fails
(no journal yet, Prometheus down) keeps the last good forecasts, counts the failure
and says why in the JSON, so an autoscaler reading it sees stale figures as stale
rather than none. The metrics are collected from the board at each scrape, so a pool
that leaves the config leaves the metrics with the next refresh. Forecasts turned off
(``forecast.enabled: false``, at start or by a reload) are dropped and the JSON says
they are off: nothing keeps serving figures that no refresh will replace.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from veloflux.agent.forecasting import PoolOutlook, forecast_pools, outlook_json
from veloflux.config.schema import Config
from veloflux.errors import VelofluxError
from veloflux.util.durations import format_duration
from veloflux.util.events import Events

_log = logging.getLogger("veloflux.forecast")
# The interval's quantiles as the metric labels them: the 80% interval and the point.
QUANTILES = (("0.1", "lower"), ("0.5", "point"), ("0.9", "upper"))
OFF = "forecasts are off (forecast.enabled: false)"


class ForecastBoard(Collector):
    """The latest forecasts of every pool, and the refresh that made them."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._outlooks: tuple[PoolOutlook, ...] = ()
        self._generated_at: datetime | None = None
        self._error = ""
        self._refresh_seconds: float | None = None
        self._enabled = True

    def switch(self, enabled: bool) -> None:
        """Forecasts on or off as the config says; off drops the last ones, so that an
        autoscaler reading the API or the metrics sees none rather than stale ones."""
        with self._lock:
            self._enabled = enabled
            if not enabled:
                self._outlooks, self._generated_at, self._error = (), None, ""
                self._refresh_seconds = None

    def refresh(self, config: Config, events: Events) -> None:
        """Forecast every pool now; a failure keeps the last good forecasts."""
        started = time.perf_counter()
        try:
            outlooks = tuple(forecast_pools(config, events, now=self._clock))
        except VelofluxError as exc:
            events.record("forecast_failed", str(exc), level=logging.WARNING)
            with self._lock:
                self._error = str(exc)
            return
        elapsed = time.perf_counter() - started
        with self._lock:
            if not self._enabled:  # turned off while this refresh ran
                return
            self._outlooks, self._generated_at, self._error = outlooks, self._clock(), ""
            self._refresh_seconds = elapsed
        sized = [o.recommendation.reason for o in outlooks if o.recommendation]
        _log.info(
            "forecasts refreshed: %d pool(s) in %.1fs%s",
            len(outlooks),
            elapsed,
            "; " + "; ".join(sized) if sized else "",
        )

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            outlooks, generated_at = self._outlooks, self._generated_at
            error, seconds = self._error if self._enabled else OFF, self._refresh_seconds
        body: dict[str, Any] = {"generated_at": None, "pools": {}}
        if generated_at is not None:
            body = outlook_json(outlooks, generated_at)
        body["error"] = error or None
        body["refresh_duration_seconds"] = None if seconds is None else round(seconds, 3)
        return body

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            outlooks = self._outlooks
        return self._families(outlooks)

    @staticmethod
    def _families(outlooks: Iterable[PoolOutlook]) -> list[GaugeMetricFamily]:
        forecast = GaugeMetricFamily(
            "veloflux_pool_forecast_requests_per_second",
            "Forecast request rate of a pool at a horizon: the point (quantile 0.5) and the "
            "80% interval (0.1, 0.9).",
            labels=["pool", "horizon", "quantile"],
        )
        recommended = GaugeMetricFamily(
            "veloflux_pool_recommended_servers",
            "Servers a pool needs for its forecast peak at forecast.target_utilization.",
            labels=["pool"],
        )
        for o in outlooks:
            if o.forecast is not None:
                for h in o.forecast.horizons:
                    horizon = format_duration(h.horizon_seconds)
                    for quantile, field in QUANTILES:
                        forecast.add_metric([o.pool, horizon, quantile], getattr(h, field))
            if o.recommendation is not None and o.recommendation.servers is not None:
                recommended.add_metric([o.pool], o.recommendation.servers)
        return [forecast, recommended]
