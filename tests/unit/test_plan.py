"""The planner's safety rules, as examples and as properties over random pools."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.factories import TAKEN_AT, Pool, Server, frozen, observation, policy
from veloflux.config.schema import PolicySection
from veloflux.decide.controller import max_step
from veloflux.decide.planner import bounded_weight, plan_revert, plan_weights, step_toward
from veloflux.domain.advice import Advice, PoolAdvice
from veloflux.domain.observation import COLUMN_NAMES, Observation
from veloflux.domain.weightplan import ServerPlan, WeightPlan

PROPERTY = settings(max_examples=200, deadline=None)
SLOW_PROPERTY = settings(max_examples=60, deadline=None)

# --- strategies ------------------------------------------------------------------------

weights = st.none() | st.integers(min_value=0, max_value=256)
servers = st.builds(
    Server,
    name=st.just(""),
    weight=weights,
    initial=weights,
    state=st.sampled_from(["UP", "UP", "UP", "DOWN", "MAINT", "DRAIN"]),
    backup=st.sampled_from([False, False, False, True]),
    problem=st.sampled_from(["", "", "", "", "rtime='x' is not a number"]),
)


# Draining a server by override is what the rotation rule is about: make 0 common.
override_weights = st.just(0) | st.integers(min_value=0, max_value=256)


@st.composite
def pools(draw: st.DrawFn, index: int) -> Pool:
    members = draw(st.lists(servers, min_size=1, max_size=30))
    managed = draw(st.sampled_from([True, True, True, False]))
    return Pool(
        f"be{index}",
        [replace(s, name=f"s{i}") for i, s in enumerate(members)],
        algorithm="roundrobin" if managed else "static-rr",
        managed=managed,
    )


@st.composite
def policies(draw: st.DrawFn, /, keys: list[str], **fixed: Any) -> PolicySection:
    low = draw(st.integers(min_value=0, max_value=256))
    fields: dict[str, Any] = {
        "min_weight": low,
        "max_weight": draw(st.integers(min_value=max(low, 1), max_value=256)),
        "max_step_ratio": draw(st.floats(min_value=0.01, max_value=10)),
        "deadband_ratio": draw(st.floats(min_value=0, max_value=0.99)),
        "min_servers_in_rotation": draw(st.integers(min_value=1, max_value=5)),
        "static_weights": draw(
            st.dictionaries(st.sampled_from(keys), st.integers(min_value=0, max_value=256))
        ),
        "overrides": draw(
            st.dictionaries(st.sampled_from(keys), override_weights, max_size=len(keys) // 2 + 1)
        ),
    }
    return policy(**(fields | fixed))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Pool], PolicySection]:
    count = draw(st.integers(min_value=1, max_value=3))
    drawn = [draw(pools(i)) for i in range(count)]
    keys = [f"{p.name}/{s.name}" for p in drawn for s in p.servers]
    return drawn, draw(policies(keys))


# --- helpers ---------------------------------------------------------------------------


def pairs(given_pools: list[Pool], plan: WeightPlan) -> Iterator[tuple[Pool, Server, ServerPlan]]:
    """Each input server beside its plan; fails if the plan lost or reordered a row."""
    assert [p.backend for p in plan.pools] == [p.name for p in given_pools]
    for pool, pool_plan in zip(given_pools, plan.pools, strict=True):
        assert [s.server for s in pool_plan.servers] == [s.name for s in pool.servers]
        for server, planned in zip(pool.servers, pool_plan.servers, strict=True):
            yield pool, server, planned


def fallback_target(pool: Pool, server: Server, pol: PolicySection) -> int | None:
    """The static weight from config, else HAProxy's initial weight, else the current one."""
    key = f"{pool.name}/{server.name}"
    if key in pol.static_weights:
        return pol.static_weights[key]
    source = server.initial if server.initial is not None else server.weight
    return None if source is None else int(source)


def in_rotation(states_weights: list[tuple[str, int | None]]) -> int:
    return sum(1 for state, weight in states_weights if state == "UP" and (weight or 0) > 0)


def feed_back(given_pools: list[Pool], plan: WeightPlan) -> list[Pool]:
    """The pools as HAProxy would show them after the plan was applied."""
    out = []
    for pool, pool_plan in zip(given_pools, plan.pools, strict=True):
        updated = [
            replace(s, weight=p.planned_weight if p.planned_weight is not None else s.weight)
            for s, p in zip(pool.servers, pool_plan.servers, strict=True)
        ]
        out.append(replace(pool, servers=updated))
    return out


def one_pool(*members: Server, managed: bool = True) -> list[Pool]:
    algorithm = "roundrobin" if managed else "static-rr"
    return [Pool("app", list(members), algorithm=algorithm, managed=managed)]


def planned_of(plan: WeightPlan) -> dict[str, int | None]:
    return {s.server: s.planned_weight for s in plan.servers()}


# --- the step and bound rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "ratio", "expected"),
    [
        (0, 0.5, 1),
        (1, 0.5, 1),
        (3, 0.5, 1),
        (10, 0.5, 5),
        (11, 0.5, 5),
        (256, 0.5, 128),
        (100, 0.05, 5),
        (10, 10, 100),
        (256, 10, 2560),
    ],
)
def test_max_step_is_a_ratio_of_the_current_weight_and_at_least_one(
    current: int, ratio: float, expected: int
) -> None:
    assert max_step(current, ratio) == expected


@pytest.mark.parametrize(
    ("current", "target", "ratio", "expected"),
    [
        (10, 100, 0.5, 15),
        (10, 0, 0.5, 5),
        (10, 12, 0.5, 12),
        (10, 8, 0.5, 8),
        (0, 5, 0.5, 1),
        (100, 100, 0.5, 100),
        (4, 256, 10, 44),
    ],
)
def test_step_toward(current: int, target: int, ratio: float, expected: int) -> None:
    assert step_toward(current, target, ratio) == expected


@PROPERTY
@given(
    st.integers(min_value=0, max_value=256),
    st.integers(min_value=0, max_value=256),
    st.floats(min_value=0.01, max_value=10),
)
def test_step_toward_moves_toward_the_target_by_at_most_one_step(
    current: int, target: int, ratio: float
) -> None:
    planned = step_toward(current, target, ratio)
    assert min(current, target) <= planned <= max(current, target)
    assert abs(planned - current) <= max(1.0, current * ratio)
    if planned != target:  # stopped short: it took a whole step
        assert abs(planned - current) > current * ratio - 1


def test_bounded_weight_clamps_to_policy_bounds() -> None:
    pol = policy(min_weight=5, max_weight=120, max_step_ratio=10)
    assert bounded_weight(100, 300, pol, exact_target=False) == (120, ["300 clamped to 120"])
    assert bounded_weight(10, 1, pol, exact_target=False) == (5, ["1 clamped to 5"])


def test_bounded_weight_notes_the_step_limit() -> None:
    planned, notes = bounded_weight(10, 100, policy(max_step_ratio=0.5), exact_target=True)
    assert planned == 15
    assert notes == ["step-limited toward 100"]


def test_deadband_suppresses_a_small_estimated_move() -> None:
    pol = policy(deadband_ratio=0.05)
    planned, notes = bounded_weight(100, 103, pol, exact_target=False)
    assert planned == 100
    assert notes == ["103 within deadband"]


def test_deadband_does_not_stop_short_of_an_exact_static_target() -> None:
    pol = policy(deadband_ratio=0.05)
    assert bounded_weight(100, 103, pol, exact_target=True) == (103, [])


def test_deadband_lets_a_large_estimated_move_through() -> None:
    pol = policy(deadband_ratio=0.05)
    assert bounded_weight(100, 110, pol, exact_target=False) == (110, [])


@PROPERTY
@given(
    st.integers(min_value=1, max_value=256),
    st.integers(min_value=0, max_value=300),
    st.floats(min_value=0.01, max_value=10),
    st.floats(min_value=0, max_value=0.99),
)
def test_bounded_weight_holds_an_estimate_that_is_within_the_deadband(
    current: int, desired: int, ratio: float, deadband: float
) -> None:
    pol = policy(max_step_ratio=ratio, deadband_ratio=deadband)
    planned, notes = bounded_weight(current, desired, pol, exact_target=False)
    target = min(max(desired, pol.min_weight), pol.max_weight)
    if abs(target - current) < deadband * current:
        assert planned == current
    if planned == current and target != current:
        assert any("deadband" in n or "step-limited" in n for n in notes)
    assert abs(planned - current) <= max(1.0, current * ratio)
    assert min(current, target) <= planned <= max(current, target)


def test_fallback_reaches_a_far_static_weight_with_a_small_step_ratio() -> None:
    pol = policy(max_step_ratio=0.05, static_weights={"app/s1": 60})
    current = one_pool(Server("s1", weight=30, initial=30))
    for _ in range(100):
        current = feed_back(current, plan_weights(observation(current), pol))
    assert current[0].servers[0].weight == 60


# --- fallback plans by example ---------------------------------------------------------


def test_fallback_moves_toward_the_static_weight_one_step_at_a_time() -> None:
    pol = policy(static_weights={"app/s1": 40}, max_step_ratio=0.5)
    plan = plan_weights(observation(one_pool(Server("s1", weight=10, initial=10))), pol)
    (server,) = plan.servers()
    assert (server.current_weight, server.planned_weight, server.static_weight) == (10, 15, 40)
    assert server.reason.startswith("no model")
    assert plan.pools[0].mode == "fallback"
    assert plan.changes() == [server]


def test_static_weight_comes_from_config_then_initial_then_current() -> None:
    pol = policy(static_weights={"app/a": 7}, max_step_ratio=10)
    members = (
        Server("a", weight=50, initial=30),
        Server("b", weight=50, initial=30),
        Server("c", weight=50, initial=None),
    )
    plan = plan_weights(observation(one_pool(*members)), pol)
    assert planned_of(plan) == {"a": 7, "b": 30, "c": 50}
    assert [s.static_weight for s in plan.servers()] == [7, 30, 50]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (Server("s1", weight=5, state="MAINT"), "maintenance"),
        (Server("s1", weight=5, state="DRAIN"), "drain"),
        (Server("s1", weight=5, backup=True), "backup"),
        (Server("s1", weight=5, problem="rtime='x' is not a number"), "hold: rtime="),
        (Server("s1", weight=None), "hold: current weight unknown"),
    ],
)
def test_servers_the_rules_protect_keep_their_weight_even_with_an_override(
    member: Server, reason: str
) -> None:
    pol = policy(static_weights={"app/s1": 200}, overrides={"app/s1": 99}, max_step_ratio=10)
    plan = plan_weights(observation(one_pool(member, Server("s2"))), pol)
    server = next(plan.servers())
    assert server.planned_weight == server.current_weight
    assert reason in server.reason
    assert server not in plan.changes()


def test_down_server_keeps_its_weight_in_fallback() -> None:
    pol = policy(static_weights={"app/s1": 200}, max_step_ratio=10)
    plan = plan_weights(observation(one_pool(Server("s1", weight=5, state="DOWN"))), pol)
    assert planned_of(plan) == {"s1": 5}
    assert next(plan.servers()).reason == "down"


def test_static_weight_zero_is_held_not_written() -> None:
    members = (Server("s1", weight=5, initial=0), Server("s2", weight=5))
    plan = plan_weights(observation(one_pool(*members)), policy(static_weights={"app/s2": 0}))
    assert planned_of(plan) == {"s1": 5, "s2": 5}
    assert {s.reason for s in plan.servers()} == {"static weight 0"}


def test_weight_zero_may_be_raised_when_min_weight_is_zero() -> None:
    pol = policy(min_weight=0, static_weights={"app/s1": 10})
    plan = plan_weights(observation(one_pool(Server("s1", weight=0, initial=10))), pol)
    assert planned_of(plan) == {"s1": 1}


def test_unknown_weight_is_never_written() -> None:
    pol = policy(static_weights={"app/s1": 10, "app/s2": 10})
    plan = plan_weights(
        observation(one_pool(Server("s1", weight=None), Server("s2", weight=5))), pol
    )
    assert planned_of(plan)["s1"] is None
    assert [s.server for s in plan.changes()] == ["s2"]


def test_override_wins_and_is_exact() -> None:
    pol = policy(max_step_ratio=0.1, max_weight=50, overrides={"app/s1": 200})
    plan = plan_weights(observation(one_pool(Server("s1", weight=10))), pol)
    (server,) = plan.servers()
    assert (server.planned_weight, server.reason) == (200, "override")


def test_override_to_zero_is_undone_to_keep_the_minimum_in_rotation() -> None:
    pol = policy(overrides={"app/s1": 0, "app/s2": 0}, min_servers_in_rotation=1)
    members = (
        Server("s1", weight=10),
        Server("s2", weight=10),
        Server("s3", weight=10, state="DOWN"),
    )
    plan = plan_weights(observation(one_pool(*members)), pol)
    assert planned_of(plan) == {"s1": 10, "s2": 0, "s3": 10}
    assert "min_servers_in_rotation" in next(plan.servers()).reason


def test_override_to_zero_is_allowed_while_enough_servers_stay() -> None:
    pol = policy(overrides={"app/s1": 0}, min_servers_in_rotation=2)
    members = (Server("s1", weight=10), Server("s2", weight=10), Server("s3", weight=10))
    plan = plan_weights(observation(one_pool(*members)), pol)
    assert planned_of(plan)["s1"] == 0


def test_pool_with_only_untrustworthy_rows_is_on_hold() -> None:
    members = (Server("s1", problem="scur='?' is not a number"), Server("s2", weight=None))
    plan = plan_weights(observation(one_pool(*members)), policy())
    assert plan.pools[0].mode == "hold"
    assert plan.pools[0].reason == "no trustworthy data"
    assert plan.changes() == []


def test_pool_with_one_trustworthy_row_is_not_on_hold() -> None:
    members = (Server("s1", problem="scur='?' is not a number"), Server("s2", weight=10))
    assert plan_weights(observation(one_pool(*members)), policy()).pools[0].mode == "fallback"


def test_unmanaged_pool_is_reported_and_never_changed() -> None:
    pol = policy(static_weights={"app/s1": 100}, overrides={"app/s2": 50})
    members = (Server("s1", weight=10), Server("s2", weight=10))
    plan = plan_weights(observation(one_pool(*members, managed=False)), pol)
    assert plan.pools[0].mode == "unmanaged"
    assert plan.pools[0].reason == "static algorithm (static-rr)"
    assert planned_of(plan) == {"s1": 10, "s2": 10}
    assert plan.changes() == []


def test_fallback_reason_is_passed_through() -> None:
    pol = policy(static_weights={"app/s1": 20})
    advice = Advice("v1", {"app": PoolAdvice("app", 0.0, "model stale")})
    plan = plan_weights(observation(one_pool(Server("s1"))), pol, advice)
    assert plan.pools[0].reason == "model stale"
    assert next(plan.servers()).reason.startswith("model stale")


# --- revert ----------------------------------------------------------------------------


def test_revert_goes_straight_to_static_weights() -> None:
    pol = policy(max_step_ratio=0.1, static_weights={"app/s1": 200})
    members = (
        Server("s1", weight=10),
        Server("s2", weight=80, initial=20),
        Server("s3", weight=5, state="DOWN", initial=9),
    )
    plan = plan_revert(observation(one_pool(*members)), pol)
    assert planned_of(plan) == {"s1": 200, "s2": 20, "s3": 9}
    assert {s.reason for s in plan.servers()} == {"revert to static"}


@pytest.mark.parametrize(
    "member",
    [
        Server("s1", weight=5, state="MAINT", initial=50),
        Server("s1", weight=5, state="DRAIN", initial=50),
        Server("s1", weight=0, initial=50),
        Server("s1", weight=5, initial=50, problem="eresp='-1' is not a finite non-negative"),
        Server("s1", weight=None, initial=50),
        Server("s1", weight=5, initial=50, backup=True),
    ],
)
def test_revert_leaves_protected_rows(member: Server) -> None:
    plan = plan_revert(observation(one_pool(member, Server("s2"))), policy())
    server = next(plan.servers())
    assert server.planned_weight == server.current_weight


def test_revert_leaves_unmanaged_pools() -> None:
    pol = policy(static_weights={"app/s1": 100})
    plan = plan_revert(observation(one_pool(Server("s1"), managed=False)), pol)
    assert plan.pools[0].mode == "unmanaged"
    assert plan.changes() == []


def test_revert_never_drains_a_pool() -> None:
    pol = policy(static_weights={"app/s1": 0, "app/s2": 0})
    plan = plan_revert(observation(one_pool(Server("s1"), Server("s2"))), pol)
    assert in_rotation([(s.state, s.planned_weight) for s in plan.servers()]) >= 1


@SLOW_PROPERTY
@given(scenarios())
def test_revert_property(scenario: tuple[list[Pool], PolicySection]) -> None:
    given_pools, pol = scenario
    plan = plan_revert(observation(given_pools), pol)
    for pool, server, planned in pairs(given_pools, plan):
        if not pool.managed or frozen(server, pol) or "min_servers_in_rotation" in planned.reason:
            assert planned.planned_weight == planned.current_weight
        else:
            assert planned.planned_weight == fallback_target(pool, server, pol)


# --- JSON ------------------------------------------------------------------------------

SERVER_KEYS = {
    "server",
    "state",
    "current_weight",
    "planned_weight",
    "static_weight",
    "confidence",
    "confidence_parts",
    "reason",
}
POOL_KEYS = {"backend", "algorithm", "mode", "confidence", "servers"}


def check_json_shape(plan: WeightPlan) -> None:
    document = json.loads(plan.to_json_text())
    assert document == plan.to_json()
    # The foundation's contract, extended (never renamed) by the learning core.
    assert set(document) == {"generated_at", "model_version", "pools"}
    assert datetime.fromisoformat(document["generated_at"]) == plan.generated_at
    for pool in document["pools"]:
        assert set(pool) >= POOL_KEYS
        assert pool["mode"] in {"model", "fallback", "hold", "unmanaged"}
        assert 0 <= pool["confidence"] <= 1
        for server in pool["servers"]:
            assert set(server) >= SERVER_KEYS
            for key in ("current_weight", "planned_weight", "static_weight"):
                assert server[key] is None or isinstance(server[key], int)
            assert isinstance(server["reason"], str)
            assert server["reason"]


def test_json_shape_by_example() -> None:
    members = (Server("s1", weight=10), Server("s2", weight=None), Server("s3", state="MAINT"))
    plan = plan_weights(observation(one_pool(*members)), policy())
    check_json_shape(plan)
    document = plan.to_json()
    assert document["generated_at"] == TAKEN_AT.isoformat()
    assert document["pools"][0]["backend"] == "app"
    assert document["pools"][0]["algorithm"] == "roundrobin"
    assert document["pools"][0]["servers"][1]["current_weight"] is None


# --- properties over random pools ------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_plan_respects_every_safety_rule(scenario: tuple[list[Pool], PolicySection]) -> None:
    given_pools, pol = scenario
    obs = observation(given_pools)
    plan = plan_weights(obs, pol)
    check_servers(given_pools, plan, pol)
    check_rotation(given_pools, plan, pol)
    check_modes(given_pools, plan)
    check_json_shape(plan)
    assert plan.generated_at == obs.taken_at
    assert plan_weights(obs, pol) == plan  # a pure function of its inputs


def check_servers(given_pools: list[Pool], plan: WeightPlan, pol: PolicySection) -> None:
    changes = plan.changes()
    for pool, server, planned in pairs(given_pools, plan):
        key = f"{pool.name}/{server.name}"
        current = None if server.weight is None else int(server.weight)
        assert planned.current_weight == current
        assert 0 <= planned.confidence <= 1
        if current is None:
            assert planned.planned_weight is None
            assert planned not in changes
            continue
        assert planned.planned_weight is not None
        assert 0 <= planned.planned_weight <= 256
        assert (planned in changes) == (planned.planned_weight != current)
        if not pool.managed or frozen(server, pol, key):
            assert planned.planned_weight == current, planned
        elif key in pol.overrides:
            kept = "min_servers_in_rotation" in planned.reason
            assert planned.planned_weight == (current if kept else pol.overrides[key])
        else:
            check_fallback_move(pool, server, planned, pol)


def check_fallback_move(
    pool: Pool, server: Server, planned: ServerPlan, pol: PolicySection
) -> None:
    """Step limit, bounds and direction of one non-override, non-frozen server."""
    assert server.weight is not None
    current = int(server.weight)
    static = fallback_target(pool, server, pol)
    new = planned.planned_weight
    assert new is not None
    if server.state == "DOWN" or not static:
        assert new == current
        return
    target = min(max(static, pol.min_weight), pol.max_weight)
    assert abs(new - current) <= max(1.0, current * pol.max_step_ratio)
    assert min(current, target) <= new <= max(current, target)  # toward the target
    if pol.min_weight <= current <= pol.max_weight:
        assert pol.min_weight <= new <= pol.max_weight


def check_rotation(given_pools: list[Pool], plan: WeightPlan, pol: PolicySection) -> None:
    """No pool drops below min(min_servers_in_rotation, servers in rotation now)."""
    for pool, pool_plan in zip(given_pools, plan.pools, strict=True):
        before = in_rotation(
            [(s.state, None if s.weight is None else int(s.weight)) for s in pool.servers]
        )
        after = in_rotation([(s.state, s.planned_weight) for s in pool_plan.servers])
        assert after >= min(pol.min_servers_in_rotation, before)


def check_modes(given_pools: list[Pool], plan: WeightPlan) -> None:
    for pool, pool_plan in zip(given_pools, plan.pools, strict=True):
        untrusted = all(s.problem or s.weight is None for s in pool.servers)
        if not pool.managed:
            assert pool_plan.mode == "unmanaged"
        elif untrusted:
            assert pool_plan.mode == "hold"
        else:
            assert pool_plan.mode == "fallback"


@st.composite
def converging(draw: st.DrawFn) -> tuple[list[Pool], PolicySection]:
    members = draw(
        st.lists(
            st.builds(
                Server,
                name=st.just(""),
                weight=st.integers(min_value=1, max_value=256),
                initial=st.integers(min_value=1, max_value=256),
                state=st.sampled_from(["UP", "UP", "UP", "DOWN", "MAINT", "DRAIN"]),
            ),
            min_size=1,
            max_size=30,
        )
    )
    pool = Pool("app", [replace(s, name=f"s{i}") for i, s in enumerate(members)])
    keys = [f"app/{s.name}" for s in pool.servers]
    pol = draw(
        policies(
            keys,
            max_step_ratio=0.5,
            deadband_ratio=draw(st.floats(min_value=0, max_value=0.3)),
            overrides={},
            static_weights=draw(
                st.dictionaries(st.sampled_from(keys), st.integers(min_value=1, max_value=256))
            ),
        )
    )
    return [pool], pol


@SLOW_PROPERTY
@given(converging())
def test_repeated_fallback_converges_to_clamped_static_weights(
    scenario: tuple[list[Pool], PolicySection],
) -> None:
    current, pol = scenario
    start = current
    for _ in range(20):
        plan = plan_weights(observation(current), pol)
        if not plan.changes():
            break
        current = feed_back(current, plan)
    else:
        pytest.fail("still changing after 20 ticks at max_step_ratio 0.5")
    for before, after in zip(start[0].servers, current[0].servers, strict=True):
        if before.state != "UP":
            assert after.weight == before.weight
            continue
        static = fallback_target(start[0], before, pol)
        assert static is not None
        assert after.weight == min(max(static, pol.min_weight), pol.max_weight)


def test_observation_factory_has_every_documented_column() -> None:
    obs: Observation = observation(one_pool(Server("s1", weight=None)))
    assert list(obs.frame.columns) == list(COLUMN_NAMES)
    assert math.isnan(float(obs.frame["weight"].iloc[0]))


# --- restoring after a proxy reload ------------------------------------------------------------


def test_after_a_reload_steps_start_from_the_weights_veloflux_had_set() -> None:
    # HAProxy reloaded: s1 is back at its configured 10, VeloFlux had moved it to 40.
    obs = observation([Pool("app", [Server("s1", weight=10), Server("s2", weight=10)])])
    pol = policy(static_weights={"app/s1": 40, "app/s2": 10}, max_step_ratio=0.5)
    normal = {s.server: s for s in plan_weights(obs, pol).servers()}
    assert normal["s1"].planned_weight == 15  # one step from the reset weight
    restored = {s.server: s for s in plan_weights(obs, pol, restore={"app/s1": 40}).servers()}
    assert restored["s1"].planned_weight == 40  # back where it was, in one tick
    assert restored["s1"].current_weight == 10  # the plan still shows what HAProxy has
    assert "restored after a proxy reload" in restored["s1"].reason
    assert restored["s2"] == normal["s2"]


def test_restoring_never_overrules_an_operator() -> None:
    obs = observation(
        [
            Pool(
                "app",
                [
                    Server("s1", weight=10, state="MAINT"),
                    Server("s2", weight=10),
                    Server("s3", weight=0),
                ],
            )
        ]
    )
    pol = policy(overrides={"app/s2": 3})
    restore = {"app/s1": 50, "app/s2": 50, "app/s3": 50}
    planned = {
        s.server: s.planned_weight for s in plan_weights(obs, pol, restore=restore).servers()
    }
    assert planned == {"s1": 10, "s2": 3, "s3": 0}


# --- what an operator reads in a plan (mutants of decide/planner.py that survived) --------------
# Each test below was written when `make mutation` showed that no test noticed a change to
# the planner; its docstring names the mutants it kills.


def test_a_plan_without_advice_claims_no_confidence_anywhere() -> None:
    """Kills: the default confidence of a held, planned or overridden server, of a server
    without advice, or of a pool without advice raised to 1."""
    members = (Server("s1", weight=10), Server("s2", state="DOWN"), Server("s3", weight=10))
    pol = policy(static_weights={"app/s1": 20}, overrides={"app/s3": 5})
    plan = plan_weights(observation(one_pool(*members)), pol)
    assert plan.pools[0].confidence == 0.0
    assert [(s.reason, s.confidence) for s in plan.servers()] == [
        ("no model (step-limited toward 20)", 0.0),
        ("down", 0.0),
        ("override", 0.0),
    ]
    reverted = plan_revert(observation(one_pool(*members)), pol)
    assert {s.confidence for s in reverted.servers()} == {0.0}


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (Server("s1", weight=5, state="MAINT"), "maintenance (set by an operator)"),
        (Server("s1", weight=5, state="DRAIN"), "drain (set by an operator)"),
        (Server("s1", weight=5, backup=True), "backup server"),
        (Server("s1", weight=0), "weight 0 set outside VeloFlux"),
    ],
)
def test_a_protected_server_says_exactly_why_it_keeps_its_weight(
    member: Server, reason: str
) -> None:
    """In a plan and in a revert alike. Kills: each reason's text altered, and the
    revert's ``why_not or ...`` made ``None`` or ``why_not and ...``."""
    pools = one_pool(member, Server("s2"))
    for plan in (
        plan_weights(observation(pools), policy()),
        plan_revert(observation(pools), policy()),
    ):
        assert next(plan.servers()).reason == reason


def test_notes_follow_the_reason_the_restore_first_then_joined_by_semicolons() -> None:
    """Kills: the restore note put after the others, the separator altered."""
    obs = observation(one_pool(Server("s1", weight=10)))
    pol = policy(static_weights={"app/s1": 100}, max_step_ratio=0.5)
    (server,) = plan_weights(obs, pol, restore={"app/s1": 40}).servers()
    assert server.planned_weight == 60
    assert server.reason == (
        "no model (restored after a proxy reload reset it to 10; step-limited toward 100)"
    )


def test_the_deadband_is_strict_and_a_weight_of_one_is_judged_as_one() -> None:
    """A move exactly the deadband's width is made; from weight 1 the band is judged on 1.
    Kills: ``<`` made ``<=``, ``max(current, 1)`` made ``max(current, 2)``."""
    assert bounded_weight(100, 105, policy(deadband_ratio=0.05), exact_target=False) == (105, [])
    assert bounded_weight(1, 2, policy(deadband_ratio=0.6), exact_target=False) == (2, [])


KEPT = "kept in rotation (min_servers_in_rotation)"


@pytest.mark.parametrize(
    ("members", "overrides", "minimum", "expected"),
    [
        # A server at weight 1 is in rotation; one server brought back is enough.
        ((Server("s1", 1, 1), Server("s2"), Server("s3")), ("s2", "s3"), 2, {"s2"}),
        # Two in rotation, one more needed: only the first pinned to 0 comes back.
        ((Server("s1"), Server("s2"), Server("s3"), Server("s4")), ("s3", "s4"), 3, {"s3"}),
        # One in rotation, two more needed: exactly two come back.
        (
            (Server("s1"), Server("s2"), Server("s3"), Server("s4")),
            ("s2", "s3", "s4"),
            3,
            {"s2", "s3"},
        ),
        # A server at weight 0 (set by hand) is not brought back, nor counted as if it were.
        ((Server("s1", 0), Server("s2"), Server("s3")), ("s2",), 2, {"s2"}),
        # A server at weight 1 pinned to 0 is brought back to 1.
        ((Server("s1", 1, 1),), ("s1",), 1, {"s1"}),
    ],
)
def test_the_rotation_minimum_brings_back_only_as_many_servers_as_it_needs(
    members: tuple[Server, ...], overrides: tuple[str, ...], minimum: int, expected: set[str]
) -> None:
    """Kills: a weight of 1 not counted as in rotation, each server counted twice, the
    count reset or advanced by 2 per server brought back, a server at 0 brought back, a
    server at 1 not brought back, the reason's text altered."""
    pol = policy(
        overrides={f"app/{name}": 0 for name in overrides}, min_servers_in_rotation=minimum
    )
    plan = plan_weights(observation(one_pool(*members)), pol)
    kept = {s.server for s in plan.servers() if s.reason == KEPT}
    assert kept == expected
    for s in plan.servers():
        if s.server in overrides:
            assert s.planned_weight == (s.current_weight if s.server in kept else 0)


@pytest.mark.parametrize(
    ("algorithm", "named"), [("static-rr", "static-rr"), ("", "algorithm unknown")]
)
def test_an_unmanaged_pool_names_its_algorithm_and_claims_no_confidence(
    algorithm: str, named: str
) -> None:
    """Kills: the algorithm dropped from the pool or its reasons, the unknown algorithm's
    text altered, the confidence raised to 1."""
    pools = [Pool("app", [Server("s1")], algorithm=algorithm, managed=False)]
    for plan in (
        plan_weights(observation(pools), policy()),
        plan_revert(observation(pools), policy()),
    ):
        (pool,) = plan.pools
        assert (pool.algorithm, pool.mode, pool.confidence) == (algorithm, "unmanaged", 0.0)
        assert pool.servers[0].reason == f"unmanaged ({named})"


def test_a_pool_on_hold_keeps_its_algorithm_and_claims_no_confidence() -> None:
    """Kills: the hold pool's algorithm dropped, its confidence raised to 1."""
    plan = plan_weights(observation(one_pool(Server("s1", weight=None))), policy())
    (pool,) = plan.pools
    assert (pool.algorithm, pool.mode, pool.confidence, pool.reason) == (
        "roundrobin",
        "hold",
        0.0,
        "no trustworthy data",
    )


def test_a_revert_is_a_fallback_plan_named_revert_at_the_time_of_its_observation() -> None:
    """Kills: the revert pool's algorithm, confidence or reason altered, the plan's time
    dropped."""
    plan = plan_revert(observation(one_pool(Server("s1"))), policy())
    (pool,) = plan.pools
    assert (pool.algorithm, pool.mode, pool.confidence, pool.reason) == (
        "roundrobin",
        "fallback",
        0.0,
        "revert",
    )
    assert plan.generated_at == TAKEN_AT


def test_an_override_in_a_fallback_pool_is_not_said_to_be_scaled() -> None:
    """Only model mode scales weights. Kills: the scale computed in fallback too."""
    members = (Server("s1"), Server("s2"))
    plan = plan_weights(observation(one_pool(*members)), policy(overrides={"app/s1": 50}))
    assert next(plan.servers()).reason == "override"
