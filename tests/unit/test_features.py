"""The feature frame: what the model may see, where each number comes from, and what is missing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.learning_factories import (
    BASE_TIME,
    INTERVAL,
    counters,
    feature_frame,
    features_of,
    sample,
    samples,
    synthetic_features,
    synthetic_raw,
)
from veloflux.history.frames import instants
from veloflux.history.rates import derive_rates
from veloflux.model.features import (
    COLUMNS,
    FEATURES,
    KEYS,
    LOAD_FEATURE,
    LOAD_STEP,
    TARGET_ERROR_RATE,
    TARGET_LATENCY,
    TARGET_REQUESTS,
    baseline_log_latency,
    build_features,
    monotone_constraints,
    newest_rows,
    training_rows,
)

NUMERIC = [*FEATURES, TARGET_LATENCY, TARGET_ERROR_RATE, TARGET_REQUESTS]


def at(step: int) -> pd.Timestamp:
    return pd.Timestamp(BASE_TIME + step * INTERVAL)


def one(features: pd.DataFrame, server: str, step: int) -> pd.Series:
    """The single feature row of ``server`` at ``step``."""
    found = features[(features["server"] == server) & (features["time"] == at(step))]
    assert len(found) == 1, found
    return found.iloc[0]


# --- what is (never) a feature ------------------------------------------------------------


def test_the_server_name_is_never_a_feature() -> None:
    identities = {"name", "server", "pool", "address", "backend", "time", "source", "algorithm"}
    assert not identities & {f.lower() for f in FEATURES}
    assert not set(KEYS) & set(FEATURES)
    assert LOAD_FEATURE in FEATURES
    assert len(set(FEATURES)) == len(FEATURES)


def test_renaming_every_server_changes_no_feature_value() -> None:
    raw = synthetic_raw()
    renamed = raw.assign(server=raw["server"].map(lambda s: f"web-{s}-eu"))
    before = build_features(derive_rates(raw))
    after = build_features(derive_rates(renamed))
    # Same order of servers (s0 < s1 ... and web-s0-eu < web-s1-eu), so rows line up.
    pd.testing.assert_frame_equal(before[NUMERIC], after[NUMERIC])


def test_the_frame_has_the_documented_columns_even_when_empty() -> None:
    empty = build_features(pd.DataFrame())
    assert list(empty.columns) == list(COLUMNS)
    assert list(synthetic_features().columns) == list(COLUMNS)


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (FEATURES, None),
        (("a", LOAD_FEATURE, "b"), "(0,1,0)"),
        ((LOAD_FEATURE,), "(1)"),
        (("a", LOAD_STEP, LOAD_FEATURE), "(0,1,1)"),
        (("a", "b"), "(0,0)"),
    ],
)
def test_monotone_constraints_put_plus_one_exactly_on_the_load(
    features: tuple[str, ...], expected: str | None
) -> None:
    text = monotone_constraints(features)
    assert text.startswith("(")
    assert text.endswith(")")
    values = text[1:-1].split(",")
    assert len(values) == len(features)
    assert [i for i, v in enumerate(values) if v == "1"] == [
        i for i, f in enumerate(features) if f in (LOAD_FEATURE, LOAD_STEP)
    ]
    assert set(values) <= {"0", "1"}
    if expected is not None:
        assert text == expected


def test_default_monotone_constraints_follow_features() -> None:
    values = monotone_constraints()[1:-1].split(",")
    assert values[FEATURES.index(LOAD_FEATURE)] == "1"
    assert values[FEATURES.index(LOAD_STEP)] == "1"
    assert values.count("1") == 2


# --- where each number comes from ---------------------------------------------------------


def two_servers() -> pd.DataFrame:
    """s1 serves 10, 20, 30 req/s; s2 serves 5, 1, 14 req/s (10 s intervals); rows shuffled."""
    s1 = counters("s1", [0, 100, 300, 600], response_time=[0.02, 0.02, 0.03, 0.05])
    s2 = counters("s2", [0, 50, 60, 200], response_time=[0.01, 0.01, 0.01, 0.02])
    mixed = [s2[3], s1[1], s2[0], s1[3], s2[2], s1[0], s2[1], s1[2]]
    return features_of(mixed)


def test_the_load_step_is_the_split_the_agent_chose_not_the_rate_it_got() -> None:
    """Catches a load step read from the measured rates where the proxy shows weights
    (with a load-aware dispatcher they answer latency), or from the wrong interval:
    the weight an observation shows was in effect over the interval ending there,
    so row k's step is log(share at k+1 / share at k)."""
    s1 = counters("s1", [0, 100, 300, 600], weight=[10.0, 10.0, 30.0, 30.0])
    s2 = counters("s2", [0, 50, 60, 200], weight=[10.0, 10.0, 10.0, 30.0])
    features = features_of([*s1, *s2])
    # Shares of s1: 1/2, 1/2, 3/4, 1/2. Of s2: 1/2, 1/2, 1/4, 1/2.
    assert one(features, "s1", 1)[LOAD_STEP] == pytest.approx(math.log(1.5))
    assert one(features, "s2", 1)[LOAD_STEP] == pytest.approx(math.log(0.5))
    assert one(features, "s1", 2)[LOAD_STEP] == pytest.approx(math.log(2 / 3))
    assert one(features, "s2", 2)[LOAD_STEP] == pytest.approx(math.log(2.0))
    assert math.isnan(one(features, "s1", 3)[LOAD_STEP])  # no next interval yet


def test_without_weights_the_load_step_is_the_measured_rates() -> None:
    """Catches a missing load step where the proxy's weights could not be read (the
    column is NaN then): the step is log(next rate / rate)."""
    s1 = counters("s1", [0, 100, 300, 600], weight=[math.nan] * 4)
    s2 = counters("s2", [0, 50, 60, 200], weight=[math.nan] * 4)
    features = features_of([*s1, *s2])
    assert one(features, "s1", 1)[LOAD_STEP] == pytest.approx(math.log(20 / 10))
    assert one(features, "s2", 2)[LOAD_STEP] == pytest.approx(math.log(14 / 1))


def test_next_rate_and_targets_come_from_the_next_interval_of_the_same_server() -> None:
    features = two_servers()
    expected_next = {("s1", 1): 20.0, ("s1", 2): 30.0, ("s2", 1): 1.0, ("s2", 2): 14.0}
    for (server, step), rate in expected_next.items():
        got = one(features, server, step)
        assert got[LOAD_FEATURE] == pytest.approx(rate)
        following = one(features, server, step + 1)
        assert got[TARGET_REQUESTS] == following["requests"]
        assert got[TARGET_LATENCY] == pytest.approx(following["latency"])
        assert got[TARGET_ERROR_RATE] == pytest.approx(following["error_rate"])
    for server in ("s1", "s2"):
        last = one(features, server, 3)
        assert math.isnan(last[LOAD_FEATURE])
        assert math.isnan(last[TARGET_LATENCY])


def test_pool_level_features_combine_servers_of_the_same_instant() -> None:
    features = two_servers()
    s1, s2 = one(features, "s1", 2), one(features, "s2", 2)
    assert s1["pool_rate"] == pytest.approx(20.0 + 1.0)
    assert s1["share"] == pytest.approx(20.0 / 21.0)
    assert s2["share"] == pytest.approx(1.0 / 21.0)
    pool_latency = (s1["latency"] * 200 + s2["latency"] * 10) / 210
    assert s1["relative_latency"] == pytest.approx(s1["latency"] / pool_latency)


def test_trends_compare_with_the_same_servers_previous_intervals() -> None:
    features = two_servers()
    s1 = features[features["server"] == "s1"].sort_values("time")
    assert math.isnan(s1["rate_trend"].iloc[0])  # nothing before the first interval
    assert s1["rate_trend"].iloc[1] == pytest.approx(20.0 - 10.0)
    assert s1["rate_trend"].iloc[2] == pytest.approx(30.0 - (10.0 + 20.0) / 2)


def test_time_of_day_is_a_point_on_the_unit_circle() -> None:
    features = synthetic_features()
    radius = features["tod_sin"] ** 2 + features["tod_cos"] ** 2
    assert np.allclose(radius, 1.0)
    noon = one(two_servers(), "s1", 1)  # BASE_TIME is 12:00:00 UTC; step 1 is 12:00:10
    assert noon["tod_cos"] == pytest.approx(-1.0, abs=1e-6)


# --- missing is NaN, never 0 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "affected"),
    [
        ("sessions", ["sessions"]),
        ("queue", ["queue"]),
        ("response_time", ["latency", "latency_ema", "latency_trend", "relative_latency"]),
        ("responses_5xx_total", ["error_rate"]),
        ("requests_total", ["request_rate", "share", "next_rate", "rate_trend", "latency"]),
    ],
)
def test_a_missing_source_gives_nan_features_not_zero(column: str, affected: list[str]) -> None:
    raw = synthetic_raw()
    raw[column] = np.nan
    features = build_features(derive_rates(raw))
    assert len(features) > 0
    for name in affected:
        assert features[name].isna().all(), name
    untouched = {"tod_sin", "tod_cos"}
    for name in untouched:
        assert features[name].notna().all(), name


def test_one_missing_reading_is_nan_only_where_it_is_used() -> None:
    s1 = counters("s1", [0, 100, 200, 300], sessions=[1.0, 2.0, np.nan, 4.0])
    features = features_of(s1)
    assert math.isnan(one(features, "s1", 2)["sessions"])
    assert one(features, "s1", 3)["sessions"] == 4.0
    assert one(features, "s1", 1)["sessions"] == 2.0


def test_an_idle_interval_has_no_latency_and_no_error_rate_rather_than_zero() -> None:
    s1 = counters("s1", [0, 100, 100, 200])  # nothing completed between steps 1 and 2
    features = features_of(s1)
    idle = one(features, "s1", 2)
    assert idle["request_rate"] == 0.0
    assert math.isnan(idle["latency"])
    assert math.isnan(idle["error_rate"])


def test_a_reload_gives_nan_rates_not_a_spike_or_a_negative_number() -> None:
    s1 = counters("s1", [0, 100, 5, 105], proxy_pid=[1, 1, 2, 2])
    features = features_of(s1)
    reset = one(features, "s1", 2)
    assert math.isnan(reset["request_rate"])
    assert math.isnan(reset["latency"])
    assert one(features, "s1", 3)["request_rate"] == pytest.approx(10.0)


def test_pool_rate_is_unknown_when_no_server_rate_is_known() -> None:
    s1 = counters("s1", [0, 100, 5, 105], proxy_pid=[1, 1, 2, 2])
    s2 = counters("s2", [0, 50, 5, 55], proxy_pid=[1, 1, 2, 2])
    features = features_of([*s1, *s2])
    reset = one(features, "s1", 2)
    assert math.isnan(reset["request_rate"])
    assert math.isnan(reset["pool_rate"]), reset["pool_rate"]


# --- rows that are dropped, and rows that are kept --------------------------------------------


def test_rows_of_servers_that_are_not_up_are_dropped() -> None:
    s1 = counters("s1", [0, 100, 200, 300, 400], state=["UP", "UP", "DOWN", "MAINT", "UP"])
    s2 = counters("s2", [0, 100, 200, 300, 400])
    features = features_of([*s1, *s2])
    kept = features[features["server"] == "s1"]["time"].tolist()
    assert kept == [at(1), at(4)]
    assert len(features[features["server"] == "s2"]) == 4
    # s1's DOWN and MAINT intervals do not count in the pool's rate either.
    assert one(features, "s2", 2)["share"] == pytest.approx(1.0)


def test_the_interval_before_a_down_interval_has_no_next_interval() -> None:
    s1 = counters("s1", [0, 100, 200, 500], state=["UP", "UP", "DOWN", "UP"])
    features = features_of(s1)
    before_gap = one(features, "s1", 1)
    # Its next interval (step 1 -> 2) was DOWN: nothing the model may learn from.
    assert math.isnan(before_gap[LOAD_FEATURE]), before_gap[LOAD_FEATURE]
    assert math.isnan(before_gap[TARGET_LATENCY])


def test_newest_rows_are_the_servers_seen_at_the_newest_instant() -> None:
    s1 = counters("s1", [0, 100, 200, 300, 400])
    s2 = counters("s2", [0, 100, 200])  # gone before the newest instant
    s3 = counters("s3", [0, 10, 20, 30, 40])
    features = features_of([*s3, *s1, *s2])
    newest = newest_rows(features)
    assert sorted(zip(newest["server"], newest["time"], strict=True)) == [
        ("s1", at(4)),
        ("s3", at(4)),
    ]
    assert list(newest.index) == [0, 1]
    assert newest_rows(features.iloc[:0]).empty


def test_instants_are_plain_utc_datetimes() -> None:
    features = features_of(counters("s1", [0, 100, 200]))
    times = instants(features)
    assert times.dtype == np.dtype("datetime64[ns]")
    assert list(times) == [np.datetime64(t.tz_convert(None)) for t in features["time"]]


def test_training_rows_need_a_known_next_interval_with_traffic_and_a_baseline() -> None:
    t = [BASE_TIME + i * INTERVAL for i in range(7)]
    nan = np.nan
    # (time, server, next_rate, target latency, target requests, latency_ema, latency)
    table = [
        (t[0], "a", 10.0, 0.02, 100.0, 0.02, nan),
        (t[1], "a", nan, nan, nan, 0.02, nan),  # the last row: no next interval yet
        (t[2], "b", 0.0, 0.02, 0.0, 0.02, nan),  # an idle next interval
        (t[3], "b", nan, 0.02, 50.0, 0.02, nan),  # the next rate is unknown
        (t[4], "c", 5.0, 0.03, 50.0, nan, 0.03),  # no moving average: the last interval's
        (t[5], "c", 5.0, 0.03, 50.0, nan, nan),  # no latency at all: nothing to anchor to
        (t[6], "d", 5.0, 0.03, 50.0, 0.0, 0.03),  # a zero moving average is no baseline
    ]
    frame = feature_frame(
        [
            {
                "time": when,
                "server": s,
                "next_rate": r,
                TARGET_LATENCY: y,
                TARGET_REQUESTS: k,
                "latency_ema": ema,
                "latency": last,
            }
            for when, s, r, y, k, ema, last in table
        ]
    )
    kept = training_rows(frame.iloc[::-1])
    assert kept["time"].tolist() == [pd.Timestamp(t[i]) for i in (0, 4, 6)]
    assert kept.index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(np.exp(baseline_log_latency(kept)), [0.02, 0.03, 0.03])


def test_training_rows_of_real_history_are_time_ordered_and_complete() -> None:
    features = synthetic_features()
    rows = training_rows(features)
    assert rows["time"].is_monotonic_increasing
    assert rows[[LOAD_FEATURE, TARGET_LATENCY]].notna().all().all()
    assert (rows[TARGET_REQUESTS] > 0).all()
    # Every server loses exactly its last row (the synthetic pool never idles).
    assert len(rows) == len(features) - features["server"].nunique()


# --- never infinite -----------------------------------------------------------------------------

readings = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.just(0.0) | st.just(np.nan)


@st.composite
def journal(draw: st.DrawFn) -> pd.DataFrame:
    """Small journals with zeros, repeated readings, NaN and counter resets."""
    servers = draw(st.integers(min_value=1, max_value=3))
    steps = draw(st.integers(min_value=2, max_value=6))
    records = []
    for i in range(servers):
        total = 0.0
        for step in range(steps):
            total += draw(st.sampled_from([0.0, 0.0, 1.0, 10.0, 1e4]))
            if draw(st.integers(0, 9)) == 0:
                total = 0.0  # a counter reset
            records.append(
                sample(
                    draw(st.sampled_from([step, step, step, max(step - 1, 0)])),  # repeats
                    f"s{i}",
                    total,
                    response_time=draw(readings),
                    sessions=draw(readings),
                    queue=draw(readings),
                    responses_5xx_total=draw(st.sampled_from([0.0, 1.0, np.nan])),
                )
            )
    return samples(records)


@settings(max_examples=40, deadline=None)
@given(journal())
def test_features_are_never_infinite(raw: pd.DataFrame) -> None:
    features = build_features(derive_rates(raw))
    values = features[NUMERIC].to_numpy(dtype=float)
    assert not np.isinf(values).any()
    assert (features["share"].dropna() >= 0).all()


def test_a_rate_that_overflows_is_missing_not_infinite() -> None:
    """Two readings a microsecond apart around a huge counter jump: the division
    overflows to inf, which the features must turn into NaN."""
    s1 = [sample(0, "s1", 0.0), sample(1, "s1", 1e303), sample(2, "s1", 1e303 + 100)]
    s1[1]["time"] = s1[0]["time"] + pd.Timedelta(microseconds=1)
    s2 = counters("s2", [0, 100, 200])
    rates = derive_rates(samples([*s1, *s2]))
    assert np.isinf(rates["request_rate"]).any()  # the input really overflows
    features = build_features(rates)
    assert not np.isinf(features[NUMERIC].to_numpy(dtype=float)).any()
    overflowed = features[features["server"] == "s1"].iloc[0]
    assert math.isnan(overflowed["request_rate"])


def test_a_pool_whose_every_latency_is_zero_has_no_relative_latency() -> None:
    s1 = counters("s1", [0, 100, 200], response_time=[0.0, 0.0, 0.0])
    s2 = counters("s2", [0, 100, 200], response_time=[0.0, 0.0, 0.0])
    features = features_of([*s1, *s2])
    assert (features["latency"] == 0.0).all()
    assert features["relative_latency"].isna().all()
