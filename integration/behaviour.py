"""What makes a demo backend fast, slow or flaky, and the checks on every change to it.

Kept apart from the server so that the Python API, the command line and
``PUT /-/config`` all validate a behaviour with the same rules.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

DISTRIBUTIONS = ("constant", "exponential", "lognormal")
_SERVICE_KEYS = frozenset({"distribution", "mean_ms", "scv"})
_BEHAVIOUR_KEYS = frozenset(
    {"name", "concurrency", "service", "error_rate", "error_latency_ms", "seed"}
)


class BehaviourError(ValueError):
    """A behaviour or config patch that a backend must refuse (answered as HTTP 400)."""


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass but never a sensible count


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


# field -> (type check, range check, what a valid value looks like)
_RULES: dict[str, tuple[Callable[[Any], bool], Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str), bool, "a non-empty string"),
    "distribution": (
        lambda v: isinstance(v, str),
        lambda v: v in DISTRIBUTIONS,
        f"one of {', '.join(DISTRIBUTIONS)}",
    ),
    "mean_ms": (_is_number, lambda v: v >= 0, "a number >= 0"),
    "scv": (_is_number, lambda v: v >= 0, "a number >= 0"),
    "concurrency": (_is_int, lambda v: v >= 1, "an integer >= 1"),
    "error_rate": (_is_number, lambda v: 0 <= v <= 1, "a number within [0, 1]"),
    "error_latency_ms": (_is_number, lambda v: v >= 0, "a number >= 0"),
    "seed": (lambda v: v is None or _is_int(v), lambda v: True, "an integer or null"),
}


def _check(owner: object) -> None:
    """Validate every field of a behaviour dataclass, for the Python API and JSON alike."""
    for key, value in vars(owner).items():
        if key in _RULES:
            right_type, in_range, wanted = _RULES[key]
            if not (right_type(value) and in_range(value)):
                raise BehaviourError(f"{key} must be {wanted}, got {value!r}")
            if right_type is _is_number and type(value) is int:  # JSON 60 means 60.0
                object.__setattr__(owner, key, float(value))


def _fields(patch: object, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise BehaviourError(f"{what} must be a JSON object")
    unknown = sorted(str(key) for key in patch if key not in allowed)
    if unknown:
        raise BehaviourError(
            f"unknown {what} keys: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return patch


@dataclass(frozen=True)
class ServiceTime:
    """Distribution of the time one request spends in service, in milliseconds."""

    distribution: str = "exponential"
    mean_ms: float = 20.0
    scv: float = 1.0  # squared coefficient of variation, used by "lognormal" only

    def __post_init__(self) -> None:
        _check(self)

    def sample_ms(self, rng: random.Random) -> float:
        """Lognormal is parameterised by mean and SCV so both knobs keep their meaning."""
        if self.mean_ms == 0 or self.distribution == "constant":
            return self.mean_ms
        if self.distribution == "exponential":
            return rng.expovariate(1.0 / self.mean_ms)
        sigma_squared = math.log1p(self.scv)
        mu = math.log(self.mean_ms) - sigma_squared / 2
        return rng.lognormvariate(mu, math.sqrt(sigma_squared))

    def patched(self, patch: object) -> ServiceTime:
        """Partial update, so a client can change one field without restating the rest."""
        return replace(self, **_fields(patch, "service", _SERVICE_KEYS))


@dataclass(frozen=True)
class BackendBehaviour:
    """Everything that makes one demo backend fast, slow or flaky."""

    name: str
    concurrency: int = 4
    service: ServiceTime = ServiceTime()
    error_rate: float = 0.0
    error_latency_ms: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def patched(self, patch: object) -> BackendBehaviour:
        """Validated partial update; raises BehaviourError and leaves ``self`` intact."""
        changes = dict(_fields(patch, "config", _BEHAVIOUR_KEYS))
        if changes.get("name", self.name) != self.name:
            raise BehaviourError("name cannot be changed at run time")
        if "service" in changes:
            changes["service"] = self.service.patched(changes["service"])
        return replace(self, **changes)
