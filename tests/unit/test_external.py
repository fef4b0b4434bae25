"""Weights set outside VeloFlux (``agent/external.py``): found against what VeloFlux
last wrote, held as a temporary pin, never while paused, never after a proxy reload.

The config of test_tick (static weight 4, step limit 0.5): a write tick from 20 plans
10; the operator then sets w1 to 7 by hand."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from tests.unit.factories import PROXY, TAKEN_AT, Pool, Server, observation
from tests.unit.test_tick import AT_20, CONFIG, make_agent, planned
from veloflux.config.schema import Config


def at(seconds: float, w1: int, w2: int = 10, reloaded: bool = False):  # type: ignore[no-untyped-def]
    reading = observation(
        [Pool("web", [Server("w1", w1, 20), Server("w2", w2, 20)])],
        TAKEN_AT + timedelta(seconds=seconds),
    )
    if reloaded:
        reading = dataclasses.replace(reading, proxy=dataclasses.replace(PROXY, pid=PROXY.pid + 1))
    return reading


def hold(seconds: str) -> Config:
    policy = CONFIG.policy.model_copy(update={"external_change_hold_seconds": float(seconds)})
    return CONFIG.model_copy(update={"policy": policy})


def test_a_weight_set_by_hand_is_found_held_and_named_until_the_hold_ends() -> None:
    """Kills: the planner stepping the hand-set weight back at once (the old behaviour),
    a hold that never ends, and a standing change counted again every tick."""
    agent, _ = make_agent(AT_20, at(10, 7), at(20, 7, 5), at(1000, 7, 4), config=hold("900"))
    assert planned(agent.tick(write=True), "w1").planned_weight == 10
    found = agent.tick(write=True)
    (change,) = found.external_changes
    assert (change.server, change.written, change.found) == ("web/w1", 10, 7)
    assert change.held_until == TAKEN_AT + timedelta(seconds=910)
    w1 = planned(found, "w1")
    assert w1.planned_weight == 7
    assert w1.reason.startswith("held: weight set outside VeloFlux (7; it had written 10)")
    assert planned(found, "w2").planned_weight == 5  # the others still move
    again = agent.tick(write=True)
    assert again.external_changes == ()
    assert [c.server for c in again.external_holds] == ["web/w1"]
    assert planned(again, "w1").planned_weight == 7
    after = agent.tick(write=True)  # 990 s after the change: the hold is over
    assert after.external_holds == ()
    assert planned(after, "w1").planned_weight == 4
    assert agent.events.count("external_change") == 1


def test_with_no_hold_the_change_is_reported_and_stepped_back() -> None:
    agent, _ = make_agent(AT_20, at(10, 7), config=hold("0"))
    agent.tick(write=True)
    result = agent.tick(write=True)
    assert [c.held_until for c in result.external_changes] == [None]
    assert planned(result, "w1").planned_weight == 4


def test_a_proxy_reload_is_not_an_external_change() -> None:
    """The restart reset the weights itself; VeloFlux restores its own instead."""
    agent, _ = make_agent(AT_20, at(10, 20, 20, reloaded=True), config=hold("900"))
    agent.tick(write=True)
    result = agent.tick(write=True)
    assert result.proxy_reloaded
    assert result.external_changes == ()
    assert "restored" in planned(result, "w1").reason


def test_while_paused_what_the_operator_set_becomes_the_baseline() -> None:
    """Kills: a paused daemon holding (or auditing) what an operator did while it was
    paused, so that resuming would stack holds instead of handing weights back."""
    agent, _ = make_agent(AT_20, at(10, 7), at(20, 7), config=hold("900"))
    agent.tick(write=True)
    paused = agent.tick(write=False)
    assert paused.external_changes == ()
    resumed = agent.tick(write=True)
    assert resumed.external_changes == ()
    assert planned(resumed, "w1").planned_weight == 4


def test_an_operators_pin_wins_over_a_hold() -> None:
    agent, _ = make_agent(AT_20, at(10, 7), config=hold("900"))
    agent.tick(write=True)
    result = agent.tick(write=True, overrides={"web/w1": 12})
    assert planned(result, "w1").planned_weight == 12
    assert planned(result, "w1").reason == "override"


def test_a_one_shot_command_seeded_from_the_audit_log_holds_as_the_daemon_does() -> None:
    agent, _ = make_agent(at(10, 7), config=hold("900"))
    agent.seed_written({"web/w1": 10, "web/w2": 10})
    preview = agent.tick(write=False)
    assert [c.server for c in preview.external_changes] == ["web/w1"]
    assert planned(preview, "w1").planned_weight == 7
