"""Counted, logged events for everything that goes wrong without stopping the agent.

Bad input from the outside world (a malformed stats row, a refused write) must be
both visible in the log and countable by monitoring. Components get an ``Events``
injected and call ``record``; the daemon exports the counts as metrics.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

_log = logging.getLogger("veloflux.events")


class Events:
    """A thread-safe counter of named events with labels, each also logged once."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._lock = threading.Lock()
        self._log = logger or _log

    def record(
        self,
        kind: str,
        message: str,
        *,
        level: int = logging.WARNING,
        **labels: str,
    ) -> None:
        """Count one event of ``kind`` and log ``message`` at ``level``."""
        key = (kind, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] += 1
        self._log.log(level, "%s: %s", kind, message)

    def count(self, kind: str, **labels: str) -> int:
        """How many events of ``kind`` were seen whose labels include ``labels``."""
        wanted = set(labels.items())
        with self._lock:
            return sum(
                n for (k, lbl), n in self._counts.items() if k == kind and wanted <= set(lbl)
            )

    def totals(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
        """Every (kind, labels) seen so far and its count: what ``/metrics`` exports."""
        with self._lock:
            return dict(self._counts)


def quiet_events() -> Events:
    """Events counted but not logged, for a command that reports what went wrong
    itself (its error on stderr): the same thing is then said once, not twice."""
    logger = logging.Logger("veloflux.quiet")  # not in the logging tree: no propagation
    logger.addHandler(logging.NullHandler())
    return Events(logger)
