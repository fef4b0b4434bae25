"""The daemon's training job: one training from the journal, in a ``spawn`` process
that the daemon can cancel, its outcome as plain data.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from veloflux.agent.learn import train_on_dask, train_on_journal, training_settings
from veloflux.config.schema import Config
from veloflux.errors import VelofluxError
from veloflux.util.events import Events

# A trainer returns ``TrainingReport.to_json()``: plain data, so it crosses processes.
Trainer = Callable[[Config, Events, Callable[[], bool]], dict[str, Any]]


class TrainingCancelled(VelofluxError):
    """The daemon is stopping: the training in progress gives up at its next stage."""


class TrainingFailed(VelofluxError):
    """The training process ended without a result."""


@dataclass(frozen=True)
class TrainingRun:
    """The outcome of one scheduled training, for ``/status`` and the metrics."""

    outcome: str  # promoted | not_promoted | skipped | failed
    finished_at: datetime
    duration_seconds: float
    message: str
    report: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "finished_at": self.finished_at.isoformat(),
            "duration_seconds": round(self.duration_seconds, 3),
            "message": self.message,
            "report": self.report,
        }


def train_once(config: Config, events: Events, cancelled: Callable[[], bool]) -> dict[str, Any]:
    """Train from the journal with the daemon's settings, on the Dask cluster of
    ``ai.dask`` when there is one (raises ``NoHistory``, ``NotEnoughData``,
    ``DaskUnavailable``, ``TrainingCancelled``...)."""

    def progress(_stage: str, _fraction: float) -> None:
        if cancelled():
            raise TrainingCancelled("the daemon is stopping")

    settings = training_settings(config)
    if config.ai.dask is not None:
        report = train_on_dask(config, events, settings, progress=progress)
    else:
        report = train_on_journal(config, events, settings, progress)
    return report.to_json()


def train_in_child(config: Config, events: Events, cancelled: Callable[[], bool]) -> dict[str, Any]:
    """``train_once`` in a ``spawn`` process (never a fork: XGBoost's threads do not
    survive one). Training's memory peaks at about three times its input frame (the
    peak RSS row of docs/benchmarks.md, "Learning core", from bench/bench_learning.py);
    in a child, that memory goes back to the system when it ends, so the daemon stays
    flat. Stopping the daemon terminates the child."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_training_child, args=(config, sender), name="veloflux-training", daemon=True
    )
    child.start()
    sender.close()
    try:
        while not receiver.poll(0.2):
            if cancelled():
                raise TrainingCancelled("the daemon is stopping")
            if not child.is_alive() and not receiver.poll(0):
                raise TrainingFailed(f"the training process died (exit code {child.exitcode})")
        outcome, value = receiver.recv()
    finally:
        receiver.close()
        if child.is_alive():
            child.terminate()
        child.join(10)
    if outcome == "error":
        raise value
    report: dict[str, Any] = value
    return report


def _training_child(config: Config, sender: Connection) -> None:
    try:
        sender.send(("ok", train_once(config, Events(), lambda: False)))
    except Exception as exc:  # sent back whole: the daemon reports and counts it
        try:
            sender.send(("error", exc))
        except Exception:  # an exception that does not pickle: its text still travels
            sender.send(("error", TrainingFailed(f"{type(exc).__name__}: {exc}")))
    finally:
        sender.close()
