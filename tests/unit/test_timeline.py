"""``TickTimeline``, the ring of recent ticks behind the dashboard and ``/api/v1/history``:
what each tick leaves in it, how it is bounded, and the JSON scripts read.

Ticks are built by hand (an Observation from the factories, a plan, an apply report),
so each figure the ring keeps is known; each test's docstring names the break it
catches.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

from tests.unit.factories import TAKEN_AT, Pool, Server, observation
from veloflux.agent.ports import TickResult
from veloflux.daemon.timeline import TickTimeline
from veloflux.domain.advice import SwitchbackState
from veloflux.domain.weightplan import (
    ApplyReport,
    Mode,
    PoolPlan,
    ServerPlan,
    WeightPlan,
    WriteResult,
)

SOURCES = {"haproxy": True}


def tick(
    step: int,
    counters: dict[str, tuple[float, float]] | None = None,
    latency: dict[str, float] | None = None,
    writes: tuple[WriteResult, ...] | None = None,
    mode: Mode = "capacity",
) -> TickResult:
    """A tick ``step`` intervals of 10 s after TAKEN_AT over web/w1, web/w2, web/w3 (all
    static 10, planned 8); ``counters`` gives a server's (requests, 5xx) totals."""
    at = TAKEN_AT + timedelta(seconds=10 * step)
    seen = observation([Pool("web", [Server("w1"), Server("w2"), Server("w3")])], at)
    rows = []
    for row in seen.rows:
        requests, errors = (counters or {}).get(row.server, (0.0, 0.0))
        rows.append(
            row._replace(
                requests_total=requests,
                responses_5xx_total=errors,
                response_time=(latency or {}).get(row.server, 0.02),
            )
        )
    seen = replace(seen, rows=tuple(rows))
    servers = tuple(
        ServerPlan("web", name, "UP", 10, 8, 10, 0.5, f"{mode}: reason {name}")
        for name in ("w1", "w2", "w3")
    )
    switchback = SwitchbackState("testing", 2, 0.031, 1.2, True, 0.5)
    pool = PoolPlan("web", "roundrobin", mode, 0.75, "why", servers, "", switchback)
    report = ApplyReport(writes) if writes is not None else None
    return TickResult(seen, WeightPlan(at, (pool,), "m1"), report, 0.125)


def document(timeline: TickTimeline, since: int = 0, pools: tuple[str, ...] = ()) -> Any:
    return json.loads(timeline.to_json(since, pools))


def test_a_tick_leaves_its_rung_weights_latency_and_errors() -> None:
    """Kills: the weight in effect taken from the plan instead of the read-back, the
    latency not in milliseconds, the error rate not over the interval, or a pool's
    rung, confidence or switchback state missing."""
    timeline = TickTimeline(3600, 720, 10)
    timeline.record(tick(0, {"w1": (100, 0), "w2": (100, 0)}), False, SOURCES)
    writes = (
        WriteResult("web", "w1", 10, 8, 8, ""),  # confirmed
        WriteResult("web", "w2", 10, 8, None, "refused"),  # failed: still 10
    )
    later = tick(1, {"w1": (300, 0), "w2": (200, 25)}, {"w3": 0.5}, writes)
    timeline.record(later, True, {"haproxy": True, "prometheus": False})
    doc = document(timeline)
    assert (doc["oldest_seq"], doc["newest_seq"], doc["capacity"]) == (1, 2, 361)
    newest = doc["ticks"][-1]
    assert {k: newest[k] for k in ("seq", "ok", "paused", "written", "write_failures")} == {
        "seq": 2,
        "ok": True,
        "paused": True,
        "written": 1,
        "write_failures": 1,
    }
    assert newest["at"] == later.plan.generated_at.isoformat()
    assert newest["sources"] == {"haproxy": True, "prometheus": False}
    assert newest["model_version"] == "m1"
    web = newest["pools"]["web"]
    assert (web["mode"], web["confidence"], web["overload"]) == ("capacity", 0.75, False)
    assert web["switchback"]["state"] == "testing"
    assert web["switchback"]["scale"] == 0.5
    assert web["servers"] == ["w1", "w2", "w3"]
    assert web["weight"] == [8, 10, 10]  # w3 was not written: as read
    assert web["static"] == [10, 10, 10]
    assert web["planned"] == [8, 8, 8]
    assert web["latency_ms"] == [20.0, 20.0, 500.0]
    # w1: 200 requests, no error; w2: 25 of 100 failed; w3: no traffic is not "no errors".
    assert web["error_rate"] == [0.0, 0.25, None]
    assert doc["ticks"][0]["pools"]["web"]["error_rate"] == [None, None, None]  # no base yet


def test_a_counter_reset_or_a_nan_latency_is_null_not_a_number() -> None:
    """Kills: a proxy restart (counters back to 0) shown as a negative or huge error
    rate, or an unreadable latency shown as 0 ms."""
    timeline = TickTimeline(3600, 720, 10)
    timeline.record(tick(0, {"w1": (1000, 10)}), False, SOURCES)
    timeline.record(tick(1, {"w1": (50, 0)}, {"w1": math.nan}), False, SOURCES)
    web = document(timeline)["ticks"][-1]["pools"]["web"]
    assert web["error_rate"][0] is None
    assert web["latency_ms"][0] is None


def test_failed_ticks_are_gaps_with_their_reason() -> None:
    """Kills: a failed tick missing from the history (the page could not show the
    outage), or drawn with made-up pools."""
    timeline = TickTimeline(3600, 720, 10)
    timeline.record(tick(0), False, SOURCES)
    failed_at = TAKEN_AT + timedelta(seconds=10)
    timeline.record_failure(failed_at, "source: socket gone", 2.0, False, {"haproxy": False})
    failed = document(timeline)["ticks"][-1]
    assert (failed["ok"], failed["error"], failed["pools"]) == (False, "source: socket gone", {})
    assert failed["sources"] == {"haproxy": False}


def test_the_ring_is_bounded_by_count_and_by_time() -> None:
    """Kills: a ring that grows without bound, or one that keeps ticks older than its
    window after a pause in the ticks."""
    by_count = TickTimeline(3600, 5, 10)
    for step in range(12):
        by_count.record(tick(step), False, SOURCES)
    doc = document(by_count)
    assert [t["seq"] for t in doc["ticks"]] == [8, 9, 10, 11, 12]
    assert (doc["oldest_seq"], doc["newest_seq"]) == (8, 12)

    by_time = TickTimeline(60, 720, 10)  # 60 s: at most 7 ticks 10 s apart
    assert by_time.capacity == 7
    by_time.record(tick(0), False, SOURCES)
    by_time.record(tick(1), False, SOURCES)
    by_time.record(tick(30), False, SOURCES)  # 5 minutes later: the others are too old
    assert [t["seq"] for t in document(by_time)["ticks"]] == [3]


def test_since_and_pool_select_what_a_poll_needs() -> None:
    """Kills: ``since`` ignored (every poll would resend the hour) or off by one, or the
    pool filter ignored."""
    timeline = TickTimeline(3600, 720, 10)
    for step in range(4):
        timeline.record(tick(step), False, SOURCES)
    assert [t["seq"] for t in document(timeline, since=2)["ticks"]] == [3, 4]
    assert document(timeline, since=4)["ticks"] == []
    assert document(timeline, pools=("other",))["ticks"][0]["pools"] == {}
    assert list(document(timeline, pools=("web",))["ticks"][0]["pools"]) == ["web"]
    # The same bytes twice: the cached fragments are the encoded ones.
    assert timeline.to_json(0, ()) == timeline.to_json(0, ())


def test_resize_keeps_the_newest_ticks_and_numbering_goes_on() -> None:
    """Kills: a config reload that empties the dashboard, or restarts ``seq`` (a
    polling page would miss every tick until it caught up)."""
    timeline = TickTimeline(3600, 720, 10)
    for step in range(6):
        timeline.record(tick(step), False, SOURCES)
    timeline.resize(3600, 3, 10)
    assert [t["seq"] for t in document(timeline)["ticks"]] == [4, 5, 6]
    timeline.record(tick(6), False, SOURCES)
    assert [t["seq"] for t in document(timeline)["ticks"]] == [5, 6, 7]


def test_an_empty_ring_is_a_valid_document() -> None:
    """Kills: the page's first request (before any tick) answered with broken JSON."""
    doc = document(TickTimeline(3600, 720, 10, TAKEN_AT))
    assert doc == {
        "started_at": TAKEN_AT.isoformat(),  # a reader seeing it change reloads
        "interval_seconds": 10,
        "window_seconds": 3600,
        "capacity": 361,
        "oldest_seq": 0,
        "newest_seq": 0,
        "ticks": [],
    }
