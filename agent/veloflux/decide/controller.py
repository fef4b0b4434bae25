"""A damped controller on log-weights: each tick moves every weight part of the way
toward its target, instead of jumping to a one-shot optimum.

The targets are weights proportional to what each server should carry (its capacity,
times its health, times the model's tilt once earned); weights proportional to
capacity equalize utilization, the fixed point a utilization controller converges
to. Integral control on ``log(weight)`` with a gain below 1 converges geometrically
and never oscillates: each tick the spread of the servers' log-errors shrinks by the
factor ``1 - gain`` and their order is kept, so no server swings past the others. A
deadband in standard errors keeps the weights still while the difference is within
what the estimate cannot tell apart, so noise in the capacity estimate is not written
to the proxy. The planner's step limits and bounds still apply after this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


def max_step(current: int, max_step_ratio: float) -> int:
    """Largest change of one weight in one tick: a ratio of it, at least 1 (the
    planner's step limit, which the controller's output and the headroom limits
    both run into)."""
    return max(1, math.floor(current * max_step_ratio))


@dataclass(frozen=True)
class ControllerSettings:
    """The gain (0 < gain <= 1) and the deadband, in standard errors of the target."""

    gain: float = 0.5
    deadband_errors: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.gain <= 1:
            raise ValueError(f"gain must be in (0, 1], not {self.gain}")
        if self.deadband_errors < 0:
            raise ValueError(f"deadband_errors must be >= 0, not {self.deadband_errors}")


@dataclass(frozen=True)
class Target:
    """What a server should carry, in any unit shared across its pool (capacity x
    health x tilt), and the relative standard error of that figure.

    ``urgent`` moves the server the whole way at once, past gain and deadband: for a
    change already confirmed (a capacity fall the estimator found), damping only
    lets the server keep a share it can no longer serve, and its queue grows every
    tick it does.
    """

    amount: float
    relative_error: float = 0.0
    urgent: bool = False


def desired_weights(
    current: Mapping[str, float],
    targets: Mapping[str, Target],
    settings: ControllerSettings,
    total: float | None = None,
) -> dict[str, float]:
    """The next weight of each server that has both a current weight (> 0) and a
    target (> 0); others are left out, for the planner to keep or handle.

    Targets are scaled so that the driven servers' weights sum to ``total``, by
    default what they sum to now: only the split moves, and weights do not drift up
    or down tick after tick. A ``total`` (the planner's: their static weights, scaled
    for resolution) moves the level too, by the same damped steps.
    """
    driven = [s for s in current if s in targets and current[s] > 0 and targets[s].amount > 0]
    if not driven:
        return {}
    keep_total = total is None
    total_weight = sum(current[s] for s in driven) if total is None else total
    total_amount = sum(targets[s].amount for s in driven)
    held: dict[str, float] = {}
    stepped: dict[str, float] = {}
    for server in driven:
        goal = targets[server].amount / total_amount * total_weight
        error = math.log(goal) - math.log(current[server])
        if targets[server].urgent:
            stepped[server] = goal
        # Within the deadband the estimate cannot tell the two apart: hold.
        elif abs(error) <= settings.deadband_errors * targets[server].relative_error:
            held[server] = current[server]
        else:
            stepped[server] = current[server] * math.exp(settings.gain * error)
    # The servers that move share what they had between them: the pool's total stays,
    # and a held server is not nudged by the others' moves.
    if stepped and keep_total:
        scale = sum(current[s] for s in stepped) / sum(stepped.values())
        stepped = {s: w * scale for s, w in stepped.items()}
    return {s: held[s] if s in held else stepped[s] for s in driven}
