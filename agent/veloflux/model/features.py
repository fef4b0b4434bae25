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
  ``veloflux.history.rates.derive_rates``), because the moving average itself lags by up to
  512 requests and would teach the model yesterday's latency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from veloflux.domain.observation import EXTERNAL_PREFIX
from veloflux.domain.probe_schedule import ProbeSettings, factors, probe_order
from veloflux.errors import ModelUnavailable
from veloflux.history.frames import external_columns, instants, series_order

# The load feature: latency must not fall as it rises (monotone +1).
LOAD_FEATURE = "next_rate"
# The same load as a step from now: log(next share of the pool's weight / this one's),
# or of the measured rates where the proxy shows no weights (monotone +1 too).
LOAD_STEP = "load_step"

FEATURES: tuple[str, ...] = (
    LOAD_FEATURE,
    LOAD_STEP,
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
# The load a server is given and what follows from it within the interval: what the
# optimizer changes when it changes a weight (left out of the OOD distance).
LOAD_DRIVEN = (LOAD_FEATURE, LOAD_STEP, "request_rate", "share", "sessions", "queue")
TARGET_LATENCY = "target_latency"
TARGET_ERROR_RATE = "target_error_rate"
TARGET_REQUESTS = "target_requests"
KEYS = ("time", "pool", "server")
# Carried along for the outlier guard and sample weights; not a model input.
EXTRA = ("requests",)
_TREND_WINDOW = 3
TARGETS = (TARGET_LATENCY, TARGET_ERROR_RATE, TARGET_REQUESTS)
COLUMNS = (*KEYS, *EXTRA, *FEATURES, *TARGETS)
NEXT_PREFIX = "next_"


def next_of(column: str) -> str:
    """The column holding an operator-defined feature's value over the next interval
    (the load response reads the next interval's utilization: ``model/load_response.py``)."""
    return NEXT_PREFIX + column


def checked_features(names: Sequence[object], version: str) -> tuple[str, ...]:
    """A model's feature list, if this version can compute it: ``FEATURES`` in order,
    then operator-defined ones (``EXTERNAL_PREFIX``; missing at a tick: NaN, which
    XGBoost routes)."""
    listed = tuple(str(n) for n in names)
    head, tail = listed[: len(FEATURES)], listed[len(FEATURES) :]
    if head != FEATURES or not all(n.startswith(EXTERNAL_PREFIX) for n in tail):
        raise ModelUnavailable(
            f"model {version} was trained on a different feature set "
            f"({len(listed)} features); retrain it with this version"
        )
    return listed


def monotone_constraints(features: tuple[str, ...] = FEATURES) -> str:
    """XGBoost's constraint string: +1 on the load features, free elsewhere."""
    return "(" + ",".join("1" if f in (LOAD_FEATURE, LOAD_STEP) else "0" for f in features) + ")"


def build_features(rates: pd.DataFrame) -> pd.DataFrame:
    """The feature frame (keys, ``FEATURES``, targets) from ``derive_rates`` output.

    Rows of servers that are not UP are dropped: a DOWN or MAINT server's figures say
    nothing about how it serves traffic. The targets of a server's last row are NaN
    (there is no next interval yet); that row is what prediction uses.

    Operator-defined columns (``EXTERNAL_PREFIX``) in ``rates`` are carried over as
    they are: each row's value at the interval's end.

    Every step is array work on integer codes over rows sorted by (pool, server,
    time): "the previous interval of this server" is the row before when it belongs to
    the same server. Pandas group-bys would hash the string keys of every row each
    tick; integer codes and one sort avoid that.
    """
    external = external_columns(rates)
    columns_out = (*KEYS, *EXTRA, *FEATURES, *external, *TARGETS, *map(next_of, external))
    if rates.empty:
        return pd.DataFrame(columns=list(columns_out))
    order, series, pool_codes = series_order(rates, with_pools=True)
    # The float columns as arrays in (pool, server, time) order: permuting arrays is
    # cheap, taking whole frames (string and time columns too) is not.
    identity = np.array_equal(order, np.arange(len(order)))  # derive_rates' output is sorted

    def floats(column: str) -> np.ndarray:
        values: np.ndarray = rates[column].to_numpy(dtype=float, na_value=np.nan)
        return values if identity else values[order]

    up_all = rates["state"].to_numpy(dtype=object) == "UP"
    up = up_all if identity else up_all[order]
    # The next interval is taken before non-UP rows are dropped, so that the interval
    # before a DOWN gap never borrows its "next" from the interval after the gap.
    next_up = _shifted(up.astype(float), series, -1) == 1.0
    upcoming = {
        column: np.where(next_up, _shifted(floats(source), series, -1), np.nan)[up]
        for column, source in (
            (LOAD_FEATURE, "request_rate"),
            (TARGET_LATENCY, "interval_response_time"),
            (TARGET_ERROR_RATE, "error_rate"),
            (TARGET_REQUESTS, "requests"),
            *((next_of(column), column) for column in external),
        )
    }
    step = _weight_step(floats("weight"), up, series, pool_codes, instants(rates)[order])[up]
    kept = order[up]  # the rows of the output, as positions in ``rates``
    series, pool_codes = series[up], pool_codes[up]
    rate = floats("request_rate")[up]
    latency = floats("interval_response_time")[up]
    requests = floats("requests")[up]
    times = instants(rates)[kept]

    instant = _instant_codes(pool_codes, times)
    # min_count: an instant whose rates are all unknown (a reload) has no pool rate, not 0.
    pool_rate = _group_sum(rate, instant, empty=np.nan)
    weighted = _group_sum(latency * requests, instant, empty=0.0)
    weight = _group_sum(np.where(np.isnan(latency), np.nan, requests), instant, empty=0.0)
    seconds_of_day = (times.astype("int64") // 1_000_000_000) % 86_400
    angle = 2 * np.pi * seconds_of_day.astype(float) / 86_400.0
    with np.errstate(divide="ignore", invalid="ignore"):
        columns: dict[str, np.ndarray] = {
            "requests": requests,
            "request_rate": rate,
            "share": rate / np.where(pool_rate == 0, np.nan, pool_rate),
            "latency": latency,
            "latency_ema": floats("response_time")[up],
            "latency_trend": latency - _previous_mean(latency, series),
            "error_rate": floats("error_rate")[up],
            "sessions": floats("sessions")[up],
            "queue": floats("queue")[up],
            "rate_trend": rate - _previous_mean(rate, series),
            "pool_rate": pool_rate,
            "relative_latency": latency / (weighted / np.where(weight == 0, np.nan, weight)),
            "tod_sin": np.sin(angle),
            "tod_cos": np.cos(angle),
            **{column: floats(column)[up] for column in external},
            **upcoming,
        }
        realized = np.log(upcoming[LOAD_FEATURE] / rate)
        columns[LOAD_STEP] = np.where(np.isfinite(step), step, realized)
    # A division by a zero that slipped through is missing data, not an infinite load.
    keys = {key: rates[key].take(kept).reset_index(drop=True) for key in KEYS}
    numeric = {c: np.where(np.isinf(v), np.nan, v) for c, v in columns.items()}
    frame = {**keys, **numeric}
    return pd.DataFrame({c: frame[c] for c in columns_out})


def _weight_step(
    weight: np.ndarray, up: np.ndarray, series: np.ndarray, pools: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Per row (all rows, in series order): log of the server's share of its pool's UP
    weight at the next observation over its share at this one; NaN where either is
    unknown.

    The weight an observation shows is the one in effect over the interval that ends
    there, so this is the change of split the tick at this row wrote for the next
    interval: the load step the agent *chose*. The rate the server then measured is
    not used where weights are known, because with a load-aware dispatcher it answers
    the server's latency within the interval (a server that slows gets fewer requests
    at once), and a model fitted to that learns that load lowers latency.
    """
    usable = up & np.isfinite(weight) & (weight > 0)
    instant = _instant_codes(pools, times)
    total = _group_sum(np.where(usable, weight, np.nan), instant, empty=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(usable, weight / total, np.nan)
        step: np.ndarray = np.log(_shifted(share, series, -1) / share)
    return step


def _shifted(values: np.ndarray, series: np.ndarray, k: int) -> np.ndarray:
    """``values`` moved by ``k`` rows within each series (NaN where it leaves it):
    k > 0 gives the k-th previous row of the same server, k < 0 the next ones."""
    out = np.full(len(values), np.nan)
    if abs(k) >= len(values):
        return out
    if k > 0:
        same = series[k:] == series[:-k]
        out[k:] = np.where(same, values[:-k], np.nan)
    else:
        same = series[:k] == series[-k:]
        out[:k] = np.where(same, values[-k:], np.nan)
    return out


def _instant_codes(pool_codes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """One code per (pool, time): the rows a pool-level figure is summed over."""
    if len(times) == 0:
        return np.zeros(0, dtype="int64")
    time_codes, _ = pd.factorize(times)
    codes, _ = pd.factorize(pool_codes.astype("int64") * (int(time_codes.max()) + 1) + time_codes)
    return codes


def _group_sum(values: np.ndarray, codes: np.ndarray, empty: float) -> np.ndarray:
    """Each row's group total of ``values``, NaN skipped; ``empty`` where all are NaN."""
    known = ~np.isnan(values)
    totals = np.bincount(codes, weights=np.where(known, values, 0.0))
    counts = np.bincount(codes, weights=known.astype(float))
    sums: np.ndarray = np.where(counts > 0, totals, empty)[codes]
    return sums


def _previous_mean(values: np.ndarray, series: np.ndarray) -> np.ndarray:
    """Mean of the previous few intervals of the same server (NaN-aware, excludes now)."""
    previous = np.column_stack([_shifted(values, series, k) for k in range(1, _TREND_WINDOW + 1)])
    known = ~np.isnan(previous)
    counts = known.sum(axis=1)
    totals = np.where(known, previous, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, totals / counts, np.nan)


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


def at_status_quo(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the load features set to "the same load next interval": the
    newest rows have no next interval yet, and a missing load feature would count
    against the model's confidence as a feature gone missing."""
    out = rows.copy()
    out[LOAD_FEATURE] = rows["request_rate"]
    out[LOAD_STEP] = 0.0
    return out


def baseline_log_latency(rows: pd.DataFrame) -> np.ndarray:
    """The log latency each row's forecast is made relative to, NaN when there is none.

    The model learns the next interval's latency as a ratio to this baseline: the
    server's smoothed latency (HAProxy's moving average), else its last interval's.
    Trees are coarse on a few hundred rows; asked for absolute latency they lag every
    change of level, and on two-minute recordings barely matched the naive forecast.
    Asked for the ratio, they only have to learn how load and trends move latency
    away from where the server is now (bench/bench_learning.py measures the model
    against the naive forecast on a real recording: docs/benchmarks.md, "Learning
    core").
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
    # Stable: within an instant, rows keep their (pool, server) order, so a time split
    # falls between the same rows however the history was partitioned.
    rows: pd.DataFrame = features[usable].sort_values("time", kind="stable").reset_index(drop=True)
    return rows


def probe_schedule_of(rows: pd.DataFrame, probes: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``rows``: the log factor the weight-probe schedule gave its server for
    the next interval, and the one it gave for the row's own interval (the previous
    row of the same server; 0 for a server's first row). The schedule's servers are
    each pool's servers in ``rows``, as the agent's capacity view held them."""
    z = np.zeros(len(rows))
    if rows.empty or probes.size <= 0:
        return z, z.copy()
    seconds = instants(rows).astype("int64") / 1e9
    servers = rows["server"].to_numpy()
    for pool, positions in rows.groupby("pool", sort=False).indices.items():
        order = probe_order(str(pool), set(servers[positions].tolist()))
        rank = pd.Series(range(len(order)), index=order)[servers[positions]].to_numpy()
        z[positions] = factors(len(order), rank, seconds[positions], probes)
    marked = rows.assign(_z=z)
    before = marked.sort_values("time").groupby(["pool", "server"], sort=False)["_z"].shift(1)
    return z, before.reindex(marked.index).fillna(0.0).to_numpy()


def probe_changes(rows: pd.DataFrame, probes: ProbeSettings) -> np.ndarray:
    """Per row: the sign of the change the probe schedule made to the server's load
    into the next interval (+1 a probe up began or a probe down ended, -1 the
    reverse, 0 no change). Drawn by a clock, not by any latency: the instrument the
    load response is measured against."""
    z, before = probe_schedule_of(rows, probes)
    changes: np.ndarray = np.sign(z - before)
    return changes


def probe_moves(rows: pd.DataFrame, probes: ProbeSettings) -> pd.DataFrame:
    """The rows where the probe schedule changed the load, with the change's sign
    (``probe``), whether the probe ran (``ran``), and a measured latency on both sides.

    Every scheduled change is kept, run or not, and estimates built on these rows are
    ratios on the sign (instrumental-variable estimates, as an intention-to-treat
    trial is read): a probe the agent left out moves nothing and only adds noise. To
    keep only the probes that ran would select on the weight step, which holds the
    controller's move at the same tick as well: a server that had just slowed is cut
    by the controller too, so its probe's start counts, and its speed, drifting back,
    then lowers its latency: the simulator's drift scenarios measured the probes
    "lowering" latency that way. ``ran`` (the row's weight step has the schedule's sign
    and at least half its size) counts the moves an estimate rests on.
    """
    change = probe_changes(rows, probes)
    step = rows[LOAD_STEP].to_numpy(dtype=float)
    ran = (np.sign(step) == change) & (np.abs(step) >= 0.5 * probes.size)
    latency = rows["latency"].to_numpy(dtype=float)
    target = rows[TARGET_LATENCY].to_numpy(dtype=float)
    usable = (change != 0) & np.isfinite(step) & (latency > 0) & (target > 0)
    moved: pd.DataFrame = rows[usable].assign(probe=change[usable], ran=ran[usable])
    return moved


def probed_steps(rows: pd.DataFrame, probes: ProbeSettings) -> pd.DataFrame:
    """``rows`` with ``load_step`` kept only where the weight-probe schedule moved the
    load (a probe's interval, and the one after it, when the probe ends), 0 elsewhere.

    The other steps in a history are the agent's reactions: the controller lowers a
    server's weight because its capacity fell, while its latency is high, and the
    trees learn from that that less load means more latency. A probe's step is drawn
    by a clock no latency moved (``domain/probe_schedule.py``), so only its steps
    teach the load response; the rest count as no step at all.
    """
    if rows.empty or probes.size <= 0:
        return rows
    z, before = probe_schedule_of(rows, probes)
    keep = (z != 0) | (before != 0)
    return rows.assign(**{LOAD_STEP: np.where(keep, rows[LOAD_STEP].to_numpy(dtype=float), 0.0)})
