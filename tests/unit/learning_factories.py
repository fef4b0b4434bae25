"""Builders for the learning-core tests: journal samples, feature frames, small models.

Journal samples are built either by hand (a few rows whose every number the test
chooses) or by ``integration.synthetic`` (hundreds of intervals of a plausible pool).
Models are trained small (a few thousand rows, 30 rounds, one thread) so that the
whole learning suite stays fast; ``synthetic_features`` is cached, so every caller
gets its own copy of one frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from integration.synthetic import SyntheticPool, synthetic_samples
from tests.unit.factories import PROXY, Server, row
from veloflux.domain.observation import COLUMN_NAMES, Observation, PoolInfo
from veloflux.history.rates import derive_rates
from veloflux.model.features import COLUMNS, build_features
from veloflux.model.train import TrainedModel, TrainSettings, train_model

# Small, fast, deterministic: enough to learn the synthetic pool's load curve.
FAST = TrainSettings(max_rounds=30, min_rows=50, nthread=1)
# Learns something, but less than FAST: stumps, a few rounds (see test_training_gate).
WEAK = TrainSettings(max_depth=1, max_rounds=5, learning_rate=0.3, min_rows=50, nthread=1)
SYNTHETIC = SyntheticPool(servers=6, intervals=300, seed=3)
BASE_TIME = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)
INTERVAL = timedelta(seconds=10)


# --- hand-built journal samples ----------------------------------------------------------


def sample(step: int, server: str, requests_total: float, **values: Any) -> dict[str, Any]:
    """One journal-format row at ``BASE_TIME + step * 10 s``; ``values`` override defaults.

    Defaults: UP, weight 10, no errors, 2 sessions, empty queue, a 20 ms moving average.
    """
    record: dict[str, Any] = {
        "time": BASE_TIME + step * INTERVAL,
        "source": "haproxy",
        "pool": "app",
        "server": server,
        "state": "UP",
        "backup": False,
        "weight": 10.0,
        "initial_weight": 10.0,
        "sessions": 2.0,
        "queue": 0.0,
        "session_rate": 0.0,
        "sessions_total": requests_total,
        "requests_total": requests_total,
        "responses_5xx_total": 0.0,
        "response_errors_total": 0.0,
        "connect_errors_total": 0.0,
        "queue_time": 0.0,
        "connect_time": 0.0,
        "response_time": 0.020,
        "total_time": 0.020,
        "problem": "",
        "proxy_pid": 1,
        "proxy_started": 1_790_000_000.0,
    }
    record.update(values)
    return record


def samples(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Journal-format samples from ``sample`` rows (any order)."""
    frame = pd.DataFrame.from_records([dict(r) for r in records])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


def counters(
    server: str, totals: Sequence[float], **per_step: Sequence[Any]
) -> list[dict[str, Any]]:
    """One server's rows at steps 0..n-1 with cumulative ``totals``; ``per_step`` columns
    give one value per step (e.g. ``response_time=[...]``, ``state=[...]``)."""
    out = []
    for step, total in enumerate(totals):
        extra = {name: values[step] for name, values in per_step.items()}
        out.append(sample(step, server, total, **extra))
    return out


def features_of(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return build_features(derive_rates(samples(records)))


def feature_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A feature frame with every column, NaN where a row does not say (for pure tests)."""
    filled = []
    for r in rows:
        record: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
        record.update(pool="app")
        record.update(r)
        filled.append(record)
    frame = pd.DataFrame.from_records(filled, columns=list(COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


# --- synthetic history ------------------------------------------------------------------


@functools.cache
def _synthetic(spec: SyntheticPool) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = synthetic_samples(spec)
    return raw, build_features(derive_rates(raw))


def synthetic_raw(spec: SyntheticPool = SYNTHETIC) -> pd.DataFrame:
    return _synthetic(spec)[0].copy()


def synthetic_features(spec: SyntheticPool = SYNTHETIC) -> pd.DataFrame:
    return _synthetic(spec)[1].copy()


def train_small(
    features: pd.DataFrame | None = None, settings: TrainSettings = FAST
) -> TrainedModel:
    model, _split = train_model(synthetic_features() if features is None else features, settings)
    return model


# --- observations with traffic ------------------------------------------------------------


@dataclass(frozen=True)
class Busy:
    """A server row with the traffic figures the outlier guard reads."""

    name: str
    response_time: float = 0.020
    requests_total: float = 1000.0
    weight: float = 10.0
    initial: float = 10.0
    state: str = "UP"
    extra: Mapping[str, Any] = field(default_factory=dict)


def busy_observation(
    pools: Mapping[str, Sequence[Busy]],
    taken_at: datetime = BASE_TIME,
    unmanaged: Sequence[str] = (),
) -> Observation:
    """An Observation of ``{pool: servers}`` with moving averages and request counters."""
    records = []
    for pool, members in pools.items():
        for member in members:
            server = Server(member.name, weight=member.weight, initial=member.initial)
            record = row(pool, "roundrobin", server)
            record.update(
                time=taken_at,
                state=member.state,
                response_time=member.response_time,
                total_time=member.response_time,
                requests_total=member.requests_total,
                sessions_total=member.requests_total,
            )
            record.update(member.extra)
            records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(COLUMN_NAMES))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    infos = tuple(
        PoolInfo(name, "roundrobin", name not in unmanaged, "static" if name in unmanaged else "")
        for name in pools
    )
    return Observation.from_frame(taken_at, frame, infos, PROXY)


def synthetic_observation(raw: pd.DataFrame, when: pd.Timestamp, pool: str = "app") -> Observation:
    """The synthetic samples of one instant as an Observation (what a source would return)."""
    frame = raw[raw["time"] == when]
    info = (PoolInfo(pool, "roundrobin", True),)
    return Observation.from_frame(when.to_pydatetime(), frame, info, PROXY)


class StepClock:
    """A registry clock that moves one minute per reading, from ``start``."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        reading = self.now
        self.now += timedelta(minutes=1)
        return reading
