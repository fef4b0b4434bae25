"""The chaos soak, short: the daemon on the native stack for about two and a half
minutes while the seeded scheduler injects every kind of fault, and the independent
checker (``integration/invariants.py``) watches. It fails on any violation the checker
records, and on a daemon that exited when nobody killed it.

The long run and its figures are ``bench/soak.py`` (docs/reliability.md). Every wait
inside the soak is bounded (faults hold for drawn times, processes are started with
deadlines, the checker is stopped by a signal), the load goes to loopback only, and no
figure about time is asserted: recovery times are reported by the benchmark, not
judged here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from integration.soak import SoakOptions, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.solo]

SECONDS = 120.0
SEED = 7


@pytest.mark.timeout(420)  # the stack's start and stop come on top of the two minutes
def test_a_short_chaos_soak_breaks_no_invariant(tmp_path: Path) -> None:
    result = run_soak(SoakOptions(SECONDS, tmp_path / "soak", seed=SEED, gap=(1.5, 4.0)))
    summary = json.dumps(
        {k: result[k] for k in ("faults_by_kind", "violations_by_rule", "crash_details")},
        indent=1,
    )
    # The soak did what it is for: faults of many kinds, ticks throughout, a checker
    # that polled and matched the agent's writes against its audit lines.
    assert len(result["faults_by_kind"]) >= 8, summary
    assert result["ticks"] > 0
    assert result["checker_ran_to_the_end"]
    assert result["checker"]["polls"] > 0
    assert result["checker"]["errors"] == 0
    assert result["checker"]["audit_lines"] > 0
    assert result["faults_failed_to_inject"] == [], result["faults_failed_to_inject"]
    # What it checks.
    assert result["violation_examples"] == [], summary
    assert result["audit_torn_lines"] == 0
    assert result["daemon_crashes"] == 0, summary
    assert result["journal"].get("lost_otherwise") == 0, result["journal"]
