"""The promotion gate: beat the naive baseline, then the current model on the same window.

The journal is a real SQLite journal filled, one observation per instant, from the
synthetic pool; models are small (30 rounds, one thread).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit.learning_factories import (
    FAST,
    StepClock,
    synthetic_features,
    synthetic_observation,
    synthetic_raw,
    train_small,
)
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates
from veloflux.model import pipeline
from veloflux.model.evaluation import evaluate
from veloflux.model.features import FEATURES
from veloflux.model.pipeline import gate, train_from_journal
from veloflux.model.registry import CANDIDATE, CURRENT, RETIRED, Registry
from veloflux.model.train import NotEnoughData, TrainSettings, train_model
from veloflux.util.events import Events

START = datetime(2026, 9, 22, 0, 0, tzinfo=UTC)
# Too simple to learn anything: one tiny step from the base score.
HOPELESS = TrainSettings(max_rounds=1, learning_rate=0.01, min_rows=50, nthread=1)
# Learns something, but less than FAST: stumps, a few rounds.
WEAK = TrainSettings(max_depth=1, max_rounds=5, learning_rate=0.3, min_rows=50, nthread=1)


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journal]:
    raw = synthetic_raw()
    with Journal(tmp_path_factory.mktemp("history") / "history.sqlite", Events()) as journal:
        for when in sorted(raw["time"].unique()):
            journal.append(synthetic_observation(raw, pd.Timestamp(when)))
        yield journal


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models", StepClock(START), Events())


# --- the journal the gate trains on ---------------------------------------------------------


def test_the_journal_gives_back_the_history_it_was_given(journal: Journal) -> None:
    raw = synthetic_raw()
    assert journal.count() == len(raw)
    from_journal = derive_rates(journal.read())
    direct = derive_rates(raw)
    for column in ("request_rate", "error_rate", "interval_response_time"):
        np.testing.assert_allclose(
            from_journal[column].to_numpy(dtype=float), direct[column].to_numpy(dtype=float)
        )


# --- the gate, with metrics chosen by hand ------------------------------------------------------


def metrics(mae: float, naive: float) -> dict[str, float | None]:
    return {"mae_p50_seconds": mae, "naive_mae_seconds": naive}


def test_gate_refuses_a_model_that_does_not_beat_naive() -> None:
    promoted, reason = gate(metrics(0.012, 0.010), None, None)
    assert not promoted
    assert "naive" in reason
    assert "12.00 ms" in reason
    assert "10.00 ms" in reason


def test_gate_refuses_a_tie_with_naive() -> None:
    assert gate(metrics(0.010, 0.010), None, None)[0] is False


def test_gate_refuses_when_the_naive_baseline_is_unknown() -> None:
    promoted, reason = gate(metrics(0.010, math.nan), None, None)
    assert not promoted
    assert "naive" in reason


def test_gate_cannot_judge_without_a_naive_figure() -> None:
    promoted, reason = gate({"mae_p50_seconds": 0.010, "naive_mae_seconds": None}, None, None)
    assert not promoted
    assert "cannot be judged" in reason


def test_a_test_window_with_no_measured_latency_has_no_naive_figure() -> None:
    """Sparse traffic: no interval to carry forward. The figures are None (JSON null),
    never NaN, which the registry refuses to write."""
    features = synthetic_features()
    model, split = train_model(features, FAST)
    test = split.test.assign(latency=math.nan)
    figures = evaluate(model, test, float(model.metadata["conformal_offset"]))
    assert figures["naive_mae_seconds"] is None
    assert figures["naive_pinball_p50"] is None
    assert figures["mae_p50_seconds"] is not None
    assert math.isfinite(figures["mae_p50_seconds"])
    assert gate(figures, None, None)[0] is False


def test_gate_promotes_a_first_model_that_beats_naive() -> None:
    promoted, reason = gate(metrics(0.008, 0.010), None, None)
    assert promoted
    assert "naive" in reason


def test_gate_keeps_a_candidate_that_does_not_beat_the_current_model() -> None:
    current = "20260921T000000Z-0123abcd"
    promoted, reason = gate(metrics(0.008, 0.010), current, metrics(0.007, 0.010))
    assert not promoted
    assert current in reason
    assert "same window" in reason


def test_gate_refuses_a_tie_with_the_current_model() -> None:
    current = "20260921T000000Z-0123abcd"
    promoted, reason = gate(metrics(0.008, 0.010), current, metrics(0.008, 0.010))
    assert not promoted
    assert current in reason


def test_gate_promotes_a_candidate_that_beats_both() -> None:
    current = "20260921T000000Z-0123abcd"
    promoted, reason = gate(metrics(0.006, 0.010), current, metrics(0.007, 0.010))
    assert promoted
    assert current in reason
    assert "naive" in reason


CURRENT_VERSION = "20260921T000000Z-0123abcd"


@pytest.mark.parametrize(
    ("mae", "naive", "current", "expected"),
    [
        (
            0.010,
            None,
            None,
            (
                False,
                "cannot be judged: no interval in the test window had a measured latency for "
                "the naive forecast (too little traffic per server and interval)",
            ),
        ),
        (0.012, 0.010, None, (False, "MAE 12.00 ms does not beat the naive baseline's 10.00 ms")),
        (0.008, 0.010, None, (True, "beats the naive baseline (8.00 vs 10.00 ms MAE)")),
        (
            0.008,
            0.010,
            0.007,
            (
                False,
                f"MAE 8.00 ms does not beat current model {CURRENT_VERSION}'s 7.00 ms "
                "on the same window",
            ),
        ),
        (
            0.006,
            0.010,
            0.007,
            (
                True,
                f"beats the naive baseline (10.00 ms) and model {CURRENT_VERSION} (7.00 ms) "
                "with 6.00 ms MAE",
            ),
        ),
    ],
)
def test_the_gates_verdict_says_exactly_why_with_every_figure_in_ms(
    mae: float, naive: float | None, current: float | None, expected: tuple[bool, str]
) -> None:
    """The reason is what an operator reads in the training report and the registry.
    Kills: each reason's text, or a conversion to milliseconds, altered."""
    theirs = None if current is None else metrics(current, 0.010)
    version = None if current is None else CURRENT_VERSION
    figures: dict[str, float | None] = {"mae_p50_seconds": mae, "naive_mae_seconds": naive}
    assert gate(figures, version, theirs) == expected


def test_gate_checks_naive_before_the_current_model() -> None:
    current = "20260921T000000Z-0123abcd"
    promoted, reason = gate(metrics(0.011, 0.010), current, metrics(0.020, 0.010))
    assert not promoted
    assert "naive" in reason


# --- training from the journal ----------------------------------------------------------------


def test_a_first_model_that_beats_naive_is_promoted(journal: Journal, registry: Registry) -> None:
    stages: list[tuple[str, float]] = []
    report = train_from_journal(journal, registry, FAST, lambda s, f: stages.append((s, f)))
    assert report.promoted
    assert "naive" in report.reason
    assert report.current_version is None
    assert report.current_metrics is None
    assert registry.current_version() == report.entry.version
    (entry,) = registry.entries()
    assert (entry.status, entry.reason) == (CURRENT, report.reason)
    metrics = report.metadata["metrics"]
    assert metrics["mae_p50_seconds"] < metrics["naive_mae_seconds"]
    document = report.to_json()
    assert document["version"] == report.entry.version
    assert document["promoted"] is True
    assert document["compared_with"] == {"version": None, "metrics": None}
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)
    assert stages[0][0] == "reading history"
    assert stages[-1] == ("done", 1.0)


def test_the_same_model_again_does_not_replace_the_current_one(
    journal: Journal, registry: Registry
) -> None:
    first = train_from_journal(journal, registry, FAST)
    second = train_from_journal(journal, registry, FAST)
    assert first.promoted
    assert not second.promoted
    assert first.entry.version in second.reason
    assert "does not beat current model" in second.reason
    assert registry.current_version() == first.entry.version
    statuses = {e.version: (e.status, e.reason) for e in registry.entries()}
    assert statuses[second.entry.version] == (CANDIDATE, second.reason)
    # The current model was judged on the candidate's own test window: the same model
    # on the same window scores the same.
    assert second.current_version == first.entry.version
    assert second.current_metrics == second.metadata["metrics"]


def test_a_better_model_on_the_same_window_is_promoted(
    journal: Journal, registry: Registry
) -> None:
    weak = train_from_journal(journal, registry, WEAK)
    assert weak.promoted, weak.reason  # the weak model still beats naive
    better = train_from_journal(journal, registry, FAST)
    assert better.promoted, better.reason
    assert weak.entry.version in better.reason
    assert better.current_metrics is not None
    mine = better.metadata["metrics"]["mae_p50_seconds"]
    assert mine < better.current_metrics["mae_p50_seconds"]
    # Judged on the same rows: the weak model's figures on its own (identical) window.
    assert better.current_metrics == weak.metadata["metrics"]
    assert registry.current_version() == better.entry.version
    statuses = {e.version: e.status for e in registry.entries()}
    assert statuses == {weak.entry.version: RETIRED, better.entry.version: CURRENT}


def test_a_model_that_does_not_beat_naive_is_rejected(
    journal: Journal, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rejection's plumbing: status, reason, no current model.

    Forecasting latency as a ratio to the server's moving average beats the naive
    forecast on every history we can make with HAProxy's own averaging, even with one
    tree; so here the real gate judges the real metrics against a perfect naive
    forecast (MAE 0). The gate's comparisons themselves are tested on their own above.
    """
    real_gate = pipeline.gate

    def against_a_perfect_naive(metrics: dict[str, float], *rest: object) -> tuple[bool, str]:
        return real_gate({**metrics, "naive_mae_seconds": 0.0}, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "gate", against_a_perfect_naive)
    report = train_from_journal(journal, registry, HOPELESS)
    assert not report.promoted
    assert "naive" in report.reason
    assert registry.current_version() is None
    (entry,) = registry.entries()
    assert (entry.version, entry.status, entry.reason) == (
        report.entry.version,
        CANDIDATE,
        report.reason,
    )


def test_a_candidate_worse_than_the_current_model_stays_a_candidate(
    journal: Journal, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = "20260101T000000Z-feedbeef"
    seen: list[pipeline.Judge] = []

    def perfect_current(_registry: Registry, judge: pipeline.Judge) -> tuple[str, dict[str, float]]:
        seen.append(judge)
        return current, {"mae_p50_seconds": 0.0, "naive_mae_seconds": 1.0}

    monkeypatch.setattr(pipeline, "_current_on", perfect_current)
    report = train_from_journal(journal, registry, FAST)
    assert not report.promoted
    assert current in report.reason
    assert registry.current_version() is None
    (entry,) = registry.entries()
    assert entry.status == CANDIDATE
    # The current model is asked about the candidate's own held-out window.
    (judge,) = seen
    figures = judge(train_small(), float(report.metadata["conformal_offset"]))
    assert figures["rows"] == report.metadata["rows"]["test"]
    assert figures["naive_mae_seconds"] == report.metadata["metrics"]["naive_mae_seconds"]


def test_a_current_model_on_another_feature_set_cannot_defend_its_place(
    journal: Journal, registry: Registry
) -> None:
    old = train_small()
    meta = {**old.metadata, "features": list(reversed(FEATURES))}
    entry = registry.save(old.booster_bytes(), meta)
    registry.promote(entry.version, "an older VeloFlux")
    report = train_from_journal(journal, registry, FAST)
    assert report.promoted, report.reason
    assert report.current_version == entry.version
    assert report.current_metrics is None
    assert registry.current_version() == report.entry.version


def test_too_little_history_trains_nothing(tmp_path: Path, registry: Registry) -> None:
    with (
        Journal(tmp_path / "empty.sqlite", Events()) as empty,
        pytest.raises(NotEnoughData, match="0 usable rows"),
    ):
        train_from_journal(empty, registry, FAST)
    assert registry.entries() == []
