"""Model mode: the advisor's advice, the planner's targets, and the rules that still bind.

No XGBoost here: the planner takes ``Advice`` values, and the advisor is driven by a
stand-in predictor whose confidence and cost curves the test chooses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.factories import Pool, Server, frozen, observation, policy
from tests.unit.learning_factories import (
    BASE_TIME,
    INTERVAL,
    Busy,
    busy_observation,
    counters,
    feature_frame,
    features_of,
)
from veloflux.config.schema import AISection, OutlierSection, PolicySection
from veloflux.decide.advisor import AdvisorSettings, advise
from veloflux.decide.controller import max_step
from veloflux.decide.outlier_guard import OUTLIER_MEMORY_INTERVALS, outlier_findings
from veloflux.decide.outliers import MIN_POOL_SIZE, latency_outliers, moving_average_outliers
from veloflux.decide.planner import plan_weights
from veloflux.domain.advice import Advice, PoolAdvice, ServerAdvice, blocked_pool
from veloflux.domain.observation import Observation
from veloflux.domain.weightplan import PoolPlan, ServerPlan, WeightPlan
from veloflux.model.predict import Confidence, Curves, Predictor

PROPERTY = settings(max_examples=150, deadline=None)
OUTLIER = "outlier: error rate 30% (pool median 0%)"
# A policy under which a model target is reached in one tick (currents of 100).
FREE = {"max_step_ratio": 10, "deadband_ratio": 0}


def model_advice(
    shares: Mapping[str, float | None],
    confidence: float = 0.9,
    outliers: Mapping[str, str] | None = None,
    pool: str = "app",
    blocked: str = "",
) -> Advice:
    servers = {
        name: ServerAdvice(
            name,
            confidence if share is not None else 0.3,
            {"width": 0.95, "realized": 0.9, "ood": confidence if share is not None else 0.3},
            share,
            (outliers or {}).get(name, ""),
        )
        for name, share in shares.items()
    }
    return Advice("v1", {pool: PoolAdvice(pool, confidence, blocked, servers, 100.0)})


def pool_of(*members: Server) -> list[Pool]:
    return [Pool("app", list(members))]


def by_name(plan: WeightPlan) -> dict[str, ServerPlan]:
    return {s.server: s for s in plan.servers()}


def weights(plan: WeightPlan) -> dict[str, int | None]:
    return {s.server: s.planned_weight for s in plan.servers()}


# --- model mode by example --------------------------------------------------------------


def test_an_unblocked_pool_is_in_model_mode() -> None:
    members = [Server(f"s{i}", weight=100, initial=10) for i in range(3)]
    advice = model_advice({"s0": 0.5, "s1": 0.3, "s2": 0.2}, confidence=0.85)
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    (pool,) = plan.pools
    assert (pool.mode, pool.reason) == ("model", "model")
    assert pool.confidence == pytest.approx(0.85)
    assert plan.model_version == "v1"
    assert {s.reason for s in pool.servers} == {"model"}
    assert by_name(plan)["s0"].confidence_parts == {"width": 0.95, "realized": 0.9, "ood": 0.85}


def test_model_weights_are_shares_of_the_combined_static_weight() -> None:
    # Equal static weights of 10: scaled by 10 so the largest is 100; 300 in all.
    members = [Server(f"s{i}", weight=100, initial=10) for i in range(3)]
    advice = model_advice({"s0": 0.5, "s1": 0.3, "s2": 0.2})
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    assert weights(plan) == {"s0": 150, "s1": 90, "s2": 60}


def test_model_weights_scale_with_unequal_static_weights() -> None:
    # Largest static 30 -> scale 3; combined (10 + 20 + 30) * 3 = 180.
    members = [Server("a", 100, 10), Server("b", 100, 20), Server("c", 100, 30)]
    advice = model_advice({"a": 0.2, "b": 0.3, "c": 0.5})
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    assert weights(plan) == {"a": 36, "b": 54, "c": 90}
    planned = np.array([weights(plan)[n] or 0 for n in "abc"], dtype=float)
    assert np.allclose(planned / planned.sum(), [0.2, 0.3, 0.5])


def test_model_moves_are_still_step_limited() -> None:
    members = [Server(f"s{i}", weight=10, initial=10) for i in range(2)]
    advice = model_advice({"s0": 0.9, "s1": 0.1})
    plan = plan_weights(observation(pool_of(*members)), policy(max_step_ratio=0.5), advice)
    # Targets 180 and 20 (scale 10, combined 200), each at most 5 away from 10.
    assert weights(plan) == {"s0": 15, "s1": 15}
    assert "step-limited toward 180" in by_name(plan)["s0"].reason


def test_a_server_without_a_share_keeps_its_static_share() -> None:
    members = [Server("s0", 100, 10), Server("s1", 100, 10), Server("s2", 100, 20)]
    advice = model_advice({"s0": 0.6, "s1": 0.4, "s2": None})
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    # scale = floor(100 / 20) = 5: s2 keeps 20 * 5; s0 and s1 split (10 + 10) * 5.
    assert weights(plan) == {"s0": 60, "s1": 40, "s2": 100}
    reason = by_name(plan)["s2"].reason
    assert reason.startswith("low confidence 0.30")
    assert "(weakest: ood)" in reason
    assert by_name(plan)["s2"].confidence == pytest.approx(0.3)


def test_a_server_the_advisor_never_mentions_keeps_its_static_share() -> None:
    members = [Server("s0", 100, 10), Server("s1", 100, 10)]
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), model_advice({"s0": 1.0}))
    assert weights(plan)["s1"] == 100
    assert by_name(plan)["s1"].reason.startswith("low confidence 0.00 (weakest: no data)")


def test_the_ratio_cap_lifts_the_smallest_model_weight() -> None:
    members = [Server(f"s{i}", weight=100, initial=10) for i in range(5)]
    shares = {"s0": 0.4, "s1": 0.4, "s2": 0.18, "s3": 0.01, "s4": 0.01}
    plan = plan_weights(
        observation(pool_of(*members)), policy(max_weight_ratio=10, **FREE), model_advice(shares)
    )
    assert weights(plan) == {"s0": 200, "s1": 200, "s2": 90, "s3": 20, "s4": 20}


def test_the_ratio_cap_holds_after_rounding() -> None:
    members = [Server(f"s{i}", weight=100, initial=10) for i in range(3)]
    shares = {"s0": 205 / 300, "s1": 94.99 / 300, "s2": 0.01 / 300}
    plan = plan_weights(
        observation(pool_of(*members)), policy(max_weight_ratio=10, **FREE), model_advice(shares)
    )
    planned = [w for w in weights(plan).values() if w]
    assert max(planned) / min(planned) <= 10, weights(plan)


def test_model_driven_weights_add_up_to_their_combined_static_weight() -> None:
    members = [Server(n, weight=100, initial=10) for n in ("s0", "s1", "unsure", "pinned")]
    shares: dict[str, float | None] = {"s0": 0.25, "s1": 0.25, "unsure": None, "pinned": 0.5}
    pol = policy(overrides={"app/pinned": 100}, **FREE)
    planned = weights(plan_weights(observation(pool_of(*members)), pol, model_advice(shares)))
    assert planned["unsure"] == 100  # its static share: 10 x scale 10
    # s0 and s1 are driven: their weights split their combined static weight (2 x 100).
    assert (planned["s0"] or 0) + (planned["s1"] or 0) == 200, planned


def test_blocked_advice_means_fallback_with_the_blocked_text() -> None:
    members = [Server("s0", 100, 10), Server("s1", 100, 10)]
    blocked = "confidence 0.40 < 0.70 (weakest: ood)"
    advice = model_advice({"s0": 0.9, "s1": 0.1}, blocked=blocked)
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    (pool,) = plan.pools
    assert (pool.mode, pool.reason) == ("fallback", blocked)
    assert weights(plan) == {"s0": 10, "s1": 10}  # static weights, shares ignored
    assert all(s.reason.startswith(blocked) for s in pool.servers)


def test_model_mode_leaves_maintenance_drain_down_and_overrides_alone() -> None:
    members = [
        Server("up", 100, 10),
        Server("maint", 7, 10, state="MAINT"),
        Server("drain", 8, 10, state="DRAIN"),
        Server("down", 9, 10, state="DOWN"),
        Server("pinned", 100, 10),
    ]
    shares: dict[str, float | None] = {"up": 1.0}
    pol = policy(overrides={"app/pinned": 42}, **FREE)
    plan = plan_weights(observation(pool_of(*members)), pol, model_advice(shares))
    assert plan.pools[0].mode == "model"
    planned = weights(plan)
    assert (planned["maint"], planned["drain"], planned["down"]) == (7, 8, 9)
    assert planned["pinned"] == 42
    assert by_name(plan)["up"].reason == "model"
    assert planned["up"] == 100  # the only model-driven server gets all of its share


def test_a_pool_with_nothing_movable_is_not_in_model_mode() -> None:
    members = [Server("s0", 5, 10, state="MAINT"), Server("s1", 5, 10, state="DOWN")]
    plan = plan_weights(observation(pool_of(*members)), policy(), model_advice({"s0": 1.0}))
    assert plan.pools[0].mode != "model"
    assert plan.changes() == []


# --- the outlier guard in model mode ------------------------------------------------------------


def test_an_outlier_is_cut_below_what_the_model_would_give_it() -> None:
    members = [Server(f"s{i}", weight=100, initial=10) for i in range(3)]
    shares = {"s0": 0.4, "s1": 0.3, "s2": 0.3}
    pol = policy(min_weight=1, **FREE)
    unflagged = weights(plan_weights(observation(pool_of(*members)), pol, model_advice(shares)))
    advice = model_advice(shares, outliers={"s0": OUTLIER})
    plan = plan_weights(observation(pool_of(*members)), pol, advice)
    s0 = by_name(plan)["s0"]
    assert s0.reason.startswith("outlier")
    assert s0.planned_weight is not None
    assert pol.min_weight <= s0.planned_weight < (unflagged["s0"] or 0)
    assert s0.planned_weight <= 100  # below its current weight too
    assert weights(plan)["s1"] == unflagged["s1"]  # the others are untouched


def test_an_outlier_never_goes_below_min_weight() -> None:
    members = [Server("s0", 12, 10), Server("s1", 100, 10), Server("s2", 100, 10)]
    pol = policy(min_weight=10, max_step_ratio=10, deadband_ratio=0)
    advice = model_advice({"s0": 0.01, "s1": 0.5, "s2": 0.49}, outliers={"s0": OUTLIER})
    plan = plan_weights(observation(pool_of(*members)), pol, advice)
    assert weights(plan)["s0"] == 10


def test_an_outlier_is_cut_in_fallback_too() -> None:
    members = [Server("s0", 10, 10), Server("s1", 10, 10), Server("s2", 10, 10)]
    advice = model_advice({"s0": None}, outliers={"s0": OUTLIER}, blocked="no model")
    plan = plan_weights(observation(pool_of(*members)), policy(), advice)
    assert plan.pools[0].mode == "fallback"
    s0 = by_name(plan)["s0"]
    assert s0.reason.startswith("outlier")
    assert s0.planned_weight is not None
    assert 1 <= s0.planned_weight < 10


def test_the_guard_obeys_outlier_enabled() -> None:
    members = [Server("s0", 10, 10), Server("s1", 10, 10)]
    pol = policy(outlier={"enabled": False})
    advice = model_advice({"s0": None}, outliers={"s0": OUTLIER}, blocked="no model")
    assert weights(plan_weights(observation(pool_of(*members)), pol, advice))["s0"] == 10


# --- every safety rule, in model mode, over random pools ------------------------------------------

states = st.sampled_from(["UP", "UP", "UP", "UP", "DOWN", "MAINT", "DRAIN"])
weight_values = st.none() | st.integers(min_value=0, max_value=256)


@st.composite
def model_scenarios(draw: st.DrawFn) -> tuple[list[Pool], PolicySection, Advice]:
    n = draw(st.integers(min_value=1, max_value=12))
    members = [
        Server(
            f"s{i}",
            weight=draw(weight_values),
            initial=draw(weight_values),
            state=draw(states),
            backup=draw(st.sampled_from([False, False, False, False, True])),
            problem=draw(st.sampled_from(["", "", "", "", "", "scur='?' is not a number"])),
        )
        for i in range(n)
    ]
    raw = [draw(st.none() | st.floats(min_value=0, max_value=1)) for _ in range(n)]
    known = sum(r for r in raw if r is not None)
    shares = {
        f"s{i}": (None if r is None else (r / known if known > 0 else 1.0 / n))
        for i, r in enumerate(raw)
    }
    flagged = {f"s{i}": OUTLIER for i in range(n) if draw(st.integers(0, 3)) == 0}
    advice = model_advice(shares, draw(st.floats(0.7, 1.0)), flagged)
    # Every kind of advice the advisor gives: the model acting, the model holding the
    # weights (no worthwhile gain), the model blocked (fallback, outlier findings
    # only); and outlier cuts that deepen below the current weight.
    kind = draw(st.sampled_from(["model", "model", "hold", "blocked"]))
    deepened = {name for name in flagged if draw(st.booleans())}
    servers = {
        name: a._replace(deepen=name in deepened) for name, a in advice.pools["app"].servers.items()
    }
    pool_advice = replace(advice.pools["app"], servers=servers)
    if kind == "hold":
        pool_advice = replace(pool_advice, hold="predicted gain 3% < 10%")
    elif kind == "blocked":
        pool_advice = blocked_pool("app", "low confidence", flagged, frozenset(deepened))
    advice = Advice(advice.model_version, {"app": pool_advice})
    keys = [f"app/s{i}" for i in range(n)]
    low = draw(st.integers(min_value=0, max_value=50))
    deadband = draw(st.floats(min_value=0, max_value=0.3))
    pol = policy(
        min_weight=low,
        max_weight=draw(st.integers(min_value=max(low, 1), max_value=256)),
        max_step_ratio=draw(st.floats(min_value=0.01, max_value=10)),
        deadband_ratio=deadband,
        min_servers_in_rotation=draw(st.integers(min_value=1, max_value=4)),
        max_weight_ratio=draw(st.floats(min_value=1, max_value=50)),
        static_weights=draw(st.dictionaries(st.sampled_from(keys), st.integers(0, 256))),
        overrides=draw(st.dictionaries(st.sampled_from(keys), st.integers(0, 256), max_size=2)),
        # The guard's cut is larger than the deadband, as with the defaults (0.5 vs 0.05).
        outlier={"reduce_ratio": draw(st.floats(min_value=max(deadband, 0.01), max_value=0.9))},
    )
    return [Pool("app", members)], pol, advice


def protected(server: Server, pol: PolicySection) -> bool:
    """Rows no mode may change: untrusted, MAINT/DRAIN, backup, a weight 0 set by hand."""
    return frozen(server, pol, f"app/{server.name}")


def static_of(server: Server, pol: PolicySection) -> int | None:
    key = f"app/{server.name}"
    if key in pol.static_weights:
        return pol.static_weights[key]
    source = server.initial if server.initial is not None else server.weight
    return None if source is None else int(source)


def movable(server: Server, pol: PolicySection) -> bool:
    return (
        not protected(server, pol)
        and server.state == "UP"
        and bool(static_of(server, pol))
        and f"app/{server.name}" not in pol.overrides
    )


def in_rotation(pairs: Sequence[tuple[str, int | None]]) -> int:
    return sum(1 for state, weight in pairs if state == "UP" and (weight or 0) > 0)


@PROPERTY
@given(model_scenarios())
def test_model_mode_keeps_every_safety_rule(
    scenario: tuple[list[Pool], PolicySection, Advice],
) -> None:
    pools, pol, advice = scenario
    (pool,) = pools
    plan = plan_weights(observation(pools), pol, advice)
    (pool_plan,) = plan.pools
    any_movable = any(movable(s, pol) for s in pool.servers)
    pool_advice = advice.pools["app"]
    assert (pool_plan.mode == "model") == (any_movable and not pool_advice.blocked)
    for server, planned in zip(pool.servers, pool_plan.servers, strict=True):
        key = f"app/{server.name}"
        current = None if server.weight is None else int(server.weight)
        new = planned.planned_weight
        assert planned.current_weight == current
        if current is None:
            assert new is None
            continue
        assert new is not None
        assert 0 <= new <= 256
        kept = "min_servers_in_rotation" in planned.reason
        if protected(server, pol):
            assert new == current, planned
        elif key in pol.overrides:  # an operator's pin wins, even over DOWN
            assert new == (current if kept else pol.overrides[key])
        elif server.state == "DOWN" or not static_of(server, pol):
            assert new == current
        else:
            assert abs(new - current) <= max_step(current, pol.max_step_ratio)
            if pol.min_weight <= current <= pol.max_weight:
                assert pol.min_weight <= new <= pol.max_weight
            head = planned.reason.split(" ")[0]
            if pool_advice.blocked:
                allowed = {pool_advice.blocked.split(" ")[0], "outlier:"}
            elif pool_advice.servers[server.name].share is None:
                allowed = {"low", "outlier:"}
            else:
                allowed = {"model:" if pool_advice.hold else "model", "outlier:"}
            assert head in allowed | {"kept"}, planned.reason
    before = in_rotation(
        [(s.state, None if s.weight is None else int(s.weight)) for s in pool.servers]
    )
    after = in_rotation([(s.state, s.planned_weight) for s in pool_plan.servers])
    assert after >= min(pol.min_servers_in_rotation, before)


@PROPERTY
@given(model_scenarios(), st.data())
def test_after_a_reload_every_step_starts_from_the_restored_weight(
    scenario: tuple[list[Pool], PolicySection, Advice], data: st.DataObject
) -> None:
    """A reload resets runtime weights; the plan restores VeloFlux's own and moves from
    there by at most one step, in every mode and for every advice kind."""
    pools, pol, advice = scenario
    names = [s.name for s in pools[0].servers]
    restore = data.draw(
        st.dictionaries(st.sampled_from([f"app/{n}" for n in names]), st.integers(1, 256))
    )
    plan = by_name(plan_weights(observation(pools), pol, advice, restore))
    for server in pools[0].servers:
        key, planned = f"app/{server.name}", plan[server.name]
        if not movable(server, pol) or server.weight is None or not int(server.weight):
            continue
        if planned.reason.startswith("kept in rotation"):
            continue
        origin = restore.get(key, int(server.weight))
        assert planned.planned_weight is not None
        assert abs(planned.planned_weight - origin) <= max_step(origin, pol.max_step_ratio)


@PROPERTY
@given(model_scenarios())
def test_the_outlier_guard_only_ever_lowers_a_weight_and_never_below_min_weight(
    scenario: tuple[list[Pool], PolicySection, Advice],
) -> None:
    pools, pol, advice = scenario
    pool_advice = advice.pools["app"]
    clean_servers = {n: a._replace(outlier="") for n, a in pool_advice.servers.items()}
    clean = Advice(advice.model_version, {"app": replace(pool_advice, servers=clean_servers)})
    flagged_plan = by_name(plan_weights(observation(pools), pol, advice))
    clean_plan = by_name(plan_weights(observation(pools), pol, clean))
    for server in pools[0].servers:
        found = pool_advice.servers.get(server.name)
        if found is None or not found.outlier or not movable(server, pol):
            assert flagged_plan[server.name] == clean_plan[server.name]
            continue
        flagged, unflagged = flagged_plan[server.name], clean_plan[server.name]
        assert flagged.planned_weight is not None
        assert unflagged.planned_weight is not None
        if flagged.reason.startswith("kept in rotation"):
            # The cut would have taken the pool below min_servers_in_rotation, so the
            # rotation rule kept its current weight: that rule outranks the guard.
            assert flagged.planned_weight == flagged.current_weight
            continue
        assert flagged.planned_weight <= unflagged.planned_weight
        current = int(server.weight or 0)
        if pol.min_weight <= current <= pol.max_weight:
            assert flagged.planned_weight >= pol.min_weight
        if flagged.planned_weight < unflagged.planned_weight:
            assert flagged.reason.startswith("outlier"), flagged.reason


@PROPERTY
@given(
    st.lists(st.integers(min_value=1, max_value=50), min_size=2, max_size=10),
    st.data(),
    st.floats(min_value=1, max_value=20),
)
def test_model_targets_respect_the_ratio_cap_up_to_rounding(
    statics: list[int], data: st.DataObject, ratio: float
) -> None:
    n = len(statics)
    raw = data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    total = sum(raw) or 1.0
    shares: dict[str, float | None] = {f"s{i}": r / total for i, r in enumerate(raw)}
    members = [Server(f"s{i}", weight=100, initial=w) for i, w in enumerate(statics)]
    pol = policy(max_weight_ratio=ratio, **FREE)
    plan = plan_weights(observation(pool_of(*members)), pol, model_advice(shares))
    planned = [w for w in weights(plan).values() if w is not None]
    assert all(1 <= w <= 256 for w in planned)
    # Targets are whole numbers: the smallest is within one unit of largest / ratio.
    assert max(planned) <= ratio * (min(planned) + 1)


# --- outliers -----------------------------------------------------------------------------------

RULES = OutlierSection()


def find_outliers(
    observation: Observation, pool: str, features: pd.DataFrame, rules: OutlierSection
) -> Mapping[str, str]:
    """The outliers and their reasons, without which cuts deepen."""
    return outlier_findings(observation, pool, features, rules)[0]


def latest(rows: Sequence[tuple[str, float, float, float]]) -> pd.DataFrame:
    """One instant of features: (server, requests, latency seconds, error rate)."""
    return feature_frame(
        [
            {"time": BASE_TIME, "server": s, "requests": k, "latency": lat, "error_rate": err}
            for s, k, lat, err in rows
        ]
    )


def test_a_server_at_five_times_the_median_latency_is_an_outlier() -> None:
    features = latest([("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0), ("c", 100, 0.10, 0.0)])
    found = find_outliers(busy_observation({"app": []}), "app", features, RULES)
    assert list(found) == ["c"]
    assert found["c"].startswith("outlier: latency 100 ms (pool median 20 ms)")


def test_a_server_failing_thirty_percent_of_enough_requests_is_an_outlier() -> None:
    features = latest([("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0), ("c", 100, 0.02, 0.3)])
    found = find_outliers(busy_observation({"app": []}), "app", features, RULES)
    assert list(found) == ["c"]
    assert found["c"] == "outlier: error rate 30% (pool median 0%)"


def test_the_guard_says_which_findings_are_for_errors_and_which_for_latency() -> None:
    """Catches the two kinds confused: an overloaded pool stands its latency findings
    down and keeps its error ones, so a failing server reported as merely slow would
    get its traffic back in overload, and a slow one reported as failing would not."""
    rows = [("a", 0.02, 0.0), ("b", 0.02, 0.0), ("c", 0.02, 0.3), ("d", 0.10, 0.0)]
    frames = feature_frame(  # two intervals: a latency cut needs two slow ones
        [
            {"time": BASE_TIME + timedelta(seconds=t), "server": s, "requests": 100}
            | {"latency": latency, "error_rate": errors}
            for t in (0, 10)
            for s, latency, errors in rows
        ]
    )
    findings = outlier_findings(busy_observation({"app": []}), "app", frames, RULES)
    assert sorted(findings.found) == ["c", "d"]
    assert findings.errors == {"c"}
    assert set(findings.cuts) == {"d"}
    advice = blocked_pool("app", "no model", *findings)
    assert advice.servers["c"].failing
    assert not advice.servers["d"].failing


@pytest.mark.parametrize("bad", ["latency", "errors"])
def test_no_outlier_is_found_among_fewer_than_three_servers(bad: str) -> None:
    lat, err = (0.10, 0.0) if bad == "latency" else (0.02, 0.3)
    features = latest([("a", 100, 0.02, 0.0), ("c", 100, lat, err)])
    assert find_outliers(busy_observation({"app": []}), "app", features, RULES) == {}


@pytest.mark.parametrize("bad", ["latency", "errors"])
def test_no_outlier_is_judged_on_too_few_requests(bad: str) -> None:
    lat, err = (0.10, 0.0) if bad == "latency" else (0.02, 0.3)
    few = RULES.min_requests - 1
    features = latest([("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0), ("c", few, lat, err)])
    assert find_outliers(busy_observation({"app": []}), "app", features, RULES) == {}


def test_a_flagged_server_is_released_only_after_clean_intervals() -> None:
    healthy = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0)]
    bad = latest([*healthy, ("c", 100, 0.02, 0.9)])
    clean = [latest([*healthy, ("c", 100, 0.02, 0.0)]) for _ in range(OUTLIER_MEMORY_INTERVALS)]
    for k, frame in enumerate(clean, start=1):
        frame["time"] = frame["time"] + k * pd.Timedelta(INTERVAL)
    obs = busy_observation({"app": []})
    assert find_outliers(obs, "app", bad, RULES) == {
        "c": "outlier: error rate 90% (pool median 0%)"
    }
    # Its cut drained it and it looks fine for a moment: still flagged, and the reason says so.
    for k in range(1, OUTLIER_MEMORY_INTERVALS):
        found = find_outliers(obs, "app", pd.concat([bad, *clean[:k]], ignore_index=True), RULES)
        assert list(found) == ["c"]
        assert f"{k} interval(s) ago" in found["c"]
    # Clean for OUTLIER_MEMORY_INTERVALS intervals in a row: released.
    released = pd.concat([bad, *clean], ignore_index=True)
    assert find_outliers(obs, "app", released, RULES) == {}


def slow_c(*ratios: float) -> pd.DataFrame:
    """Consecutive intervals where ``c`` runs at these multiples of its peers' 20 ms."""
    healthy = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0)]
    return intervals(*(latest([*healthy, ("c", 100, 0.02 * r, 0.0)]) for r in ratios))


def backlog_of_c(in_flight_of_c: Sequence[float], ratios: Sequence[float]) -> pd.DataFrame:
    """Intervals at 100 requests/s where ``c`` runs at ``ratios`` of its peers' 20 ms
    and ends each holding ``in_flight_of_c`` requests (its peers hold 2); HAProxy's
    moving average still says 20 ms for all (the slowdown has not moved it yet)."""
    frames = []
    for held, ratio in zip(in_flight_of_c, ratios, strict=True):
        frames.append(
            feature_frame(
                [
                    {"time": BASE_TIME, "server": s, "requests": 100, "error_rate": 0.0}
                    | {"latency": latency, "sessions": n, "queue": 0.0}
                    | {"request_rate": 100.0, "latency_ema": 0.02}
                    for s, latency, n in (
                        ("a", 0.02, 2.0),
                        ("b", 0.02, 2.0),
                        ("c", 0.02 * ratio, held),
                    )
                ]
            )
        )
    return intervals(*frames)


def test_a_slow_server_whose_backlog_grows_is_cut_at_its_first_slow_interval() -> None:
    """Catches a guard that waits for a second slow interval while the server's queue
    grows by the tick (the demo's s3, sent 100 requests/s where it serves 67): slow
    and in flight up from 2 to 35 in one interval is two signals agreeing. The same
    slow interval with in flight flat is a flicker until it repeats."""
    obs = busy_observation({"app": []})
    growing = find_outliers(obs, "app", backlog_of_c([2.0, 35.0], [1.0, 4.0]), RULES)
    assert list(growing) == ["c"]
    assert growing["c"].endswith("its backlog growing")
    flat = find_outliers(obs, "app", backlog_of_c([2.0, 3.0], [1.0, 4.0]), RULES)
    assert flat == {}
    # A backlog growing on a server that is not slow is not an outlier by itself.
    fast = find_outliers(obs, "app", backlog_of_c([2.0, 35.0], [1.0, 1.0]), RULES)
    assert fast == {}


def test_a_latency_cut_holds_while_the_server_stays_above_the_release_bar() -> None:
    """Cut at 4x; drained by its cut it runs at 2.5x, under the 3x threshold but over
    the 2x release bar, for longer than the guard's memory: still cut, never flapping."""
    obs = busy_observation({"app": []})
    found = find_outliers(obs, "app", slow_c(4, 4, 2.5, 2.5, 2.5, 2.5, 2.5), RULES)
    assert list(found) == ["c"]
    assert "5 interval(s) ago, released below 2.0x the median" in found["c"]


def test_a_latency_cut_outlives_the_history_window_it_began_in() -> None:
    """Tick by tick over a sliding window of history, as the agent reads it: cut at 4x,
    then at 2.5x for longer than the window, so its slow intervals leave the features.
    Carried from tick to tick, the cut holds until three clean intervals end it."""
    obs = busy_observation({"app": []})
    ratios = [1.0, 1.0, 4.0, 4.0, *[2.5] * 12, 1.5, 1.5, 1.5]
    window = 8
    frames = slow_c(*ratios)
    times = sorted(frames["time"].unique())
    cuts: Mapping[str, int] = {}
    flagged = []
    reasons = []
    for tick in range(len(times)):
        span = frames[frames["time"].isin(times[max(0, tick - window + 1) : tick + 1])]
        found, _, cuts, *_ = outlier_findings(obs, "app", span, RULES, cuts)
        flagged.append("c" in found)
        reasons.append(found.get("c", ""))
    cut_at = ratios.index(4.0) + 1  # persistent: the second slow interval
    clean_from = ratios.index(1.5)
    assert flagged == [
        cut_at <= t < clean_from + OUTLIER_MEMORY_INTERVALS - 1 for t in range(len(ratios))
    ]
    # Carried past its slow intervals, the reason is its newest elevated reading; in its
    # clean intervals, with no reading to show, that the cut is held.
    assert reasons[clean_from - 1] == "outlier: latency 50 ms (pool median 20 ms)"
    assert reasons[clean_from].startswith("outlier: latency cut held")
    # Without the carried cut, the same windows drop it once its slow intervals are gone.
    tick = cut_at + window
    span = frames[frames["time"].isin(times[tick - window + 1 : tick + 1])]
    assert find_outliers(obs, "app", span, RULES) == {}


def test_a_latency_cut_ends_after_clean_intervals_under_the_release_bar() -> None:
    obs = busy_observation({"app": []})
    assert list(find_outliers(obs, "app", slow_c(4, 4, 1.5, 1.5), RULES)) == ["c"]
    assert find_outliers(obs, "app", slow_c(4, 4, 1.5, 1.5, 1.5), RULES) == {}


def test_one_slow_interval_does_not_cut_and_near_the_bar_does_not_begin_one() -> None:
    obs = busy_observation({"app": []})
    assert find_outliers(obs, "app", slow_c(1, 1, 1, 4), RULES) == {}
    assert find_outliers(obs, "app", slow_c(2.5, 2.5, 2.5, 2.5), RULES) == {}
    assert list(find_outliers(obs, "app", slow_c(1, 4, 1, 4), RULES)) == ["c"]


def test_the_newest_finding_gives_the_reason() -> None:
    """Failing, then slow for long enough to be cut for it: the latency is the reason.
    One slow interval is not a finding that cuts, so the error stays the reason."""
    healthy = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0)]
    obs = busy_observation({"app": []})

    def run(*latencies: float) -> pd.DataFrame:
        failing = latest([*healthy, ("c", 100, 0.02, 0.9)])
        return intervals(failing, *(latest([*healthy, ("c", 100, v, 0.0)]) for v in latencies))

    found = find_outliers(obs, "app", run(0.10, 0.10), RULES)
    assert found == {"c": "outlier: latency 100 ms (pool median 20 ms)"}
    found = find_outliers(obs, "app", run(0.10), RULES)
    assert found["c"].startswith("outlier: error rate 90% (pool median 0%); 1 interval(s) ago")


def intervals(*frames: pd.DataFrame) -> pd.DataFrame:
    """Consecutive instants of features, one frame per interval."""
    for k, frame in enumerate(frames):
        frame["time"] = frame["time"] + k * pd.Timedelta(INTERVAL)
    return pd.concat(frames, ignore_index=True)


def test_a_server_still_failing_in_the_newest_interval_has_its_cut_deepened() -> None:
    healthy = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0)]
    failing = intervals(latest([*healthy, ("c", 100, 0.02, 0.3)]))
    found, deepen, *_ = outlier_findings(busy_observation({"app": []}), "app", failing, RULES)
    assert found.keys() == {"c"}
    assert deepen == {"c"}
    # Failing one interval ago, clean now: still flagged (held), no deeper cut.
    recovering = intervals(
        latest([*healthy, ("c", 100, 0.02, 0.3)]), latest([*healthy, ("c", 100, 0.02, 0.0)])
    )
    found, deepen, *_ = outlier_findings(busy_observation({"app": []}), "app", recovering, RULES)
    assert found.keys() == {"c"}
    assert deepen == frozenset()


@pytest.mark.parametrize(
    ("latencies", "deepens"),
    [
        ((0.10, 0.11, 0.12), True),  # a queue still growing: overload
        ((0.10, 0.10, 0.10), False),  # merely slower, steady: one bounded cut
        ((0.12, 0.10, 0.11), False),  # noise around a steady level
        ((0.10, 0.12, 0.12), False),  # rose once, then stopped
    ],
)
def test_a_slow_server_has_its_cut_deepened_only_while_its_latency_climbs(
    latencies: tuple[float, float, float], deepens: bool
) -> None:
    healthy = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0)]
    frames = [latest([*healthy, ("c", 100, lat, 0.0)]) for lat in latencies]
    found, deepen, *_ = outlier_findings(
        busy_observation({"app": []}), "app", intervals(*frames), RULES
    )
    assert found.keys() == {"c"}
    assert deepen == ({"c"} if deepens else frozenset())


def test_no_cut_deepens_when_the_whole_pool_climbs() -> None:
    def step(k: int) -> pd.DataFrame:
        rising = 0.02 * 1.2**k
        return latest(
            [("a", 100, rising, 0.0), ("b", 100, rising, 0.0), ("c", 100, 5 * rising, 0.0)]
        )

    found, deepen, *_ = outlier_findings(
        busy_observation({"app": []}), "app", intervals(step(0), step(1), step(2)), RULES
    )
    assert found.keys() == {"c"}
    assert deepen == frozenset()


def test_at_most_a_tenth_of_the_pool_deepens_for_latency_the_worst_first() -> None:
    steady = [(f"h{i:02d}", 100, 0.02, 0.0) for i in range(16)]

    def step(k: int) -> pd.DataFrame:
        slow = [(f"s{i}", 100, (0.1 + 0.02 * i) * 1.2**k, 0.0) for i in range(4)]
        return latest([*steady, *slow])

    found, deepen, *_ = outlier_findings(
        busy_observation({"app": []}), "app", intervals(step(0), step(1), step(2)), RULES
    )
    # 20 servers: two, the slowest, are flagged for latency at all (a tenth of the
    # pool at most: every cut moves load onto the others), and both deepen.
    assert found.keys() == {"s2", "s3"}
    assert deepen == {"s3", "s2"}


def test_a_deepened_cut_compounds_and_a_single_one_does_not() -> None:
    members = [Server("s0", 40, 100), Server("s1", 100, 100), Server("s2", 100, 100)]
    servers = {
        "s0": ServerAdvice("s0", outlier=OUTLIER, deepen=True),
        "s1": ServerAdvice("s1"),
        "s2": ServerAdvice("s2"),
    }
    deepened = Advice(None, {"app": PoolAdvice("app", 0.0, "no model", servers)})
    assert weights(plan_weights(observation(pool_of(*members)), policy(), deepened))["s0"] == 20
    single = {**servers, "s0": servers["s0"]._replace(deepen=False)}
    held_advice = Advice(None, {"app": PoolAdvice("app", 0.0, "no model", single)})
    plan = by_name(plan_weights(observation(pool_of(*members)), policy(), held_advice))
    # Not deepened: no deeper cut, and no raise either while it stays flagged (one cut
    # below its static 100 would be 50): a cut survives until the guard releases it.
    assert plan["s0"].planned_weight == 40
    assert plan["s0"].reason.startswith("outlier")
    assert plan["s0"].reason.endswith("not raised while it stays an outlier")
    # Released (no finding): it climbs back toward its static weight, step-limited.
    free = {**servers, "s0": ServerAdvice("s0")}
    free_advice = Advice(None, {"app": PoolAdvice("app", 0.0, "no model", free)})
    assert weights(plan_weights(observation(pool_of(*members)), policy(), free_advice))["s0"] == 60


def test_the_guard_can_be_disabled() -> None:
    features = latest([("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0), ("c", 100, 0.5, 0.5)])
    off = OutlierSection(enabled=False)
    assert find_outliers(busy_observation({"app": []}), "app", features, off) == {}
    assert latency_outliers([("a", 0.02), ("b", 0.02), ("c", 0.5)], off) == {}


def test_latency_outliers_on_pairs() -> None:
    assert latency_outliers([("a", 0.02), ("b", 0.02), ("c", 0.10)], RULES).keys() == {"c"}
    assert latency_outliers([("a", 0.02), ("c", 0.10)], RULES) == {}
    assert MIN_POOL_SIZE == 3
    # Unknown readings do not count toward the pool size, nor are they outliers.
    assert latency_outliers([("a", 0.02), ("b", math.nan), ("c", 0.10)], RULES) == {}
    assert latency_outliers([("a", 0.0), ("b", 0.0), ("c", 0.0)], RULES) == {}


def test_without_history_outliers_come_from_the_moving_average() -> None:
    obs = busy_observation(
        {
            "app": [
                Busy("a", response_time=0.02),
                Busy("b", response_time=0.02),
                Busy("c", response_time=0.10),
                Busy("d", response_time=0.50, requests_total=5),  # too few to judge
                Busy("e", response_time=0.50, state="MAINT"),
            ]
        }
    )
    assert find_outliers(obs, "app", pd.DataFrame(), RULES).keys() == {"c"}
    assert moving_average_outliers(obs, "app", RULES).keys() == {"c"}


def test_an_error_rate_exactly_three_times_the_pools_median_is_an_outlier() -> None:
    """Above ``error_rate``, the bar is three times the pool's median error rate, at or
    above it. Kills: ``3 *`` made ``4 *``, ``>=`` made ``>``. (Binary-exact rates.)"""
    features = latest([("a", 100, 0.02, 0.125), ("b", 100, 0.02, 0.125), ("c", 100, 0.02, 0.375)])
    found = find_outliers(busy_observation({"app": []}), "app", features, RULES)
    assert found == {"c": "outlier: error rate 38% (pool median 12%)"}


def test_a_server_with_exactly_min_requests_in_an_interval_is_judged() -> None:
    """Kills: ``requests >= min_requests`` made ``>``."""
    enough = RULES.min_requests
    features = latest([("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0), ("c", enough, 0.02, 0.3)])
    assert find_outliers(busy_observation({"app": []}), "app", features, RULES).keys() == {"c"}


def test_a_latency_that_fell_then_rose_is_not_climbing() -> None:
    """Each interval must rise over the one before it, not over the first. Kills:
    ``rose(values[0], values[1])`` made ``rose(values[0], values[2])``."""
    healthy = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0)]
    frames = [latest([*healthy, ("c", 100, lat, 0.0)]) for lat in (0.10, 0.06, 0.30)]
    found, deepen, *_ = outlier_findings(
        busy_observation({"app": []}), "app", intervals(*frames), RULES
    )
    assert found.keys() == {"c"}
    assert deepen == frozenset()


def test_a_latency_outlier_is_named_with_its_latency_and_the_pools_median_in_ms() -> None:
    """Kills: either conversion to milliseconds altered (``* 1000`` made ``* 1001``)."""
    found = latency_outliers([("a", 0.6), ("b", 0.6), ("c", 2.0)], RULES)
    assert found == {"c": "outlier: latency 2000 ms (pool median 600 ms)"}


def test_a_latency_exactly_latency_ratio_times_the_median_is_an_outlier() -> None:
    """The rule is "at or above". Kills: ``>=`` made ``>``. (0.125 x 3 is exact in binary.)"""
    found = latency_outliers([("a", 0.125), ("b", 0.125), ("c", 0.375)], OutlierSection())
    assert found.keys() == {"c"}


def test_a_server_with_exactly_min_requests_is_judged() -> None:
    """Kills: ``requests_total >= min_requests`` made ``>``."""
    rules = OutlierSection(min_requests=20)
    members = [Busy("a"), Busy("b"), Busy("c", response_time=0.5, requests_total=20)]
    obs = busy_observation({"app": members})
    assert moving_average_outliers(obs, "app", rules).keys() == {"c"}


# --- the advisor --------------------------------------------------------------------------------

SETTINGS = AdvisorSettings(
    confidence_threshold=0.7,
    error_penalty_seconds=1.0,
    stale_after_seconds=30.0,
    max_model_age_seconds=86400.0,
    outlier=RULES,
    min_gain=AISection().min_gain,
)
NOW = BASE_TIME + 4 * INTERVAL


class StandInPredictor(Predictor):
    """Confidence and per-request cost chosen per server; no model behind it."""

    def __init__(
        self,
        confidence: Mapping[str, float],
        cost: Mapping[str, float],
        trained_at: datetime = BASE_TIME - timedelta(hours=1),
        version: str = "20250304T110000Z-0000abcd",
    ) -> None:
        self.version = version
        self.trained_at = trained_at
        self.metadata = {}
        self._confidence = dict(confidence)
        self._cost = dict(cost)
        self.curve_rows: list[pd.DataFrame] = []

    def confidence(self, now_rows: pd.DataFrame, recent: pd.DataFrame, fresh: bool) -> Confidence:
        value = np.array([self._confidence.get(str(s), 0.0) for s in now_rows["server"]])
        parts = {"width": np.ones(len(value)), "ood": value, "freshness": np.full(len(value), 1.0)}
        return Confidence(value=np.minimum(value, 1.0 if fresh else 0.0), parts=parts)

    def curves(self, rows: pd.DataFrame, rates: np.ndarray, *_: Any, **__: Any) -> Curves:
        self.curve_rows.append(rows)
        base = np.array([self._cost[str(s)] for s in rows["server"]])[:, None]
        latency = base * (1.0 + rates / 100.0)  # rises with load
        return Curves(rates, latency, latency, np.zeros_like(rates))


def history(per_server: Mapping[str, Sequence[float]], **columns: Sequence[float]) -> pd.DataFrame:
    """Features over steps 0..4 (10 s apart) from cumulative request counters."""
    records = []
    for server, totals in per_server.items():
        records += counters(server, totals, **columns)
    return features_of(records)


def three_servers() -> tuple[pd.DataFrame, Busy, Busy, Busy]:
    totals = [0, 300, 600, 900, 1200]  # 30 req/s each
    features = history({"a": totals, "b": totals, "c": totals})
    return features, Busy("a"), Busy("b"), Busy("c")


def test_without_a_predictor_every_managed_pool_is_blocked_with_the_reason() -> None:
    features, *members = three_servers()
    pools = {"app": members, "other": [Busy("x")], "legacy": [Busy("y")]}
    obs = busy_observation(pools, NOW, unmanaged=["legacy"])
    advice = advise(obs, features, None, SETTINGS, "no model (none promoted yet)", NOW)
    assert advice.model_version is None
    assert set(advice.pools) == {"app", "other"}  # unmanaged pools get no advice
    for pool in advice.pools.values():
        assert pool.blocked == "no model (none promoted yet)"
        assert pool.confidence == 0.0
    plan = plan_weights(obs, policy(), advice)
    assert {p.backend: p.mode for p in plan.pools} == {
        "app": "fallback",
        "other": "fallback",
        "legacy": "unmanaged",
    }


def test_without_a_predictor_outliers_are_still_reported() -> None:
    features = history(
        {"a": [0, 300, 600, 900, 1200], "b": [0, 300, 600, 900, 1200], "c": [0, 100, 200, 300, 400]}
    )
    features.loc[features["server"] == "c", "error_rate"] = 0.3
    obs = busy_observation({"app": [Busy("a"), Busy("b"), Busy("c")]}, NOW)
    advice = advise(obs, features, None, SETTINGS, "no model", NOW)
    pool = advice.pools["app"]
    assert pool.blocked == "no model"
    assert pool.servers["c"].outlier.startswith("outlier: error rate 30%")
    assert set(pool.servers) == {"c"}
    plan = plan_weights(obs, policy(), advice)
    assert by_name(plan)["c"].reason.startswith("outlier")


def test_stale_observations_block_the_model() -> None:
    features, *members = three_servers()
    obs = busy_observation({"app": members}, NOW)
    predictor = StandInPredictor({"a": 0.9, "b": 0.9, "c": 0.9}, {"a": 0.02, "b": 0.02, "c": 0.02})
    stale = NOW - timedelta(seconds=SETTINGS.stale_after_seconds + 1)
    for last in (stale, None):
        pool = advise(obs, features, predictor, SETTINGS, "", last).pools["app"]
        assert "stale observations" in pool.blocked
        assert pool.confidence == 0.0
    assert predictor.curve_rows == []  # never consulted
    fresh = advise(obs, features, predictor, SETTINGS, "", NOW - timedelta(seconds=10))
    assert fresh.pools["app"].blocked == ""


def test_an_old_model_blocks_the_model() -> None:
    features, *members = three_servers()
    obs = busy_observation({"app": members}, NOW)
    old = NOW - timedelta(seconds=SETTINGS.max_model_age_seconds + 1)
    predictor = StandInPredictor({"a": 0.9}, {"a": 0.02}, trained_at=old)
    pool = advise(obs, features, predictor, SETTINGS, "", NOW).pools["app"]
    assert pool.blocked == f"model {predictor.version} is older than max_model_age"


def test_confident_servers_get_shares_that_favour_the_cheaper_one() -> None:
    features, *members = three_servers()
    obs = busy_observation({"app": members}, NOW)
    predictor = StandInPredictor(
        {"a": 0.9, "b": 0.9, "c": 0.9}, {"a": 0.010, "b": 0.020, "c": 0.040}
    )
    advice = advise(obs, features, predictor, SETTINGS, "", NOW)
    assert advice.model_version == predictor.version
    pool = advice.pools["app"]
    assert pool.blocked == ""
    assert pool.forecast_rate == pytest.approx(90.0)
    shares = {name: s.share for name, s in pool.servers.items()}
    assert all(share is not None for share in shares.values())
    a, b, c = (shares[n] or 0.0 for n in "abc")
    assert a + b + c == pytest.approx(1.0)
    assert a > b > c
    # Inside the trust region: no server leaves [0.5, 1.5] x its current 30 req/s.
    assert all(0.5 / 3 - 1e-9 <= s <= 1.5 / 3 + 1e-9 for s in (a, b, c))
    plan = plan_weights(obs, policy(**FREE), advice)
    assert plan.pools[0].mode == "model"
    planned = weights(plan)
    assert (planned["a"] or 0) > (planned["b"] or 0) > (planned["c"] or 0)


def test_servers_predicted_alike_keep_their_weights() -> None:
    features, *members = three_servers()
    obs = busy_observation({"app": members}, NOW)
    predictor = StandInPredictor(
        {"a": 0.9, "b": 0.9, "c": 0.9}, {"a": 0.02, "b": 0.02, "c": 0.0202}
    )
    pool = advise(obs, features, predictor, SETTINGS, "", NOW).pools["app"]
    assert pool.blocked == ""
    assert pool.hold.startswith("predicted gain 0% < 10%")
    assert all(s.share is not None for s in pool.servers.values())
    current = [Server(n, 37, 100) for n in "abc"]  # not at the static weights
    plan = plan_weights(
        observation(pool_of(*current)),
        policy(**FREE),
        advise(obs, features, predictor, SETTINGS, "", NOW),
    )
    assert plan.pools[0].mode == "model"
    assert weights(plan) == {"a": 37, "b": 37, "c": 37}
    assert all(s.reason.startswith("model: held, predicted gain") for s in plan.servers())


def test_a_held_pool_still_cuts_its_outliers() -> None:
    members = [Server("a", 100, 100), Server("b", 100, 100), Server("c", 100, 100)]
    advice = model_advice({"a": 0.3, "b": 0.3, "c": 0.4}, outliers={"c": OUTLIER})
    held = Advice("v1", {"app": replace(advice.pools["app"], hold="predicted gain 2% < 10%")})
    plan = by_name(plan_weights(observation(pool_of(*members)), policy(**FREE), held))
    assert plan["a"].planned_weight == plan["b"].planned_weight == 100
    assert plan["c"].planned_weight == 50
    assert plan["c"].reason.startswith("outlier")


def test_an_unsure_server_gets_no_share_and_the_pool_may_still_use_the_model() -> None:
    features, *members = three_servers()
    obs = busy_observation({"app": members}, NOW)
    predictor = StandInPredictor({"a": 0.9, "b": 0.9, "c": 0.2}, {"a": 0.02, "b": 0.02, "c": 0.02})
    pool = advise(obs, features, predictor, SETTINGS, "", NOW).pools["app"]
    assert pool.blocked == ""
    assert pool.confidence == pytest.approx(0.9)  # the median
    assert pool.servers["c"].share is None
    assert pool.servers["c"].confidence == pytest.approx(0.2)
    assert (pool.servers["a"].share or 0) + (pool.servers["b"].share or 0) == pytest.approx(1.0)
    assert list(predictor.curve_rows[0]["server"]) == ["a", "b"]


def test_a_pool_below_the_threshold_is_blocked_naming_the_weakest_part() -> None:
    features, *members = three_servers()
    obs = busy_observation({"app": members}, NOW)
    predictor = StandInPredictor({"a": 0.9, "b": 0.4, "c": 0.3}, {"a": 0.02, "b": 0.02, "c": 0.02})
    pool = advise(obs, features, predictor, SETTINGS, "", NOW).pools["app"]
    assert pool.blocked == "confidence 0.40 < 0.70 (weakest: ood)"
    assert all(s.share is None for s in pool.servers.values())


def test_an_idle_pool_is_blocked() -> None:
    flat = [0, 0, 0, 0, 0]
    features = history({"a": flat, "b": flat, "c": flat})
    obs = busy_observation({"app": [Busy("a"), Busy("b"), Busy("c")]}, NOW)
    predictor = StandInPredictor({"a": 0.9, "b": 0.9, "c": 0.9}, {"a": 0.02, "b": 0.02, "c": 0.02})
    pool = advise(obs, features, predictor, SETTINGS, "", NOW).pools["app"]
    assert "idle pool" in pool.blocked


def test_an_unknown_interval_does_not_drag_the_forecast_down() -> None:
    totals = [0, 300, 10, 310, 610]  # 30 req/s, a reload (counters reset) at step 2
    pids = [1, 1, 2, 2, 2]
    features = history({"a": totals, "b": totals, "c": totals}, proxy_pid=pids)
    obs = busy_observation({"app": [Busy("a"), Busy("b"), Busy("c")]}, NOW)
    predictor = StandInPredictor({"a": 0.9, "b": 0.9, "c": 0.9}, {"a": 0.02, "b": 0.02, "c": 0.02})
    pool = advise(obs, features, predictor, SETTINGS, "", NOW).pools["app"]
    assert pool.forecast_rate == pytest.approx(90.0)


def test_plan_reports_per_pool_advice_only_for_the_pools_it_names() -> None:
    obs = observation([Pool("app", [Server("s0", 100, 10)]), Pool("other", [Server("x", 10, 10)])])
    plan = plan_weights(obs, policy(**FREE), model_advice({"s0": 1.0}))
    modes: dict[str, str] = {p.backend: p.mode for p in plan.pools}
    assert modes == {"app": "model", "other": "fallback"}
    other: PoolPlan = plan.pools[1]
    assert other.reason == "no model"


# --- model mode's details (mutants of decide/planner.py that survived `make mutation`) ----------


def held_advice(shares: Mapping[str, float | None]) -> Advice:
    """The model free to act but holding: no change predicted to be worth making."""
    advice = model_advice(shares)
    return Advice("v1", {"app": replace(advice.pools["app"], hold="predicted gain 1% < 10%")})


def test_an_outliers_cut_is_exact_so_the_deadband_cannot_swallow_it() -> None:
    """Kills: the guard's ``exact_target=True`` made ``False`` or ``None``."""
    members = [Server("s0", 100, 100), Server("s1", 100, 100), Server("s2", 100, 100)]
    advice = model_advice({"s0": None}, outliers={"s0": OUTLIER}, blocked="no model")
    pol = policy(deadband_ratio=0.6, max_step_ratio=10)
    plan = plan_weights(observation(pool_of(*members)), pol, advice)
    assert by_name(plan)["s0"].planned_weight == 50
    assert by_name(plan)["s0"].reason == OUTLIER


def test_an_outlier_whose_cut_is_no_lower_than_its_target_keeps_its_plan() -> None:
    """Its target is already min_weight, so the cut (never below min_weight) lowers
    nothing: the deadband holds it where it is. Kills: ``cut < desired`` made ``<=``."""
    members = [Server("s0", 11, 10), Server("s1", 190, 10)]
    pol = policy(min_weight=10, max_step_ratio=10, deadband_ratio=0.5, max_weight_ratio=100)
    advice = model_advice({"s0": 0.05, "s1": 0.95}, outliers={"s0": OUTLIER})
    s0 = by_name(plan_weights(observation(pool_of(*members)), pol, advice))["s0"]
    assert (s0.planned_weight, s0.reason) == (11, "model (10 within deadband)")


def test_an_outlier_whose_cut_ends_where_its_plan_would_is_not_named_an_outlier() -> None:
    """Both moves are step-limited to the same weight: the cut changes nothing, so the
    reason stays the plan's. Kills: ``guarded < planned`` made ``<=``."""
    members = [Server("s0", 100, 50), Server("s1", 100, 100), Server("s2", 100, 100)]
    advice = model_advice({"s0": None}, outliers={"s0": OUTLIER}, blocked="no model")
    pol = policy(max_step_ratio=0.1)
    s0 = by_name(plan_weights(observation(pool_of(*members)), pol, advice))["s0"]
    assert (s0.planned_weight, s0.reason) == (90, "no model (step-limited toward 50)")


def test_a_held_pool_keeps_a_server_at_weight_zero_at_zero() -> None:
    """Kills: the held target ``r.origin or 0`` made ``or 1``."""
    members = [Server("s0", 0, 10), Server("s1", 100, 10)]
    plan = plan_weights(
        observation(pool_of(*members)), policy(min_weight=0), held_advice({"s0": 0.5, "s1": 0.5})
    )
    assert weights(plan) == {"s0": 0, "s1": 100}
    assert by_name(plan)["s0"].reason == "model: held, predicted gain 1% < 10%"


def test_a_held_pool_still_brings_a_weight_above_max_weight_down_to_it() -> None:
    """The held target is exact: the deadband cannot keep a weight out of bounds. Kills:
    the held targets' exactness made ``False``."""
    members = [Server("s0", 100, 10), Server("s1", 50, 10)]
    plan = plan_weights(
        observation(pool_of(*members)), policy(max_weight=99), held_advice({"s0": 0.5, "s1": 0.5})
    )
    assert weights(plan) == {"s0": 99, "s1": 50}


def test_a_zero_share_gets_the_smallest_weight_the_ratio_cap_allows() -> None:
    """Kills: a share of 0 read as 1 (``share or 1.0``)."""
    members = [Server("s0", 100, 10), Server("s1", 100, 10)]
    advice = model_advice({"s0": 1.0, "s1": 0.0})
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    assert weights(plan) == {"s0": 200, "s1": 20}


def test_all_zero_shares_leave_every_driven_server_at_weight_one() -> None:
    """Kills: the lower bound of 1 on a model target dropped or raised to 2."""
    members = [Server("s0", 100, 10), Server("s1", 100, 10)]
    advice = model_advice({"s0": 0.0, "s1": 0.0})
    plan = plan_weights(observation(pool_of(*members)), policy(min_weight=0, **FREE), advice)
    assert weights(plan) == {"s0": 1, "s1": 1}


def test_a_model_target_within_the_deadband_is_not_followed() -> None:
    """A model target is an estimate, not a fixed point. Kills: model targets made exact."""
    members = [Server("s0", 100, 10), Server("s1", 100, 10)]
    advice = model_advice({"s0": 0.51, "s1": 0.49})
    plan = plan_weights(observation(pool_of(*members)), policy(max_step_ratio=10), advice)
    assert weights(plan) == {"s0": 100, "s1": 100}
    assert by_name(plan)["s0"].reason == "model (102 within deadband)"


def test_an_unsure_servers_static_share_is_exact_so_the_deadband_does_not_hold_it() -> None:
    """Kills: static-share targets made inexact, in ``_static_targets`` or where
    ``plan_pool`` hands them to ``_finish``."""
    members = [Server("s0", 100, 10), Server("s1", 97, 10)]
    advice = model_advice({"s0": 1.0, "s1": None})
    plan = plan_weights(observation(pool_of(*members)), policy(max_step_ratio=10), advice)
    assert weights(plan)["s1"] == 100


def test_the_reason_names_the_weakest_confidence_part_by_its_value() -> None:
    """Kills: the weakest part chosen by name instead of by value."""
    unsure = ServerAdvice("s1", 0.2, {"freshness": 0.9, "ood": 0.2})
    advice = model_advice({"s0": 1.0})
    pool_advice = advice.pools["app"]
    servers = {**pool_advice.servers, "s1": unsure}
    advice = Advice("v1", {"app": replace(pool_advice, servers=servers)})
    members = [Server("s0", 100, 10), Server("s1", 100, 10)]
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    assert by_name(plan)["s1"].reason == "low confidence 0.20 (weakest: ood): static share"


@pytest.mark.parametrize(("static", "each"), [(1, 100), (60, 60)])
def test_model_weights_are_scaled_so_the_largest_static_weight_is_near_a_hundred(
    static: int, each: int
) -> None:
    """Static weights of 1 are scaled x100; of 60, not at all. Kills: a largest static
    weight of 1 left unscaled, the scale's target 100 made 101, the scale's floor of 1
    made 2."""
    members = [Server("s0", 100, static), Server("s1", 100, static)]
    advice = model_advice({"s0": 0.5, "s1": 0.5})
    plan = plan_weights(observation(pool_of(*members)), policy(**FREE), advice)
    assert weights(plan) == {"s0": each, "s1": each}


def test_a_pool_the_model_may_not_move_says_so() -> None:
    """Kills: the reason's text altered."""
    members = [Server("s0", 5, 10, state="MAINT"), Server("s1", 5, 10, state="DOWN")]
    plan = plan_weights(observation(pool_of(*members)), policy(), model_advice({"s0": 1.0}))
    assert (plan.pools[0].mode, plan.pools[0].reason) == (
        "fallback",
        "no server the model may move",
    )


def test_a_latency_finding_must_persist_before_it_cuts() -> None:
    """A server slow in one judged interval of three is not flagged (its speed may
    flicker faster than the tick); slow in two, it is. Errors flag at once."""
    fine = [("a", 100, 0.02, 0.0), ("b", 100, 0.02, 0.0), ("d", 100, 0.02, 0.0)]
    once = intervals(latest([*fine, ("c", 100, 0.02, 0.0)]), latest([*fine, ("c", 100, 0.2, 0.0)]))
    found, *_ = outlier_findings(busy_observation({"app": []}), "app", once, RULES)
    assert found == {}
    twice = intervals(latest([*fine, ("c", 100, 0.2, 0.0)]), latest([*fine, ("c", 100, 0.2, 0.0)]))
    found, *_ = outlier_findings(busy_observation({"app": []}), "app", twice, RULES)
    assert found.keys() == {"c"}
    failing = intervals(
        latest([*fine, ("c", 100, 0.02, 0.0)]), latest([*fine, ("c", 100, 0.02, 0.5)])
    )
    found, *_ = outlier_findings(busy_observation({"app": []}), "app", failing, RULES)
    assert found.keys() == {"c"}


def test_at_most_a_tenth_of_a_pool_is_flagged_for_latency_the_slowest_first() -> None:
    """Many slow servers are unequal servers, not outliers: cutting them all would pile
    their load onto the few left."""
    servers = [(f"f{i}", 0.02) for i in range(15)] + [(f"s{i}", 0.1 + 0.01 * i) for i in range(5)]
    found = latency_outliers(servers, RULES)
    assert found.keys() == {"s4", "s3"}
