"""Training on a Dask cluster, through ``xgboost.dask``, when the history outgrows a box.

The same model as ``model/train.py`` trains in process, by the same rules, on a
history no single machine has to hold:

1. the history is cut into time partitions (``history/partitions.py``); each worker
   reads its partitions itself (the journal, or a Parquet export) and builds their
   features, with a halo of neighbouring instants so that every row is what the
   whole history would give;
2. a worker keeps each partition's training rows as float32 columns, and the probe
   moves (a few rows in a hundred) for the load response;
3. the time split (60/15/12.5/12.5%) is cut by global row position over the
   partitions in time order, as in process;
4. the four boosters train with ``xgboost.dask`` on quantile matrices (64 bins: a byte
   a value), with the same parameters, early stopping and seed;
5. the figures (conformal offset, test metrics, novelty reference, the current
   model on the same test window) are computed on the workers as per-row arrays and
   combined by ``model/evaluation.py``'s formulas.

The client (the agent, or ``train --dask``) holds only those arrays, a few numbers
per held-out row, never the rows. ``subsample`` draws differ when the rows are
spread over several workers, so a model trained here is not bit-identical to one
trained in process on the same rows: tests/integration/test_dask_training.py states
and checks how close they are.

``dask.distributed`` is an optional dependency (``pip install 'veloflux[dask]'``);
this module is imported only when a Dask scheduler is named.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
import xgboost.dask
from dask import dataframe as dd
from distributed import Client, Future
from distributed.security import Security

from veloflux.history.frames import external_columns
from veloflux.history.partitions import Partition, SampleReader, plan_partitions
from veloflux.history.rates import derive_rates
from veloflux.model.calibration import LoadCalibration, calibration_on_moves
from veloflux.model.evaluation import (
    Judged,
    add_sums,
    figures,
    metadata,
    ood_combine,
    ood_distances,
    ood_mean,
    ood_scatter,
    ood_sums,
)
from veloflux.model.features import (
    FEATURES,
    TARGETS,
    build_features,
    probe_moves,
    probed_steps,
    training_rows,
)
from veloflux.model.load_response import fit_on_moves, response_feature
from veloflux.model.train import (
    QUANTILES,
    NotEnoughData,
    Progress,
    TrainedModel,
    TrainSettings,
    booster_params,
    error_label,
    feature_matrix,
    fit_options,
    latency_label,
    quantile_name,
    raw_weights,
)

# Samples per partition: a worker builds one partition's features at a time, at
# about three times its input frame (docs/benchmarks.md, "Learning core").
DEFAULT_PARTITION_ROWS = 500_000
SPLITS = ("train", "valid", "calib", "test")
_ROW = "_row"  # a probe move's position among its partition's training rows


@dataclass(frozen=True)
class Piece:
    """Rows ``lo:hi`` of one partition's training rows."""

    part: int
    lo: int
    hi: int


class Cluster:
    """The partitions' training rows, kept on the workers, and the work done on them."""

    def __init__(self, client: Client, rows: Sequence[Future[Any]], moves: Sequence[Future[Any]]):
        self.client = client
        self.rows = list(rows)
        self.moves = list(moves)

    def on_pieces(self, pieces: Sequence[Piece], fn: Any, *args: Any) -> list[Any]:
        """``fn(rows[lo:hi], *args)`` for each piece, on the workers; the results."""
        futures = [
            self.client.submit(_on_piece, fn, self.rows[p.part], p.lo, p.hi, *args, pure=False)
            for p in pieces
        ]
        return list(self.client.gather(futures))

    def release(self) -> None:
        """Let the workers drop the partitions' rows (once no future holds them)."""
        self.rows, self.moves = [], []


@dataclass(frozen=True)
class DistributedResult:
    """A model trained on the cluster, and what the gate needs of its held-out rows
    (still on the workers until ``release``)."""

    model: TrainedModel
    calibration: LoadCalibration
    cluster: Cluster
    test_pieces: tuple[Piece, ...]
    partitions: int

    def judge(self, model: TrainedModel, offset: float) -> dict[str, float | None]:
        """``evaluate`` of another model (the current one) on this one's test window."""
        judged = self.cluster.on_pieces(self.test_pieces, _judge, model)
        return figures(Judged.joined(judged), offset)

    def release(self) -> None:
        self.cluster.release()


def connect(address: str, tls: tuple[Path | None, ...] | None, timeout: float) -> Client:
    """A client of the scheduler at ``address``; ``tls``: (CA, certificate, key) files,
    and then nothing travels unencrypted."""
    security = None
    if tls is not None:
        ca, cert, key = (str(p) for p in tls)
        security = Security(
            tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True
        )
    return Client(address, security=security, timeout=timeout, set_as_default=False)


def train_distributed(
    client: Client,
    reader: SampleReader,
    settings: TrainSettings,
    progress: Progress | None = None,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
) -> DistributedResult:
    """Train on every sample ``reader`` holds, on ``client``'s cluster."""
    report = progress or (lambda _stage, _fraction: None)
    started = time.perf_counter()
    report("planning partitions", 0.0)
    plan = plan_partitions(reader.instants(), partition_rows)
    report(f"building features on the cluster ({len(plan)} partitions)", 0.05)
    built = [client.submit(_featurize, reader, part, settings, pure=False) for part in plan]
    rows = [client.submit(_first, b, pure=False) for b in built]
    moves = [client.submit(_second, b, pure=False) for b in built]
    summaries = client.gather([client.submit(_summary, r, pure=False) for r in rows])
    del built
    counts = [s["rows"] for s in summaries]
    total = sum(counts)
    if total < settings.min_rows:
        raise NotEnoughData(
            f"{total} usable rows of history (intervals with traffic and a known next "
            f"interval); at least {settings.min_rows} are needed. Record longer with "
            "`veloflux-agent record`."
        )
    cluster = Cluster(client, rows, moves)
    cuts = [0, *(int(total * f) for f in (0.6, 0.75, 0.875)), total]
    split = {name: pieces_between(counts, cuts[i], cuts[i + 1]) for i, name in enumerate(SPLITS)}
    externals = sorted(
        {c for r in cluster.on_pieces(split["train"], _externals_with_data) for c in r}
    )
    used = (*FEATURES, *externals)
    with client.as_current():  # xgboost.dask finds its client as the current one
        boosters = _train_boosters(cluster, split, used, settings, report)
    report("load response", 0.8)
    offsets = np.cumsum([0, *counts])
    train_moves, held_moves = _moves(cluster, offsets, cuts[2])
    load = fit_on_moves(
        train_moves, response_feature(settings.utilization_column, train_moves.columns)
    )
    model = TrainedModel(boosters[:3], boosters[3], {}, used, load)
    report("calibration", 0.85)
    meta = describe_distributed(cluster, model, split, summaries, settings)
    calibration = calibration_on_moves(model, held_moves)
    meta["load_response"] = load.metadata() if load else {"features": [], "moves": 0}
    meta["load_calibration"] = {"slope": calibration.slope, "moves": calibration.moves}
    meta["trained_on"] = {"dask_workers": len(client.scheduler_info()["workers"])}
    meta["trained_on"]["partitions"] = len(plan)
    meta["duration_seconds"] = round(time.perf_counter() - started, 3)
    report("done", 1.0)
    final = TrainedModel(model.latency, model.errors, meta, used, load)
    return DistributedResult(final, calibration, cluster, tuple(split["test"]), len(plan))


def pieces_between(counts: Sequence[int], lo: int, hi: int) -> list[Piece]:
    """The partitions' rows at global positions ``lo:hi``, as pieces in order."""
    pieces, start = [], 0
    for part, count in enumerate(counts):
        end = start + count
        a, b = max(lo, start), min(hi, end)
        if a < b:
            pieces.append(Piece(part, a - start, b - start))
        start = end
    return pieces


def _train_boosters(
    cluster: Cluster,
    split: dict[str, list[Piece]],
    used: tuple[str, ...],
    settings: TrainSettings,
    report: Progress,
) -> tuple[xgb.Booster, ...]:
    means = {}
    for name in ("train", "valid"):
        sums = cluster.on_pieces(split[name], _weight_sum)
        means[name] = float(np.sum([s[0] for s in sums]) / max(np.sum([s[1] for s in sums]), 1))
    frames = {name: _design(cluster, split[name], used, means[name]) for name in means}
    params = booster_params(settings, used)
    matrices = {}
    for label in ("_latency", "_errors"):  # the three quantiles share one label
        train = _matrix(cluster.client, frames["train"], used, label, settings, None)
        matrices[label] = (
            train,
            _matrix(cluster.client, frames["valid"], used, label, settings, train),
        )
    boosters = []
    named = [*((quantile_name(a), "_latency") for a in QUANTILES), ("errors", "_errors")]
    for i, (name, label) in enumerate(named):
        report("error model" if name == "errors" else f"latency {name[8:]}", 0.1 + 0.17 * i)
        train, valid = matrices[label]
        # Each worker runs XGBoost with its own thread count.
        worker_params = {k: v for k, v in params[name].items() if k != "nthread"}
        out = xgb.dask.train(cluster.client, worker_params, train, **fit_options(settings, valid))
        boosters.append(out["booster"])
    return tuple(boosters)


def _design(
    cluster: Cluster, pieces: list[Piece], used: tuple[str, ...], mean: float
) -> dd.DataFrame:
    """The split's model input, labels and weights as one Dask frame, a piece each.

    Pieces are spread over every worker, cut smaller if there are fewer than workers:
    each worker trains on the rows it holds, and one holding none of a split fails
    XGBoost's quantile objective (an empty label matrix).
    """
    meta = pd.DataFrame({c: pd.Series(dtype="float32") for c in (*used, "_latency", "_errors")})
    meta["_weight"] = pd.Series(dtype="float64")
    workers = sorted(cluster.client.scheduler_info()["workers"])
    parts = [
        cluster.client.submit(
            _on_piece,
            _design_piece,
            cluster.rows[p.part],
            p.lo,
            p.hi,
            used,
            mean,
            workers=[workers[i % len(workers)]],
            pure=False,
        )
        for i, p in enumerate(spread(pieces, len(workers)))
    ]
    frame: dd.DataFrame = dd.from_delayed(parts, meta=meta, verify_meta=False)
    return frame


def spread(pieces: list[Piece], at_least: int) -> list[Piece]:
    """``pieces``, the largest halved until there are ``at_least`` (if rows allow)."""
    out = list(pieces)
    while len(out) < at_least:
        largest = max(range(len(out)), key=lambda i: out[i].hi - out[i].lo)
        p = out[largest]
        if p.hi - p.lo < 2:
            break
        middle = (p.lo + p.hi) // 2
        out[largest : largest + 1] = [Piece(p.part, p.lo, middle), Piece(p.part, middle, p.hi)]
    return out


def _matrix(
    client: Client,
    frame: dd.DataFrame,
    used: tuple[str, ...],
    label: str,
    settings: TrainSettings,
    ref: Any,
) -> Any:
    return xgb.dask.DaskQuantileDMatrix(
        client,
        frame[list(used)],
        frame[label],
        weight=frame["_weight"],
        missing=np.nan,
        feature_names=list(used),
        max_bin=settings.max_bin,
        ref=ref,
    )


def _moves(cluster: Cluster, offsets: np.ndarray, held_from: int) -> tuple[pd.DataFrame, ...]:
    """The probe moves of the train and validation windows, and of the held-out ones."""
    parts = []
    for part, moves in enumerate(cluster.client.gather(cluster.moves)):
        parts.append(moves.assign(**{_ROW: moves[_ROW].to_numpy() + offsets[part]}))
    everything = pd.concat(parts, ignore_index=True)
    early = everything[_ROW].to_numpy() < held_from
    return everything[early].reset_index(drop=True), everything[~early].reset_index(drop=True)


def describe_distributed(
    cluster: Cluster,
    model: TrainedModel,
    split: dict[str, list[Piece]],
    summaries: Sequence[dict[str, Any]],
    settings: TrainSettings,
) -> dict[str, Any]:
    """``evaluation.describe``, each figure's rows judged on the workers."""
    shipped = cluster.client.scatter(model, broadcast=True)
    calib = Judged.joined(cluster.on_pieces(split["calib"], _judge, shipped))
    test = Judged.joined(cluster.on_pieces(split["test"], _judge, shipped))
    train, used = split["train"], model.features
    sums = add_sums(cluster.on_pieces(train, ood_sums, used))
    scatter = np.sum(cluster.on_pieces(train, ood_scatter, used, ood_mean(sums)), axis=0)
    d2 = np.concatenate(cluster.on_pieces(train, ood_distances, used, sums, scatter))
    owned = [s for s in summaries if s["rows"]]
    window = (min(s["start"] for s in owned), max(s["end"] for s in owned))
    counts = {name: sum(p.hi - p.lo for p in split[name]) for name in SPLITS}
    ood = ood_combine(used, sums, scatter, d2)
    return metadata(model, calib, test, ood, window, counts, settings.__dict__)


# --- on the workers ------------------------------------------------------------------


def _featurize(
    reader: SampleReader, part: Partition, settings: TrainSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A partition's training rows (float32, its own instants only) and probe moves."""
    samples = reader.read(part.read_start, part.read_end)
    rows = probed_steps(training_rows(build_features(derive_rates(samples))), settings.probes())
    del samples
    owned = part.owns(rows["time"])
    moves = probe_moves(rows.assign(**{_ROW: np.cumsum(owned) - 1}), settings.probes())
    moves = moves[owned[moves.index.to_numpy()]].reset_index(drop=True)
    kept = rows[owned].reset_index(drop=True)
    numeric = [c for c in (*FEATURES, *external_columns(kept), *TARGETS) if c in kept]
    compact = kept[numeric].astype("float32").assign(time=kept["time"])
    return compact, moves


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _summary(rows: pd.DataFrame) -> dict[str, Any]:
    if rows.empty:
        return {"rows": 0, "start": None, "end": None}
    return {"rows": len(rows), "start": rows["time"].min(), "end": rows["time"].max()}


def _on_piece(fn: Any, rows: pd.DataFrame, lo: int, hi: int, *args: Any) -> Any:
    return fn(rows.iloc[lo:hi], *args)


def _judge(rows: pd.DataFrame, model: TrainedModel) -> Judged:
    return Judged.of(model, rows)


def _externals_with_data(rows: pd.DataFrame) -> list[str]:
    return [c for c in external_columns(rows) if rows[c].notna().any()]


def _weight_sum(rows: pd.DataFrame) -> tuple[float, int]:
    return float(raw_weights(rows).sum()), len(rows)


def _design_piece(rows: pd.DataFrame, used: tuple[str, ...], mean: float) -> pd.DataFrame:
    x = feature_matrix(rows, used)
    frame = pd.DataFrame(x, columns=list(used))
    frame["_latency"] = latency_label(rows).astype("float32")
    frame["_errors"] = error_label(rows).astype("float32")
    frame["_weight"] = raw_weights(rows) / mean
    return frame
