"""The heap settler freezes once per state, and unfreezes first so replaced objects go."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from veloflux.util.heap import HeapSettler


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


class Model:
    """Something that refers to itself: only the cycle collector can free it."""

    def __init__(self) -> None:
        self.me = self


def test_settles_once_per_state_and_frees_what_was_replaced() -> None:
    settler = HeapSettler()
    model = Model()
    gone = weakref.ref(model)
    assert settler.settle(("config 0", "model A"))
    assert gc.get_freeze_count() > 0
    assert not settler.settle(("config 0", "model A"))
    del model  # replaced, but frozen: the collector cannot see the cycle
    gc.collect()
    assert gone() is not None
    assert settler.settle(("config 0", "model B"))  # a new model: thaw, collect, freeze
    assert gone() is None
