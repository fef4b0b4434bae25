"""Keeping the garbage collector's full passes out of the ticks.

CPython's oldest-generation collection walks every object the collector tracks. Once
pandas and XGBoost are imported and a model is loaded, that is a great many objects,
and a pass runs inside whichever tick happened to trigger it. What is alive once the
daemon has settled (modules, the model, the configuration) lives as long as the
process, so the daemon moves it out of the collector's reach with ``gc.freeze()``.
It settles again whenever that changes (a new model, a reloaded configuration):
``gc.unfreeze()`` first, so that whatever was replaced can be collected, then one full
collection, then freeze.
"""

from __future__ import annotations

import gc
from collections.abc import Hashable

_NOTHING = object()


class HeapSettler:
    """Freezes the heap after the first tick and after every change of ``state``."""

    def __init__(self) -> None:
        self._settled_for: Hashable = _NOTHING

    def settle(self, state: Hashable) -> bool:
        """Collect and freeze if ``state`` differs from the last call; True if it did."""
        if state == self._settled_for:
            return False
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._settled_for = state
        return True
