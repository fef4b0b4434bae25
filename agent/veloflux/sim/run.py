"""One comparison cell: a scenario, a dispatcher and a strategy over several seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veloflux.sim.engine import ServerStats, Strategy, simulate
from veloflux.sim.report import figures, summary
from veloflux.sim.scenario import Scenario, with_maxconn
from veloflux.sim.strategies import CapacityOracle, Heuristic, StaticEqual


def run_cell(
    scenario: Scenario, dispatcher: str, strategy: str, seeds: Sequence[int]
) -> dict[str, Any]:
    """Run every seed (a fresh strategy each) and summarise: the ``simulate`` JSON,
    plus ``wall_seconds`` and ``requests_simulated``."""
    per_seed: list[dict[str, float]] = []
    notes: list[dict[str, float]] = []
    wall = 0.0
    simulated = 0
    for seed in seeds:
        at_warmup: list[float] = []

        def snapshot(now: float, stats: ServerStats, box: list[float] = at_warmup) -> None:
            if not box and now >= scenario.warmup_s:
                box.extend(stats.busy_seconds)

        ran = with_maxconn(scenario) if strategy in ON_MAXCONN else scenario
        result = simulate(ran, dispatcher, make_strategy(strategy), seed, snapshot)
        before = at_warmup or [0.0] * len(result.names)
        per_seed.append(figures(result, scenario, before))
        notes.append(result.notes)
        wall += result.wall_seconds
        simulated += result.requests_simulated
    out = summary(scenario, dispatcher, strategy, per_seed, seeds, notes)
    out["requests_simulated"] = simulated
    out["wall_seconds"] = round(wall, 3)
    return out


STRATEGIES = ("static-equal", "capacity-oracle", "heuristic", "veloflux")
# Reported apart: the agent without the utilization signal, seeing only the proxy, on
# servers with HAProxy's ``maxconn`` (each at its concurrency: ``with_maxconn``), and
# the static weights it is judged against, on the same servers.
PROXY_ONLY = "veloflux-proxy-only"
STATIC_MAXCONN = "static-maxconn"
ON_MAXCONN = (PROXY_ONLY, STATIC_MAXCONN)


def make_strategy(name: str) -> Strategy:
    """A fresh strategy by name (``veloflux`` builds the real agent in a temp dir)."""
    if name in ("veloflux", PROXY_ONLY):
        from veloflux.sim.real_agent import VelofluxStrategy

        strategy: Strategy = VelofluxStrategy(utilization=name == "veloflux")
        return strategy
    kinds: dict[str, type[Strategy]] = {
        "static-equal": StaticEqual,
        STATIC_MAXCONN: StaticEqual,
        "capacity-oracle": CapacityOracle,
        "heuristic": Heuristic,
    }
    if name not in kinds:
        known = ", ".join((*STRATEGIES, *ON_MAXCONN))
        raise ValueError(f"unknown strategy {name!r}; one of {known}")
    return kinds[name]()
