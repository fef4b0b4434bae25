"""From derived rates to the feature frame the model learns from and predicts on.

One row per (time, pool, server). The features describe a server's own recent state
and its pool's, and ``next_rate``: the load it would be given in the next interval,
the one input the optimizer varies. The targets are what happened next: the next
interval's mean response time and error rate.

Rules this module keeps:
- the server's name is never a feature (names do not generalise, and an unseen name
  would break prediction);
- a feature whose source is missing is NaN (XGBoost routes missing values), never 0;
- latency is the *interval* mean recovered from HAProxy's moving average (see
  ``veloflux.history.derive_rates``), because the moving average itself lags by up to
  512 requests and would teach the model yesterday's latency.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The load feature: latency must not fall as it rises (monotone +1).
LOAD_FEATURE = "next_rate"

FEATURES: tuple[str, ...] = (
    LOAD_FEATURE,
    "request_rate",
    "share",
    "latency",
    "latency_ema",
    "latency_trend",
    "error_rate",
    "sessions",
    "queue",
    "rate_trend",
    "pool_rate",
    "relative_latency",
    "tod_sin",
    "tod_cos",
)
TARGET_LATENCY = "target_latency"
TARGET_ERROR_RATE = "target_error_rate"
TARGET_REQUESTS = "target_requests"
KEYS = ("time", "pool", "server")
# Carried along for the outlier guard and sample weights; not a model input.
EXTRA = ("requests",)
_TREND_WINDOW = 3
COLUMNS = (*KEYS, *EXTRA, *FEATURES, TARGET_LATENCY, TARGET_ERROR_RATE, TARGET_REQUESTS)


def monotone_constraints(features: tuple[str, ...] = FEATURES) -> str:
    """XGBoost's constraint string: +1 on the load feature, free elsewhere."""
    return "(" + ",".join("1" if f == LOAD_FEATURE else "0" for f in features) + ")"


def build_features(rates: pd.DataFrame) -> pd.DataFrame:
    """The feature frame (keys, ``FEATURES``, targets) from ``derive_rates`` output.

    Rows of servers that are not UP are dropped: a DOWN or MAINT server's figures say
    nothing about how it serves traffic. The targets of a server's last row are NaN
    (there is no next interval yet); that row is what prediction uses.
    """
    if rates.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    ordered = rates.sort_values(["pool", "server", "time"]).reset_index(drop=True)
    # The next interval is taken before non-UP rows are dropped, so that the interval
    # before a DOWN gap never borrows its "next" from the interval after the gap.
    following = ordered.groupby(["pool", "server"], sort=False)
    next_up = following["state"].shift(-1) == "UP"
    upcoming = {
        column: following[source].shift(-1).where(next_up).astype(float)
        for column, source in (
            (LOAD_FEATURE, "request_rate"),
            (TARGET_LATENCY, "interval_response_time"),
            (TARGET_ERROR_RATE, "error_rate"),
            (TARGET_REQUESTS, "requests"),
        )
    }
    up = (ordered["state"] == "UP").to_numpy()
    df = ordered[up].reset_index(drop=True)
    out = pd.DataFrame({key: df[key] for key in KEYS})
    rate = df["request_rate"].astype(float)
    latency = df["interval_response_time"].astype(float)
    requests = df["requests"].astype(float)

    by_instant = [df["pool"], df["time"]]
    # min_count: an instant whose rates are all unknown (a reload) has no pool rate, not 0.
    pool_rate = rate.groupby(by_instant).transform("sum", min_count=1)
    weighted = (latency * requests).groupby(by_instant).transform("sum")
    weight = requests.where(latency.notna()).groupby(by_instant).transform("sum")
    pool_latency = weighted / weight.replace(0, np.nan)

    out["request_rate"] = rate
    out["requests"] = requests
    out["share"] = rate / pool_rate.replace(0, np.nan)
    out["latency"] = latency
    out["latency_ema"] = df["response_time"].astype(float)
    keys = [df["pool"], df["server"]]
    out["latency_trend"] = latency - _previous_mean(latency, keys)
    out["error_rate"] = df["error_rate"].astype(float)
    out["sessions"] = df["sessions"].astype(float)
    out["queue"] = df["queue"].astype(float)
    out["rate_trend"] = rate - _previous_mean(rate, keys)
    out["pool_rate"] = pool_rate
    out["relative_latency"] = latency / pool_latency
    seconds_of_day = df["time"].dt.hour * 3600 + df["time"].dt.minute * 60 + df["time"].dt.second
    angle = 2 * np.pi * seconds_of_day.astype(float) / 86400.0
    out["tod_sin"], out["tod_cos"] = np.sin(angle), np.cos(angle)

    for column, values in upcoming.items():
        out[column] = values[up].to_numpy()
    # A division by a zero that slipped through is missing data, not an infinite load.
    numeric = [*FEATURES, TARGET_LATENCY, TARGET_ERROR_RATE, TARGET_REQUESTS]
    out[numeric] = out[numeric].replace([np.inf, -np.inf], np.nan)
    return out[list(COLUMNS)]


def _previous_mean(values: pd.Series, keys: list[pd.Series]) -> pd.Series:
    """Mean of the previous few intervals of the same server (NaN-aware, excludes now).

    Built from vectorised group shifts: a per-group Python function costs a second per
    tick for a 1,000-server pool.
    """
    grouped = values.groupby(keys)
    previous = pd.concat([grouped.shift(k) for k in range(1, _TREND_WINDOW + 1)], axis=1)
    return previous.mean(axis=1, skipna=True)


def newest_rows(features: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest instant in ``features``: where prediction starts from.

    Call it on one pool's rows. A server absent from the newest instant (DOWN, or gone
    from the configuration) has no row here: the model advises only servers the last
    observation saw UP. A comparison, not a sort and group-by: it runs every tick.
    """
    if features.empty:
        return features
    times = instants(features)
    newest: pd.DataFrame = features[times == times.max()].reset_index(drop=True)
    return newest


def instants(frame: pd.DataFrame) -> np.ndarray:
    """The ``time`` column as plain UTC datetime64 values, cheap to compare and sort.

    A timezone-aware column would otherwise come out as an array of Python objects,
    a hundred times slower to work with.
    """
    times: np.ndarray = frame["time"].to_numpy(dtype="datetime64[ns]")
    return times


def baseline_log_latency(rows: pd.DataFrame) -> np.ndarray:
    """The log latency each row's forecast is made relative to, NaN when there is none.

    The model learns the next interval's latency as a ratio to this baseline: the
    server's smoothed latency (HAProxy's moving average), else its last interval's.
    Trees are coarse on a few hundred rows; asked for absolute latency they lag every
    change of level, and on two-minute recordings barely matched the naive forecast.
    Asked for the ratio, they only have to learn how load and trends move latency
    away from where the server is now (measured: 2.4 vs 4.2 ms MAE against the naive
    4.2 on the same recording, see docs/architecture.md).
    """
    ema = rows["latency_ema"].to_numpy(dtype=float)
    last = rows["latency"].to_numpy(dtype=float)
    base = np.where(ema > 0, ema, np.where(last > 0, last, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        logs: np.ndarray = np.log(base)
    return logs


def training_rows(features: pd.DataFrame) -> pd.DataFrame:
    """Rows whose next interval is known and carried traffic, with a latency baseline."""
    usable = features[TARGET_LATENCY].notna() & (features[TARGET_REQUESTS] > 0)
    usable &= features[LOAD_FEATURE].notna()
    usable &= np.isfinite(baseline_log_latency(features))
    rows: pd.DataFrame = features[usable].sort_values("time").reset_index(drop=True)
    return rows
