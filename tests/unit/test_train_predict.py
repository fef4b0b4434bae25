"""Training on synthetic history, prediction from registry bytes, and confidence.

One small model is trained per module (about 1,800 rows, 30 rounds, one thread) and
shared by the tests that only read it.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st

from integration.synthetic import SyntheticPool
from tests.unit.learning_factories import (
    FAST,
    StepClock,
    synthetic_features,
    synthetic_observation,
    synthetic_raw,
)
from veloflux.config.schema import AISection, OutlierSection, PolicySection
from veloflux.decide.advisor import AdvisorSettings, advise
from veloflux.decide.planner import plan_weights
from veloflux.domain.advice import Advice
from veloflux.errors import ModelUnavailable
from veloflux.history.rates import derive_rates
from veloflux.model.features import (
    FEATURES,
    LOAD_DRIVEN,
    LOAD_FEATURE,
    LOAD_STEP,
    TARGET_LATENCY,
    at_status_quo,
    baseline_log_latency,
    build_features,
    monotone_constraints,
    newest_rows,
    training_rows,
)
from veloflux.model.predict import CONFIDENCE_PARTS, Predictor
from veloflux.model.registry import LoadedModel, Registry
from veloflux.model.train import (
    QUANTILES,
    NotEnoughData,
    Split,
    TrainedModel,
    TrainSettings,
    log_latency,
    predict_log_quantiles,
    quantile_name,
    split_by_time,
    train_model,
)
from veloflux.util.events import Events

CREATED = datetime(2026, 9, 21, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def trained() -> tuple[TrainedModel, Split]:
    return train_model(synthetic_features(), FAST)


@pytest.fixture(scope="module")
def model(trained: tuple[TrainedModel, Split]) -> TrainedModel:
    return trained[0]


@pytest.fixture(scope="module")
def split(trained: tuple[TrainedModel, Split]) -> Split:
    return trained[1]


def loaded_from_memory(model: TrainedModel, **changes: Any) -> LoadedModel:
    """What the registry would hand back, without the disk."""
    meta = {**model.metadata, "created_at": CREATED.isoformat(), **changes}
    return LoadedModel("20260921T000000Z-00000000", meta, model.booster_bytes())


@pytest.fixture(scope="module")
def predictor(model: TrainedModel) -> Predictor:
    return Predictor(loaded_from_memory(model))


# --- training -----------------------------------------------------------------------------


def test_the_model_trains_and_beats_the_naive_baseline(model: TrainedModel) -> None:
    metrics = model.metadata["metrics"]
    assert metrics["mae_p50_seconds"] < metrics["naive_mae_seconds"]
    assert metrics["pinball_p90"] < metrics["naive_pinball_p90"]
    assert model.metadata["features"] == list(FEATURES)
    assert model.metadata["quantiles"] == list(QUANTILES)
    rows = model.metadata["rows"]
    assert sum(rows.values()) == len(training_rows(synthetic_features()))
    assert metrics["rows"] == rows["test"]


@pytest.mark.parametrize("seed", [3, 5, 8])
def test_calibrated_coverage_on_the_test_window_is_near_eighty_percent(seed: int) -> None:
    """The 80% interval is conformalized on the calibration window (12.5%: ~220 rows
    here) and scored on the next 12.5%. With ~220 rows a binomial proportion at 0.8 has
    a standard error of ~0.027, the offset itself is an estimate from as many rows, and
    the two windows sit at different points of the synthetic daily wave; 0.65-0.95 is
    about +-5 standard errors, loose enough to never flake yet far from the raw,
    uncalibrated q10..q90, and from "always" or "never"."""
    spec = SyntheticPool(servers=6, intervals=300, seed=seed)
    model, _ = train_model(synthetic_features(spec), FAST)
    coverage = model.metadata["metrics"]["coverage_80"]
    assert 0.65 <= coverage <= 0.95


def test_the_conformal_offset_covers_the_calibration_window(
    model: TrainedModel, split: Split
) -> None:
    offset = model.metadata["conformal_offset"]
    q = predict_log_quantiles(model.latency, split.calib)
    y = log_latency(split.calib[TARGET_LATENCY])
    covered = np.mean((y >= q[:, 0] - offset) & (y <= q[:, 2] + offset))
    assert covered >= 0.8


def test_reported_coverage_is_what_the_interval_does_on_the_test_window(
    model: TrainedModel, split: Split
) -> None:
    offset = model.metadata["conformal_offset"]
    q = predict_log_quantiles(model.latency, split.test)
    y = log_latency(split.test[TARGET_LATENCY])
    covered = np.mean((y >= q[:, 0] - offset) & (y <= q[:, 2] + offset))
    assert covered == pytest.approx(model.metadata["metrics"]["coverage_80"], abs=1e-9)


def test_the_split_is_in_time_order_without_overlap(split: Split) -> None:
    parts = [split.train, split.valid, split.calib, split.test]
    for earlier, later in itertools.pairwise(parts):
        assert earlier["time"].max() <= later["time"].min()
    again = split_by_time(pd.concat(parts))
    assert [len(p) for p in parts] == [
        len(again.train),
        len(again.valid),
        len(again.calib),
        len(again.test),
    ]


def test_quantiles_never_cross(model: TrainedModel, split: Split) -> None:
    q = predict_log_quantiles(model.latency, split.test)
    assert (np.diff(q, axis=1) >= 0).all()


def test_the_same_history_gives_the_same_model(model: TrainedModel) -> None:
    again, _ = train_model(synthetic_features(), FAST)
    assert again.booster_bytes() == model.booster_bytes()


def test_not_enough_data_says_how_much_there_is_and_is_needed() -> None:
    features = synthetic_features(SyntheticPool(servers=2, intervals=12, seed=1))
    usable = len(training_rows(features))
    with pytest.raises(NotEnoughData) as caught:
        train_model(features, TrainSettings(min_rows=50, max_rounds=5, nthread=1))
    message = str(caught.value)
    assert f"{usable} usable rows" in message
    assert "at least 50" in message


def test_an_empty_history_is_not_enough_data() -> None:
    with pytest.raises(NotEnoughData, match=r"0 usable rows.*at least 50"):
        train_model(synthetic_features().iloc[:0], FAST)


def test_the_served_model_is_the_one_early_stopping_chose(model: TrainedModel) -> None:
    rows = synthetic_features().iloc[:200]
    x = rows[list(FEATURES)].to_numpy(dtype=np.float32)
    named = {quantile_name(a): b for a, b in zip(QUANTILES, model.latency, strict=True)}
    for name, booster in (*named.items(), ("errors", model.errors)):
        best = model.metadata["best_iteration"][name]
        chosen = booster.inplace_predict(x, iteration_range=(0, best + 1))
        served = booster.inplace_predict(x)
        np.testing.assert_allclose(served, chosen, err_msg=name)


# --- curves ----------------------------------------------------------------------------------

rate_grids = st.lists(
    st.floats(min_value=0.0, max_value=2000.0, allow_nan=False), min_size=1, max_size=12
).map(sorted)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=6),
    st.lists(rate_grids, min_size=1, max_size=6),
)
def test_predicted_curves_never_fall_as_load_rises(
    predictor: Predictor, picks: list[int], grids: list[list[float]]
) -> None:
    features = synthetic_features()
    rows = features.iloc[[p % len(features) for p in picks]]
    width = max(len(g) for g in grids)
    # One ascending grid per row (shorter ones padded with their own maximum).
    padded = [(g + [g[-1]] * width)[:width] for g in grids]
    rates = np.array([padded[i % len(padded)] for i in range(len(rows))])
    curves = predictor.curves(rows, rates)
    assert curves.latency_p50.shape == rates.shape
    for values in (curves.latency_p50, curves.latency_p90, curves.error_rate):
        assert np.isfinite(values).all()
        assert (np.diff(values, axis=1) >= 0).all()
    assert (curves.latency_p50 <= curves.latency_p90).all()
    assert (curves.latency_p50 > 0).all()
    assert ((curves.error_rate >= 0) & (curves.error_rate <= 1)).all()


def test_curves_are_rearranged_even_for_trees_that_learned_the_opposite(
    model: TrainedModel,
) -> None:
    """Boosters trained, without constraints, on latency and errors that *fall* with
    load: the curves must still never fall (the running maximum, not the trees, is
    what guarantees it)."""
    rows = training_rows(synthetic_features())
    x = rows[list(FEATURES)].to_numpy(dtype=np.float32)
    load = rows[LOAD_FEATURE].to_numpy(dtype=float) / float(rows[LOAD_FEATURE].max())
    common = {"max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 1}

    def fit(params: dict[str, Any], label: np.ndarray) -> bytes:
        matrix = xgb.DMatrix(x, label=label, feature_names=list(FEATURES))
        return bytes(xgb.train({**common, **params}, matrix, 20).save_raw("ubj"))

    boosters = {
        quantile_name(a): fit(
            {"objective": "reg:quantileerror", "quantile_alpha": a}, np.log(0.05) - 2.0 * load
        )
        for a in QUANTILES
    }
    boosters["errors"] = fit({"objective": "reg:logistic"}, 0.5 - 0.4 * load)
    meta = {**model.metadata, "created_at": CREATED.isoformat()}
    backwards = Predictor(LoadedModel("20260921T000000Z-0000back", meta, boosters))
    sample = rows.iloc[::50]
    grid = np.tile(np.linspace(0.0, float(rows[LOAD_FEATURE].max()), 9), (len(sample), 1))
    raw_x = np.repeat(sample[list(FEATURES)].to_numpy(dtype=np.float32), 9, axis=0)
    raw_x[:, FEATURES.index(LOAD_FEATURE)] = grid.reshape(-1)
    raw = xgb.Booster()
    raw.load_model(bytearray(boosters[quantile_name(0.5)]))
    raw_p50 = np.asarray(raw.inplace_predict(raw_x)).reshape(len(sample), 9)
    assert (np.diff(raw_p50, axis=1) < 0).any()  # the trees do fall along the grid
    curves = backwards.curves(sample, grid)
    for values in (curves.latency_p50, curves.latency_p90, curves.error_rate):
        assert (np.diff(values, axis=1) >= 0).all()
    assert (curves.latency_p50 <= curves.latency_p90).all()


def test_curves_at_one_rate_are_the_trained_models_quantiles(
    model: TrainedModel, predictor: Predictor, split: Split
) -> None:
    # At the status quo (the next interval's rate = the current one, as the advisor
    # asks) the counterfactual moves nothing: the curve is the boosters' own output.
    rows = status_quo(split.test.iloc[:50])
    curves = predictor.curves(rows, rows[[LOAD_FEATURE]].to_numpy(dtype=float))
    p50, p90 = raw_median_and_p90(model, rows)
    np.testing.assert_allclose(curves.latency_p50[:, 0], p50, rtol=1e-6)
    np.testing.assert_allclose(curves.latency_p90[:, 0], p90, rtol=1e-6)


def status_quo(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the next interval's load set to the current one."""
    return at_status_quo(rows)


def test_the_counterfactual_moves_only_the_load_features(
    model: TrainedModel, predictor: Predictor, split: Split
) -> None:
    """Catches a counterfactual that scales the features describing now (the current
    rate, share, sessions: across servers a large rate marks a large server, not a
    loaded one) or leaves the load step at the status quo: at twice the current rate
    the curve is the boosters' output on rows whose next rate is doubled and whose
    load step is log 2, everything else as it was."""
    rows = status_quo(split.test.iloc[:40].dropna(subset=["request_rate"]))
    rows = rows[rows["request_rate"] > 0]
    doubled = rows.copy()
    doubled[LOAD_FEATURE] = rows["request_rate"] * 2.0
    doubled[LOAD_STEP] = math.log(2)
    curves = predictor.curves(rows, 2.0 * rows[["request_rate"]].to_numpy(dtype=float))
    np.testing.assert_allclose(curves.latency_p90[:, 0], raw_median_and_p90(model, doubled)[1])


def raw_median_and_p90(model: TrainedModel, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The two boosters' own predictions (ratios to each row's baseline) in seconds,
    uncrossed: what the curves promise to give."""
    x = rows[list(FEATURES)].to_numpy(dtype=np.float32)
    base = baseline_log_latency(rows)
    q50, q90 = (
        np.exp(np.asarray(b.inplace_predict(x), dtype=float) + base) for b in model.latency[1:]
    )
    return np.minimum(q50, q90), np.maximum(q50, q90)


# --- from the registry ------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models", StepClock(CREATED), Events())


def test_a_predictor_from_registry_bytes_predicts_like_the_trained_boosters(
    model: TrainedModel, registry: Registry, split: Split
) -> None:
    entry = registry.save(model.booster_bytes(), model.metadata)
    registry.promote(entry.version, "test")
    from_disk = Predictor(registry.load())
    assert from_disk.version == entry.version
    assert from_disk.trained_at == CREATED
    in_memory = Predictor(loaded_from_memory(model))
    rows = split.test
    grid = np.outer(rows["request_rate"].fillna(1.0).to_numpy(), [0.5, 1.0, 1.5])
    a, b = from_disk.curves(rows, grid), in_memory.curves(rows, grid)
    for name in ("latency_p50", "latency_p90", "error_rate"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    quo = status_quo(rows)
    single = from_disk.curves(quo, quo[[LOAD_FEATURE]].to_numpy(dtype=float))
    expected, _ = raw_median_and_p90(model, quo)
    np.testing.assert_allclose(single.latency_p50[:, 0], expected, rtol=1e-6)
    errors = model.errors.inplace_predict(rows[list(FEATURES)].to_numpy(dtype=np.float32))
    np.testing.assert_allclose(single.error_rate[:, 0], errors, rtol=1e-6)


def test_a_model_with_another_feature_set_is_refused(
    model: TrainedModel, registry: Registry
) -> None:
    meta = {**model.metadata, "features": [*reversed(FEATURES)]}
    entry = registry.save(model.booster_bytes(), meta)
    with pytest.raises(ModelUnavailable, match="different feature set"):
        Predictor(registry.load(entry.version))
    fewer = {**model.metadata, "features": list(FEATURES[:-1])}
    with pytest.raises(ModelUnavailable, match="different feature set"):
        Predictor(loaded_from_memory(model, **fewer))


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"not a model at all",
        # Cut early. Cut at half, XGBoost 3.2's UBJSON reader sometimes reads past the
        # end of the buffer and "loads": only the registry's checksum catches that.
        lambda b: b[:1000],
        lambda b: b[:1],
        lambda b: b"[" + b[1:],
    ],
    ids=["garbage", "truncated", "one byte", "wrong container"],
)
def test_a_corrupted_booster_is_refused(model: TrainedModel, damage: Any) -> None:
    boosters = model.booster_bytes()
    boosters["latency_q90"] = damage(boosters["latency_q90"])
    loaded = LoadedModel("v", {**model.metadata, "created_at": CREATED.isoformat()}, boosters)
    with pytest.raises(ModelUnavailable, match="latency"):
        Predictor(loaded)


def test_an_empty_booster_is_refused_not_fatal() -> None:
    # In a child process: the bug kills the interpreter, which would take pytest with it.
    code = (
        "from veloflux.errors import ModelUnavailable\n"
        "from veloflux.model.features import FEATURES\n"
        "from veloflux.model.predict import Predictor\n"
        "from veloflux.model.registry import LoadedModel\n"
        "meta = {'features': list(FEATURES), 'created_at': '2026-01-01T00:00:00+00:00'}\n"
        "try:\n"
        "    boosters = {n: b'' for n in ('latency_q10', 'latency_q50', 'latency_q90', 'errors')}\n"
        "    Predictor(LoadedModel('v', meta, boosters))\n"
        "except ModelUnavailable as exc:\n"
        "    print('refused:', exc)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 0, child.stderr[-500:]
    assert child.stdout.startswith("refused:")


def test_a_missing_booster_is_refused(model: TrainedModel) -> None:
    boosters = {
        name: raw for name, raw in model.booster_bytes().items() if name.startswith("latency")
    }
    loaded = LoadedModel("v", {**model.metadata, "created_at": CREATED.isoformat()}, boosters)
    with pytest.raises(ModelUnavailable, match="errors"):
        Predictor(loaded)


# --- confidence -------------------------------------------------------------------------------


def now_and_recent(split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each server's last test row at its own load, and the test window as recent history."""
    now = newest_rows(split.test)
    return at_status_quo(now), split.test


def test_every_part_is_named_and_in_the_unit_interval(predictor: Predictor, split: Split) -> None:
    now, recent = now_and_recent(split)
    confidence = predictor.confidence(now, recent, fresh=True)
    assert tuple(confidence.parts) == CONFIDENCE_PARTS
    for part in confidence.parts.values():
        assert part.shape == (len(now),)
        assert ((part >= 0) & (part <= 1)).all()
    np.testing.assert_array_equal(
        confidence.value, np.min(np.vstack(list(confidence.parts.values())), axis=0)
    )
    # On the data it was tested on, the model is sure of most servers.
    assert np.median(confidence.value) > 0.5


def test_stale_means_zero_confidence_with_freshness_named(
    predictor: Predictor, split: Split
) -> None:
    now, recent = now_and_recent(split)
    fresh = predictor.confidence(now, recent, fresh=True)
    sure = np.flatnonzero(fresh.value > 0)  # servers only staleness can bring to zero
    assert len(sure) > 0
    stale = predictor.confidence(now, recent, fresh=False)
    assert (stale.value == 0).all()
    assert all(stale.weakest(int(i)) == "freshness" for i in sure)
    assert all(stale.parts_of(i)["freshness"] == 0.0 for i in range(len(now)))
    for name in ("width", "realized", "ood"):  # the other parts do not change
        np.testing.assert_array_equal(stale.parts[name], fresh.parts[name])


def test_a_far_away_row_is_less_in_distribution(predictor: Predictor, split: Split) -> None:
    now, recent = now_and_recent(split)
    near = predictor.confidence(now, recent, fresh=True).parts["ood"]
    assert (near > 0).all()
    far_rows = now.copy()
    far_rows[list(FEATURES)] = far_rows[list(FEATURES)] * 50
    far = predictor.confidence(far_rows, recent, fresh=True).parts["ood"]
    assert (far < near).all()
    assert (far == 0).all()


def test_the_load_the_optimizer_gives_a_server_is_not_novelty(
    predictor: Predictor, split: Split
) -> None:
    now, recent = now_and_recent(split)
    near = predictor.confidence(now, recent, fresh=True).parts["ood"]
    moved = now.copy()
    for feature in LOAD_DRIVEN:  # far outside anything a static split ever showed
        moved[feature] = moved[feature] * 50
    np.testing.assert_array_equal(
        predictor.confidence(moved, recent, fresh=True).parts["ood"], near
    )
    assert set(LOAD_DRIVEN).isdisjoint(predictor.metadata["ood"]["distance_features"])
    # A server's own state is: its latency far from anything seen is still far away.
    slow = now.assign(latency=now["latency"] * 50, relative_latency=now["relative_latency"] * 50)
    assert (predictor.confidence(slow, recent, fresh=True).parts["ood"] < near).all()


@pytest.mark.parametrize("feature", ["latency", "request_rate", "sessions"])
def test_a_missing_always_present_feature_caps_ood_at_a_half(
    predictor: Predictor, split: Split, feature: str
) -> None:
    now, recent = now_and_recent(split)
    assert now[feature].notna().all()
    one_missing = now.assign(**{feature: np.nan})
    ood = predictor.confidence(one_missing, recent, fresh=True).parts["ood"]
    assert (ood <= 0.5).all()
    two_missing = one_missing.assign(queue=np.nan)
    assert (predictor.confidence(two_missing, recent, fresh=True).parts["ood"] <= 0.25).all()


def test_a_server_with_fewer_than_three_judged_intervals_scores_zero_realized(
    predictor: Predictor, split: Split
) -> None:
    now, recent = now_and_recent(split)
    newcomer = now.iloc[0]["server"]
    others = recent[recent["server"] != newcomer]
    two_intervals = pd.concat([others, recent[recent["server"] == newcomer].tail(2)])
    realized = predictor.confidence(now, two_intervals, fresh=True).parts["realized"]
    is_new = (now["server"] == newcomer).to_numpy()
    assert (realized[is_new] == 0).all()
    assert (realized[~is_new] > 0).all()
    # No judged history at all: nobody has shown it can be predicted.
    empty = predictor.confidence(now, recent.iloc[:0], fresh=True).parts["realized"]
    assert (empty == 0).all()


def test_realized_error_is_judged_per_pool_and_server(predictor: Predictor, split: Split) -> None:
    now, recent = now_and_recent(split)
    elsewhere = recent.assign(pool="other")  # same names, another pool
    realized = predictor.confidence(now, elsewhere, fresh=True).parts["realized"]
    assert (realized == 0).all()


def test_rows_without_a_known_outcome_are_not_judged(predictor: Predictor, split: Split) -> None:
    now, recent = now_and_recent(split)
    judged_only = predictor.confidence(now, recent, fresh=True).parts["realized"]
    # The newest instant has no outcome yet: adding it changes nothing.
    pending = now.assign(target_latency=np.nan, time=recent["time"].max() + pd.Timedelta("10s"))
    with_pending = pd.concat([recent, pending], ignore_index=True)
    realized = predictor.confidence(now, with_pending, fresh=True).parts["realized"]
    np.testing.assert_array_equal(realized, judged_only)
    # Only the last three judged instants count: a wild error before them is ignored.
    times = np.sort(recent["time"].unique())
    old = recent["time"] < times[-3]
    distorted = recent.assign(target_latency=recent["target_latency"].where(~old, 100.0))
    np.testing.assert_array_equal(
        predictor.confidence(now, distorted, fresh=True).parts["realized"], judged_only
    )


def test_all_parts_and_most_common_weakest_agree_with_the_per_server_forms(
    predictor: Predictor, split: Split
) -> None:
    now, recent = now_and_recent(split)
    half_missing = now.assign(
        latency=np.where(np.arange(len(now)) % 2 == 0, np.nan, now["latency"])
    )
    for fresh in (True, False):
        confidence = predictor.confidence(half_missing, recent, fresh=fresh)
        assert confidence.all_parts() == [confidence.parts_of(i) for i in range(len(now))]
        unsure = [i for i in range(len(now)) if confidence.value[i] < 1.0] or range(len(now))
        weakest = [confidence.weakest(i) for i in unsure]
        top = max(
            CONFIDENCE_PARTS, key=lambda part: (weakest.count(part), -CONFIDENCE_PARTS.index(part))
        )
        assert confidence.most_common_weakest() == top


def test_the_weakest_part_is_named_among_the_unsure_servers_only(
    predictor: Predictor, split: Split
) -> None:
    now, recent = now_and_recent(split)
    # One server without a latency reading (its "width" is 0); the rest are as they are.
    one_unsure = now.assign(
        latency=np.where(np.arange(len(now)) == 0, np.nan, now["latency"]),
        latency_ema=np.where(np.arange(len(now)) == 0, np.nan, now["latency_ema"]),
    )
    confidence = predictor.confidence(one_unsure, recent, fresh=True)
    threshold = float(np.sort(confidence.value)[1]) - 1e-9  # only the first is below
    assert confidence.value[0] < threshold
    assert confidence.most_common_weakest(threshold) == confidence.weakest(0) == "width"


readings = st.one_of(st.just(np.nan), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_confidence_parts_stay_in_the_unit_interval_for_any_row(
    predictor: Predictor, split: Split, data: st.DataObject
) -> None:
    now, recent = now_and_recent(split)
    changed = now.copy()
    for feature in data.draw(st.lists(st.sampled_from(FEATURES), max_size=5, unique=True)):
        changed[feature] = [data.draw(readings) for _ in range(len(changed))]
    confidence = predictor.confidence(changed, recent, fresh=data.draw(st.booleans()))
    for part in confidence.parts.values():
        assert np.isfinite(part).all()
        assert ((part >= 0) & (part <= 1)).all()


# --- the advisor with a real model ----------------------------------------------------------------


def test_a_real_model_drives_a_pool_end_to_end(model: TrainedModel) -> None:
    raw = synthetic_raw()
    features = synthetic_features()
    last = pd.Timestamp(features["time"].max())
    observation = synthetic_observation(raw, last)
    loaded = loaded_from_memory(model, created_at=(last - timedelta(hours=1)).isoformat())
    settings_ = AdvisorSettings(
        confidence_threshold=0.0,  # let the model act whatever it thinks of itself
        error_penalty_seconds=1.0,
        stale_after_seconds=30.0,
        max_model_age_seconds=86400.0,
        outlier=OutlierSection(),
        min_gain=AISection().min_gain,
    )
    recent = features[features["time"] > last - timedelta(minutes=2)]
    advice: Advice = advise(
        observation, recent, Predictor(loaded), settings_, "", last.to_pydatetime()
    )
    pool = advice.pools["app"]
    assert pool.blocked == ""
    shares = [s.share for s in pool.servers.values()]
    assert all(s is not None and s > 0 for s in shares)
    assert math.fsum(s or 0.0 for s in shares) == pytest.approx(1.0)
    plan = plan_weights(observation, PolicySection(), advice)
    assert plan.pools[0].mode == "model"
    assert all(s.planned_weight is not None and s.planned_weight >= 1 for s in plan.servers())


# --- operator-defined (Prometheus) features -----------------------------------------------


@pytest.fixture(scope="module")
def with_cpu() -> tuple[TrainedModel, Split]:
    """The synthetic history with a Prometheus feature that tracks each server's load."""
    raw = synthetic_raw()
    rng = np.random.default_rng(3)
    raw["prom_cpu"] = raw["sessions"].fillna(0).to_numpy() / 10 + rng.normal(0, 0.01, len(raw))
    raw["prom_never_read"] = np.nan
    return train_model(build_features(derive_rates(raw)), FAST)


def test_a_prometheus_feature_is_learned_after_the_built_in_ones(
    with_cpu: tuple[TrainedModel, Split],
) -> None:
    model, _ = with_cpu
    assert model.features == (*FEATURES, "prom_cpu")  # a feature never read is left out
    assert model.metadata["features"] == [*FEATURES, "prom_cpu"]
    assert "prom_cpu" in model.metadata["ood"]["features"]
    assert monotone_constraints(model.features).count("1") == 2  # the load features only


def test_a_predictor_scores_with_the_feature_and_distrusts_its_absence(
    with_cpu: tuple[TrainedModel, Split],
) -> None:
    model, split = with_cpu
    predictor = Predictor(loaded_from_memory(model))
    now, recent = now_and_recent(split)
    assert now["prom_cpu"].notna().all()
    with_it = predictor.confidence(now, recent, fresh=True).parts["ood"]
    without = predictor.confidence(now.drop(columns=["prom_cpu"]), recent, fresh=True)
    # Prometheus down: the feature the model always had is missing for every server.
    assert (without.parts["ood"] <= 0.5).all()
    assert with_it.mean() > without.parts["ood"].mean()
    grid = now[[LOAD_FEATURE]].fillna(1.0).to_numpy(dtype=float)
    curves = predictor.curves(now.drop(columns=["prom_cpu"]), grid)  # still predicts
    assert np.isfinite(curves.latency_p90).all()


def test_a_model_listing_an_unknown_kind_of_feature_is_refused(model: TrainedModel) -> None:
    meta = {**model.metadata, "features": [*FEATURES, "cpu_from_somewhere"]}
    with pytest.raises(ModelUnavailable, match="different feature set"):
        Predictor(loaded_from_memory(model, **meta))
