"""From an Observation to a WeightPlan, under the safety rules every plan obeys.

The planner is a pure function: the same observation and policy always give the same
plan, which is what makes it property-testable and the dry-run an honest preview.
Each pool is planned on the highest rung of a confidence ladder its evidence allows:

- ``capacity``: the capacity estimates (``advice.capacity``) are confident for two or
  more servers; the damped controller moves weights toward capacity x health, and
  ``model`` when the model's bounded tilt (``advice.tilt``) runs on top this tick, as
  the pool's switchback test allows;
- ``model`` alone: no capacity signal, and the advice allows the model (a fresh model,
  confident about the pool): its confident servers move toward the optimizer's
  shares, the others keep their static share;
- ``fallback``: toward static weights, also when the pool is overloaded (no split of
  traffic helps then, and spreading the overload evenly would slow every server).

On every rung every safety rule applies, every change is step-limited, and a server
the outlier guard flags is never given more weight while it stays flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from veloflux.config.schema import PolicySection
from veloflux.decide.controller import ControllerSettings, max_step
from veloflux.decide.targets import (
    Row,
    capacity_confidence,
    capacity_ready,
    capacity_targets,
    model_targets,
    weight_scale,
)
from veloflux.domain.advice import NO_ADVICE, Advice, PoolAdvice, PoolCapacity, ServerAdvice
from veloflux.domain.observation import Observation, PoolInfo
from veloflux.domain.weightplan import Mode, PoolPlan, ServerPlan, WeightPlan
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT
from veloflux.util.names import server_key

DEFAULT_CONTROLLER = ControllerSettings()

# --- rules -----------------------------------------------------------------------------


def step_toward(current: int, target: int, max_step_ratio: float) -> int:
    """Move from ``current`` toward ``target`` by at most the step limit."""
    limit = max_step(current, max_step_ratio)
    return current + max(-limit, min(limit, target - current))


def _as_int(value: object) -> int | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return int(value)
    return None


def static_weight(
    key: str, initial: int | None, current: int | None, policy: PolicySection
) -> int | None:
    """The fallback weight: from the config, else HAProxy's configured weight, else current."""
    if key in policy.static_weights:
        return policy.static_weights[key]
    return initial if initial is not None else current


def _rows(
    observation: Observation,
    pool: str,
    policy: PolicySection,
    restore: Mapping[str, int] | None = None,
) -> list[Row]:
    rows = []
    restore = restore or {}
    for rec in observation.servers_of(pool):
        current = _as_int(rec.weight)
        key = server_key(pool, rec.server)
        static = static_weight(key, _as_int(rec.initial_weight), current, policy)
        start = restore.get(key)
        row = (key, pool, rec.server, rec.state, rec.backup, current, static, rec.problem, start)
        rows.append(Row._make(row))
    return rows


def _untouchable(row: Row) -> str:
    """Why a server must keep its weight whatever the mode or override, or ''."""
    if row.problem or row.current is None:
        return f"hold: {row.problem or 'current weight unknown'}"
    if row.state == "MAINT":
        return "maintenance (set by an operator)"
    if row.state == "DRAIN":
        return "drain (set by an operator)"
    if row.backup:
        return "backup server"
    return ""


def _zeroed_outside(row: Row, policy: PolicySection) -> str:
    """A weight 0 VeloFlux cannot have written (it never goes below ``min_weight``).

    Someone took the server out of rotation by hand; only an override brings it back.
    """
    if row.current == 0 and policy.min_weight > 0:
        return "weight 0 set outside VeloFlux"
    return ""


def bounded_weight(
    current: int, desired: int, policy: PolicySection, exact_target: bool
) -> tuple[int, list[str]]:
    """Apply bounds, the step limit and the deadband to one desired weight.

    ``exact_target`` marks a desired weight that is a fixed point (a static weight),
    not a noisy estimate: it is exempt from the deadband, so that fallback converges
    to the static weight instead of stopping one short of it.
    """
    notes: list[str] = []
    target = min(max(desired, policy.min_weight), policy.max_weight)
    if target != desired:
        notes.append(f"{desired} clamped to {target}")
    planned = step_toward(current, target, policy.max_step_ratio)
    if planned != target:
        notes.append(f"step-limited toward {target}")
    # The deadband is judged on the whole distance to the target, not on one step:
    # judged per step, a small step limit would freeze a weight far from its target.
    small = abs(target - current) < policy.deadband_ratio * max(current, 1)
    if planned != current and small and not exact_target:
        notes.append(f"{planned} within deadband")
        planned = current
    return planned, notes


def _finish(
    row: Row,
    desired: int,
    policy: PolicySection,
    exact: bool,
    reason: str,
    advice: ServerAdvice | None,
    guard: bool = True,
) -> ServerPlan:
    """Outlier guard, then bounds, step limit and deadband; the reason says what applied.

    ``guard=False`` (the capacity rung) skips the guard's cut, since a slow server's
    capacity and a failing one's health already take load off it; but on every rung
    a server the guard flags is never given more weight while it stays flagged: a cut
    must survive a change of rung, a confidence dropping, or an estimate restarting.
    """
    assert row.current is not None
    assert row.origin is not None
    confidence = advice.confidence if advice else 0.0
    parts = advice.parts if advice else None
    planned, notes = bounded_weight(row.origin, desired, policy, exact_target=exact)
    if advice and advice.outlier and policy.outlier.enabled and planned > row.origin:
        planned, reason = row.origin, f"{advice.outlier}: not raised while it stays an outlier"
        notes = [n for n in notes if "clamped" in n]
    if guard and advice and advice.outlier and policy.outlier.enabled:
        # One bounded cut below what the server would otherwise get; it compounds, tick
        # after tick below the current weight, only while the advice says the fault
        # persists (errors, a queue still growing): a server that is merely slower must
        # not starve. The cut is exact (no deadband), so it is kept only where it ends
        # lower than the plan without it: near a bound, an exact cut could otherwise end
        # a step higher.
        keep = 1 - policy.outlier.reduce_ratio
        below = min(desired, row.origin) if advice.deepen else desired
        cut = max(policy.min_weight, math.floor(below * keep))
        guarded, guard_notes = bounded_weight(row.origin, cut, policy, exact_target=True)
        if cut < desired and guarded < planned:
            planned, notes, reason = guarded, guard_notes, advice.outlier
    if row.origin != row.current:
        notes.insert(0, f"restored after a proxy reload reset it to {row.current}")
    text = reason + (f" ({'; '.join(notes)})" if notes else "")
    return row.planned(planned, text, confidence, parts)


def _override(row: Row, pinned: int, scale: int) -> ServerPlan:
    """An operator's pin, written exactly as pinned, at once: ``get weight`` must show
    what the operator typed. When the model has scaled the pool's weights up, the reason
    says so, since the pin's share of traffic is then smaller than at static weights."""
    if scale == 1:
        return row.planned(pinned, "override")
    return row.planned(pinned, f"override (the pool's model weights are scaled x{scale})")


def _keep_in_rotation(servers: list[ServerPlan], policy: PolicySection) -> list[ServerPlan]:
    """Never take a pool below its minimum of servers in rotation (up, weight > 0)."""

    def in_rotation(s: ServerPlan) -> bool:
        return s.state == "UP" and (s.planned_weight or 0) > 0

    count = sum(1 for s in servers if in_rotation(s))
    result = list(servers)
    for i, s in enumerate(servers):
        if count >= policy.min_servers_in_rotation:
            break
        if s.state == "UP" and s.planned_weight == 0 and (s.current_weight or 0) > 0:
            result[i] = s._replace(
                planned_weight=s.current_weight,
                reason="kept in rotation (min_servers_in_rotation)",
            )
            count += 1
    return result


def _unmanaged(pool: PoolInfo, rows: list[Row]) -> PoolPlan:
    """A pool VeloFlux must not write to: every server keeps its weight."""
    reason = f"unmanaged ({pool.algorithm or 'algorithm unknown'})"
    servers = tuple(r.held(reason) for r in rows)
    return PoolPlan(pool.name, pool.algorithm, "unmanaged", 0.0, pool.unmanaged_reason, servers)


def _movable(rows: list[Row], policy: PolicySection) -> list[Row]:
    """The servers a rung may move: trustworthy, UP, a static weight, not pinned, not
    taken out of rotation by hand."""
    return [
        r
        for r in rows
        if not _untouchable(r)
        and r.state == "UP"
        and r.static
        and r.key not in policy.overrides
        and not _zeroed_outside(r, policy)
    ]


def on_capacity_rung(
    observation: Observation, pool: str, policy: PolicySection, capacity: PoolCapacity
) -> bool:
    """Whether ``plan_pool`` will drive ``pool`` on the capacity rung: what the model's
    tilt must be judged against (the same test, so the two never disagree)."""
    if capacity.overload:
        return False
    return capacity_ready(capacity, _movable(_rows(observation, pool, policy), policy))


def plan_pool(
    observation: Observation,
    pool: PoolInfo,
    policy: PolicySection,
    advice: PoolAdvice | None,
    restore: Mapping[str, int] | None = None,
    controller: ControllerSettings = DEFAULT_CONTROLLER,
) -> PoolPlan:
    """Plan one pool on the highest rung the evidence allows: capacity when the
    capacity estimates are confident (and the pool is not overloaded), else model mode
    when the advice allows it, else fallback to static weights."""
    rows = _rows(observation, pool.name, policy, restore)
    if not pool.managed:
        return _unmanaged(pool, rows)
    blocked = advice.blocked if advice is not None else "no model"
    movable = _movable(rows, policy)
    capacity = advice.capacity if advice is not None else None
    mode: Mode = "fallback"
    overload = ""
    on_capacity = False  # the capacity rung drives the pool (with the tilt: "model")
    targets: dict[str, tuple[int, bool, str]] = {}
    if capacity is not None and capacity.overload:
        overload = blocked = capacity.overload
    elif capacity is not None and capacity_ready(capacity, movable):
        on_capacity, blocked = True, ""
        mode = "model" if advice is not None and advice.tilt else "capacity"
    elif not blocked and not movable:
        blocked = "no server the model may move"
    elif advice is not None and not blocked:
        mode = "model"
    scale = weight_scale(movable, policy) if mode != "fallback" else 1
    if on_capacity and capacity is not None:
        tilt = advice.tilt if advice is not None else {}
        probe = advice.probe if advice is not None else {}
        before = advice.probed_before if advice is not None else {}
        targets = capacity_targets(
            movable, capacity, policy, scale, controller, tilt, probe, before
        )
    elif mode == "model" and advice is not None:
        targets = model_targets(movable, advice, policy, scale)
    planned: list[ServerPlan] = []
    for row in rows:
        server_advice = advice.servers.get(row.server) if advice else None
        if why_not := _untouchable(row):
            planned.append(row.held(why_not))
        elif row.key in policy.overrides:
            planned.append(_override(row, policy.overrides[row.key], scale))
        elif zeroed := _zeroed_outside(row, policy):
            planned.append(row.held(zeroed))
        elif row.state == "DOWN":
            planned.append(row.held("down"))
        elif not row.static:
            planned.append(row.held("static weight 0"))
        elif row.server in targets:
            desired, exact, reason = targets[row.server]
            guard = not on_capacity
            planned.append(_finish(row, desired, policy, exact, reason, server_advice, guard))
        else:
            planned.append(_finish(row, row.static, policy, True, blocked, server_advice))
    servers_out = tuple(_keep_in_rotation(planned, policy))
    if servers_out and all(s.reason.startswith("hold") for s in servers_out):
        return PoolPlan(pool.name, pool.algorithm, "hold", 0.0, "no trustworthy data", servers_out)
    switchback = advice.switchback if advice is not None else None
    if on_capacity and capacity is not None:
        confidence = capacity_confidence(capacity, movable)
        reason = "capacity" if mode == "capacity" else "capacity x model tilt"
        if switchback is not None:
            reason += f"; {switchback.describe()}"
        return PoolPlan(
            pool.name, pool.algorithm, mode, confidence, reason, servers_out, "", switchback
        )
    confidence = advice.confidence if advice is not None else 0.0
    reason = "model" if mode == "model" else blocked
    return PoolPlan(
        pool.name, pool.algorithm, mode, confidence, reason, servers_out, overload, switchback
    )


def plan_weights(
    observation: Observation,
    policy: PolicySection,
    advice: Advice = NO_ADVICE,
    restore: Mapping[str, int] | None = None,
    controller: ControllerSettings = DEFAULT_CONTROLLER,
) -> WeightPlan:
    """The plan for every pool of one observation.

    ``restore`` maps ``BACKEND/SERVER`` to the weight VeloFlux last set, for a proxy
    that has just reloaded and reset its runtime weights: steps then start from those
    weights, not from the reset ones, so the whole tick's work is not lost and the
    weights are back within one tick. Rules that protect an operator's decisions
    (MAINT, DRAIN, overrides, weight 0 set by hand) are unaffected.
    """
    pools = tuple(
        plan_pool(
            observation,
            p,
            policy,
            advice.for_pool(p.name) if advice.pools else None,
            restore,
            controller,
        )
        for p in observation.pools
    )
    return WeightPlan(observation.taken_at, pools, advice.model_version)


def plan_revert(observation: Observation, policy: PolicySection) -> WeightPlan:
    """Every managed server straight to its static weight: the operator's emergency brake.

    No step limit and no deadband, but the rules that protect an operator's own
    decisions (MAINT, DRAIN, weight 0, untrustworthy data) still hold.
    """
    pools = []
    for pool in observation.pools:
        rows = _rows(observation, pool.name, policy)
        if not pool.managed:
            pools.append(_unmanaged(pool, rows))
            continue
        servers = []
        for row in rows:
            why_not = _untouchable(row) or _zeroed_outside(row, policy)
            if why_not or row.static is None:
                servers.append(row.held(why_not or "static weight unknown"))
            else:
                servers.append(row.planned(min(row.static, HAPROXY_MAX_WEIGHT), "revert to static"))
        kept = tuple(_keep_in_rotation(servers, policy))
        pools.append(PoolPlan(pool.name, pool.algorithm, "fallback", 0.0, "revert", kept))
    return WeightPlan(observation.taken_at, tuple(pools))
