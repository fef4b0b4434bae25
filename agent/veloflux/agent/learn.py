"""Training as a config asks for it: where the history comes from (the journal, or
Prometheus's record of HAProxy's exporter), and the training settings read from the
config in one place.

The learning itself (features, boosters, the promotion gate) is ``model/pipeline.py``;
this module only opens what the config names and hands it over. ``train`` (the CLI),
the daemon's training job and the simulator all come through here, so a setting
means the same thing wherever a model is trained.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from veloflux.agent.build import feature_queries, open_journal, open_registry
from veloflux.config.schema import Config
from veloflux.errors import VelofluxError
from veloflux.util.events import Events

if TYPE_CHECKING:
    from veloflux.model.pipeline import TrainingReport
    from veloflux.model.train import Progress, TrainSettings
    from veloflux.prometheus.history import PullReport

# A one-shot ``train`` has the machine to itself; the daemon's retraining shares it
# with the tick and uses ``ai.training_threads`` (default 1).
FOREGROUND_THREADS = 2
# How far back ``train --from-prometheus`` reads by default, and at which spacing.
PROMETHEUS_SINCE_SECONDS = 7 * 86400.0
PROMETHEUS_STEP_SECONDS = 15.0


class NoHistory(VelofluxError):
    """The config names no history a training could read (no journal yet, no
    Prometheus section): nothing to learn from, which is not a failure of the agent."""


def training_settings(config: Config, threads: int | None = None) -> TrainSettings:
    """The training settings a config asks for; ``threads`` defaults to the daemon's
    ``ai.training_threads``."""
    from veloflux.decide.utilization import utilization_column
    from veloflux.model.train import TrainSettings

    ai = config.ai
    return TrainSettings(
        min_rows=ai.min_training_rows,
        nthread=ai.training_threads if threads is None else threads,
        probe_size=ai.probe_size,
        probe_share=ai.probe_share,
        probe_ticks=ai.probe_ticks,
        interval_seconds=config.interval_seconds,
        utilization_column=utilization_column(config.capacity.utilization_feature),
    )


def train_on_journal(
    config: Config,
    events: Events,
    settings: TrainSettings,
    progress: Progress | None = None,
) -> TrainingReport:
    """Train on the whole journal at ``ai.history_path``; promote only if better.

    Raises ``NoHistory`` without a journal, ``NotEnoughData`` when it is too short.
    """
    from veloflux.model.pipeline import train_from_journal

    journal = open_journal(config, events, create=False)
    if journal is None:
        raise NoHistory(f"ai.history_path: no journal at {config.ai.history_path} yet")
    with journal:
        return train_from_journal(journal, open_registry(config, events), settings, progress)


def train_on_prometheus(
    config: Config,
    events: Events,
    settings: TrainSettings,
    since_seconds: float = PROMETHEUS_SINCE_SECONDS,
    step_seconds: float = PROMETHEUS_STEP_SECONDS,
    progress: Progress | None = None,
    pulled: Callable[[PullReport], None] = lambda _report: None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> TrainingReport:
    """Pull HAProxy's exporter history (and the features) from Prometheus, then train
    on it as on the journal. ``pulled`` hears what the pull read before training
    starts. Raises ``NoHistory`` when the config has no Prometheus or no HAProxy,
    ``PrometheusError`` when Prometheus cannot answer."""
    from veloflux.model.pipeline import train_from_samples
    from veloflux.prometheus.api import PrometheusAPI
    from veloflux.prometheus.history import pull_history

    prom = config.prometheus
    if prom is None:
        raise NoHistory("prometheus: required for --from-prometheus (its url at least)")
    if config.haproxy is None:
        raise NoHistory("haproxy: --from-prometheus reads HAProxy's exporter series")
    end = now().replace(microsecond=0)
    start = end - timedelta(seconds=since_seconds)
    # A range pull answers far more than a tick's query: never less than 30 s to do it.
    api = PrometheusAPI(prom.url, max(prom.timeout_seconds, 30.0), prom.headers)
    try:
        samples, report = pull_history(
            api,
            config.haproxy.backends,
            feature_queries(config, "haproxy"),
            start,
            end,
            step_seconds,
            events,
            progress,
        )
    finally:
        api.close()
    pulled(report)
    return train_from_samples(samples, open_registry(config, events), settings, progress)
