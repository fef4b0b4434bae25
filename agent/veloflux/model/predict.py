"""Prediction and confidence: what the model expects, and how far to trust it.

A ``Predictor`` wraps one loaded model version. It answers two questions for the
planner: how would each server's latency and errors respond to the rates it could be
given (``curves``), and how sure is the model about each server right now
(``confidence``). Confidence is the minimum of four parts, each in [0, 1], so that the
weakest reason wins and is named:

- ``width``: the calibrated 80% interval, relative to its median width at training
  (1 up to 1.5 times it, 0 at 3 times);
- ``realized``: the median relative error of the model's recent predictions for this
  server against what then happened, relative to the 90th percentile of its error on
  the test window (1 up to it, 0 at 3 times): a server is judged against the model's
  bad days, not its average ones, since servers differ in how predictable they are;
- ``ood``: how far the server's current state sits from the training data (one joint
  Mahalanobis distance, not a per-feature range check), leaving out the load the
  optimizer itself gives it; a feature the model always had that is now missing caps it;
- ``freshness``: 0 for a model older than ``max_model_age`` or observations older than
  the staleness limit, else 1.

Scoring uses one thread: it must stay fast while a training runs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloflux.errors import ModelUnavailable
from veloflux.history.frames import instants, server_keys
from veloflux.model.features import (
    FEATURES,
    LOAD_FEATURE,
    LOAD_STEP,
    TARGET_LATENCY,
    baseline_log_latency,
    checked_features,
)
from veloflux.model.load_response import LoadResponse
from veloflux.model.registry import LoadedModel
from veloflux.model.train import (
    LATENCY_TARGET,
    QUANTILES,
    feature_matrix,
    log_latency,
    quantile_name,
)

CONFIDENCE_PARTS = ("freshness", "width", "realized", "ood")
# How many of each server's latest judged intervals the realized-error part looks at.
REALIZED_INTERVALS = 3


@dataclass(frozen=True)
class Curves:
    """Predicted response per server (rows) at each candidate rate (columns)."""

    rates: np.ndarray  # (n, g) requests/s
    latency_p50: np.ndarray  # (n, g) seconds
    latency_p90: np.ndarray  # (n, g) seconds
    error_rate: np.ndarray  # (n, g) 0..1


@dataclass(frozen=True)
class Confidence:
    """Per-server confidence and its named parts."""

    value: np.ndarray  # (n,)
    parts: dict[str, np.ndarray]  # part name -> (n,)

    def parts_of(self, i: int) -> dict[str, float]:
        return {name: round(float(p[i]), 3) for name, p in self.parts.items()}

    def all_parts(self) -> list[dict[str, float]]:
        """``parts_of`` for every server at once (rounded as whole arrays: it runs per tick)."""
        columns = {name: np.round(p, 3).tolist() for name, p in self.parts.items()}
        return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]

    def weakest(self, i: int) -> str:
        return min(self.parts, key=lambda name: float(self.parts[name][i]))

    def most_common_weakest(self, below: float = 1.0) -> str:
        """The part that is weakest for the most servers under ``below`` (the first part
        wins ties). Servers above it are left out: for a fully confident server every
        part is 1, and counting it would name whichever part comes first."""
        stacked = np.vstack(list(self.parts.values()))
        unsure = self.value < below
        columns = stacked[:, unsure] if unsure.any() else stacked
        counts = np.bincount(np.argmin(columns, axis=0), minlength=len(self.parts))
        return list(self.parts)[int(np.argmax(counts))]


class Predictor:
    """One model version, ready to score; built from registry bytes, never pickles."""

    def __init__(self, loaded: LoadedModel) -> None:
        meta = loaded.metadata
        self.features = checked_features(meta.get("features", []), loaded.version)
        if meta.get("latency_target") != LATENCY_TARGET:
            raise ModelUnavailable(
                f"model {loaded.version} predicts latency in another form "
                f"({meta.get('latency_target', 'absolute')!r}); retrain it with this version"
            )
        self.version = loaded.version
        self.metadata: dict[str, Any] = dict(meta)
        self.trained_at = datetime.fromisoformat(str(meta.get("created_at")))
        self._q10, self._q50, self._q90 = (_booster(loaded, quantile_name(a)) for a in QUANTILES)
        self._errors = _booster(loaded, "errors")
        # The load response learned from the weight probes, when the model has one.
        self.load = LoadResponse.from_metadata(meta.get("load_response"))
        self._offset = float(meta["conformal_offset"])
        ood = meta["ood"]
        present = ood.get("features", FEATURES)
        self._presence_columns = [self.features.index(f) for f in present]
        # Models saved before the distance left the load out measured it over everything.
        distance = ood.get("distance_features", present)
        self._ood_columns = [self.features.index(f) for f in distance]
        self._mean = np.asarray(ood["mean"], dtype=float)
        self._inv_cov = np.asarray(ood["inv_cov"], dtype=float)
        self._d2_q95 = float(ood["d2_q95"])
        self._d2_q99 = float(ood["d2_q99"])
        self._width_ref = max(float(meta["width_reference"]), 1e-6)
        metrics = meta["metrics"]
        self._error_ref = max(
            float(metrics.get("p90_relative_error", metrics["median_relative_error"])), 1e-3
        )

    def _matrix(self, rows: pd.DataFrame, positions: np.ndarray | None = None) -> np.ndarray:
        """The model's input, column by column (cheaper than a sub-frame's interleave);
        only the rows at ``positions`` when given (cheaper than a sub-frame)."""
        return feature_matrix(rows, self.features, positions)

    def feature_gains(self, booster: str = "q90") -> dict[str, float]:
        """Each input feature's total gain in one booster (``q10``, ``q50``, ``q90``,
        ``errors``): which features the trees actually split on (diagnostics)."""
        chosen = {"q10": self._q10, "q50": self._q50, "q90": self._q90, "errors": self._errors}
        names = self.features
        scores = chosen[booster].get_score(importance_type="total_gain")
        gains = dict.fromkeys(names, 0.0)
        for key, value in scores.items():
            index = int(key[1:]) if key.startswith("f") and key[1:].isdigit() else None
            name = names[index] if index is not None else key
            gains[name] = gains.get(name, 0.0) + float(value)  # type: ignore[arg-type]
        return gains

    @staticmethod
    def _score(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(x), dtype=float)

    def curves(
        self,
        rows: pd.DataFrame,
        rates: np.ndarray,
        with_median: bool = True,
    ) -> Curves:
        """Latency and errors of each row's server at each of its candidate rates.

        The counterfactual is the next interval from the server's state now: the load
        features take the candidate (``next_rate``, and ``load_step`` as its log ratio
        to the current rate); the features that describe now (the current rate, share,
        sessions, utilization) stay as they are. Scaling those too would ask the trees
        about a different server, one that had carried that load all along, and across
        servers a large rate marks a large server, not a loaded one.

        Each curve is rearranged (running maximum along the rate axis) so that predicted
        latency and errors never fall as load rises, whatever the trees did, and p50 is
        kept at or below p90. The optimizer needs only p90 (``with_median=False``), and
        never the cost at a rate of 0 (it serves nothing there), so neither is scored.
        """
        n, g = rates.shape
        skip = 1 if g > 1 and not rates[:, 0].any() else 0
        x = np.repeat(self._matrix(rows), g - skip, axis=0)
        candidate = rates[:, skip:].reshape(-1)
        x[:, self.features.index(LOAD_FEATURE)] = candidate
        current = np.repeat(rows["request_rate"].to_numpy(dtype=float, na_value=np.nan), g - skip)
        known = np.isfinite(current) & (current > 0) & (candidate > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(known, np.log(candidate / np.where(known, current, 1.0)), np.nan)
        x[:, self.features.index(LOAD_STEP)] = step
        base = np.repeat(_baselines(rows), g - skip)
        if self.load is not None:
            # The latency boosters at the status quo, the probes' load response on top.
            x[:, self.features.index(LOAD_FEATURE)] = np.where(known, current, candidate)
            x[:, self.features.index(LOAD_STEP)] = 0.0
            elasticity = self.load.elasticity(rows)
            base = base + np.repeat(elasticity, g - skip) * np.nan_to_num(step)

        def curve(values: np.ndarray) -> np.ndarray:
            grid = values.reshape(n, g - skip)
            if skip:
                grid = np.hstack([grid[:, :1], grid])
            out: np.ndarray = np.maximum.accumulate(grid, axis=1)
            return out

        p90 = curve(np.exp(self._score(self._q90, x) + base))
        p50 = (
            curve(np.exp(self._score(self._q50, x) + base))
            if with_median
            else np.full_like(p90, np.nan)
        )
        return Curves(
            rates=rates,
            latency_p50=np.minimum(p50, p90) if with_median else p50,
            latency_p90=np.maximum(p50, p90) if with_median else p90,
            error_rate=np.clip(curve(self._score(self._errors, x)), 0.0, 1.0),
        )

    def confidence(self, now_rows: pd.DataFrame, recent: pd.DataFrame, fresh: bool) -> Confidence:
        """Confidence for each row of ``now_rows`` (one per server, status-quo load).

        ``recent`` holds the same servers' recent rows; those whose next interval is
        known are judged by the realized-error part. ``fresh`` is False when the model or the
        observations are too old.
        """
        x = self._matrix(now_rows)
        low, high = self._score(self._q10, x), self._score(self._q90, x)
        width = np.abs(high - low) + 2 * self._offset
        # No latency reading to anchor the forecast to: no interval, no trust.
        width[~np.isfinite(baseline_log_latency(now_rows))] = np.inf
        # Freshness first: when parts tie, the most basic reason is the one named.
        parts = {
            "freshness": np.full(len(now_rows), 1.0 if fresh else 0.0),
            "width": ratio_score(width / self._width_ref, typical=1.5),
            "realized": self._realized(now_rows, recent),
            "ood": self._ood(x),
        }
        value = np.min(np.vstack(list(parts.values())), axis=0)
        return Confidence(value=value, parts=parts)

    def _ood(self, x: np.ndarray) -> np.ndarray:
        """1 inside the bulk of the training data, falling to 0 far outside it.

        A feature the model always had but is now missing counts as far away: a
        prediction without it rests on less than the model learned from.
        """
        values = x[:, self._ood_columns].astype(float)
        filled = np.where(np.isfinite(values), values, self._mean)
        centred = filled - self._mean
        d2 = np.einsum("ij,jk,ik->i", centred, self._inv_cov, centred)
        far = 4.0 * max(self._d2_q99, self._d2_q95 + 1e-6)
        score = np.clip((far - d2) / (far - self._d2_q95), 0.0, 1.0)
        missing = ~np.isfinite(x[:, self._presence_columns].astype(float))
        usually_present = np.asarray(self.metadata["ood"]["present_fraction"]) > 0.9
        lost = (missing & usually_present).sum(axis=1)
        capped = np.minimum(score, 0.5 / np.maximum(lost, 1))
        return np.asarray(np.where(lost > 0, capped, score))

    def _realized(self, now_rows: pd.DataFrame, recent: pd.DataFrame) -> np.ndarray:
        """Median relative error of recent predictions for each server, as a score.

        Only the last ``REALIZED_INTERVALS`` judged instants count, and a server must
        have been judged in every one of them; otherwise it scores 0: the model has not
        shown it can predict this server yet (a server seen for the first time).
        Errors are laid out as a (server, instant) table with index lookups rather than
        a group-by, since this runs for every pool on every tick.
        """
        n = len(now_rows)
        if recent.empty or n == 0:
            return np.zeros(n)
        times = instants(recent)
        target = recent[TARGET_LATENCY].to_numpy(dtype=float, na_value=np.nan)
        known = ~np.isnan(target)
        last_times = np.unique(times[known])[-REALIZED_INTERVALS:]
        if len(last_times) == 0:
            return np.zeros(n)
        judged_now = np.flatnonzero(known & (times >= last_times[0]))
        x = self._matrix(recent, judged_now)
        base = baseline_log_latency(recent)[judged_now]
        q50 = np.exp(self._score(self._q50, x) + base)
        actual = np.exp(log_latency(target[judged_now]))
        slot = server_keys(now_rows).get_indexer(server_keys(recent, judged_now))
        column = np.searchsorted(last_times, times[judged_now])
        table = np.full((n, len(last_times)), np.nan)
        seen = slot >= 0
        table[slot[seen], column[seen]] = (np.abs(q50 - actual) / actual)[seen]
        judged = np.isfinite(table).sum(axis=1) >= REALIZED_INTERVALS
        score = np.zeros(n)
        if judged.any():
            ratio = np.median(table[judged], axis=1) / self._error_ref
            score[judged] = ratio_score(ratio, typical=1.0)
        return score


def _baselines(rows: pd.DataFrame) -> np.ndarray:
    """Each row's log-latency baseline; a server without one borrows its pool's median,
    so that its curve stays finite (its confidence is 0, so it is not driven by it)."""
    base = baseline_log_latency(rows)
    known = np.isfinite(base)
    if known.all():
        return base
    fill = float(np.median(base[known])) if known.any() else 0.0
    return np.where(known, base, fill)


def ratio_score(ratio: np.ndarray, typical: float, hopeless: float = 3.0) -> np.ndarray:
    """1 up to ``typical`` times the reference, falling linearly to 0 at ``hopeless``."""
    score: np.ndarray = np.clip((hopeless - ratio) / (hopeless - typical), 0.0, 1.0)
    return score


def _booster(loaded: LoadedModel, name: str) -> xgb.Booster:
    if name not in loaded.boosters:
        raise ModelUnavailable(f"model {loaded.version} has no '{name}' booster")
    if not loaded.boosters[name]:  # XGBoost aborts the process on an empty buffer
        raise ModelUnavailable(f"model {loaded.version}: '{name}' is empty")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(loaded.boosters[name]))
    except (xgb.core.XGBoostError, UnicodeDecodeError) as exc:
        # A damaged buffer can make XGBoost's own error message undecodable.
        raise ModelUnavailable(f"model {loaded.version}: '{name}' does not load: {exc}") from None
    booster.set_param({"nthread": 1})
    return booster
