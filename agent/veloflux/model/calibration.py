"""The model's load response, checked against what the weight probes did.

The optimizer uses one thing from the model: how a server's latency changes with the
load it is given. Forecast accuracy says nothing about that (a model can forecast
well from latency history alone and have no load response at all), so the promotion
gate also asks the probes (``decide/probes.py``): on the intervals where the probe
schedule changed a server's load, the latency change that followed, against the
change the model predicts for that step.

The estimate is an instrumental-variable ratio, sum(c x measured) / sum(c x
predicted), where c is the sign of the schedule's change (+1: load up into the next
interval). The schedule is a clock, so whatever else moved latency meanwhile (a
dispatcher's reaction, a slow-down) is as likely under either sign and averages out
of both sums. 1: the model's response matches what the probes did; 0: none; a
negative or missing denominator: the model predicts no rise, or a fall, with load.
Every scheduled change counts, run or not (``features.probe_moves`` says why); the
moves it rests on are those that ran. The measured change is the one
the load response learns from (``load_response.measured_change``): with a utilization
signal, the latency change less the service time's, which takes out a drift of the
server's own speed that no load step caused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from veloflux.domain.probe_schedule import ProbeSettings
from veloflux.model.features import LOAD_FEATURE, LOAD_STEP, probe_moves
from veloflux.model.load_response import IN_FLIGHT, measured_change
from veloflux.model.train import TrainedModel, feature_matrix

# The band a promoted model's calibration slope must fall in, and how many probe
# moves in the held-out windows (calibration and test) it takes to judge it.
SLOPE_BAND = (0.5, 1.5)
MIN_PROBE_MOVES = 20


@dataclass(frozen=True)
class LoadCalibration:
    """The slope (None when it cannot be computed) over ``moves`` probe moves."""

    slope: float | None
    moves: int

    def verdict(self) -> str:
        """ "" when the load response passes; else why not, in words for the gate."""
        if self.moves < MIN_PROBE_MOVES:
            return (
                f"its load response is not measured yet: {self.moves} weight-probe moves "
                f"in the held-out windows, {MIN_PROBE_MOVES} needed"
            )
        low, high = SLOPE_BAND
        if self.slope is None or not low <= self.slope <= high:
            shown = "undefined (no predicted rise)" if self.slope is None else f"{self.slope:.2f}"
            return (
                f"its load response does not match the probes: calibration slope {shown} "
                f"over {self.moves} probe moves (band {low}-{high})"
            )
        return ""


def load_calibration(
    model: TrainedModel, rows: pd.DataFrame, probes: ProbeSettings
) -> LoadCalibration:
    """The model's calibration slope on the probe moves among ``rows``."""
    if probes.size <= 0 or rows.empty:
        return LoadCalibration(None, 0)
    return calibration_on_moves(model, probe_moves(rows, probes))


def calibration_on_moves(model: TrainedModel, moved: pd.DataFrame) -> LoadCalibration:
    """``load_calibration`` on the probe moves already found (a Dask training finds
    them partition by partition: ``model/distributed.py``)."""
    ran = int(moved["ran"].sum()) if not moved.empty else 0
    if ran == 0:
        return LoadCalibration(None, 0)
    predicted = predicted_change(model, moved)
    measured = measured_change(moved, model.load.feature if model.load else IN_FLIGHT)
    known = np.isfinite(predicted) & np.isfinite(measured)
    sign = moved["probe"].to_numpy(dtype=float)[known]
    denominator = float(np.sum(sign * predicted[known]))
    if not denominator > 0:
        return LoadCalibration(None, ran)
    slope = float(np.sum(sign * measured[known])) / denominator
    return LoadCalibration(slope if math.isfinite(slope) else None, ran)


def predicted_change(model: TrainedModel, rows: pd.DataFrame) -> np.ndarray:
    """The model's log-latency change from no step to each row's load step: its load
    response's when it has one, else the median booster's, the load features set as
    the optimizer's counterfactual sets them."""
    step = rows[LOAD_STEP].to_numpy(dtype=float)
    if model.load is not None:
        response: np.ndarray = model.load.elasticity(rows) * step
        return response
    rate = rows["request_rate"].to_numpy(dtype=float)
    x = feature_matrix(rows, model.features)
    load, at_step = model.features.index(LOAD_FEATURE), model.features.index(LOAD_STEP)
    stepped, still = x.copy(), x.copy()
    stepped[:, load], stepped[:, at_step] = rate * np.exp(step), step
    still[:, load], still[:, at_step] = rate, 0.0
    median = model.latency[1]
    change: np.ndarray = np.asarray(median.inplace_predict(stepped), dtype=float)
    change -= np.asarray(median.inplace_predict(still), dtype=float)
    return change
