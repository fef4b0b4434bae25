"""The history cut into partitions for a Dask cluster, and the figures combined from
per-partition parts: each must give what the whole history gives at once."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit.learning_factories import FAST, synthetic_features, synthetic_raw
from veloflux.history.export import write_parquet
from veloflux.history.partitions import (
    HALO_AFTER,
    HALO_BEFORE,
    ParquetReader,
    plan_partitions,
)
from veloflux.history.rates import derive_rates
from veloflux.model.evaluation import (
    Judged,
    add_sums,
    evaluate,
    figures,
    ood_combine,
    ood_distances,
    ood_mean,
    ood_reference,
    ood_scatter,
    ood_sums,
)
from veloflux.model.features import build_features, training_rows
from veloflux.model.train import train_model


def counts(sizes: list[int]) -> pd.Series:
    return pd.Series(sizes, index=1000.0 + 10.0 * np.arange(len(sizes)), dtype="int64")


def test_partitions_own_whole_instants_and_read_a_halo_each_side() -> None:
    plan = plan_partitions(counts([6] * 20), rows_per_partition=25)
    assert [p.rows for p in plan] == [24, 24, 24, 24, 24]  # 4 instants each: 5 would be 30
    assert plan[0].start == 1000.0
    assert plan[0].read_start == 1000.0  # nothing before the first instant
    assert plan[1].read_start == 1000.0  # its halo reaches back to the first instant
    assert plan[2].start == 1080.0
    assert plan[2].read_start == 1080.0 - 10.0 * HALO_BEFORE
    assert plan[2].read_end == 1120.0 + 10.0 * HALO_AFTER
    assert plan[-1].end == math.inf
    assert plan[-1].read_end == math.inf


def test_an_instant_larger_than_a_partition_is_one_partition() -> None:
    plan = plan_partitions(counts([3, 50, 3]), rows_per_partition=10)
    assert [p.rows for p in plan] == [3, 50, 3]
    with pytest.raises(ValueError, match="rows_per_partition"):
        plan_partitions(counts([1]), rows_per_partition=0)


def test_partitioned_features_are_the_whole_historys(tmp_path: Path) -> None:
    """Read through a Parquet export partition by partition, with the halo, the
    training rows are exactly those of the whole history at once."""
    raw = synthetic_raw()
    write_parquet(raw, tmp_path / "date=x" / "samples.parquet")
    reader = ParquetReader(tmp_path)
    whole = training_rows(build_features(derive_rates(raw)))
    parts = []
    for part in plan_partitions(reader.instants(), rows_per_partition=200):
        rows = training_rows(
            build_features(derive_rates(reader.read(part.read_start, part.read_end)))
        )
        parts.append(rows[part.owns(rows["time"])])
    joined = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole, check_dtype=False)


def test_without_the_halo_the_partitions_would_lose_rows(tmp_path: Path) -> None:
    """The check above can fail: reading only the owned instants loses each
    partition's first rates and last targets."""
    raw = synthetic_raw()
    write_parquet(raw, tmp_path / "date=x" / "samples.parquet")
    reader = ParquetReader(tmp_path)
    whole = training_rows(build_features(derive_rates(raw)))
    kept = 0
    for part in plan_partitions(reader.instants(), rows_per_partition=200):
        kept += len(training_rows(build_features(derive_rates(reader.read(part.start, part.end)))))
    assert kept < len(whole)


def test_figures_combined_from_parts_are_the_whole_windows() -> None:
    features = synthetic_features()
    model, split = train_model(features, FAST)
    offset = float(model.metadata["conformal_offset"])
    thirds = np.array_split(np.arange(len(split.test)), 3)
    joined = Judged.joined([Judged.of(model, split.test.iloc[i]) for i in thirds])
    assert figures(joined, offset) == pytest.approx(evaluate(model, split.test, offset))

    train = split.train
    pieces = [train.iloc[i] for i in np.array_split(np.arange(len(train)), 4)]
    sums = add_sums([ood_sums(p, model.features) for p in pieces])
    scatter = np.sum([ood_scatter(p, model.features, ood_mean(sums)) for p in pieces], axis=0)
    d2 = np.concatenate([ood_distances(p, model.features, sums, scatter) for p in pieces])
    combined = ood_combine(model.features, sums, scatter, d2)
    whole = ood_reference(train, model.features)
    assert combined.keys() == whole.keys()
    for key in ("mean", "inv_cov", "d2_q95", "d2_q99", "present_fraction"):
        assert np.allclose(combined[key], whole[key], rtol=1e-6, atol=1e-9), key
