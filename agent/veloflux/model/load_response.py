"""The model's load response: how much a server's latency rises with its load, learned
from the weight probes alone.

The latency boosters forecast the next interval from a server's state. Asked about a
load step they answer poorly: the probes that show one are a few rows in a hundred,
and the trees, spending their splits on latency history, predicted a fifth or less of
the latency change the probes measured (bench/bench_model_load.py). So the response
is a model of its own, fitted on the probe moves only (where a clock, not a latency,
moved the load: ``model/calibration.py``).

Its shape is a queue's. A server's latency is its service time times a queueing
factor, and only the factor answers load: its elasticity (change of log latency per
unit of log load) grows with the server's *pressure*, u / (1 - u) at utilization u
(the mean number of requests in a single queue), so that a busier server is more
sensitive to load, and servers of every size share one curve. The response is
elasticity = scale x pressure, with one number, the scale, fitted on the probes: how
much of a single queue's response the pool shows (a dispatcher that keeps queues
short, as least-connections does, shows a fraction of it). A shape fixed in advance
extrapolates to the hotter intervals a model is used in; a regression on the
utilizations the training window happened to hold (an XGBoost regression was tried)
stays flat past them, and the probes then measured about twice the rise it predicted.

What a probe move measured is the change of the queueing factor: the change of log
latency less the change of log service time (busy time per completion: utilization
over request rate) where the utilization signal gives it. A server whose speed drifts
moves its latency by far more than a 10% probe does, and which probes run depends on
it (a server whose estimate just fell is left alone), so the raw latency change is
noisy and can be biased; the service time's change takes the drift out (in the
simulator's drift scenarios the calibration slope's 90% intervals narrowed four- to
sixfold: docs/benchmarks.md).
Without utilization (a proxy-only agent) the pressure is the mean number of requests
in the server, rate x latency (Little's law), and the raw latency change is used.

Prediction is then the latency boosters' forecast at the status quo (no step), plus
elasticity x log(candidate rate / current rate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from veloflux.domain.probe_schedule import ProbeSettings
from veloflux.model.features import (
    LOAD_FEATURE,
    LOAD_STEP,
    TARGET_LATENCY,
    next_of,
    probe_moves,
)

MIN_MOVES = 20  # probe moves to fit on; fewer and the model has no load response
MAX_UTILIZATION = 0.95  # pressure is capped here: 19 requests deep
IN_FLIGHT = "in_flight"  # the pressure's input without utilization: rate x latency
FORM = "queue"


@dataclass(frozen=True)
class LoadResponse:
    """elasticity = ``scale`` x pressure; ``feature`` the utilization column the
    pressure is read from, or ``IN_FLIGHT``; fitted on ``moves`` probe moves."""

    scale: float
    feature: str
    moves: int

    def elasticity(self, rows: pd.DataFrame) -> np.ndarray:
        """Each row's elasticity; 0 where its pressure is unknown (no rise is assumed
        rather than one borrowed from another server)."""
        values: np.ndarray = self.scale * np.nan_to_num(pressure(rows, self.feature), nan=0.0)
        return values

    def metadata(self) -> dict[str, Any]:
        return {"form": FORM, "features": [self.feature], "scale": self.scale, "moves": self.moves}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None) -> LoadResponse | None:
        """The response a model's metadata describes; None when it has none (too few
        probes), or one of an earlier form (its file is not read: the next training
        fits this form)."""
        if not meta or meta.get("form") != FORM:
            return None
        scale, features = float(meta["scale"]), list(meta["features"])
        if not math.isfinite(scale) or scale < 0 or len(features) != 1:
            return None
        return cls(scale, str(features[0]), int(meta.get("moves", 0)))


def response_feature(utilization: str | None, columns: pd.Index | list[str]) -> str:
    """What the pressure is read from: the utilization column when the rows have it,
    else the in-flight requests."""
    if utilization and utilization in columns:
        return utilization
    return IN_FLIGHT


def pressure(rows: pd.DataFrame, feature: str) -> np.ndarray:
    """Each row's pressure: u / (1 - u), u capped at ``MAX_UTILIZATION``; or the mean
    requests in the server (rate x latency) for ``IN_FLIGHT``. NaN where unknown."""
    if feature == IN_FLIGHT:
        rate = rows["request_rate"].to_numpy(dtype=float, na_value=np.nan)
        latency = rows["latency"].to_numpy(dtype=float, na_value=np.nan)
        in_flight: np.ndarray = np.where((rate >= 0) & (latency >= 0), rate * latency, np.nan)
        return in_flight
    if feature not in rows:
        return np.full(len(rows), np.nan)
    u = np.clip(rows[feature].to_numpy(dtype=float, na_value=np.nan), 0.0, MAX_UTILIZATION)
    out: np.ndarray = u / (1.0 - u)
    return out


def measured_change(moves: pd.DataFrame, feature: str) -> np.ndarray:
    """Each probe move's change of log latency from its interval to the next, less its
    change of log service time (utilization / request rate) where ``feature`` is a
    utilization column and both intervals give it."""
    change: np.ndarray = np.log(moves[TARGET_LATENCY].to_numpy(dtype=float))
    change -= np.log(moves["latency"].to_numpy(dtype=float))
    following = next_of(feature)
    if feature == IN_FLIGHT or feature not in moves or following not in moves:
        return change
    now = _service(moves[feature], moves["request_rate"])
    then = _service(moves[following], moves[LOAD_FEATURE])
    with np.errstate(divide="ignore", invalid="ignore"):
        drift = np.log(then / now)
    out: np.ndarray = np.where(np.isfinite(drift), change - drift, change)
    return out


def _service(utilization: pd.Series, rate: pd.Series) -> np.ndarray:
    u = utilization.to_numpy(dtype=float, na_value=np.nan)
    r = rate.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = np.where((u > 0) & (r > 0), u / r, np.nan)
    return out


def fit_load_response(
    rows: pd.DataFrame, probes: ProbeSettings, utilization: str | None
) -> LoadResponse | None:
    """The response fitted on the scheduled probe moves among ``rows``; None with fewer
    than ``MIN_MOVES`` probes that ran, or none with a known pressure.

    The scale is an instrumental-variable fit of each move's measured change on
    pressure x load step, the instrument the schedule's sign x pressure
    (``features.probe_moves`` says why on every scheduled move, not the run ones); a
    fit below 0 (load lowering latency) is taken as 0.
    """
    return fit_on_moves(probe_moves(rows, probes), response_feature(utilization, rows.columns))


def fit_on_moves(moves: pd.DataFrame, feature: str) -> LoadResponse | None:
    """``fit_load_response`` on moves already found (``features.probe_moves``): a Dask
    training finds them partition by partition (``model/distributed.py``)."""
    p = pressure(moves, feature)
    x = p * moves[LOAD_STEP].to_numpy(dtype=float)
    y = measured_change(moves, feature)
    known = np.isfinite(x) & np.isfinite(y)
    ran = int(moves["ran"].to_numpy(dtype=bool)[known].sum())
    instrument = moves["probe"].to_numpy(dtype=float)[known] * p[known]
    first_stage = float(np.sum(instrument * x[known]))
    if ran < MIN_MOVES or not first_stage > 0:
        return None
    scale = float(np.sum(instrument * y[known])) / first_stage
    return LoadResponse(max(scale, 0.0), feature, ran)
