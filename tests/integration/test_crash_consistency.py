"""#23, crash consistency (short): ``kill -9`` the daemon and a model promoter at random
moments a few times, and require every recovery to be clean.

The long run (``bench/crash.py``, docs/reliability.md) does the same more than a
hundred times; this one keeps a change that breaks a durable write from passing the
suite. What a clean recovery means is in ``integration.crash``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from integration.crash import kill_once, make_rig, start_haproxy, summarise

pytestmark = pytest.mark.integration
KILLS = 10


@pytest.mark.timeout(120)
def test_every_recovery_after_kill_9_mid_write_is_clean(tmp_path: Path) -> None:
    rng = random.Random(2323)
    delay = (0.3, 1.5)
    haproxy = start_haproxy(tmp_path)
    try:
        rig = make_rig(tmp_path / "agent", haproxy)
        outcomes = [kill_once(rig, rng, index, delay) for index in range(KILLS)]
    finally:
        haproxy.stop()
    figures = summarise(outcomes, 2323, delay)
    assert figures["clean"] == KILLS, figures["failure_examples"]
    assert figures["ticks_lost_max"] <= 1, figures
    # The kills must have landed inside writes, or the run proved nothing.
    assert figures["kills_mid_promotion"] + figures["kills_mid_operator_action"] > 0, figures
    assert figures["ticks_logged"] > 0, figures
