"""Putting a recorded series back on the story's steps (integration/compressed_load.py),
whichever of the two began first: a CI run on a busy machine once recorded its first
step one step late, and the alignment failed on a series longer than what was left."""

from __future__ import annotations

import numpy as np
import pytest

from integration.compressed_load import on_story_steps


@pytest.mark.parametrize(
    ("recorded", "first", "expected"),
    [
        ([1, 2, 3, 4], 0, [1, 2, 3, 4]),  # the same first step
        ([0, 1, 2, 3, 4, 5], 2, [2, 3, 4, 5]),  # recording began two steps early
        ([1, 2, 3, 4], -1, [np.nan, 1, 2, 3]),  # began a step late, recorded past the end
        ([1, 2], -1, [np.nan, 1, 2, np.nan]),  # began late, stopped early
        ([1, 2, 3], 5, [np.nan] * 4),  # nothing recorded during the story
        ([1, 2, 3], -6, [np.nan] * 4),  # recording began after the story ended
    ],
)
def test_a_recording_lands_on_the_story_steps_it_covers(
    recorded: list[float], first: int, expected: list[float]
) -> None:
    out = on_story_steps(np.array(recorded, dtype=float), first, 4)
    np.testing.assert_array_equal(out, np.array(expected, dtype=float))
