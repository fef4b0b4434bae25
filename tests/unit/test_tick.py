"""One ``Agent`` tick (observe -> advise -> plan -> act -> record) and ``revert``,
driven with an in-memory source and sink: what reaches the sink, what is remembered
across a proxy reload, what is recorded, which steps are timed, and the summary line.

Each test's docstring names a one-line break in ``agent/tick.py`` it catches.
(The planner's own rules are tested in test_plan.py; two proxies in test_fleet.py.)
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.unit.factories import PROXY, Pool, Server, observation
from tests.unit.test_fleet import RecordingSink, StubSource
from veloflux.agent.ports import TickResult
from veloflux.agent.steps import UNTIMED, Steps, StepTimes
from veloflux.agent.summary import summary_line
from veloflux.agent.tick import Agent
from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.domain.observation import Observation
from veloflux.domain.weightplan import ApplyReport, ServerPlan, WeightPlan
from veloflux.errors import ConfigError
from veloflux.history.journal import Journal
from veloflux.util.events import Events
from veloflux.util.logs import JsonFormatter
from veloflux.util.names import server_key

# No model and no history: every pool in fallback, moving toward its static weight by
# at most half its current weight a tick (the default max_step_ratio of 0.5).
CONFIG = validate_config(
    {
        "haproxy": {"socket": "unix:///haproxy.sock", "backends": ["web"]},
        "ai": {"enabled": False},
        "policy": {"static_weights": {"web/w1": 4, "web/w2": 4}},
    }
)
ENVOY_CONFIG = validate_config(
    {
        "envoy": {
            "admin": "http://127.0.0.1:9901",
            "eds_dir": "/tmp/eds",
            "clusters": [{"name": "web", "endpoints": [{"address": "127.0.0.1", "port": 8081}]}],
        },
        "ai": {"enabled": False},
    }
)

# Two servers at 20 whose static weight is 4: a write tick moves both to 10.
AT_20 = observation([Pool("web", [Server("w1", 20, 20), Server("w2", 20, 20)])])
# ... the next tick reads them at 10 and moves both to 5.
AT_10 = observation([Pool("web", [Server("w1", 10, 20), Server("w2", 10, 20)])])
# HAProxy restarted (a new pid): runtime weights are back at their configured 20.
RELOADED = dataclasses.replace(AT_20, proxy=dataclasses.replace(PROXY, pid=PROXY.pid + 1))


class ReportingSink(RecordingSink):
    """test_fleet's sink, which also keeps the proxy level it was handed and reports
    the writes to the servers named in ``failing`` (``BACKEND/SERVER``) as failed."""

    def __init__(self, failing: Iterable[str] = ()) -> None:
        super().__init__()
        self.levels: list[str] = []
        self.failing = set(failing)

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport:
        self.levels.append(proxy_level)
        report = super().apply(plan, proxy_level)
        return ApplyReport(
            tuple(
                r._replace(confirmed_weight=None, error="set weight: refused")
                if server_key(r.backend, r.server) in self.failing
                else r
                for r in report.results
            )
        )


def make_agent(
    *readings: Observation,
    sink: ReportingSink | None = None,
    config: Config = CONFIG,
    strict_pools: bool = False,
    journal: Journal | None = None,
    steps: Steps = UNTIMED,
) -> tuple[Agent, ReportingSink]:
    """An agent reading ``readings`` in turn (the last one again when they run out)."""
    sink = sink if sink is not None else ReportingSink()
    source = StubSource(*readings)
    agent = Agent(
        config,
        source,
        sink,
        Events(),
        strict_pools=strict_pools,
        journal=journal,
        log_summary=False,
        steps=steps,
    )
    return agent, sink


def planned(result: TickResult, server: str, pool: str = "web") -> ServerPlan:
    (found,) = [s for s in result.plan.servers() if (s.backend, s.server) == (pool, server)]
    return found


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "history.db", Events()) as opened:
        yield opened


# --- dry-run and write -----------------------------------------------------------------


def test_a_dry_run_never_calls_the_sink_and_records_nothing(journal: Journal) -> None:
    """Catches ``if write:`` -> ``if True:`` before the sink, and a default of
    ``recording = True`` instead of ``write``."""
    agent, sink = make_agent(AT_20, journal=journal)
    result = agent.tick(write=False)
    assert result.report is None
    assert sink.plans == []
    assert sink.levels == []
    assert journal.count() == 0
    assert len(result.plan.changes()) == 2  # there was something it would have written


def test_a_write_tick_hands_its_plan_to_the_sink_with_the_proxys_level() -> None:
    """Catches a sink called with another plan than the one returned, or without
    ``observation.proxy.level`` (the sink would then assume ``unknown``)."""
    operator = dataclasses.replace(AT_20, proxy=dataclasses.replace(PROXY, level="operator"))
    agent, sink = make_agent(operator)
    result = agent.tick(write=True)
    assert sink.plans == [result.plan]
    assert sink.levels == ["operator"]
    assert result.report is not None
    assert [(w.server, w.new_weight) for w in result.report.applied] == [("w1", 10), ("w2", 10)]


# --- a proxy reload --------------------------------------------------------------------


def test_a_reload_after_a_write_tick_restores_the_weights_veloflux_had_set() -> None:
    """Catches ``restore = None`` (or dropping ``_remember``): after the reload the step
    would start again from the reset 20, and the tick that reached 10 would be lost."""
    agent, _ = make_agent(AT_20, RELOADED)
    events = agent.events
    assert planned(agent.tick(write=True), "w1").planned_weight == 10
    result = agent.tick(write=True)
    assert result.proxy_reloaded
    assert events.count("proxy_reloaded") == 1
    w1 = planned(result, "w1")
    assert (w1.current_weight, w1.planned_weight) == (20, 5)  # one step on from 10, not 20
    assert "restored after a proxy reload reset it to 20" in w1.reason
    assert "proxy_reloaded" in summary_line(result)


def test_a_write_that_failed_is_forgotten_and_not_restored_after_a_reload() -> None:
    """w2 was set to 10, then its write of 5 failed: after the reload VeloFlux must not
    claim either weight as its own. Catches dropping ``or key in failed`` in ``_remember``
    (5 would be restored) and ``pop`` -> ``pass`` (the stale 10 would be)."""
    sink = ReportingSink()
    agent, _ = make_agent(AT_20, AT_10, RELOADED, sink=sink)
    agent.tick(write=True)  # both to 10
    sink.failing = {"web/w2"}
    second = agent.tick(write=True)  # both to 5; w2's write fails
    assert second.report is not None
    assert [w.server for w in second.report.failures] == ["w2"]
    result = agent.tick(write=True)
    assert result.proxy_reloaded
    w1, w2 = planned(result, "w1"), planned(result, "w2")
    assert w1.planned_weight == 4  # from the 5 it had set: one step reaches static 4
    assert "restored" in w1.reason
    assert w2.planned_weight == 10  # from the reset 20, as if VeloFlux had never touched it
    assert "restored" not in w2.reason


@pytest.mark.parametrize(
    ("first", "mode"),
    [
        (Pool("web", [Server("w1", 7, 7)], algorithm="source", managed=False), "unmanaged"),
        (Pool("web", [Server("w1", 7, 7, problem="stats row truncated")]), "hold"),
    ],
    ids=["unmanaged", "hold"],
)
def test_weights_of_hold_and_unmanaged_pools_are_not_remembered_for_restore(
    first: Pool, mode: str
) -> None:
    """A pool VeloFlux did not drive keeps the proxy's weight; that weight is not
    VeloFlux's to put back when the pool is managed after a reload (the algorithm
    changed, the data became trustworthy). Catches dropping the mode check in
    ``_remember``: the held 7 would be restored, and one step from 7 reaches 4."""
    then = observation([first])
    now = dataclasses.replace(
        observation([Pool("web", [Server("w1", 20, 20)])]),
        proxy=dataclasses.replace(PROXY, pid=PROXY.pid + 1),
    )
    w1_only = CONFIG.model_copy(
        update={"policy": CONFIG.policy.model_copy(update={"static_weights": {"web/w1": 4}})}
    )
    agent, _ = make_agent(then, now, config=w1_only)
    before = agent.tick(write=True)
    assert [p.mode for p in before.plan.pools] == [mode]
    assert planned(before, "w1").planned_weight == 7
    result = agent.tick(write=True)
    assert result.proxy_reloaded
    assert [p.mode for p in result.plan.pools] == ["fallback"]
    w1 = planned(result, "w1")
    assert w1.planned_weight == 10
    assert "restored" not in w1.reason


# --- operator overrides ----------------------------------------------------------------


def test_overrides_given_to_a_tick_pin_the_weight_for_that_tick_only() -> None:
    """The run-time pin joins the config's pins for one tick. Catches ignoring
    ``overrides``, replacing the config's pins with them instead of adding them, and
    keeping them on the config (the next tick would still pin w1)."""
    config = validate_config(
        {
            "haproxy": {"socket": "unix:///haproxy.sock"},
            "ai": {"enabled": False},
            "policy": {"overrides": {"web/w2": 9}},
        }
    )
    agent, _ = make_agent(observation([Pool("web", [Server("w1"), Server("w2")])]), config=config)
    pinned = agent.tick(write=True, overrides={"web/w1": 7})
    assert [(s.server, s.planned_weight, s.reason) for s in pinned.plan.servers()] == [
        ("w1", 7, "override"),
        ("w2", 9, "override"),
    ]
    after = agent.tick(write=True)
    w1 = planned(after, "w1")
    assert (w1.planned_weight, w1.reason) != (7, "override")
    assert w1.planned_weight == 10  # back toward its static weight
    assert planned(after, "w2").planned_weight == 9  # the config's pin stays
    assert dict(config.policy.overrides) == {"web/w2": 9}


# --- pools missing from the proxy ------------------------------------------------------


# The configs above with a second pool, ``api``, that the proxy lacks.
assert CONFIG.haproxy is not None
assert ENVOY_CONFIG.envoy is not None
WITH_API = CONFIG.model_copy(
    update={"haproxy": CONFIG.haproxy.model_copy(update={"backends": ("web", "api")})}
)
_WEB = ENVOY_CONFIG.envoy.clusters[0]
ENVOY_WITH_API = ENVOY_CONFIG.model_copy(
    update={
        "envoy": ENVOY_CONFIG.envoy.model_copy(
            update={"clusters": (_WEB, _WEB.model_copy(update={"name": "api"}))}
        )
    }
)


@pytest.mark.parametrize(
    ("config", "path", "named"),
    [
        (WITH_API, "haproxy.backends.1", "backend 'api' does not exist in HAProxy"),
        (ENVOY_WITH_API, "envoy.clusters.1", "cluster 'api' does not exist in Envoy"),
    ],
    ids=["haproxy", "envoy"],
)
def test_strict_pools_stop_the_tick_before_the_sink_when_a_configured_pool_is_missing(
    config: Config, path: str, named: str
) -> None:
    """Catches skipping the ``strict_pools`` check in ``_observe`` (the tick would go
    on and write), and naming the wrong section of the config."""
    missing = dataclasses.replace(AT_20, missing_pools=("api",))
    agent, sink = make_agent(missing, config=config, strict_pools=True)
    with pytest.raises(ConfigError) as caught:
        agent.tick(write=True)
    (problem,) = caught.value.problems
    assert problem.path == path
    assert named in problem.message
    assert sink.levels == []


def test_without_strict_pools_a_missing_pool_does_not_stop_the_others_being_written() -> None:
    """The daemon's way, once it has started: a pool a reload removed is counted and the
    others are written. Catches ``if self._strict_pools and ...`` losing its first
    operand (every missing pool would stop the daemon)."""
    missing = dataclasses.replace(AT_20, missing_pools=("api",))
    agent, sink = make_agent(AT_10, missing, config=WITH_API)
    agent.tick(write=True)
    result = agent.tick(write=True)
    assert sink.plans[-1] == result.plan


def test_the_daemons_first_observation_refuses_a_missing_pool() -> None:
    """#18 (4): the daemon treats a configured pool the proxy lacks as a config error at
    start (exit 1, named), as dry-run and apply do, before writing anything."""
    agent, sink = make_agent(dataclasses.replace(AT_20, missing_pools=("api",)), config=WITH_API)
    with pytest.raises(ConfigError) as caught:
        agent.tick(write=True)
    assert [p.path for p in caught.value.problems] == ["haproxy.backends.1"]
    assert sink.plans == []


# --- recording -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "record", "rows"),
    [
        (True, None, 2),  # writing records by default
        (False, None, 0),  # a dry-run does not
        (False, True, 2),  # a paused daemon keeps recording without writing
        (True, False, 0),  # told not to
    ],
    ids=["write", "dry-run", "paused", "write-unrecorded"],
)
def test_record_defaults_to_write_and_an_explicit_record_wins(
    journal: Journal, write: bool, record: bool | None, rows: int
) -> None:
    """Catches ``recording = write`` (the paused daemon's history would stop) and
    ``recording = record`` (a plain ``apply`` would not record)."""
    agent, _ = make_agent(AT_20, journal=journal)
    agent.tick(write=write, record=record)
    assert journal.count() == rows


# --- timed steps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_journal", "write", "timed"),
    [
        (False, False, ["observe", "frame", "capacity", "plan"]),
        (False, True, ["observe", "frame", "capacity", "plan", "apply", "record"]),
        (True, False, ["observe", "frame", "history", "advise", "capacity", "plan"]),
        (
            True,
            True,
            ["observe", "frame", "history", "advise", "capacity", "plan", "apply", "record"],
        ),
    ],
    ids=["dry-run", "write", "journal-dry-run", "journal-write"],
)
def test_steps_times_each_step_the_tick_ran_and_only_those(
    journal: Journal, with_journal: bool, write: bool, timed: list[str]
) -> None:
    """Names and order, never durations. Without a journal the model is not asked
    (no ``history`` or ``advise``); ``frame`` and ``record`` are still bracketed,
    around calls that return at once. Catches a step no longer bracketed (e.g. the
    sink called outside ``step("apply")``) or bracketed when it does not run."""
    steps = StepTimes()
    agent, _ = make_agent(AT_20, steps=steps, journal=journal if with_journal else None)
    agent.tick(write=write)
    assert list(steps.take()) == timed
    assert steps.take() == {}


# --- revert ----------------------------------------------------------------------------


def test_revert_writes_every_managed_server_straight_to_its_static_weight() -> None:
    """No step limit: 40 -> 4 and 1 -> 4 in one go, the unmanaged pool left alone.
    Catches ``revert`` planning with ``plan_weights`` (40 -> 20, 1 -> 2) or not
    handing the plan to the sink."""
    reading = observation(
        [
            Pool("web", [Server("w1", 40, 10), Server("w2", 1, 10)]),
            Pool("static", [Server("s1", 3, 5)], algorithm="source", managed=False),
        ]
    )
    agent, sink = make_agent(reading)
    result = agent.revert()
    assert sink.plans == [result.plan]
    assert sink.levels == ["admin"]
    assert [(p.backend, p.mode) for p in result.plan.pools] == [
        ("web", "fallback"),
        ("static", "unmanaged"),
    ]
    assert [(s.server, s.planned_weight) for s in result.plan.servers()] == [
        ("w1", 4),
        ("w2", 4),
        ("s1", 3),
    ]
    assert result.report is not None
    assert [(w.server, w.new_weight) for w in result.report.applied] == [("w1", 4), ("w2", 4)]


# --- the summary line ------------------------------------------------------------------

MIXED = observation(
    [
        Pool("web", [Server("w1", 20, 20), Server("w2", 20, 20)]),
        Pool("static", [Server("s1")], algorithm="source", managed=False),
    ]
)


def test_the_summary_line_counts_modes_and_written_and_failed_writes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Catches swapped or miscounted ``written=``/``failed=`` (a failure shown as a
    success) and a mode left out of ``pools[...]``; the agent logs the same line."""
    sink = ReportingSink(failing={"web/w2"})
    agent = Agent(CONFIG, StubSource(MIXED), sink, Events())
    with caplog.at_level(logging.INFO, logger="veloflux.tick"):
        result = agent.tick(write=True)
    line = summary_line(result)
    assert line.startswith("tick pools[fallback=1 unmanaged=1] servers=3 written=1 failed=1 ")
    assert "(dry-run)" not in line
    assert "proxy_reloaded" not in line
    assert [r.getMessage() for r in caplog.records if r.name == "veloflux.tick"] == [line]


def test_the_summary_line_of_a_dry_run_counts_planned_changes() -> None:
    """Catches a dry-run summarised as a write (``written=0 failed=0``)."""
    agent, _ = make_agent(MIXED)
    line = summary_line(agent.tick(write=False))
    assert "pools[fallback=1 unmanaged=1]" in line
    assert "planned_changes=2 (dry-run)" in line
    assert "written=" not in line


def test_a_paused_daemons_tick_line_says_paused_not_dry_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """#18 (9): a paused daemon's line said ``(dry-run)``. A tick that records without
    writing is the paused daemon's."""
    agent = Agent(CONFIG, StubSource(MIXED), ReportingSink(), Events())
    with caplog.at_level(logging.INFO, logger="veloflux.tick"):
        agent.tick(write=False, record=True)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "veloflux.tick"]
    assert "planned_changes=2 (paused)" in line


def test_the_json_log_line_carries_the_ticks_figures_as_fields() -> None:
    """#18 (8): with ``--log-format json`` the figures were packed into ``message``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())  # what --log-format json installs
    logger = logging.getLogger("veloflux.tick")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        sink = ReportingSink(failing={"web/w2"})
        Agent(CONFIG, StubSource(MIXED), sink, Events()).tick(write=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (entry,) = [e for e in map(json.loads, stream.getvalue().splitlines()) if e.get("event")]
    assert entry["logger"] == "veloflux.tick"
    assert entry["message"].startswith("tick pools[fallback=1 unmanaged=1]")
    assert entry["pools"] == {"fallback": 1, "unmanaged": 1}
    assert (entry["servers"], entry["written"], entry["failed"]) == (3, 1, 1)
    assert (entry["paused"], entry["dry_run"]) == (False, False)
    assert entry["lowest_confidence"] == 0.0
    assert entry["model"] is None
    assert isinstance(entry["duration_ms"], float)
