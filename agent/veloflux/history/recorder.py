"""Journal appends on a thread of their own, so that a tick never waits for SQLite.

Appending a 1,000-server observation is one of the larger steps of a tick (the
journal append in the split of docs/benchmarks.md, "The daemon"); SQLite releases the
GIL while it writes, and the tick that made the rows has nothing left to do with
them. One writer thread takes observations, in order, from a short queue. If it
falls so far behind that the queue is full (a disk stalled for several intervals),
the newest observation is dropped, counted and logged: history is an aid to the
model, and the tick must never block on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from veloflux.history.journal import HistoryError, Journal
from veloflux.util.events import Events

if TYPE_CHECKING:
    import pandas as pd

    from veloflux.domain.observation import Observation

_log = logging.getLogger("veloflux.recorder")
_Item = tuple["Observation", "pd.DataFrame | None"]


class BackgroundRecorder:
    """Appends to ``journal`` on a writer thread; ``close`` drains the queue first."""

    def __init__(self, journal: Journal, events: Events, max_pending: int = 4) -> None:
        self._journal = journal
        self._events = events
        self._queue: queue.Queue[_Item | None] = queue.Queue(max_pending)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="veloflux-journal", daemon=True)
        self._thread.start()

    def append(self, observation: Observation, samples: pd.DataFrame | None = None) -> None:
        """Queue one observation (``samples``: its ``journal_frame``, if already made)."""
        if self._closed:
            raise HistoryError(f"history journal {self._journal.path}: the recorder is closed")
        try:
            self._queue.put_nowait((observation, samples))
        except queue.Full:
            self._events.record(
                "history_write_dropped",
                f"history journal {self._journal.path}: the writer is "
                f"{self._queue.maxsize} observations behind; the observation of "
                f"{observation.taken_at.isoformat()} is not recorded",
            )

    def flush(self) -> None:
        """Wait until every queued observation has been written (or has failed)."""
        self._queue.join()

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Write what is queued, then stop the thread. The journal stays open."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_seconds)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            finally:
                self._queue.task_done()

    def _write(self, observation: Observation, samples: pd.DataFrame | None) -> None:
        try:
            self._journal.append(observation, samples)
        except HistoryError:
            pass  # counted and logged by the journal already
        except Exception as exc:  # a bug must not kill the writer: count it, keep going
            _log.exception("journal writer failed")
            self._events.record(
                "history_write_failed",
                f"history journal {self._journal.path}: {type(exc).__name__}: {exc}",
            )
