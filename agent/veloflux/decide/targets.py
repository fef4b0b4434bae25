"""The desired weight of each server on each rung, before the safety rules.

The planner picks a pool's rung; the functions here say where each server should go
on it: toward the optimizer's shares (model), toward capacity x health through the
damped controller (capacity), or toward its static share. Each returns, per server,
the desired weight, whether that weight is exact (a fixed point, exempt from the
planner's fixed deadband) and the reason; the planner then applies bounds, steps and
the outlier guard.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import NamedTuple

from veloflux.config.schema import PolicySection
from veloflux.decide.capacity_rung import MAX_HEALTHY_UTILIZATION
from veloflux.decide.controller import ControllerSettings, Target, desired_weights, max_step
from veloflux.domain.advice import PoolAdvice, PoolCapacity, ServerCapacity
from veloflux.domain.weightplan import NO_PARTS, ServerPlan


class Row(NamedTuple):
    """One server as the planner sees it (a named tuple: one per server per tick)."""

    key: str  # BACKEND/SERVER
    backend: str
    server: str
    state: str
    backup: bool
    current: int | None
    static: int | None
    problem: str
    # Where the step limit starts: the current weight, or the weight VeloFlux had set
    # before the proxy reloaded and forgot it (see ``plan_weights``'s ``restore``).
    start: int | None = None

    @property
    def origin(self) -> int | None:
        return self.start if self.start is not None else self.current

    def planned(
        self,
        weight: int | None,
        reason: str,
        confidence: float = 0.0,
        parts: Mapping[str, float] | None = None,
    ) -> ServerPlan:
        return ServerPlan(
            self.backend,
            self.server,
            self.state,
            self.current,
            weight,
            self.static,
            confidence,
            reason,
            parts or NO_PARTS,
        )

    def held(self, reason: str, confidence: float = 0.0) -> ServerPlan:
        return self.planned(self.current, reason, confidence)


def weight_scale(rows: list[Row], policy: PolicySection) -> int:
    """Model-driven weights need resolution: with static weights of 1, a weight of 1
    cannot say "a little less". Scale so the largest static weight is near 100."""
    largest = max((r.static or 0 for r in rows), default=0)
    if largest <= 0:
        return 1
    return max(1, math.floor(min(policy.max_weight, 100) / largest))


def model_targets(
    rows: list[Row], advice: PoolAdvice, policy: PolicySection, scale: int
) -> dict[str, tuple[int, bool, str]]:
    """Desired weight, exactness and reason for each server the model may move."""
    driven = [r for r in rows if (a := advice.servers.get(r.server)) and a.share is not None]
    if advice.hold:  # no change predicted to be worth making: the driven servers stay put
        held = {r.server: (r.origin or 0, True, f"model: held, {advice.hold}") for r in driven}
        return {**static_targets(rows, advice, scale, held.keys()), **held}
    combined = sum((r.static or 0) * scale for r in driven)
    # Shares are renormalised over the servers actually driven here: the advisor may
    # have given a share to a server the planner must not move (an override, say).
    shares = {r.server: advice.servers[r.server].share or 0.0 for r in driven}
    total = sum(shares.values())
    wanted = {s: round(share / total * combined) if total > 0 else 0 for s, share in shares.items()}
    floor = math.ceil(max(wanted.values(), default=0) / policy.max_weight_ratio)
    targets = {s: (max(1, w, floor), False, "model") for s, w in wanted.items()}
    return {**static_targets(rows, advice, scale, targets.keys()), **targets}


def capacity_targets(
    rows: list[Row],
    capacity: PoolCapacity,
    policy: PolicySection,
    scale: int,
    controller: ControllerSettings,
    tilt: Mapping[str, float] | None = None,
    probe: Mapping[str, float] | None = None,
    probed_before: Mapping[str, float] | None = None,
) -> dict[str, tuple[int, bool, str]]:
    """Desired weights on the capacity rung: the damped controller's next step toward
    weights proportional to capacity x health (x the model's tilt, when it runs), which
    without the tilt equalizes utilization.

    A weight probe (``decide/probes.py``) multiplies the controller's output, not its
    target: through the deadband and the gain a 10% probe became a 3% move, too small
    to show in latency. ``probed_before`` (last tick's probes, which the current weights
    still carry) is taken out of the controller's starting point, so a probe ends as
    exactly as it began and never feeds the controller's state.

    The servers with an estimate share what their static weights (scaled) add up to.
    One whose capacity fell (``fell``: confirmed, its new figure not yet confident)
    may only go down, and goes the whole way to its target at once (the planner's
    step limit still applies); one without a trusted estimate keeps its weight.
    """
    known = {
        r.server: c
        for r in rows
        if (c := capacity.servers.get(r.server)) and c.capacity and (c.confidence > 0 or c.fell)
    }
    driven = [r for r in rows if r.server in known]
    budget = sum((r.static or 0) * scale for r in driven)
    targets: dict[str, tuple[int, bool, str]] = {}
    for r in rows:
        if r.server not in known:
            c = capacity.servers.get(r.server)
            why = c.reason if c is not None and c.reason else "no capacity estimate yet"
            targets[r.server] = (r.origin or 0, True, f"capacity: held ({why})")
    if not driven:
        return targets
    tilt, probe, before = tilt or {}, probe or {}, probed_before or {}
    current = {r.server: float(r.origin or 0) * math.exp(-before.get(r.server, 0)) for r in driven}
    wanted = {
        s: Target(
            (c.capacity or 0.0) * c.health * c.drain * math.exp(tilt.get(s, 0.0)),
            c.relative_error,
            urgent=c.fell,
        )
        for s, c in known.items()
    }
    desired = desired_weights(current, wanted, controller, total=float(budget))
    desired = {s: w * math.exp(probe.get(s, 0.0)) for s, w in desired.items()}
    floors, caps = headroom_limits(rows, known, desired, capacity.demand_rps, policy)
    kept = {s for s, w in floors.items() if w > desired.get(s, w)}
    capped = {s for s, w in caps.items() if w < desired.get(s, w)}
    desired = {
        s: min(max(w, floors.get(s, 0.0)), caps.get(s, math.inf)) for s, w in desired.items()
    }
    floor = math.ceil(max(desired.values(), default=0) / policy.max_weight_ratio)
    for r in driven:
        c = known[r.server]
        weight = max(1, floor, round(desired.get(r.server, current[r.server])))
        if c.fell:
            weight = min(weight, r.origin or weight)
        text = f"capacity {c.capacity:.1f} req/s ±{c.relative_error:.0%}"
        if c.saturated:
            text += " (saturated: its backlog grew, so its completions are its capacity)"
        if c.health < 0.995 or c.health_limited:
            text += f" x health {c.health:.2f} (errors {c.error_rate:.1%}"
            text += ", cut only as far as the others' headroom allows)" if c.health_limited else ")"
        if r.server in kept:
            text += " (kept: the others cannot take its load this tick)"
        if r.server in capped:
            text += (
                f" (raised only to {MAX_HEALTHY_UTILIZATION:.0%} of its capacity"
                " while a server fails)"
            )
        if c.drain < 0.995:
            text += f" x drain {c.drain:.2f} (backlog {c.backlog_seconds:.1f} s)"
        if tilt.get(r.server):
            text += f" x model tilt {math.exp(tilt[r.server]) - 1:+.0%}"
        if probe.get(r.server):
            text += f" x probe {math.exp(probe[r.server]) - 1:+.0%}"
        if c.fell:
            text += f" ({c.reason}: lowered only)"
        targets[r.server] = (weight, True, text)
    return targets


def headroom_limits(
    rows: list[Row],
    known: Mapping[str, ServerCapacity],
    desired: Mapping[str, float],
    demand: float | None,
    policy: PolicySection,
) -> tuple[dict[str, float], dict[str, float]]:
    """While a server fails: the least weight it keeps this tick, and the most the
    others may be raised to, so that none of them is given more than
    ``MAX_HEALTHY_UTILIZATION`` of its capacity (the bound the rung's health factor keeps
    at the weights the controller converges to; this one holds on the way there).

    The controller cuts a failing server at once, but raises the others only as fast as
    its gain and the step limit allow, and a server whose recovery is not yet trusted
    not at all: on real HAProxy's gray phase under round robin the cut's load went to
    the one big server, raised toward its larger share and near its capacity, for the
    few seconds the recovering one took to be raised. Load splits in proportion to
    weight, so server i runs at demand x w_i / (W x c_i) of a total weight W. So a
    server being raised stops where that reaches the bound (never below its weight
    now), and the failing servers keep, between them (in proportion to their weights
    now), what W then needs for the busiest of the others to stay within it; never
    more than they have now. A server the rung has no estimate for keeps its weight,
    and counts in W. Returns (floors of the failing servers, caps of the others).
    """
    failing = {s for s, c in known.items() if c.health < 1.0}
    if not demand or not failing:
        return {}, {}
    reach: dict[str, float] = {}
    origins: dict[str, float] = {}
    for r in rows:
        now = origins[r.server] = float(r.origin or 0)
        step = max_step(r.origin or 0, policy.max_step_ratio)
        reach[r.server] = min(now + step, max(now - step, desired.get(r.server, now)))
    total = sum(reach.values())
    caps: dict[str, float] = {}
    for name, weight in reach.items():
        c = known.get(name)
        if name in failing or c is None or not c.capacity or weight <= origins[name]:
            continue
        bound = MAX_HEALTHY_UTILIZATION * c.capacity * total / demand
        if weight > bound:
            caps[name] = reach[name] = max(origins[name], bound)
    others = {name: w for name, w in reach.items() if name not in failing and w > 0}
    need = max(
        (
            demand * w / (MAX_HEALTHY_UTILIZATION * (known[s].capacity or 0.0))
            for s, w in others.items()
            if s in known and known[s].capacity
        ),
        default=0.0,
    )
    short = need - sum(others.values())
    failing_now = {s: origins[s] for s in failing if s in origins}
    held = sum(failing_now.values())
    if short <= 0 or held <= 0:
        return {}, caps
    floors = {s: min(now, short * now / held) for s, now in failing_now.items()}
    return floors, caps


def static_targets(
    rows: list[Row], advice: PoolAdvice, scale: int, driven: Collection[str]
) -> dict[str, tuple[int, bool, str]]:
    """In a model-mode pool, the servers the model is not sure of keep their static share."""
    targets: dict[str, tuple[int, bool, str]] = {}
    for r in rows:
        if r.server in driven:
            continue
        a = advice.servers.get(r.server)
        weakest = min(a.parts, key=lambda p: a.parts[p]) if a and a.parts else "no data"
        confidence = a.confidence if a else 0.0
        targets[r.server] = (
            (r.static or 0) * scale,
            True,
            f"low confidence {confidence:.2f} (weakest: {weakest}): static share",
        )
    return targets


# The capacity rung acts when at least this many of the servers it may move have
# confident estimates: with fewer there is nothing to compare (gRPC's weighted round
# robin likewise falls back to plain round robin below two weighted endpoints).
MIN_CAPACITY_SERVERS = 2


def capacity_ready(capacity: PoolCapacity, movable: list[Row]) -> bool:
    confident = set(capacity.confident())
    return sum(1 for r in movable if r.server in confident) >= MIN_CAPACITY_SERVERS


def capacity_confidence(capacity: PoolCapacity, movable: list[Row]) -> float:
    """The pool's confidence on the capacity rung: the median of its movable servers'."""
    values = sorted(
        c.confidence for r in movable if (c := capacity.servers.get(r.server)) is not None
    )
    return values[len(values) // 2] if values else 0.0
