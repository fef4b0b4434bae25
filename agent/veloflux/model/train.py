"""Training: XGBoost quantile models of latency, a model of errors, and their honesty.

The data is split by time, never shuffled (the future must not leak into the past):
train, validation (early stopping), calibration (conformal intervals) and test (every
figure reported, and the promotion gate). Latency is learned in log space, so the
model's errors are relative ("20% slower"), not absolute; quantiles survive the log
because it is monotone.

XGBoost's quantile objective refits leaf values after each tree, which can break
``monotone_constraints`` (we measured violations on XGBoost 3.2); the constraint still
steers the trees, and ``predict`` rearranges every curve so that predicted latency never
falls as load rises.

Train in the calling thread or a ``spawn`` process, never after a ``fork``: XGBoost's
thread pool does not survive one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloflux.domain.probe_schedule import ProbeSettings
from veloflux.errors import VelofluxError
from veloflux.history.frames import external_columns
from veloflux.model.evaluation import Judged, metadata, ood_reference
from veloflux.model.features import (
    FEATURES,
    TARGET_LATENCY,
    TARGET_REQUESTS,
    baseline_log_latency,
    monotone_constraints,
    probed_steps,
    training_rows,
)
from veloflux.model.forecast import (
    LATENCY_TARGET,
    LOG_FLOOR_SECONDS,
    QUANTILES,
    TrainedModel,
    error_label,
    feature_matrix,
    log_latency,
    log_quantiles,
    predict_log_quantiles,
    quantile_name,
)
from veloflux.model.load_response import fit_load_response

# Also importable from here, where training's callers have long found them.
__all__ = [
    "LATENCY_TARGET",
    "LOG_FLOOR_SECONDS",
    "QUANTILES",
    "TrainedModel",
    "error_label",
    "feature_matrix",
    "log_latency",
    "log_quantiles",
    "predict_log_quantiles",
    "quantile_name",
]

Progress = Callable[[str, float], None]


class NotEnoughData(VelofluxError):
    """Too little history to train on; the message says how much exists and is needed."""


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters; fixed seed so the same history gives the same model."""

    max_depth: int = 5
    # Sample weights are scaled to mean 1, so this is "a latency leaf rests on about ten
    # intervals". On two-minute real recordings (a few hundred rows) XGBoost's default
    # of 1 let single intervals become leaves and the model did no better than the
    # naive forecast; ten intervals a leaf did better. On large histories it changes
    # nothing. The error model keeps the default: its logistic hessian, p(1-p) per row,
    # already makes 1 mean a couple of dozen rows.
    latency_min_child_weight: float = 10.0
    # eta 0.2 with 64 bins and half the rows per tree, against eta 0.1 / 256 bins / all
    # rows: fewer and coarser trees, so training and scoring are faster, at some cost
    # in accuracy. With these settings bench/bench_learning.py's training and
    # per-tick figures meet their targets (docs/benchmarks.md, "Learning core").
    learning_rate: float = 0.2
    max_bin: int = 64
    subsample: float = 0.5
    max_rounds: int = 120  # caps model size: scoring cost grows with trees
    early_stopping_rounds: int = 20
    min_rows: int = 200
    seed: int = 7
    nthread: int = 2
    coverage: float = 0.8  # the calibrated interval: q10..q90
    # The weight probes the history was recorded under (``ai.probe_*``; size 0: none,
    # every load step is learned from): see ``features.probed_steps``.
    probe_size: float = 0.0
    probe_share: float = 0.1
    probe_ticks: int = 2
    interval_seconds: float = 10.0
    # The utilization feature's column, which the load response is learned on.
    utilization_column: str | None = None

    def probes(self) -> ProbeSettings:
        return ProbeSettings(
            self.probe_size, self.probe_share, self.probe_ticks, self.interval_seconds
        )


@dataclass(frozen=True)
class Split:
    """Time-ordered parts of the training rows."""

    train: pd.DataFrame
    valid: pd.DataFrame
    calib: pd.DataFrame
    test: pd.DataFrame

    @property
    def held_out(self) -> pd.DataFrame:
        """The calibration and test windows together, in time order: rows neither the
        boosters nor the load response learned from (the response trains on ``train``
        and stops early on ``valid``), so its slope can be judged on both. On the test
        window alone, the last eighth of the history held too few probe moves to judge
        (10-15 of 20 in the simulator's drift and gray-failure scenarios)."""
        return pd.concat([self.calib, self.test])


def split_by_time(rows: pd.DataFrame) -> Split:
    """60% train, 15% validation, 12.5% calibration, 12.5% test, in time order."""
    n = len(rows)
    cuts = [int(n * f) for f in (0.6, 0.75, 0.875)]
    return Split(
        rows.iloc[: cuts[0]],
        rows.iloc[cuts[0] : cuts[1]],
        rows.iloc[cuts[1] : cuts[2]],
        rows.iloc[cuts[2] :],
    )


def latency_label(rows: pd.DataFrame) -> np.ndarray:
    """What the latency boosters learn: log(next latency / the row's baseline)."""
    labels: np.ndarray = log_latency(rows[TARGET_LATENCY]) - baseline_log_latency(rows)
    return labels


def _matrix(
    rows: pd.DataFrame,
    features: tuple[str, ...],
    label: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> xgb.DMatrix:
    return xgb.DMatrix(
        feature_matrix(rows, features),
        label=label,
        weight=weight,
        feature_names=list(features),
        missing=np.nan,
    )


def model_features(rows: pd.DataFrame) -> tuple[str, ...]:
    """``FEATURES``, then the operator-defined features the rows have values for: one
    that was never read teaches nothing, and would only widen the model's input."""
    known = tuple(c for c in external_columns(rows) if rows[c].notna().any())
    return (*FEATURES, *known)


def _fit(
    params: dict[str, Any], train: xgb.DMatrix, valid: xgb.DMatrix, settings: TrainSettings
) -> xgb.Booster:
    return xgb.train(params, train, **fit_options(settings, valid))


def fit_options(settings: TrainSettings, valid: Any) -> dict[str, Any]:
    """XGBoost's training arguments past the parameters and the data, here or on Dask.

    ``save_best``: serve the trees up to the best validation round, not every tree
    grown after it (predictions would otherwise ignore early stopping).
    """
    stop = xgb.callback.EarlyStopping(rounds=settings.early_stopping_rounds, save_best=True)
    return {
        "num_boost_round": settings.max_rounds,
        "evals": [(valid, "valid")],
        "callbacks": [stop],
        "verbose_eval": False,
    }


def train_model(
    features: pd.DataFrame, settings: TrainSettings, progress: Progress | None = None
) -> tuple[TrainedModel, Split]:
    """Train both models on the feature frame; raise ``NotEnoughData`` if it is too short."""
    report = progress or (lambda _stage, _fraction: None)
    started = time.perf_counter()
    rows = probed_steps(training_rows(features), settings.probes())
    if len(rows) < settings.min_rows:
        raise NotEnoughData(
            f"{len(rows)} usable rows of history (intervals with traffic and a known next "
            f"interval); at least {settings.min_rows} are needed. Record longer with "
            "`veloflux-agent record`."
        )
    split = split_by_time(rows)
    used = model_features(split.train)
    params = booster_params(settings, used)
    train_m = _matrix(split.train, used, latency_label(split.train), sample_weights(split.train))
    valid_m = _matrix(split.valid, used, latency_label(split.valid), sample_weights(split.valid))
    boosters = []
    for i, alpha in enumerate(QUANTILES):
        report(f"latency q{round(alpha * 100)}", 0.1 + 0.2 * i)
        boosters.append(_fit(params[quantile_name(alpha)], train_m, valid_m, settings))
    latency = tuple(boosters)
    report("error model", 0.7)
    errors = _fit(
        params["errors"],
        _matrix(split.train, used, error_label(split.train), sample_weights(split.train)),
        _matrix(split.valid, used, error_label(split.valid), sample_weights(split.valid)),
        settings,
    )
    report("load response", 0.8)
    # Fitted on the training and validation windows (it needs no early stopping), the
    # newest it may see: the calibration and test windows judge it (``pipeline.gate``).
    load = fit_load_response(
        pd.concat([split.train, split.valid]), settings.probes(), settings.utilization_column
    )
    report("calibration", 0.85)
    model = TrainedModel(latency, errors, {}, used, load)
    metadata = describe(model, split, rows, settings)
    metadata["load_response"] = load.metadata() if load else {"features": [], "moves": 0}
    metadata["duration_seconds"] = round(time.perf_counter() - started, 3)
    report("done", 1.0)
    return TrainedModel(latency, errors, metadata, used, load), split


def booster_params(settings: TrainSettings, used: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """XGBoost's parameters for each booster, by name (``quantile_name`` ..., ``errors``):
    the same whether it trains here or on a Dask cluster (``model/distributed.py``)."""
    common = {
        "tree_method": "hist",
        "max_depth": settings.max_depth,
        "eta": settings.learning_rate,
        "max_bin": settings.max_bin,
        "subsample": settings.subsample,
        "seed": settings.seed,
        "nthread": settings.nthread,
        "monotone_constraints": monotone_constraints(used),
    }
    params = {
        quantile_name(alpha): {
            **common,
            "objective": "reg:quantileerror",
            "quantile_alpha": alpha,
            "min_child_weight": settings.latency_min_child_weight,
        }
        for alpha in QUANTILES
    }
    params["errors"] = {**common, "objective": "reg:logistic"}
    return params


def sample_weights(rows: pd.DataFrame, mean: float | None = None) -> np.ndarray:
    """Intervals with more requests pin their mean down better (capped: one EMA window).

    Scaled to mean 1, so that ``min_child_weight`` counts average intervals whatever
    the traffic level.
    """
    weights = raw_weights(rows)
    if mean is None:  # a Dask partition is scaled by its whole split's mean
        mean = float(weights.mean()) if len(weights) else 1.0
    scaled: np.ndarray = weights / mean
    return scaled


def raw_weights(rows: pd.DataFrame) -> np.ndarray:
    """Each row's weight before scaling: its next interval's requests, within 1..512."""
    weights: np.ndarray = np.clip(rows[TARGET_REQUESTS].to_numpy(dtype=float), 1.0, 512.0)
    return weights


def describe(
    model: TrainedModel, split: Split, rows: pd.DataFrame, settings: TrainSettings
) -> dict[str, Any]:
    """The metadata of a model trained in process on ``split`` (of ``rows``)."""
    window = (rows["time"].min(), rows["time"].max())
    counts = {name: len(getattr(split, name)) for name in ("train", "valid", "calib", "test")}
    return metadata(
        model,
        Judged.of(model, split.calib),
        Judged.of(model, split.test),
        ood_reference(split.train, model.features),
        window,
        counts,
        settings.__dict__,
    )
