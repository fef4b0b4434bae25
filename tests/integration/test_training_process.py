"""The daemon's default trainer: real training in a spawned child process.

Training peaks at several times the journal's size in memory, so the daemon trains in
a child that gives its memory back when it ends. These tests run that child for real:
a model is trained and promoted into the registry; a too-short journal comes back as
the same ``NotEnoughData`` the parent would have raised; a stop request ends the child.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from tests.unit.learning_factories import synthetic_observation, synthetic_raw
from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.daemon.training_job import TrainingCancelled, train_in_child
from veloflux.history.journal import Journal
from veloflux.model.registry import Registry
from veloflux.model.train import NotEnoughData
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

CHILD = "veloflux-training"  # the name train_in_child gives its process


def config_for(tmp_path: Path, history: Path, min_rows: int = 200) -> Config:
    return validate_config(
        {
            "haproxy": {"socket": "unix:///nonexistent/admin.sock"},
            "ai": {
                "history_path": str(history),
                "model_dir": str(tmp_path / "models"),
                "min_training_rows": min_rows,
            },
        }
    )


def journal_of(path: Path, intervals: int | None = None) -> Path:
    raw = synthetic_raw()
    times = sorted(raw["time"].unique())[:intervals]
    with Journal(path, Events()) as journal:
        for when in times:
            journal.append(synthetic_observation(raw, pd.Timestamp(when)))
    return path


def running() -> list[str]:
    """The names of this process's children still alive."""
    return [p.name for p in multiprocessing.active_children()]


def test_a_child_process_trains_and_promotes(tmp_path: Path) -> None:
    config = config_for(tmp_path, journal_of(tmp_path / "history.sqlite"))
    report = train_in_child(config, Events(), lambda: False)
    assert report["promoted"], report["reason"]
    registry = Registry(config.ai.model_dir, lambda: pd.Timestamp.now(tz="UTC"), Events())
    assert registry.current_version() == report["version"]


def test_too_little_history_comes_back_as_not_enough_data(tmp_path: Path) -> None:
    config = config_for(tmp_path, journal_of(tmp_path / "history.sqlite", intervals=5))
    with pytest.raises(NotEnoughData, match="at least 200 are needed"):
        train_in_child(config, Events(), lambda: False)


def test_a_stop_request_ends_the_child(tmp_path: Path) -> None:
    """Stop is asked from the first check on, while the child is still training (a
    spawned child cannot even import XGBoost before the parent's first check): the
    parent must give up at that check, and the child it saw running must be gone."""
    config = config_for(tmp_path, journal_of(tmp_path / "history.sqlite"))
    child_alive_at_each_check: list[bool] = []

    def stop() -> bool:
        child_alive_at_each_check.append(CHILD in running())
        return True

    with pytest.raises(TrainingCancelled):
        train_in_child(config, Events(), stop)
    assert child_alive_at_each_check == [True]  # asked once, with the child alive
    assert CHILD not in running()
    # Stopped before it could save anything: the registry holds no model at all.
    registry = Registry(config.ai.model_dir, lambda: pd.Timestamp.now(tz="UTC"), Events())
    assert registry.entries() == []
