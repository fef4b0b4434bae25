"""Training as a config asks for it: where the history comes from (the journal, or
Prometheus's record of HAProxy's exporter), and the training settings read from the
config in one place.

The learning itself (features, boosters, the promotion gate) is ``model/pipeline.py``;
this module only opens what the config names and hands it over. ``train`` (the CLI),
the daemon's training job and the simulator all come through here, so a setting
means the same thing wherever a model is trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from veloflux.agent.build import feature_queries, open_journal, open_registry
from veloflux.config.schema import Config
from veloflux.errors import VelofluxError
from veloflux.util.events import Events

if TYPE_CHECKING:
    from distributed import Client

    from veloflux.config.dask import DaskSection
    from veloflux.model.pipeline import TrainingReport
    from veloflux.model.train import Progress, TrainSettings
    from veloflux.prometheus.history import PullReport

# A one-shot ``train`` has the machine to itself; the daemon's retraining shares it
# with the tick and uses ``ai.training_threads`` (default 1).
FOREGROUND_THREADS = 2
# How far back ``train --from-prometheus`` reads by default, and at which spacing.
PROMETHEUS_SINCE_SECONDS = 7 * 86400.0
PROMETHEUS_STEP_SECONDS = 15.0


class DaskUnavailable(VelofluxError):
    """The Dask scheduler cannot be reached, or Dask is not installed."""


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


def train_on_parquet(
    config: Config,
    events: Events,
    settings: TrainSettings,
    parquet: Path,
    progress: Progress | None = None,
) -> TrainingReport:
    """Train in process on a Parquet export (``history export``) read whole."""
    from veloflux.history.partitions import ParquetReader
    from veloflux.model.pipeline import train_from_samples

    samples = ParquetReader(parquet).read(-math.inf, math.inf)
    return train_from_samples(samples, open_registry(config, events), settings, progress)


def train_on_dask(
    config: Config,
    events: Events,
    settings: TrainSettings,
    scheduler: str | None = None,
    parquet: Path | None = None,
    progress: Progress | None = None,
) -> TrainingReport:
    """Train on the Dask cluster of ``ai.dask`` (or at ``scheduler``), the workers
    reading the journal at ``ai.history_path`` themselves, or the Parquet export at
    ``parquet``. Raises ``DaskUnavailable`` when the scheduler cannot be reached,
    ``NoHistory``/``NotEnoughData`` as ``train_on_journal`` does."""
    from veloflux.history.partitions import JournalReader, ParquetReader, SampleReader
    from veloflux.model.pipeline import train_on_cluster

    section = config.ai.dask
    if section is None and scheduler is None:
        raise DaskUnavailable("ai.dask: no Dask scheduler configured (or give --dask)")
    reader: SampleReader
    if parquet is not None:
        reader = ParquetReader(parquet)
    else:
        if not config.ai.history_path.is_file():
            raise NoHistory(f"ai.history_path: no journal at {config.ai.history_path} yet")
        reader = JournalReader(config.ai.history_path.resolve())
    with dask_client(section, scheduler) as client:
        return train_on_cluster(
            client,
            reader,
            open_registry(config, events),
            settings,
            progress,
            section.partition_rows if section else None,
        )


@contextmanager
def dask_client(section: DaskSection | None, scheduler: str | None = None) -> Iterator[Client]:
    """A client of ``scheduler`` (else ``section.scheduler``), with the section's TLS."""
    try:
        from veloflux.model.distributed import connect
    except ImportError:
        raise DaskUnavailable(
            "training on Dask needs dask.distributed: pip install 'veloflux[dask]'"
        ) from None
    address = scheduler or (section.scheduler if section else "")
    tls = None
    if section is not None and section.tls_ca_file is not None:
        tls = (section.tls_ca_file, section.tls_cert_file, section.tls_key_file)
    timeout = section.connect_timeout_seconds if section else 30.0
    try:
        client = connect(address, tls, timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DaskUnavailable(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]
