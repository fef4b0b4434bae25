"""Scenario files: what a simulation runs, as YAML (a public format, docs/simulator.md).

A scenario names its servers (each with a concurrency limit, a speed and timed
events), the traffic (a Poisson process at a utilization of the pool's capacity or at
a fixed rate, optionally ramped or diurnal), the service-time distribution, the
agent's tick and the request deadline. Validation is the config's: unknown keys are
errors and every problem is named with its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from veloflux.errors import ConfigError, ConfigProblem


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerEvent(_Part):
    """A change to one server over ``[at_s, until_s)``: a speed factor, a share of
    fast errors, or the server down (it refuses connections)."""

    at_s: float = Field(ge=0)
    until_s: float = Field(gt=0)
    speed: float | None = Field(default=None, gt=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    error_latency_ms: float = Field(default=1.0, ge=0)
    down: bool = False

    @model_validator(mode="after")
    def _window(self) -> ServerEvent:
        if self.until_s <= self.at_s:
            raise ValueError("until_s must be after at_s")
        if self.speed is None and self.error_rate is None and not self.down:
            raise ValueError("an event sets speed, error_rate or down")
        return self


class Drift(_Part):
    """Capacity drift: the server switches at random between its speed and ``speed``
    (a factor of it), staying in each state for an exponential time of mean
    ``period_s``, from ``from_s`` on (seeded: the same seed, the same switches)."""

    speed: float = Field(gt=0)
    period_s: float = Field(gt=0)
    from_s: float = Field(default=0.0, ge=0)


class ServerGroup(_Part):
    """``count`` servers alike (``count`` > 1 names them NAME1, NAME2, ...)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")
    count: int = Field(default=1, ge=1, le=10_000)
    concurrency: int = Field(default=1, ge=1, le=10_000)
    speed: float = Field(default=1.0, gt=0)
    # fcfs: ``concurrency`` slots, the rest wait in order; ps: every request in service
    # at once, sharing the server's capacity (``concurrency`` slots' worth) equally.
    discipline: Literal["fcfs", "ps"] = "fcfs"
    # HAProxy's ``maxconn`` on the server line: at most this many requests at the
    # server; the rest wait in the proxy's queue (None: the proxy forwards at once).
    maxconn: int | None = Field(default=None, ge=1, le=100_000)
    events: tuple[ServerEvent, ...] = ()
    drift: Drift | None = None


class Pattern(_Part):
    """How the arrival rate moves over the run: a linear ramp between two multipliers,
    or a sine wave around 1."""

    ramp: tuple[float, float] | None = None
    diurnal: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one(self) -> Pattern:
        if (self.ramp is None) == (self.diurnal is None):
            raise ValueError("a pattern is either ramp: [from, to] or diurnal: {...}")
        if self.ramp is not None and min(self.ramp) <= 0:
            raise ValueError("ramp multipliers must be > 0")
        if self.diurnal is not None:
            unknown = set(self.diurnal) - {"period_s", "amplitude"}
            if unknown or "period_s" not in self.diurnal:
                raise ValueError("diurnal: {period_s: S, amplitude: A} (0 <= A < 1)")
            if not 0 <= self.diurnal.get("amplitude", 0.0) < 1 or self.diurnal["period_s"] <= 0:
                raise ValueError("diurnal: period_s > 0 and 0 <= amplitude < 1")
        return self


class Arrival(_Part):
    """Poisson arrivals at ``utilization`` of the pool's capacity, or at ``rate_rps``."""

    process: Literal["poisson"] = "poisson"
    utilization: float | None = Field(default=None, gt=0, le=5)
    rate_rps: float | None = Field(default=None, gt=0)
    pattern: Pattern | None = None

    @model_validator(mode="after")
    def _one_rate(self) -> Arrival:
        if (self.utilization is None) == (self.rate_rps is None):
            raise ValueError("arrival: give utilization or rate_rps (one of them)")
        return self


class Service(_Part):
    """Service demand per request at speed 1; ``scv``: squared coefficient of variation
    (1 for exponential)."""

    distribution: Literal["exponential", "lognormal", "pareto", "constant"] = "exponential"
    mean_ms: float = Field(gt=0)
    scv: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _shape(self) -> Service:
        if self.distribution == "exponential" and self.scv != 1.0:
            raise ValueError("an exponential distribution has scv 1; use lognormal or pareto")
        return self


class Scenario(_Part):
    """One simulation: servers, traffic, the agent's tick, and what counts."""

    name: str
    seed: int = 1
    duration_s: float = Field(gt=0, le=7 * 86400)
    warmup_s: float = Field(default=0.0, ge=0)
    interval_s: float = Field(default=5.0, gt=0)
    deadline_ms: float = Field(default=1000.0, gt=0)
    arrival: Arrival
    service: Service
    servers: tuple[ServerGroup, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.warmup_s >= self.duration_s:
            raise ValueError("warmup_s must be shorter than duration_s")
        names = [n for n, _ in self.expanded()]
        if len(set(names)) != len(names):
            raise ValueError("servers: two servers have the same name")
        return self

    def expanded(self) -> list[tuple[str, ServerGroup]]:
        """Every server by name, with its group."""
        out: list[tuple[str, ServerGroup]] = []
        for group in self.servers:
            if group.count == 1:
                out.append((group.name, group))
            else:
                out += [(f"{group.name}{i + 1}", group) for i in range(group.count)]
        return out

    def capacity_rps(self) -> float:
        """Requests per second the pool completes at full utilization, at base speeds."""
        per_slot = 1000.0 / self.service.mean_ms
        return sum(g.concurrency * g.speed * per_slot for _, g in self.expanded())


def with_maxconn(scenario: Scenario) -> Scenario:
    """The scenario with each server limited to its concurrency (HAProxy ``maxconn``
    where none is set), as an operator sizes it: what waits, waits in the proxy."""
    groups = tuple(
        g if g.maxconn is not None else g.model_copy(update={"maxconn": g.concurrency})
        for g in scenario.servers
    )
    return scenario.model_copy(update={"servers": groups})


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; ``ConfigError`` lists every problem."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read {path}: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"YAML syntax error: {exc}")], str(path)) from exc
    return scenario_from(data, str(path))


def scenario_from(data: Any, source: str = "") -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", "a scenario is a mapping of keys")], source)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = [
            ConfigProblem(
                ".".join(str(p) for p in err["loc"]),
                str(err["msg"]).removeprefix("Value error, "),
            )
            for err in exc.errors()
        ]
        raise ConfigError(problems, source) from None
