"""Timing a tick's steps from outside, without a copy of the tick.

The ``Agent`` wraps each step of a tick (observe, frame, history, advise, capacity, plan,
apply, record) in ``steps.step(name)``. In production that is ``UNTIMED``, which
costs a context manager per step; a benchmark passes ``StepTimes`` and reads where a
tick's time goes, from the very code the daemon runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

STEPS = ("observe", "frame", "history", "advise", "capacity", "plan", "apply", "record")


class Steps(Protocol):
    """Brackets one named step of a tick."""

    def step(self, name: str) -> AbstractContextManager[None]: ...


class _Untimed:
    def step(self, name: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


UNTIMED: Steps = _Untimed()


class StepTimes:
    """Seconds spent in each step since the last ``take`` (a step run twice adds up)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = self._clock()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + self._clock() - started

    def take(self) -> dict[str, float]:
        """The steps timed so far, in the order they first ran; the count starts anew."""
        taken, self._seconds = self._seconds, {}
        return taken
