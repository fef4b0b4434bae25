"""Forecasts and recommendations as a config asks for them: each pool's load from the
journal, each server's capacity from the capacity rung replayed over the journal's
last intervals, and the server count the forecast peak needs.

The forecasting itself is ``forecast/``; this module opens what the config names and
hands plain values over, for the ``forecast`` command and the daemon alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from veloflux.agent.build import open_journal
from veloflux.config.schema import Config
from veloflux.errors import VelofluxError
from veloflux.forecast.outlook import PoolForecast, outlook
from veloflux.forecast.recommend import Recommendation, recommend
from veloflux.forecast.select import TooLittleHistory, fit
from veloflux.forecast.series import PoolSeries, from_rates
from veloflux.history.journal import Journal
from veloflux.util.durations import format_duration
from veloflux.util.events import Events


class NoLoadHistory(VelofluxError):
    """No journal to forecast from."""


@dataclass(frozen=True)
class PoolOutlook:
    """One pool's forecast and recommendation, or why there is none."""

    pool: str
    forecast: PoolForecast | None
    recommendation: Recommendation | None
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"problem": self.problem or None}
        if self.forecast is not None:
            f = self.forecast
            out |= {
                "made_at": f.made_at.isoformat(),
                "season": f.season,
                "horizons": {format_duration(h.horizon_seconds): h.to_json() for h in f.horizons},
            }
        if self.recommendation is not None:
            out |= self.recommendation.to_json()
        return out


def outlook_json(outlooks: Sequence[PoolOutlook], made_at: datetime) -> dict[str, Any]:
    """The shape ``forecast --output json`` prints and the API serves: pools by name,
    so that a reader (KEDA's metrics-api scaler) finds ``pools.NAME.recommended_servers``."""
    return {"generated_at": made_at.isoformat(), "pools": {o.pool: o.to_json() for o in outlooks}}


def forecast_pools(
    config: Config,
    events: Events,
    pools: Sequence[str] = (),
    horizons: Sequence[float] = (),
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[PoolOutlook]:
    """Every pool's outlook (those named in ``pools``, if any) from the journal, at the
    configured horizons (or ``horizons``, seconds)."""
    section = config.forecast
    since = now() - timedelta(seconds=section.history_seconds)
    journal = open_journal(config, events, create=False)
    if journal is None and section.source != "prometheus":
        raise NoLoadHistory(f"ai.history_path: no journal at {config.ai.history_path} yet")
    series: list[PoolSeries] = []
    if section.source == "prometheus":
        series = _from_prometheus(config, since, now())
    capacities: dict[str, dict[str, float]] = {}
    if journal is not None:
        with journal:
            if section.source != "prometheus":
                series = from_rates(journal.pool_requests(since), section.step_seconds)
            capacities = _capacities(config, journal, now())
    wanted = set(pools)
    steps = (
        tuple(sorted({max(1, round(h / section.step_seconds)) for h in horizons}))
        or section.horizon_steps()
    )
    out = []
    for s in series:
        if wanted and s.pool not in wanted:
            continue
        out.append(_one(s, steps, capacities.get(s.pool, {}), section.target_utilization))
    for missing in sorted(wanted - {s.pool for s in series}):
        out.append(PoolOutlook(missing, None, None, "no request history in the journal"))
    return out


def _from_prometheus(config: Config, since: datetime, until: datetime) -> list[PoolSeries]:
    """Each managed HAProxy backend's request rate from Prometheus (``forecast.source``)."""
    from veloflux.forecast.series import from_samples
    from veloflux.prometheus.api import PrometheusAPI
    from veloflux.prometheus.load import pool_rates

    prom, haproxy = config.prometheus, config.haproxy
    if prom is None or haproxy is None:
        raise NoLoadHistory(
            "forecast.source: prometheus needs a prometheus section and HAProxy backends"
        )
    step = config.forecast.step_seconds
    api = PrometheusAPI(prom.url, max(prom.timeout_seconds, 30.0), prom.headers)
    try:
        rates = pool_rates(api, haproxy.backends, since, until, step)
    finally:
        api.close()
    return [from_samples(t, v, pool, step) for pool, (t, v) in sorted(rates.items())]


def _one(
    series: PoolSeries,
    steps: tuple[int, ...],
    capacities: Mapping[str, float],
    target: float,
) -> PoolOutlook:
    try:
        model = fit(series, steps)
    except TooLittleHistory as exc:
        return PoolOutlook(series.pool, None, None, str(exc))
    forecast = outlook(series, model)
    rec = recommend(series.pool, forecast.peak_upper, forecast.peak_at, capacities, target)
    return PoolOutlook(series.pool, forecast, rec)


def _capacities(config: Config, journal: Journal, now: datetime) -> dict[str, dict[str, float]]:
    """Each pool's servers in rotation (UP, weight > 0, at its last observation) with
    the capacity rung's estimate after the journal's last intervals (NaN: none).

    Each pool is replayed through a rung of its own: a rung reads one proxy's
    observations in turn, and with HAProxy and Envoy in one config the journal holds
    each proxy's observations apart, interleaved."""
    from veloflux.decide.capacity_rung import CapacityRung, RungSettings
    from veloflux.history.replay import replay

    settings = RungSettings.from_config(config)
    span = (CapacityRung(settings).memory_intervals + 2) * config.interval_seconds
    samples = journal.read(since=now - timedelta(seconds=span))
    out: dict[str, dict[str, float]] = {}
    for pool, rows in samples.groupby("pool", sort=True):
        rung = CapacityRung(settings)
        view: Any = None
        last = None
        for observation in replay(rows):
            view = rung.update(observation).get(str(pool), view)
            last = observation
        for row in last.rows if last is not None else ():
            if row.state != "UP" or not row.weight:
                continue
            estimate = view.servers.get(row.server) if view is not None else None
            capacity = estimate.capacity if estimate is not None else None
            out.setdefault(row.pool, {})[row.server] = float(capacity or "nan")
    return out
