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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloflux.domain.probe_schedule import ProbeSettings
from veloflux.errors import VelofluxError
from veloflux.history.frames import external_columns
from veloflux.model.features import (
    FEATURES,
    LOAD_DRIVEN,
    TARGET_ERROR_RATE,
    TARGET_LATENCY,
    TARGET_REQUESTS,
    baseline_log_latency,
    monotone_constraints,
    probed_steps,
    training_rows,
)
from veloflux.model.load_response import LoadResponse, fit_load_response

QUANTILES = (0.1, 0.5, 0.9)
# What the latency boosters predict; a model that says otherwise is refused.
LATENCY_TARGET = "log ratio to baseline_log_latency"
LOG_FLOOR_SECONDS = 1e-4  # 0.1 ms: keeps log() finite for instant replies
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


def quantile_name(alpha: float) -> str:
    """The booster name of one latency quantile: ``latency_q10``, ``latency_q90``."""
    return f"latency_q{round(alpha * 100):02d}"


@dataclass(frozen=True)
class TrainedModel:
    """Boosters plus everything prediction and confidence need, as JSON-able metadata.

    One booster per latency quantile rather than one multi-quantile booster: the
    optimizer scores every server at each candidate load of its trust region and needs
    only the 0.9 quantile for them, so it evaluates a third of the trees.
    """

    latency: tuple[xgb.Booster, ...]  # one per QUANTILES entry, in order
    errors: xgb.Booster
    metadata: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES  # the boosters' input columns, in order
    # The load response learned from the weight probes (``model/load_response.py``);
    # None: too few probes, the latency boosters' own. Kept in the metadata.
    load: LoadResponse | None = None

    def booster_bytes(self) -> dict[str, bytes]:
        named = {quantile_name(a): b for a, b in zip(QUANTILES, self.latency, strict=True)}
        named["errors"] = self.errors
        return {name: bytes(b.save_raw("ubj")) for name, b in named.items()}


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


def log_latency(seconds: pd.Series | np.ndarray) -> np.ndarray:
    floored: np.ndarray = np.maximum(np.asarray(seconds, dtype=float), LOG_FLOOR_SECONDS)
    logs: np.ndarray = np.log(floored)
    return logs


def feature_matrix(
    rows: pd.DataFrame, features: Sequence[str], positions: np.ndarray | None = None
) -> np.ndarray:
    """The model input of ``rows`` (only those at ``positions`` when given), column by
    column: cheaper than a sub-frame's interleave. A feature the frame lacks (an
    operator-defined one that was not read) is missing, NaN, for every row."""
    n = len(rows) if positions is None else len(positions)
    columns = []
    for f in features:
        if f not in rows:
            columns.append(np.full(n, np.nan, dtype=np.float32))
            continue
        column = rows[f].to_numpy(dtype=np.float32, na_value=np.nan)
        columns.append(column if positions is None else column[positions])
    return np.column_stack(columns)


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
    # save_best: serve the trees up to the best validation round, not every tree grown
    # after it (predictions would otherwise ignore early stopping).
    stop = xgb.callback.EarlyStopping(rounds=settings.early_stopping_rounds, save_best=True)
    return xgb.train(
        params,
        train,
        num_boost_round=settings.max_rounds,
        evals=[(valid, "valid")],
        callbacks=[stop],
        verbose_eval=False,
    )


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
    common = {
        "tree_method": "hist",
        "max_depth": settings.max_depth,
        "eta": settings.learning_rate,
        "max_bin": settings.max_bin,
        "subsample": settings.subsample,
        "seed": settings.seed,
        "nthread": settings.nthread,
    }
    train_m = _matrix(split.train, used, latency_label(split.train), _weights(split.train))
    valid_m = _matrix(split.valid, used, latency_label(split.valid), _weights(split.valid))
    boosters = []
    for i, alpha in enumerate(QUANTILES):
        report(f"latency q{round(alpha * 100)}", 0.1 + 0.2 * i)
        params = {
            **common,
            "objective": "reg:quantileerror",
            "quantile_alpha": alpha,
            "min_child_weight": settings.latency_min_child_weight,
            "monotone_constraints": monotone_constraints(used),
        }
        boosters.append(_fit(params, train_m, valid_m, settings))
    latency = tuple(boosters)
    report("error model", 0.7)
    errors = _fit(
        {**common, "objective": "reg:logistic", "monotone_constraints": monotone_constraints(used)},
        _matrix(split.train, used, _error_label(split.train), _weights(split.train)),
        _matrix(split.valid, used, _error_label(split.valid), _weights(split.valid)),
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
    metadata = _metadata(model, split, rows, settings)
    metadata["load_response"] = load.metadata() if load else {"features": [], "moves": 0}
    metadata["duration_seconds"] = round(time.perf_counter() - started, 3)
    report("done", 1.0)
    return TrainedModel(latency, errors, metadata, used, load), split


def _weights(rows: pd.DataFrame) -> np.ndarray:
    """Intervals with more requests pin their mean down better (capped: one EMA window).

    Scaled to mean 1, so that ``min_child_weight`` counts average intervals whatever
    the traffic level.
    """
    weights: np.ndarray = np.clip(rows[TARGET_REQUESTS].to_numpy(dtype=float), 1.0, 512.0)
    return weights / weights.mean() if len(weights) else weights


def _error_label(rows: pd.DataFrame) -> np.ndarray:
    labels: np.ndarray = np.clip(rows[TARGET_ERROR_RATE].fillna(0.0).to_numpy(dtype=float), 0, 1)
    return labels


def log_quantiles(latency: Sequence[xgb.Booster], x: np.ndarray) -> np.ndarray:
    """(n, 3) log-latency quantiles of a feature matrix, sorted per row so they never cross."""
    raw = np.column_stack([np.asarray(b.inplace_predict(x), dtype=float) for b in latency])
    return np.sort(raw, axis=1)


def predict_log_quantiles(
    latency: Sequence[xgb.Booster], rows: pd.DataFrame, features: tuple[str, ...] = FEATURES
) -> np.ndarray:
    """(n, 3) log-latency quantiles of a feature frame: the boosters' ratios plus baseline."""
    ratios = log_quantiles(latency, feature_matrix(rows, features))
    quantiles: np.ndarray = ratios + baseline_log_latency(rows)[:, None]
    return quantiles


def conformal_offset(model: TrainedModel, calib: pd.DataFrame, coverage: float) -> float:
    """Conformalized quantile regression: widen q10..q90 until it covers ``coverage``."""
    q = predict_log_quantiles(model.latency, calib, model.features)
    y = log_latency(calib[TARGET_LATENCY])
    scores = np.maximum(q[:, 0] - y, y - q[:, 2])
    n = len(scores)
    level = min(1.0, math.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


def evaluate(model: TrainedModel, test: pd.DataFrame, offset: float) -> dict[str, float | None]:
    """Every figure the train command prints and the promotion gate compares.

    The naive figures are None when no test interval had a measured latency to carry
    forward (sparse traffic: most servers see no request in most intervals); the gate
    then cannot judge, and says so, rather than compare against NaN.
    """
    q = np.exp(predict_log_quantiles(model.latency, test, model.features))
    y = test[TARGET_LATENCY].to_numpy(dtype=float)
    naive = test["latency"].to_numpy(dtype=float)
    has_naive = np.isfinite(naive)
    lo = np.exp(np.log(np.maximum(q[:, 0], LOG_FLOOR_SECONDS)) - offset)
    hi = np.exp(np.log(np.maximum(q[:, 2], LOG_FLOOR_SECONDS)) + offset)
    err_pred = np.asarray(
        model.errors.inplace_predict(feature_matrix(test, model.features)), dtype=float
    )
    err_true = _error_label(test)
    err_naive = np.nan_to_num(test["error_rate"].to_numpy(dtype=float))
    relative = np.abs(q[:, 1] - y) / np.maximum(y, LOG_FLOOR_SECONDS)
    naive_y, naive_q = y[has_naive], naive[has_naive]
    judged = bool(has_naive.any())
    return {
        "rows": float(len(test)),
        "mae_p50_seconds": float(np.mean(np.abs(q[:, 1] - y))),
        "naive_mae_seconds": float(np.mean(np.abs(naive_q - naive_y))) if judged else None,
        "pinball_p50": _pinball(y, q[:, 1], 0.5),
        "pinball_p90": _pinball(y, q[:, 2], 0.9),
        "naive_pinball_p50": _pinball(naive_y, naive_q, 0.5) if judged else None,
        "naive_pinball_p90": _pinball(naive_y, naive_q, 0.9) if judged else None,
        "coverage_80": float(np.mean((y >= lo) & (y <= hi))),
        "median_relative_error": float(np.median(relative)),
        "p90_relative_error": float(np.quantile(relative, 0.9)),
        "error_rate_mae": float(np.mean(np.abs(err_pred - err_true))),
        "naive_error_rate_mae": float(np.mean(np.abs(err_naive - err_true))),
    }


def _pinball(y: np.ndarray, q: np.ndarray, alpha: float) -> float:
    diff = y - q
    return float(np.mean(np.maximum(alpha * diff, (alpha - 1) * diff))) if len(y) else math.nan


def _metadata(
    model: TrainedModel, split: Split, rows: pd.DataFrame, settings: TrainSettings
) -> dict[str, Any]:
    offset = conformal_offset(model, split.calib, settings.coverage)
    calib_q = predict_log_quantiles(model.latency, split.calib, model.features)
    widths = calib_q[:, 2] - calib_q[:, 0] + 2 * offset
    return {
        "features": list(model.features),
        "latency_target": LATENCY_TARGET,
        "quantiles": list(QUANTILES),
        "conformal_offset": offset,
        "width_reference": float(np.median(widths)),
        "window": {"start": rows["time"].min().isoformat(), "end": rows["time"].max().isoformat()},
        "rows": {
            "train": len(split.train),
            "valid": len(split.valid),
            "calib": len(split.calib),
            "test": len(split.test),
        },
        "best_iteration": {
            **{
                quantile_name(a): int(b.best_iteration)
                for a, b in zip(QUANTILES, model.latency, strict=True)
            },
            "errors": int(model.errors.best_iteration),
        },
        "metrics": evaluate(model, split.test, offset),
        "ood": ood_reference(split.train, model.features),
        "xgboost_version": xgb.__version__,
        "settings": settings.__dict__,
    }


# Time of day is left out of the distance: a model trained on less than a day of
# history would otherwise call every new hour "out of distribution".
OOD_FEATURES = tuple(f for f in FEATURES if f not in ("tod_sin", "tod_cos"))


def ood_reference(train: pd.DataFrame, features: tuple[str, ...] = FEATURES) -> dict[str, Any]:
    """Mean, inverse covariance and distance quantiles of the training features.

    Two lists are kept. Presence (``features``, ``present_fraction``) covers every
    feature but the time of day: an operator-defined feature the model had must be
    seen going missing when Prometheus stops answering. The distance
    (``distance_features``) leaves out the load a server is given
    (``LOAD_DRIVEN``): the optimizer moves it on purpose, within its trust region, and
    a history taken under static weights never holds the split the model then asks
    for. Counted as novelty, the model's own correction would switch it off, put the
    static weights back, and switch it on again next tick. Whether the model still
    predicts at the loads it chose is what the realized-error part judges.

    Missing values are filled with the mean before the distance, so a missing feature
    adds nothing by itself; how many are missing is judged separately.
    """
    used = tuple(f for f in features if f not in ("tod_sin", "tod_cos"))
    distance = tuple(f for f in used if f not in LOAD_DRIVEN)
    present = np.isfinite(feature_matrix(train, used).astype(float)).mean(axis=0)
    x = feature_matrix(train, distance).astype(float)
    mean = np.nanmean(x, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    filled = np.where(np.isfinite(x), x, mean)
    cov = np.cov(filled, rowvar=False) + np.eye(len(distance)) * 1e-6
    inv = np.linalg.pinv(cov)
    d2 = np.einsum("ij,jk,ik->i", filled - mean, inv, filled - mean)
    return {
        "features": list(used),
        "distance_features": list(distance),
        "mean": mean.tolist(),
        "inv_cov": inv.tolist(),
        "d2_q95": float(np.quantile(d2, 0.95)),
        "d2_q99": float(np.quantile(d2, 0.99)),
        "present_fraction": present.tolist(),
    }
