"""The load response learned from weight probes (``model/load_response.py``) and the
promotion gate's check of it (``model/calibration.py``), on synthetic histories whose
true response the test knows: each server's latency moves by elasticity(u) x the load
step the probe schedule made, plus noise that has nothing to do with the probes.

Each test's docstring names the break it catches.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from veloflux.domain.probe_schedule import ProbeSettings, epoch_seconds, factors, probe_order
from veloflux.model.calibration import MIN_PROBE_MOVES, LoadCalibration, load_calibration
from veloflux.model.features import LOAD_STEP, TARGET_LATENCY, probe_moves
from veloflux.model.load_response import MIN_MOVES, fit_load_response, predict_elasticity
from veloflux.model.pipeline import gate
from veloflux.model.train import TrainedModel, split_by_time

POOL = "app"
UTILIZATION = "prom_utilization"
PROBES = ProbeSettings(size=0.1, share=0.2, hold_ticks=2, interval_seconds=10.0)
START = datetime(2026, 3, 1, tzinfo=UTC)
SERVERS = [f"s{i}" for i in range(10)]


def history(
    elasticity: Callable[[np.ndarray], np.ndarray], ticks: int = 400, seed: int = 1
) -> pd.DataFrame:
    """Ten servers, each at its own utilization (0.2 .. 0.9), ``ticks`` intervals; the
    weight steps are the probe schedule's, and the next interval's latency is this
    one's x exp(elasticity(u) x step) x lognormal noise (sd 10%)."""
    rng = np.random.default_rng(seed)
    order = probe_order(POOL, SERVERS)
    times = [START + timedelta(seconds=PROBES.interval_seconds * k) for k in range(ticks)]
    seconds = np.array([epoch_seconds(t) for t in times])
    frames = []
    for rank, server in enumerate(order):
        z = factors(len(order), np.full(ticks, rank), seconds, PROBES)
        # The row at time t carries the step into the next interval: z(t) - z(t - 1).
        step = z - np.concatenate([[0.0], z[:-1]])
        u = np.full(ticks, 0.2 + 0.7 * rank / (len(order) - 1))
        latency = np.full(ticks, 0.05)
        target = latency * np.exp(elasticity(u) * step + rng.normal(0, 0.1, ticks))
        frames.append(
            pd.DataFrame(
                {
                    "time": pd.to_datetime(times, utc=True),
                    "pool": POOL,
                    "server": server,
                    LOAD_STEP: step,
                    "latency": latency,
                    TARGET_LATENCY: target,
                    "request_rate": 100.0,
                    UTILIZATION: u,
                }
            )
        )
    return pd.concat(frames).sort_values(["time", "server"]).reset_index(drop=True)


def rising(u: np.ndarray) -> np.ndarray:
    """A queue's shape: elasticity u / (1 - u), capped."""
    out: np.ndarray = np.minimum(u / (1 - u), 5.0)
    return out


def fitted(frame: pd.DataFrame) -> TrainedModel:
    result = fit_load_response(frame, frame.iloc[:0], PROBES, UTILIZATION, seed=7, nthread=1)
    assert result is not None
    booster, features, moves = result
    assert features == (UTILIZATION,)
    assert moves >= MIN_MOVES
    unused = xgb.Booster()
    return TrainedModel((unused, unused, unused), unused, {}, (), booster, features)


def test_the_response_is_learned_from_the_probes_by_utilization() -> None:
    """Catches a response that ignores utilization, or is shrunk toward none: at a
    low and a high utilization the learned elasticity is within 30% of the truth."""
    model = fitted(history(rising, ticks=1200))
    assert model.load is not None
    probe = pd.DataFrame({UTILIZATION: [0.3, 0.8]})
    got = predict_elasticity(model.load, model.load_features, probe)
    truth = rising(np.array([0.3, 0.8]))
    assert got == pytest.approx(truth, rel=0.3)
    assert got[1] > 3 * got[0]


def test_too_few_probe_moves_give_no_response() -> None:
    """Catches a response fitted on a handful of noisy moves."""
    frame = history(rising, ticks=8)
    assert len(probe_moves(frame, PROBES)) < MIN_MOVES
    assert fit_load_response(frame, frame.iloc[:0], PROBES, UTILIZATION, 7, 1) is None


def test_a_right_response_passes_the_gate_and_a_wrong_one_does_not() -> None:
    """Catches a gate that cannot tell a model's response from what the probes did:
    on a fresh history the slope is near 1 for the response learned from the same
    world, and far above the band for one learned where load mattered a third as much
    (the model would underrate every load change), and the gate says which."""
    fresh = history(rising, ticks=800, seed=2)
    right = load_calibration(fitted(history(rising, ticks=1200)), fresh, PROBES)
    assert right.moves >= MIN_PROBE_MOVES
    assert right.slope == pytest.approx(1.0, abs=0.3)
    assert right.verdict() == ""
    weak = load_calibration(fitted(history(lambda u: rising(u) / 3, ticks=1200)), fresh, PROBES)
    assert weak.slope is not None
    assert weak.slope > 2.0
    assert "does not match the probes" in weak.verdict()


def test_noise_the_probes_did_not_cause_does_not_move_the_slope() -> None:
    """Catches a slope measured on every load move, not the probes': latency that
    drifts with something else (here, a trend shared by every server) averages out of
    both sums, because the schedule's sign is drawn by a clock."""
    fresh = history(rising, ticks=800, seed=3)
    fresh[TARGET_LATENCY] *= np.exp(np.linspace(0, 0.5, len(fresh)))
    calibration = load_calibration(fitted(history(rising, ticks=1200)), fresh, PROBES)
    assert calibration.slope == pytest.approx(1.0, abs=0.35)


@pytest.mark.parametrize(
    ("calibration", "promoted", "words"),
    [
        (LoadCalibration(1.1, 40), True, "load response confirmed by 40 probe moves"),
        (LoadCalibration(2.4, 40), False, "calibration slope 2.40 over 40 probe moves"),
        (LoadCalibration(None, 40), False, "undefined (no predicted rise)"),
        (LoadCalibration(1.0, 5), False, "5 weight-probe moves in the held-out windows"),
        (LoadCalibration(None, 0), True, "beats the naive baseline"),
    ],
    ids=["in band", "above", "flat model", "too few", "no probe ran"],
)
def test_the_gate_reads_the_calibration(
    calibration: LoadCalibration, promoted: bool, words: str
) -> None:
    """Catches a gate that promotes on forecasts alone where probes ran, or that
    refuses every model of a pool the probes never reached (no capacity rung there)."""
    metrics = {"mae_p50_seconds": 0.008, "naive_mae_seconds": 0.010}
    got, reason = gate(metrics, None, None, calibration)
    assert got is promoted
    assert words in reason


def test_the_slope_is_judged_on_both_windows_the_response_never_saw() -> None:
    """Catches the slope judged on the test window alone (the last eighth of the
    history: 10-15 probe moves of the 20 needed in the simulator's drift scenarios), or
    on rows the response learned from: the held-out rows are the calibration and test
    windows, in time order, after every training and validation row."""
    frame = history(rising, ticks=400)
    split = split_by_time(frame)
    held = split.held_out
    assert len(held) == len(split.calib) + len(split.test)
    assert held["time"].is_monotonic_increasing
    assert held["time"].min() > split.valid["time"].max()
    assert len(probe_moves(held, PROBES)) > len(probe_moves(split.test, PROBES))
