"""``DaemonOps``, the daemon's state behind the HTTP API: liveness, readiness, training
outcomes and the status page, without a scheduler, a proxy or a training process.

The driver is a fake ``Driver`` (ports.py); ``OperatorControls`` and ``AgentMetrics``
are the real ones, wired as ``veloflux.daemon.service.Daemon`` wires them. Liveness is
measured on ``time.monotonic``, which ``DaemonOps`` reads from its module's ``time``:
the ``clock`` fixture replaces that name with a clock the test moves by hand, so no
test sleeps and none depends on how fast this machine is.

Each test's docstring names the one-line break in ``daemon/state.py`` (or in the API's
health route) that it catches.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.factories import TAKEN_AT, Pool, Server, observation
from veloflux import __version__
from veloflux.agent.learn import NoHistory
from veloflux.agent.ports import TickResult
from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.daemon.api.server import ApiServer
from veloflux.daemon.audit import Actor, AuditLog
from veloflux.daemon.controls import OperatorControls
from veloflux.daemon.metrics import AgentMetrics
from veloflux.daemon.state import DaemonOps
from veloflux.daemon.training_job import Trainer, TrainingCancelled
from veloflux.domain.weightplan import PoolPlan, ServerPlan, WeightPlan
from veloflux.errors import ControlRefused, SourceUnavailable
from veloflux.model.registry import Registry
from veloflux.model.train import NotEnoughData
from veloflux.util.events import Events

SOCKET = "unix:///run/haproxy/admin.sock"
FINISHED_AT = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
STATUS_KEYS = {
    "version",
    "ready",
    "interval_seconds",
    "paused",
    "pause_reason",
    "overrides",
    "external_holds",
    "last_attempt",
    "last_success",
    "last_tick",
    "sources",
    "model",
    "last_training",
    "recent_trainings",
    "plan",
    "ticks",
    "external_changes_total",
}


def config(tmp_path: Path, interval: str) -> Config:
    return validate_config(
        {
            "interval": interval,
            "haproxy": {"socket": SOCKET, "timeout": "1s", "backends": ["web"]},
            "ai": {"enabled": False},
            "api": {"state_path": str(tmp_path / "operator.json")},
        }
    )


def tick_result() -> TickResult:
    """A tick that saw web/w1 and web/w2 (and the unmanaged legacy/l1) and planned
    both web servers from 10 to 8."""
    seen = observation(
        [
            Pool("web", [Server("w1"), Server("w2")]),
            Pool("legacy", [Server("l1")], algorithm="static-rr", managed=False),
        ]
    )
    servers = tuple(
        ServerPlan("web", name, "UP", 10, 8, 8, 0.0, "fallback: no model") for name in ("w1", "w2")
    )
    plan = WeightPlan(
        TAKEN_AT, (PoolPlan("web", "roundrobin", "fallback", 0.0, "no model", servers),)
    )
    return TickResult(seen, plan, None, 0.25)


@dataclass
class FakeDriver:
    """A ``Driver`` whose ticks return ``result`` or raise ``fail_with``, and are kept."""

    result: TickResult = field(default_factory=tick_result)
    fail_with: Exception | None = None
    calls: list[tuple[bool, dict[str, int], bool | None]] = field(default_factory=list)
    closed: int = 0
    shared_events: Events = field(default_factory=Events)

    @property
    def events(self) -> Events:
        return self.shared_events

    @property
    def registry(self) -> Registry | None:
        return None

    def tick(
        self,
        write: bool,
        overrides: Mapping[str, int] | None = None,
        record: bool | None = None,
    ) -> TickResult:
        self.calls.append((write, dict(overrides or {}), record))
        if self.fail_with is not None:
            raise self.fail_with
        return self.result

    def seed_written(self, weights: Mapping[str, int]) -> None:
        raise AssertionError("the daemon never seeds its agent: it wrote the weights itself")

    def stale_history(self) -> float | None:
        raise AssertionError("only one-shot commands sample for themselves")

    def sample(self) -> None:
        raise AssertionError("only one-shot commands sample for themselves")

    def revert(self) -> TickResult:
        return self.result

    def close(self) -> None:
        self.closed += 1


class ManualClock:
    """The clocks ``DaemonOps`` is given: ``monotonic`` moves only when a test calls
    ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_772_337_600.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@dataclass
class Wired:
    ops: DaemonOps
    driver: FakeDriver
    events: Events
    metrics: AgentMetrics


Build = Callable[..., Wired]
OPERATOR = Actor("cli:test")


@pytest.fixture
def build(tmp_path: Path, clock: ManualClock) -> Build:
    """``DaemonOps`` as ``Daemon.__init__`` builds it, at the given interval."""

    def make(interval: str = "20s", driver: FakeDriver | None = None) -> Wired:
        cfg = config(tmp_path, interval)
        events = Events()
        driver = driver or FakeDriver(shared_events=events)
        driver.shared_events = events
        metrics = AgentMetrics(__version__, events)
        controls = OperatorControls(cfg.api.state_path, lambda: FINISHED_AT, events)
        audit = AuditLog(tmp_path / "audit.jsonl", events, 1 << 20, 2)
        ops = DaemonOps(
            cfg,
            driver,
            controls,
            metrics,
            lambda: FINISHED_AT,
            audit,
            monotonic=clock.monotonic,
            epoch=clock.time,
        )
        return Wired(ops, driver, events, metrics)

    return make


# --- liveness ---------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "window"), [("20s", 60.0), ("1s", 30.0)])
def test_healthy_until_the_last_tick_is_older_than_the_liveness_window(
    build: Build, clock: ManualClock, interval: str, window: float
) -> None:
    """The window is max(3 intervals, 30 s). Kills: a ``healthy`` that always says yes;
    a window of 3 intervals only (30 s would fail at 1 s intervals); a window of 30 s
    only (60 s would fail at 20 s intervals); ``>=`` for ``>`` at the edge."""
    wired = build(interval)
    wired.ops.tick()
    clock.advance(window)
    assert wired.ops.healthy() == (True, "ok")
    clock.advance(1.0)
    healthy, reason = wired.ops.healthy()
    assert not healthy
    assert reason == f"no tick has ended for {window + 1:.0f}s (limit {window:.0f}s)"


def test_a_fresh_tick_makes_a_stale_loop_healthy_again(build: Build, clock: ManualClock) -> None:
    """Kills: a heartbeat set once at start-up and never again by ``tick``."""
    wired = build("20s")
    clock.advance(61.0)
    assert not wired.ops.healthy()[0]
    wired.ops.tick()
    assert wired.ops.healthy() == (True, "ok")


def test_a_tick_that_raises_still_counts_as_the_loop_turning(
    build: Build, clock: ManualClock
) -> None:
    """A failing source is not a stalled loop (readiness says that). Kills: setting the
    heartbeat after the driver's tick returns instead of in ``finally``."""
    wired = build("20s", FakeDriver(fail_with=SourceUnavailable("socket gone")))
    clock.advance(50.0)
    with pytest.raises(SourceUnavailable):
        wired.ops.tick()
    clock.advance(50.0)  # 100 s since start, 50 s since the failed tick ended
    assert wired.ops.healthy() == (True, "ok")


def test_a_loop_that_never_ticks_becomes_unhealthy(build: Build, clock: ManualClock) -> None:
    """Start-up counts as the first heartbeat, so a daemon whose scheduler never runs a
    tick turns unhealthy one window later. Kills: treating "no tick yet" as healthy."""
    wired = build("20s")
    assert wired.ops.healthy() == (True, "ok")
    clock.advance(61.0)
    assert wired.ops.healthy() == (False, "no tick has ended for 61s (limit 60s)")


# --- readiness --------------------------------------------------------------------------


def test_not_ready_until_the_first_successful_observation(build: Build) -> None:
    """Kills: a ``ready`` that always says yes, one that a failed tick makes ready, and
    one that forgets why it is not ready."""
    driver = FakeDriver(fail_with=SourceUnavailable("socket gone"))
    wired = build("20s", driver)
    assert wired.ops.ready() == (False, "no successful observation yet (starting)")
    with pytest.raises(SourceUnavailable):
        wired.ops.tick()
    wired.ops.tick_failed("source", "socket gone", 0.1)
    assert wired.ops.ready() == (False, "no successful observation yet (source: socket gone)")
    assert wired.ops.status()["ready"] is False
    driver.fail_with = None
    wired.ops.tick()
    assert wired.ops.ready() == (True, "ok")
    assert wired.ops.status()["ready"] is True


def test_a_later_failed_tick_keeps_the_daemon_ready_and_marks_the_source_down(
    build: Build,
) -> None:
    """Ready means "has observed once"; the status page says the source is down now.
    Kills: ``tick_failed`` dropping the last observation, or not marking the source."""
    wired = build("20s")
    wired.ops.tick()
    wired.ops.tick_failed("source", "socket gone", 0.1)
    assert wired.ops.ready() == (True, "ok")
    status = wired.ops.status()
    assert status["sources"] == {"haproxy": {"up": False, "address": SOCKET}}
    assert status["last_tick"]["error"] == "source: socket gone"
    # #18 (7): last_tick mixes the good tick's time with the later failure's error;
    # last_attempt and last_success say them apart.
    assert status["last_attempt"] == {
        "at": FINISHED_AT.isoformat(),
        "duration_seconds": 0.1,
        "ok": False,
        "error": "source: socket gone",
    }
    assert status["last_success"] == {"at": TAKEN_AT.isoformat(), "duration_seconds": 0.25}


# --- ticks and the operator's controls --------------------------------------------------


def test_a_pause_ticks_without_writing_and_pins_reach_the_driver(build: Build) -> None:
    """Kills: ``write=True`` regardless of the pause, or pins not handed to the tick."""
    wired = build("20s")
    wired.ops.tick()
    wired.ops.set_override("web/w1", 3, None, OPERATOR)
    wired.ops.pause("deploying", OPERATOR)
    wired.ops.tick()
    wired.ops.resume(OPERATOR)
    wired.ops.tick()
    assert wired.driver.calls == [
        (True, {}, True),
        (False, {"web/w1": 3}, True),
        (True, {"web/w1": 3}, True),
    ]


def test_a_pin_needs_an_observed_server_of_a_managed_pool(build: Build) -> None:
    """Kills: ``_check_known`` skipped (a pin on a server the proxy does not have)."""
    wired = build("20s")
    with pytest.raises(ControlRefused) as early:
        wired.ops.set_override("web/w1", 3, None, OPERATOR)
    assert early.value.status == 409
    wired.ops.tick()
    for server, status in [("web/ghost", 404), ("api/w1", 404), ("legacy/l1", 409)]:
        with pytest.raises(ControlRefused) as refused:
            wired.ops.set_override(server, 3, None, OPERATOR)
        assert refused.value.status == status
    assert wired.ops.overrides() == []


# --- training ---------------------------------------------------------------------------


def report(promoted: bool) -> dict[str, Any]:
    return {"promoted": promoted, "version": "20260301-0400", "reason": "beats the current"}


def raising(exc: Exception) -> Trainer:
    def trainer(_config: Config, _events: Events, _cancelled: Callable[[], bool]) -> dict[str, Any]:
        raise exc

    return trainer


@pytest.mark.parametrize(
    ("trainer", "outcome", "message"),
    [
        (lambda *_: report(True), "promoted", "model 20260301-0400: beats the current"),
        (lambda *_: report(False), "not_promoted", "model 20260301-0400: beats the current"),
        (
            raising(NotEnoughData("2 hours of history, 24 needed")),
            "skipped",
            "2 hours of history, 24 needed",
        ),
        (raising(NoHistory("no journal yet")), "skipped", "no journal yet"),
        (raising(RuntimeError("xgboost crashed")), "failed", "RuntimeError: xgboost crashed"),
        (raising(TrainingCancelled("the daemon is stopping")), "failed", "the daemon is stopping"),
    ],
    ids=["promoted", "not_promoted", "not_enough_data", "no_history", "exception", "cancelled"],
)
def test_every_training_outcome_is_recorded_and_none_is_raised(
    build: Build,
    trainer: Trainer,
    outcome: str,
    message: str,
) -> None:
    """Kills: an outcome raised out of ``train`` (the training thread would die), a
    missing ``except`` clause, NotEnoughData/NoHistory counted as failures, a cancelled
    training counted as skipped, or the promoted flag ignored."""
    wired = build("20s")
    run = wired.ops.train(trainer)
    assert (run.outcome, run.message, run.finished_at) == (outcome, message, FINISHED_AT)
    assert run.report == (report(outcome == "promoted") if outcome.endswith("promoted") else None)
    assert wired.events.count(f"training_{outcome}") == 1
    assert f'veloflux_trainings_total{{outcome="{outcome}"}} 1.0' in wired.metrics.render().decode()
    assert wired.ops.status()["last_training"] == run.to_json()


def test_stop_training_is_what_the_trainer_sees_as_cancelled(build: Build) -> None:
    """Kills: ``stop_training`` not reaching the ``cancelled`` callback a trainer polls."""
    wired = build("20s")
    seen: list[bool] = []

    def trainer(_config: Config, _events: Events, cancelled: Callable[[], bool]) -> dict[str, Any]:
        seen.append(cancelled())
        return report(False)

    wired.ops.train(trainer)
    wired.ops.stop_training()
    wired.ops.train(trainer)
    assert seen == [False, True]


# --- the status page --------------------------------------------------------------------


def test_status_before_any_tick_has_every_key_and_nothing_invented(build: Build) -> None:
    """Kills: a key renamed or dropped from the API's status JSON, or a plan, tick or
    training reported before there was one."""
    status = build("20s").ops.status()
    assert set(status) == STATUS_KEYS
    assert status["version"] == __version__
    assert (status["ready"], status["interval_seconds"], status["paused"]) == (False, 20.0, False)
    assert status["last_tick"] == {"at": None, "duration_seconds": None, "error": ""}
    assert status["sources"] == {"haproxy": {"up": True, "address": SOCKET}}
    assert (status["model"], status["last_training"], status["plan"]) == (None, None, None)
    assert status["overrides"] == []
    json.dumps(status)  # what the API serves must be JSON as it stands


def test_status_after_a_tick_shows_its_plan_and_the_operators_state(build: Build) -> None:
    """Kills: the last tick's time, duration or plan missing from the status page, or
    the pause and pins not shown."""
    wired = build("20s")
    wired.ops.tick()
    wired.ops.set_override("web/w2", 0, None, OPERATOR)
    wired.ops.pause("deploying", OPERATOR)
    status = wired.ops.status()
    assert set(status) == STATUS_KEYS
    assert status["last_tick"] == {
        "at": TAKEN_AT.isoformat(),
        "duration_seconds": 0.25,
        "error": "",
    }
    assert status["plan"] == wired.driver.result.plan.to_json()
    assert (status["paused"], status["pause_reason"]) == (True, "deploying")
    assert [o["server"] for o in status["overrides"]] == ["web/w2"]


def test_ticks_good_and_failed_feed_the_dashboards_history_and_counts(build: Build) -> None:
    """Kills: the timeline not fed by the daemon's ticks (the page would stay empty), a
    failed tick missing from it or from the counts, or the pause not recorded."""
    result = tick_result()  # planned 40 s before the failure, as the daemon's clock says
    plan = replace(result.plan, generated_at=FINISHED_AT - timedelta(seconds=40))
    wired = build("20s", FakeDriver(result=replace(result, plan=plan)))
    wired.ops.tick()
    wired.ops.pause("deploying", OPERATOR)
    wired.ops.tick()
    wired.ops.tick_failed("source", "socket gone", 1.5)
    history = json.loads(wired.ops.history_json(0, []))
    assert [(t["seq"], t["ok"], t["paused"]) for t in history["ticks"]] == [
        (1, True, False),
        (2, True, True),
        (3, False, True),
    ]
    assert history["ticks"][0]["pools"]["web"]["servers"] == ["w1", "w2"]
    assert history["ticks"][2]["error"] == "source: socket gone"
    assert history["ticks"][2]["sources"] == {"haproxy": False}
    assert wired.ops.status()["ticks"] == {
        "ok": 2,
        "failed": 1,
        "failed_by_reason": {"source": 1},
    }
    assert [e["action"] for e in wired.ops.audit_entries(5)] == ["pause"]


def test_recent_trainings_are_kept_newest_first_and_bounded(build: Build) -> None:
    """Kills: only the last training shown (an operator could not see that the last
    five were refused), oldest first, or an unbounded list."""
    wired = build("20s")
    outcomes = [report(n % 3 == 0) for n in range(12)]
    for outcome in outcomes:
        wired.ops.train(lambda *_, outcome=outcome: outcome)
    recent = wired.ops.status()["recent_trainings"]
    assert len(recent) == 10
    assert [r["outcome"] for r in recent[:4]] == [
        "not_promoted",  # n = 11
        "not_promoted",
        "promoted",  # n = 9
        "not_promoted",
    ]
    assert recent[0] == wired.ops.status()["last_training"]


# --- through the HTTP API ---------------------------------------------------------------


@pytest.fixture
def served(build: Build) -> Iterator[tuple[Wired, ApiServer]]:
    """The real API server on a free loopback port, with ``DaemonOps`` as both ports."""
    wired = build("20s")
    server = ApiServer(
        "127.0.0.1",
        0,
        status=wired.ops,
        controls=wired.ops,
        metrics=lambda: (wired.metrics.render(), AgentMetrics.CONTENT_TYPE),
        events=wired.events,
        token=None,
    )
    server.start()
    yield wired, server
    server.stop()


def get(server: ApiServer, path: str) -> tuple[int, bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_api_answers_503_once_the_loop_has_stalled(
    served: tuple[Wired, ApiServer], clock: ManualClock
) -> None:
    """What a liveness probe sees. Kills: the ``/-/healthy`` route answering 200 whatever
    the status port says, and a ``healthy`` that always says yes."""
    wired, server = served
    wired.ops.tick()
    assert get(server, "/-/healthy") == (200, b"ok\n")
    clock.advance(61.0)
    assert get(server, "/-/healthy") == (503, b"no tick has ended for 61s (limit 60s)\n")
    wired.ops.tick()
    assert get(server, "/-/healthy") == (200, b"ok\n")


def test_the_api_is_not_ready_until_the_first_observation(
    served: tuple[Wired, ApiServer],
) -> None:
    """What a readiness probe sees. Kills: ``/-/ready`` answering 200 before any tick."""
    wired, server = served
    assert get(server, "/-/ready") == (503, b"no successful observation yet (starting)\n")
    wired.ops.tick()
    assert get(server, "/-/ready") == (200, b"ok\n")


def test_the_api_serves_the_status_json_with_every_key(served: tuple[Wired, ApiServer]) -> None:
    """Kills: a status key dropped on the way to the client."""
    wired, server = served
    wired.ops.tick()
    status, body = get(server, "/status")
    assert status == 200
    assert set(json.loads(body)) == STATUS_KEYS | {"controls_enabled"}
