"""The load response learned from weight probes (``model/load_response.py``) and the
promotion gate's check of it (``model/calibration.py``), on synthetic histories whose
true response the test knows: each server's latency moves by elasticity(u) x the load
step the probe schedule made, plus noise that has nothing to do with the probes (and,
where a test says so, a drift of the server's speed).

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
from veloflux.model.features import LOAD_FEATURE, LOAD_STEP, TARGET_LATENCY, next_of, probe_moves
from veloflux.model.load_response import (
    IN_FLIGHT,
    MIN_MOVES,
    LoadResponse,
    fit_load_response,
)
from veloflux.model.pipeline import gate
from veloflux.model.train import TrainedModel, split_by_time

POOL = "app"
UTILIZATION = "prom_utilization"
PROBES = ProbeSettings(size=0.1, share=0.2, hold_ticks=2, interval_seconds=10.0)
START = datetime(2026, 3, 1, tzinfo=UTC)
SERVERS = [f"s{i}" for i in range(10)]


def history(
    elasticity: Callable[[np.ndarray], np.ndarray],
    ticks: int = 400,
    seed: int = 1,
    utilizations: tuple[float, float] = (0.2, 0.9),
    drift: float = 0.0,
    controller: float = 0.0,
) -> pd.DataFrame:
    """Ten servers, each at its own utilization (spread over ``utilizations``), ``ticks``
    intervals; the weight steps are the probe schedule's, and the next interval's
    latency is this one's x exp(elasticity(u) x step) x lognormal noise (sd 10%).

    With ``drift`` each server's speed also changes every interval (lognormal, sd
    ``drift``): its latency and utilization follow its service time, as a server's do
    when it slows, and the next interval's utilization is carried as the features
    carry it (``next_of``). With ``controller`` the weight steps also answer the drift
    as a capacity controller's do, at the same tick as the probe's: a server that just
    slowed by a factor f is cut by f^-controller."""
    rng = np.random.default_rng(seed)
    order = probe_order(POOL, SERVERS)
    times = [START + timedelta(seconds=PROBES.interval_seconds * k) for k in range(ticks)]
    seconds = np.array([epoch_seconds(t) for t in times])
    low, high = utilizations
    frames = []
    for rank, server in enumerate(order):
        z = factors(len(order), np.full(ticks, rank), seconds, PROBES)
        # The row at time t carries the step into the next interval: z(t) - z(t - 1).
        speed = np.exp(rng.normal(0, drift, ticks + 1)) if drift else np.ones(ticks + 1)
        slowed = np.log(speed[:-1] / np.concatenate([[1.0], speed[:-2]]))
        step = z - np.concatenate([[0.0], z[:-1]]) - controller * slowed
        u = (low + (high - low) * rank / (len(order) - 1)) * speed
        latency = 0.05 * speed
        response = elasticity(np.minimum(u[:-1], 0.95)) * step + rng.normal(0, 0.1, ticks)
        frames.append(
            pd.DataFrame(
                {
                    "time": pd.to_datetime(times, utc=True),
                    "pool": POOL,
                    "server": server,
                    LOAD_STEP: step,
                    "latency": latency[:-1],
                    TARGET_LATENCY: latency[1:] * np.exp(response),
                    "request_rate": 100.0,
                    LOAD_FEATURE: 100.0,
                    UTILIZATION: u[:-1],
                    next_of(UTILIZATION): u[1:],
                }
            )
        )
    return pd.concat(frames).sort_values(["time", "server"]).reset_index(drop=True)


def rising(u: np.ndarray) -> np.ndarray:
    """A queue's shape, at a fifth of a single queue's size: 0.2 x u / (1 - u)."""
    out: np.ndarray = 0.2 * u / (1 - u)
    return out


def fitted(frame: pd.DataFrame, utilization: str | None = UTILIZATION) -> TrainedModel:
    response = fit_load_response(frame, PROBES, utilization)
    assert response is not None
    assert response.feature == (utilization or IN_FLIGHT)
    assert response.moves >= MIN_MOVES
    unused = xgb.Booster()
    return TrainedModel((unused, unused, unused), unused, {}, (), response)


def elasticity_at(model: TrainedModel, utilization: list[float]) -> np.ndarray:
    assert model.load is not None
    return model.load.elasticity(pd.DataFrame({UTILIZATION: utilization}))


def test_the_response_is_learned_from_the_probes_by_utilization() -> None:
    """Catches a response that ignores utilization, or is shrunk toward none: at a
    low and a high utilization the learned elasticity is within 30% of the truth."""
    got = elasticity_at(fitted(history(rising, ticks=1200)), [0.3, 0.8])
    assert got == pytest.approx(rising(np.array([0.3, 0.8])), rel=0.3)
    assert got[1] > 3 * got[0]


def test_the_response_rises_past_the_utilizations_it_was_fitted_on() -> None:
    """Catches a response that stays flat beyond its training window (a regression on
    the utilizations seen does): fitted where every server ran at 20-60%, it predicts
    the rise at 85% within 30%."""
    got = elasticity_at(fitted(history(rising, ticks=1200, utilizations=(0.2, 0.6))), [0.85])
    assert got == pytest.approx(rising(np.array([0.85])), rel=0.3)


def test_a_drifting_speed_is_taken_out_of_what_a_probe_measured() -> None:
    """Catches a response read from the raw latency change while the servers' speeds
    drift (here by 20% each interval, twice a probe's step): with the service time's
    change taken out the scale is within 20% of the truth on each of four histories,
    and the fits spread at most a third as far as the raw change's on the same moves
    (without the next interval's utilization)."""
    truth = rising(np.array([0.5]))[0]
    denoised, raw = [], []
    for seed in range(1, 5):
        frame = history(rising, ticks=1200, drift=0.2, utilizations=(0.2, 0.5), seed=seed)
        denoised.append(elasticity_at(fitted(frame), [0.5])[0])
        raw.append(elasticity_at(fitted(frame.drop(columns=[next_of(UTILIZATION)])), [0.5])[0])
    assert denoised == pytest.approx([truth] * 4, rel=0.2)
    assert np.std(denoised) < np.std(raw) / 3


def test_a_controllers_move_at_the_probes_tick_does_not_bias_the_response() -> None:
    """Catches a response fitted on the run probes alone, by least squares on the load
    step: the controller cuts a server that just slowed at the probe's tick, so the
    probes that "ran" lean to slowed servers, and the step and the speed's drift back
    move together (such a fit reads about three times the truth here). On the raw
    latency change (no next utilization), with the schedule's sign as the instrument
    over every scheduled move, the fits of four histories average within 30% of the
    truth, and none reaches twice it."""
    truth = rising(np.array([0.5]))[0]
    fits = [
        elasticity_at(
            fitted(
                history(
                    rising,
                    ticks=1500,
                    drift=0.15,
                    controller=1.0,
                    utilizations=(0.2, 0.5),
                    seed=seed,
                ).drop(columns=[next_of(UTILIZATION)])
            ),
            [0.5],
        )[0]
        for seed in range(1, 5)
    ]
    assert np.mean(fits) == pytest.approx(truth, rel=0.3)
    assert max(fits) < 2 * truth


def test_without_utilization_the_pressure_is_the_requests_in_flight() -> None:
    """Catches a proxy-only response that reads a column the rows do not have: the
    pressure is rate x latency, and a busier server gets the larger elasticity."""
    frame = history(rising, ticks=600).drop(columns=[UTILIZATION, next_of(UTILIZATION)])
    model = fitted(frame, utilization=None)
    assert model.load is not None
    rows = pd.DataFrame({"request_rate": [100.0, 100.0], "latency": [0.01, 0.05]})
    got = model.load.elasticity(rows)
    assert 0 < got[0] < got[1]


def test_the_response_survives_the_registry_and_an_earlier_form_is_not_misread() -> None:
    """Catches a response lost between training and the predictor, or a model of the
    earlier form (a booster file, no scale) read as if it had this one."""
    response = LoadResponse(0.25, UTILIZATION, 40)
    assert LoadResponse.from_metadata(response.metadata()) == response
    assert LoadResponse.from_metadata({"features": [UTILIZATION], "moves": 40}) is None
    assert LoadResponse.from_metadata({}) is None


def test_too_few_probe_moves_give_no_response() -> None:
    """Catches a response fitted on a handful of noisy moves."""
    frame = history(rising, ticks=8)
    assert len(probe_moves(frame, PROBES)) < MIN_MOVES
    assert fit_load_response(frame, PROBES, UTILIZATION) is None


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
