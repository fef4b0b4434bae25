"""A trained model's figures: the conformal interval, the held-out test figures the
promotion gate compares, and the reference the confidence's novelty part measures
against.

Each figure is computed in two steps: per-row arrays (``Judged``, ``ood_sums``), then
a combination of them. In process the arrays cover a whole window at once; a Dask
training (``model/distributed.py``) computes them partition by partition on its
workers, sends back the arrays (a few numbers per row, not the rows) and combines
them here, so both paths report the same figures by the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloflux.model.features import FEATURES, LOAD_DRIVEN, TARGET_LATENCY
from veloflux.model.forecast import (
    LATENCY_TARGET,
    LOG_FLOOR_SECONDS,
    QUANTILES,
    TrainedModel,
    error_label,
    feature_matrix,
    log_latency,
    predict_log_quantiles,
    quantile_name,
)

# Time of day is left out of the distance: a model trained on less than a day of
# history would otherwise call every new hour "out of distribution".
OOD_FEATURES = tuple(f for f in FEATURES if f not in ("tod_sin", "tod_cos"))


@dataclass(frozen=True)
class Judged:
    """What a model said and what happened, per row of a window: the arrays every
    figure is computed from."""

    log_q: np.ndarray  # (n, 3) predicted log-latency quantiles, sorted per row
    y: np.ndarray  # next interval's latency, seconds
    naive: np.ndarray  # this interval's latency (the naive forecast), seconds
    err_pred: np.ndarray
    err_true: np.ndarray
    err_naive: np.ndarray

    @staticmethod
    def of(model: TrainedModel, rows: pd.DataFrame) -> Judged:
        x = feature_matrix(rows, model.features)
        return Judged(
            predict_log_quantiles(model.latency, rows, model.features),
            rows[TARGET_LATENCY].to_numpy(dtype=float),
            rows["latency"].to_numpy(dtype=float),
            np.asarray(model.errors.inplace_predict(x), dtype=float),
            error_label(rows),
            np.nan_to_num(rows["error_rate"].to_numpy(dtype=float)),
        )

    @staticmethod
    def joined(parts: Sequence[Judged]) -> Judged:
        """The windows of ``parts`` as one, in order."""
        if not parts:
            empty = np.zeros(0)
            return Judged(np.zeros((0, 3)), empty, empty, empty, empty, empty)
        return Judged(
            np.concatenate([p.log_q for p in parts]),
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _VECTORS),
        )


_VECTORS = ("y", "naive", "err_pred", "err_true", "err_naive")


def conformal_offset(model: TrainedModel, calib: pd.DataFrame, coverage: float) -> float:
    """Conformalized quantile regression: widen q10..q90 until it covers ``coverage``."""
    return offset_of(Judged.of(model, calib), coverage)


def offset_of(calib: Judged, coverage: float) -> float:
    y = log_latency(calib.y)
    scores = np.maximum(calib.log_q[:, 0] - y, y - calib.log_q[:, 2])
    n = len(scores)
    level = min(1.0, math.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


def evaluate(model: TrainedModel, test: pd.DataFrame, offset: float) -> dict[str, float | None]:
    """Every figure the train command prints and the promotion gate compares."""
    return figures(Judged.of(model, test), offset)


def figures(test: Judged, offset: float) -> dict[str, float | None]:
    """``evaluate``'s figures from the judged rows of the test window.

    The naive figures are None when no test interval had a measured latency to carry
    forward (sparse traffic: most servers see no request in most intervals); the gate
    then cannot judge, and says so, rather than compare against NaN.
    """
    q = np.exp(test.log_q)
    y, naive = test.y, test.naive
    has_naive = np.isfinite(naive)
    lo = np.exp(np.log(np.maximum(q[:, 0], LOG_FLOOR_SECONDS)) - offset)
    hi = np.exp(np.log(np.maximum(q[:, 2], LOG_FLOOR_SECONDS)) + offset)
    relative = np.abs(q[:, 1] - y) / np.maximum(y, LOG_FLOOR_SECONDS)
    naive_y, naive_q = y[has_naive], naive[has_naive]
    judged = bool(has_naive.any())
    return {
        "rows": float(len(y)),
        "mae_p50_seconds": float(np.mean(np.abs(q[:, 1] - y))),
        "naive_mae_seconds": float(np.mean(np.abs(naive_q - naive_y))) if judged else None,
        "pinball_p50": _pinball(y, q[:, 1], 0.5),
        "pinball_p90": _pinball(y, q[:, 2], 0.9),
        "naive_pinball_p50": _pinball(naive_y, naive_q, 0.5) if judged else None,
        "naive_pinball_p90": _pinball(naive_y, naive_q, 0.9) if judged else None,
        "coverage_80": float(np.mean((y >= lo) & (y <= hi))),
        "median_relative_error": float(np.median(relative)),
        "p90_relative_error": float(np.quantile(relative, 0.9)),
        "error_rate_mae": float(np.mean(np.abs(test.err_pred - test.err_true))),
        "naive_error_rate_mae": float(np.mean(np.abs(test.err_naive - test.err_true))),
    }


def _pinball(y: np.ndarray, q: np.ndarray, alpha: float) -> float:
    diff = y - q
    return float(np.mean(np.maximum(alpha * diff, (alpha - 1) * diff))) if len(y) else math.nan


def metadata(
    model: TrainedModel,
    calib: Judged,
    test: Judged,
    ood: dict[str, Any],
    window: tuple[pd.Timestamp, pd.Timestamp],
    rows: dict[str, int],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """What the registry keeps beside the boosters, wherever they were trained
    (``settings``: the ``TrainSettings`` as a mapping)."""
    offset = offset_of(calib, float(settings["coverage"]))
    widths = calib.log_q[:, 2] - calib.log_q[:, 0] + 2 * offset
    return {
        "features": list(model.features),
        "latency_target": LATENCY_TARGET,
        "quantiles": list(QUANTILES),
        "conformal_offset": offset,
        "width_reference": float(np.median(widths)),
        "window": {"start": window[0].isoformat(), "end": window[1].isoformat()},
        "rows": rows,
        "best_iteration": {
            **{
                quantile_name(a): int(b.best_iteration)
                for a, b in zip(QUANTILES, model.latency, strict=True)
            },
            "errors": int(model.errors.best_iteration),
        },
        "metrics": figures(test, offset),
        "ood": ood,
        "xgboost_version": xgb.__version__,
        "settings": dict(settings),
    }


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
    sums = ood_sums(train, features)
    scatter = ood_scatter(train, features, ood_mean(sums))
    return ood_combine(features, sums, scatter, ood_distances(train, features, sums, scatter))


def ood_features(features: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The presence features and the distance features of a model's feature list."""
    used = tuple(f for f in features if f not in ("tod_sin", "tod_cos"))
    return used, tuple(f for f in used if f not in LOAD_DRIVEN)


def ood_sums(rows: pd.DataFrame, features: tuple[str, ...]) -> dict[str, np.ndarray]:
    """First pass, additive over windows: rows, present counts, sums of the distance
    features where known."""
    used, distance = ood_features(features)
    x = feature_matrix(rows, distance).astype(float)
    known = np.isfinite(x)
    return {
        "n": np.array([len(rows)], dtype=float),
        "present": np.isfinite(feature_matrix(rows, used).astype(float)).sum(axis=0),
        "known": known.sum(axis=0).astype(float),
        "sum": np.where(known, x, 0.0).sum(axis=0),
    }


def add_sums(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Partial sums of several windows as one."""
    return {key: np.sum([p[key] for p in parts], axis=0) for key in parts[0]}


def ood_mean(sums: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums["sum"] / sums["known"]
    finite: np.ndarray = np.where(np.isfinite(mean), mean, 0.0)
    return finite


def _filled(rows: pd.DataFrame, features: tuple[str, ...], mean: np.ndarray) -> np.ndarray:
    x = feature_matrix(rows, ood_features(features)[1]).astype(float)
    centred: np.ndarray = np.where(np.isfinite(x), x, mean) - mean
    return centred


def ood_scatter(rows: pd.DataFrame, features: tuple[str, ...], mean: np.ndarray) -> np.ndarray:
    """Second pass, additive: the sum of outer products of the mean-filled, centred
    distance features."""
    centred = _filled(rows, features, mean)
    scatter: np.ndarray = centred.T @ centred
    return scatter


def inverse_covariance(sums: dict[str, np.ndarray], scatter: np.ndarray) -> np.ndarray:
    n = float(sums["n"][0])
    cov = scatter / max(n - 1.0, 1.0) + np.eye(len(scatter)) * 1e-6
    inverse: np.ndarray = np.linalg.pinv(cov)
    return inverse


def ood_distances(
    rows: pd.DataFrame,
    features: tuple[str, ...],
    sums: dict[str, np.ndarray],
    scatter: np.ndarray,
) -> np.ndarray:
    """Third pass: each row's squared Mahalanobis distance (only its quantiles are kept)."""
    centred = _filled(rows, features, ood_mean(sums))
    inv = inverse_covariance(sums, scatter)
    d2: np.ndarray = np.einsum("ij,jk,ik->i", centred, inv, centred)
    return d2


def ood_combine(
    features: tuple[str, ...], sums: dict[str, np.ndarray], scatter: np.ndarray, d2: np.ndarray
) -> dict[str, Any]:
    """The reference from the three passes' results."""
    used, distance = ood_features(features)
    n = float(sums["n"][0])
    return {
        "features": list(used),
        "distance_features": list(distance),
        "mean": ood_mean(sums).tolist(),
        "inv_cov": inverse_covariance(sums, scatter).tolist(),
        "d2_q95": float(np.quantile(d2, 0.95)),
        "d2_q99": float(np.quantile(d2, 0.99)),
        "present_fraction": (sums["present"] / max(n, 1.0)).tolist(),
    }
