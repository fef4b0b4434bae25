"""The model's load response: how much a server's latency rises with its load, learned
from the weight probes alone.

The latency boosters forecast the next interval from a server's state. Asked about a
load step they answer poorly: the probes that show one are a few rows in a hundred,
and the trees, spending their splits on latency history, predicted a fifth or less of
the latency change the probes measured (bench/bench_model_load.py). So the response
is a model of its own: a small XGBoost regression of the *elasticity* (change of log
latency per unit of log load) on utilization, fitted on the probe moves only (where
a clock, not a latency, moved the load: ``model/calibration.py``). Each such row
gives an unbiased, noisy elasticity, measured change / step; the booster averages
them by utilization, monotone (a busier server is never less sensitive to load), so
that servers of every size share one curve.

Prediction is then the latency boosters' forecast at the status quo (no step), plus
elasticity x log(candidate rate / current rate). Without utilization (a proxy-only
agent) the in-flight sessions and the queue stand in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloflux.domain.probe_schedule import ProbeSettings
from veloflux.model.features import LOAD_STEP, TARGET_LATENCY, probe_moves

BOOSTER = "load_response"
MIN_MOVES = 20  # probe moves to fit on; fewer and the model has no load response
FALLBACK_FEATURES = ("sessions", "queue")


def response_features(utilization: str | None, columns: Sequence[str]) -> tuple[str, ...]:
    """What the elasticity is learned on: the utilization column when the rows have it,
    else the in-flight figures."""
    if utilization and utilization in columns:
        return (utilization,)
    return FALLBACK_FEATURES


def fit_load_response(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    probes: ProbeSettings,
    utilization: str | None,
    seed: int,
    nthread: int,
) -> tuple[xgb.Booster, tuple[str, ...], int] | None:
    """The elasticity booster, its features and the number of probe moves it rests on;
    None with fewer than ``MIN_MOVES`` probe moves in ``train``."""
    moves = probe_moves(train, probes)
    if len(moves) < MIN_MOVES:
        return None
    features = response_features(utilization, list(train.columns))
    params: dict[str, Any] = {
        "objective": "reg:squarederror",
        "tree_method": "hist",
        "max_depth": 2,
        "eta": 0.1,
        "min_child_weight": 10.0,
        "lambda": 10.0,
        "seed": seed,
        "nthread": nthread,
        "monotone_constraints": "(" + ",".join("1" for _ in features) + ")",
    }
    train_m = _matrix(moves, features, elasticities(moves))
    checks = probe_moves(valid, probes)
    if len(checks) >= MIN_MOVES // 2:
        stop = xgb.callback.EarlyStopping(rounds=10, save_best=True)
        valid_m = _matrix(checks, features, elasticities(checks))
        booster = xgb.train(
            params, train_m, 60, evals=[(valid_m, "valid")], callbacks=[stop], verbose_eval=False
        )
    else:
        booster = xgb.train(params, train_m, 30)
    return booster, features, len(moves)


def elasticities(moves: pd.DataFrame) -> np.ndarray:
    """Each probe move's measured elasticity: change of log latency over the load step."""
    measured = np.log(moves[TARGET_LATENCY].to_numpy(dtype=float))
    measured -= np.log(moves["latency"].to_numpy(dtype=float))
    values: np.ndarray = measured / moves[LOAD_STEP].to_numpy(dtype=float)
    return values


def predict_elasticity(
    booster: xgb.Booster, features: Sequence[str], rows: pd.DataFrame
) -> np.ndarray:
    """Each row's elasticity (never below 0: load never lowers latency)."""
    x = _columns(rows, features)
    values = np.asarray(booster.inplace_predict(x), dtype=float)
    clipped: np.ndarray = np.maximum(values, 0.0)
    return clipped


def _columns(rows: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    n = len(rows)
    out = [
        rows[f].to_numpy(dtype=np.float32, na_value=np.nan)
        if f in rows
        else np.full(n, np.nan, dtype=np.float32)
        for f in features
    ]
    return np.column_stack(out) if out else np.zeros((n, 0), dtype=np.float32)


def _matrix(rows: pd.DataFrame, features: Sequence[str], label: np.ndarray) -> xgb.DMatrix:
    return xgb.DMatrix(
        _columns(rows, features), label=label, feature_names=list(features), missing=np.nan
    )
