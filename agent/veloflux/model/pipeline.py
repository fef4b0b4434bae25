"""Training from the journal, end to end: read, featurize, train, save, gate, promote.

The promotion gate: a new model becomes current only if, on its own held-out test
window, it beats the naive baseline (next latency = last latency) and the current
model evaluated on that same window, and, where weight probes ran in that window,
its predicted load response matches what they did (``model/calibration.py``).
Otherwise it is kept as a candidate with the reason. Runs in the calling thread;
never call it in a forked child (XGBoost).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from veloflux.errors import ModelUnavailable

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from veloflux.history.partitions import SampleReader
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates
from veloflux.model.calibration import LoadCalibration, load_calibration
from veloflux.model.evaluation import evaluate
from veloflux.model.features import build_features, checked_features
from veloflux.model.registry import ModelEntry, Registry
from veloflux.model.train import (
    QUANTILES,
    Progress,
    TrainedModel,
    TrainSettings,
    quantile_name,
    train_model,
)

# A model's figures (``evaluation.evaluate``) on a candidate's test window, given the
# model's conformal offset: how the current model defends its place.
Judge = Callable[[TrainedModel, float], Mapping[str, float | None]]


@dataclass(frozen=True)
class TrainingReport:
    """What the train command prints."""

    entry: ModelEntry
    promoted: bool
    reason: str
    metadata: dict[str, Any]
    current_version: str | None
    current_metrics: Mapping[str, float | None] | None

    def to_json(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "version": self.entry.version,
            "promoted": self.promoted,
            "reason": self.reason,
            "rows": meta["rows"],
            "window": meta["window"],
            "metrics": meta["metrics"],
            "compared_with": {"version": self.current_version, "metrics": self.current_metrics},
            "duration_seconds": meta["duration_seconds"],
        }


def train_from_journal(
    journal: Journal,
    registry: Registry,
    settings: TrainSettings,
    progress: Progress | None = None,
) -> TrainingReport:
    """Train on the whole journal; raise ``NotEnoughData`` if it is too short."""
    report = progress or (lambda _stage, _fraction: None)
    report("reading history", 0.0)
    return train_from_samples(journal.read(), registry, settings, progress)


def train_from_samples(
    samples: pd.DataFrame,
    registry: Registry,
    settings: TrainSettings,
    progress: Progress | None = None,
) -> TrainingReport:
    """Train on journal-format samples (the journal's, or Prometheus's history laid out
    the same way): the same rates, the same features, the same gate."""
    features = build_features(derive_rates(samples))
    model, split = train_model(features, settings, progress)
    calibration = load_calibration(model, split.held_out, settings.probes())
    return register(model, calibration, registry, lambda m, offset: evaluate(m, split.test, offset))


def train_on_cluster(
    client: Client,
    reader: SampleReader,
    registry: Registry,
    settings: TrainSettings,
    progress: Progress | None = None,
    partition_rows: int | None = None,
) -> TrainingReport:
    """Train on a Dask cluster (``model/distributed.py``) on every sample ``reader``
    holds: the same model format, registry and gate; the current model is judged on
    the new one's test window on the workers."""
    from veloflux.model.distributed import DEFAULT_PARTITION_ROWS, train_distributed

    result = train_distributed(
        client, reader, settings, progress, partition_rows or DEFAULT_PARTITION_ROWS
    )
    try:
        return register(result.model, result.calibration, registry, result.judge)
    finally:
        result.release()


def register(
    model: TrainedModel,
    calibration: LoadCalibration,
    registry: Registry,
    judge: Judge,
) -> TrainingReport:
    """Save a freshly trained model, then promote it if it passes the gate against
    the current model (``judge``: a model's figures on the new one's test window)."""
    model.metadata["load_calibration"] = {"slope": calibration.slope, "moves": calibration.moves}
    entry = registry.save(model.booster_bytes(), model.metadata)
    current_version, current_metrics = _current_on(registry, judge)
    promoted, reason = gate(
        model.metadata["metrics"], current_version, current_metrics, calibration
    )
    if promoted:
        registry.promote(entry.version, reason)
    else:
        registry.reject(entry.version, reason)
    return TrainingReport(entry, promoted, reason, model.metadata, current_version, current_metrics)


def gate(
    metrics: Mapping[str, float | None],
    current_version: str | None,
    current: Mapping[str, float | None] | None,
    calibration: LoadCalibration | None = None,
) -> tuple[bool, str]:
    """Beat the naive baseline, and the current model on the same window, with a load
    response the probes confirm (when any ran in the held-out windows), or stay a
    candidate."""
    promoted, reason = _forecast_gate(metrics, current_version, current)
    if promoted and calibration is not None and calibration.moves > 0:
        if verdict := calibration.verdict():
            return False, f"{reason}, but {verdict}"
        return True, f"{reason}; load response confirmed by {calibration.moves} probe moves"
    return promoted, reason


def stored_gate(metadata: Mapping[str, Any]) -> tuple[bool, str]:
    """The gate on what a version recorded when it was trained, for promoting it by
    hand (``model promote``): its forecast against the naive baseline and its load
    response against the probes. The comparison with the current model is left out:
    it needs the candidate's test window, which is not kept."""
    metrics = metadata.get("metrics")
    if not isinstance(metrics, Mapping) or metrics.get("mae_p50_seconds") is None:
        return False, "it recorded no figures to judge it by"
    stored = metadata.get("load_calibration")
    calibration = None
    if isinstance(stored, Mapping):
        calibration = LoadCalibration(stored.get("slope"), int(stored.get("moves") or 0))
    return gate(metrics, None, None, calibration)


def _forecast_gate(
    metrics: Mapping[str, float | None],
    current_version: str | None,
    current: Mapping[str, float | None] | None,
) -> tuple[bool, str]:
    """Beat the naive baseline, and the current model on the same window."""
    mae, naive = metrics["mae_p50_seconds"], metrics["naive_mae_seconds"]
    assert mae is not None  # the model's own figure exists whenever there is a test window
    if naive is None:
        return False, (
            "cannot be judged: no interval in the test window had a measured latency for the "
            "naive forecast (too little traffic per server and interval)"
        )
    if not mae < naive:
        return (
            False,
            f"MAE {mae * 1000:.2f} ms does not beat the naive baseline's {naive * 1000:.2f} ms",
        )
    if current is None:
        return True, f"beats the naive baseline ({mae * 1000:.2f} vs {naive * 1000:.2f} ms MAE)"
    theirs = current["mae_p50_seconds"]
    assert theirs is not None
    if not mae < theirs:
        return False, (
            f"MAE {mae * 1000:.2f} ms does not beat current model {current_version}'s "
            f"{theirs * 1000:.2f} ms on the same window"
        )
    return True, (
        f"beats the naive baseline ({naive * 1000:.2f} ms) and model {current_version} "
        f"({theirs * 1000:.2f} ms) with {mae * 1000:.2f} ms MAE"
    )


def _current_on(
    registry: Registry, judge: Judge
) -> tuple[str | None, Mapping[str, float | None] | None]:
    """The current model's metrics on the candidate's test window, if it can be judged."""
    import xgboost as xgb

    version = registry.current_version()
    if version is None:
        return None, None
    try:
        loaded = registry.load(version)
    except ModelUnavailable:
        return version, None  # a model we cannot trust cannot defend its place
    try:
        features = checked_features(loaded.metadata.get("features", []), version)
    except ModelUnavailable:
        return version, None
    boosters = {}
    for name in (*(quantile_name(a) for a in QUANTILES), "errors"):
        if name not in loaded.boosters:
            return version, None  # an older model layout cannot be judged on this window
        booster = xgb.Booster()
        booster.load_model(bytearray(loaded.boosters[name]))
        boosters[name] = booster
    latency = tuple(boosters[quantile_name(a)] for a in QUANTILES)
    model = TrainedModel(latency, boosters["errors"], dict(loaded.metadata), features)
    return version, judge(model, float(loaded.metadata["conformal_offset"]))
