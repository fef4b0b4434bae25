"""The background recorder: journal appends off the tick thread, in order, never blocking.

Order and draining use a real SQLite journal. A writer stuck behind a stalled disk,
and a writer hit by an unexpected exception, are faults no real journal produces on
demand; those use a journal stand-in that blocks or raises.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.unit.test_history import T0, observation, server_row
from veloflux.domain.observation import Observation
from veloflux.history.frames import journal_frame
from veloflux.history.journal import HistoryError, Journal
from veloflux.history.recorder import BackgroundRecorder
from veloflux.util.events import Events


def snapshot(step: int) -> Observation:
    at = T0 + timedelta(seconds=10 * step)
    return observation(at, [server_row(at, "app", s, requests_total=100.0 + step) for s in "ab"])


def test_appends_arrive_in_order_and_close_drains_the_queue(tmp_path: Path) -> None:
    events = Events()
    with Journal(tmp_path / "h.db", events) as journal:
        recorder = BackgroundRecorder(journal, events, max_pending=64)
        written = [snapshot(step) for step in range(20)]
        for step, seen in enumerate(written):
            recorder.append(seen, journal_frame(seen) if step % 2 else None)
        recorder.close()
        back = journal.read()
    assert len(back) == 40
    assert sorted(back["time"].unique()) == [pd.Timestamp(o.taken_at) for o in written]
    assert back.groupby("server")["requests_total"].is_monotonic_increasing.all()
    assert events.totals() == {}


class StalledJournal:
    """A journal whose appends wait until released (a disk that stopped answering)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.release = threading.Event()
        self.started = threading.Event()
        self.appended: list[Observation] = []

    def append(self, observation: Observation, samples: Any = None) -> int:
        self.started.set()
        self.release.wait(10)
        self.appended.append(observation)
        return 2


def test_a_stalled_writer_drops_the_newest_observation_counted_and_never_blocks(
    tmp_path: Path,
) -> None:
    events = Events()
    journal = StalledJournal(tmp_path / "h.db")
    recorder = BackgroundRecorder(journal, events, max_pending=2)  # type: ignore[arg-type]
    recorder.append(snapshot(0))
    assert journal.started.wait(5)  # the writer holds observation 0
    for step in (1, 2, 3, 4):  # 1 and 2 wait in the queue; 3 and 4 find it full
        recorder.append(snapshot(step))
    assert events.count("history_write_dropped") == 2
    journal.release.set()
    recorder.close()
    assert [o.taken_at for o in journal.appended] == [snapshot(s).taken_at for s in (0, 1, 2)]


class BrokenJournal(StalledJournal):
    """A journal that fails the first append with an error no journal should raise."""

    def append(self, observation: Observation, samples: Any = None) -> int:
        if not self.appended and not self.started.is_set():
            self.started.set()
            raise RuntimeError("a bug in the journal")
        self.appended.append(observation)
        return 2


def test_an_unexpected_error_is_counted_and_the_writer_keeps_going(tmp_path: Path) -> None:
    events = Events()
    journal = BrokenJournal(tmp_path / "h.db")
    recorder = BackgroundRecorder(journal, events)  # type: ignore[arg-type]
    recorder.append(snapshot(0))
    recorder.append(snapshot(1))
    recorder.flush()
    assert events.count("history_write_failed") == 1
    assert [o.taken_at for o in journal.appended] == [snapshot(1).taken_at]
    recorder.close()


def test_appending_after_close_is_refused(tmp_path: Path) -> None:
    events = Events()
    with Journal(tmp_path / "h.db", events) as journal:
        recorder = BackgroundRecorder(journal, events)
        recorder.close()
        recorder.close()  # twice is harmless
        with pytest.raises(HistoryError, match="closed"):
            recorder.append(snapshot(0))
