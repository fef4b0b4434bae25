"""Experiments behind the simulator's prose in docs/benchmarks.md: one cell, one change.

Each prints what it measured; none writes the doc. ``--what``:

- ``plain``: the ``veloflux`` strategy as it is, over the seeds (the other
  experiments' reference, on a changed tree);
- ``no-tilt``: the ``veloflux`` strategy with ``ai.max_tilt: 0`` (the model never
  acts), over the seeds: what the switchback test's tilt blocks cost;
- ``no-probes``: ``veloflux`` with ``ai.probe_size: 0`` (no weight probes), over the
  seeds: what the probes cost;
- ``no-change-detection``: ``veloflux`` with the capacity estimator's change detector
  off (thresholds out of reach), over the seeds;
- ``trace``: ``static-equal`` and ``veloflux`` on the scenario's first seed, the share
  of requests timed out per minute after the warm-up, and per server group (name
  without its number) the share of requests it took and timed out.

    .venv/bin/python bench/sim_experiments.py --what no-tilt drift-faster roundrobin
    .venv/bin/python bench/sim_experiments.py --what no-probes drift-faster roundrobin
    .venv/bin/python bench/sim_experiments.py --what no-change-detection drift-slower random
    .venv/bin/python bench/sim_experiments.py --what trace overload-ramp roundrobin
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))

from veloflux.sim.scenario import Scenario, load_scenario

SCENARIOS = ROOT / "bench" / "scenarios"
_RUNG_SETTINGS = "CapacitySettings"


def with_ai(**update: float) -> None:
    """Every simulated agent from here on runs with these ``ai`` settings changed."""
    import veloflux.sim.real_agent as real_agent

    plain = real_agent.agent_config

    def config(scenario: Scenario, workdir: Path, utilization: bool = True) -> Any:
        found = plain(scenario, workdir, utilization)
        return found.model_copy(update={"ai": found.ai.model_copy(update=update)})

    real_agent.agent_config = config


def no_change_detection() -> None:
    import veloflux.decide.capacity as capacity
    import veloflux.decide.capacity_rung as capacity_rung

    plain = capacity.CapacitySettings

    def settings(**values: Any) -> Any:
        return plain(**{"down_threshold": math.inf, "up_threshold": math.inf, **values})

    setattr(capacity_rung, _RUNG_SETTINGS, settings)  # what the rung builds its estimators with


def cell(scenario: Scenario, dispatcher: str, seeds: int) -> dict[str, Any]:
    from veloflux.sim.run import run_cell

    found = run_cell(scenario, dispatcher, "veloflux", [scenario.seed + k for k in range(seeds)])
    keep = ("slo_p99_ms", "success_p99_ms", "error_rate", "timeout_rate")
    return {k: round(found[k]["mean"], 5) for k in keep}


def trace(scenario: Scenario, dispatcher: str) -> dict[str, Any]:
    import numpy as np

    from veloflux.sim.engine import simulate
    from veloflux.sim.run import make_strategy

    out: dict[str, Any] = {}
    for strategy in ("static-equal", "veloflux"):
        run = simulate(scenario, dispatcher, make_strategy(strategy), scenario.seed)
        late = np.nan_to_num(run.latency, nan=np.inf) > scenario.deadline_ms / 1000
        end = scenario.duration_s - scenario.deadline_ms / 1000
        edges = np.arange(scenario.warmup_s, end + 1e-9, 60.0)
        minutes = [
            round(float(late[(run.arrival >= a) & (run.arrival < b)].mean()), 3)
            for a, b in itertools.pairwise(edges)
        ]
        counted = (run.arrival >= scenario.warmup_s) & (run.arrival < end)
        groups: dict[str, list[float]] = {}
        for group in sorted({re.sub(r"\d+$", "", name) for name in run.names}):
            members = [i for i, name in enumerate(run.names) if re.sub(r"\d+$", "", name) == group]
            mine = counted & np.isin(run.server, members)
            share = float(mine.sum() / counted.sum())
            groups[group] = [round(share, 3), round(float(late[mine].mean()), 3)]
        out[strategy] = {"timeouts_per_minute": minutes, "groups_share_timeouts": groups}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    experiments = ("plain", "no-tilt", "no-probes", "no-change-detection", "trace")
    parser.add_argument("--what", choices=experiments)
    parser.add_argument("scenario")
    parser.add_argument("dispatcher")
    parser.add_argument("--seeds", type=int, default=5)
    opts = parser.parse_args()
    scenario = load_scenario(SCENARIOS / f"{opts.scenario}.yaml")
    if opts.what == "trace":
        print(json.dumps(trace(scenario, opts.dispatcher)))
        return
    if opts.what == "no-tilt":
        with_ai(max_tilt=0.0)
    elif opts.what == "no-probes":
        with_ai(probe_size=0.0)
    elif opts.what == "no-change-detection":
        no_change_detection()
    print(json.dumps({"what": opts.what, **cell(scenario, opts.dispatcher, opts.seeds)}))


if __name__ == "__main__":
    main()
