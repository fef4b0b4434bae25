"""What a latency forecast is: the quantiles, the trained boosters that make it, and
the arithmetic every consumer shares (the feature matrix, log latency, the quantiles
of a frame).

Training (``model/train.py``), its figures (``model/evaluation.py``), prediction and
the Dask path all build on these; keeping them below those modules keeps the import
graph a tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloflux.model.features import (
    FEATURES,
    TARGET_ERROR_RATE,
    baseline_log_latency,
)
from veloflux.model.load_response import LoadResponse

QUANTILES = (0.1, 0.5, 0.9)
# What the latency boosters predict; a model that says otherwise is refused.
LATENCY_TARGET = "log ratio to baseline_log_latency"
LOG_FLOOR_SECONDS = 1e-4  # 0.1 ms: keeps log() finite for instant replies


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


def error_label(rows: pd.DataFrame) -> np.ndarray:
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
