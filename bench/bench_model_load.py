"""Benchmark: does the model learn load? Its curves, features and slope, per scenario.

For each scenario in ``bench/scenarios/`` (dispatcher ``leastconn``, seed 1), the real
agent runs in the simulator with the utilization feature, trains at the end of the
warm-up as the strategy does, and the model it trained is then examined on the
history the run recorded (every interval after the warm-up):

- **flat curves**: the share of (server, interval) rows whose predicted p90 latency
  rises by less than 1% from half to one and a half times the server's current rate
  (the optimizer can only rank servers along a flat curve, never weigh load);
- **feature gain**: the rank of the utilization feature and of the load feature
  (``next_rate``) among the q90 booster's features by total gain;
- **calibration slope**: over consecutive intervals in which a server's rate moved by
  at least 10%, the least-squares slope (through the origin) of the measured change
  of log latency on the change the model predicts for that move: 1 is a model whose
  load response matches what happened, 0 one with none.

The targets (issue: under 10% flat, utilization among the top three features, slope
within 0.5-1.5) are reported as met or not; the figures are what was measured.

Two experiments, printed and never written to the doc: ``--probes A`` multiplies the
capacity rung's targets of a rotating tenth of the pool by e^±A, held two ticks, the
sign alternating per round (weight perturbations to give the history load variation no
reaction caused); ``--monotone-utilization`` adds the +1 monotone constraint to the
utilization feature. ``--only`` picks scenarios (comma-separated names).

    .venv/bin/python bench/bench_model_load.py [--write]
    .venv/bin/python bench/bench_model_load.py --probes 0.2 [--monotone-utilization]
        --only slow-server,static-heterogeneity
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from bench.common import command, machine, replace_section, table
from veloflux.sim.engine import simulate
from veloflux.sim.real_agent import UTILIZATION_FEATURE, VelofluxStrategy
from veloflux.sim.scenario import Scenario, load_scenario

SCENARIOS = ROOT / "bench" / "scenarios"
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Does the model learn load?"
MARK_BEGIN, MARK_END = "<!-- bench:model-load -->", "<!-- /bench:model-load -->"
DISPATCHER = "leastconn"
FLAT = 0.01  # less than 1% rise from 0.5x to 1.5x the current rate
MOVED = math.log(1.1)  # a rate move of at least 10% counts for the slope
MAX_ROWS = 2000


class Examined(VelofluxStrategy):
    """The real agent; before its workdir goes, its model is examined on its journal."""

    def __init__(self) -> None:
        super().__init__(utilization=True)
        self.figures: dict[str, Any] = {}

    def finish(self) -> dict[str, float]:
        self.figures = examine(self)
        return super().finish()


def examine(strategy: VelofluxStrategy) -> dict[str, Any]:
    import numpy as np

    from veloflux.history.rates import derive_rates
    from veloflux.model.features import LOAD_FEATURE, build_features
    from veloflux.model.predict import Predictor

    registry, journal = strategy.registry, strategy.journal
    version = registry.current_version()
    if version is None:
        return {"promoted": False}
    predictor = Predictor(registry.load(version))
    features = build_features(derive_rates(journal.read()))
    warm = strategy.scenario.warmup_s
    start = features["time"].min() + np.timedelta64(int(warm), "s")
    rows = features[features["time"] >= start]
    rows = rows[np.isfinite(rows["request_rate"]) & (rows["request_rate"] > 0)]
    if len(rows) > MAX_ROWS:
        rows = rows.sample(MAX_ROWS, random_state=1)
    rate = rows["request_rate"].to_numpy(dtype=float)
    grid = np.column_stack([0.5 * rate, rate, 1.5 * rate])
    coupled = (f"prom_{UTILIZATION_FEATURE}",)
    curves = predictor.curves(rows, grid, with_median=False, coupled=coupled)
    rise = curves.latency_p90[:, 2] / curves.latency_p90[:, 0] - 1.0
    flat = float(np.mean(rise < FLAT))

    moved = rows[np.isfinite(rows["target_latency"]) & np.isfinite(rows[LOAD_FEATURE])]
    moved = moved[(moved["latency"] > 0) & (moved["target_latency"] > 0)]
    step = np.log(moved[LOAD_FEATURE].to_numpy(dtype=float) / moved["request_rate"].to_numpy())
    moved = moved[np.abs(step) >= MOVED]
    slope = math.nan
    if len(moved) >= 10:
        pair = np.column_stack([moved["request_rate"], moved[LOAD_FEATURE]]).astype(float)
        at = predictor.curves(moved, pair, with_median=True, coupled=coupled).latency_p50
        predicted = np.log(at[:, 1] / at[:, 0])
        measured = np.log(moved["target_latency"].to_numpy() / moved["latency"].to_numpy())
        energy = float(np.sum(predicted**2))
        slope = float(np.sum(predicted * measured) / energy) if energy > 0 else math.nan

    gains = predictor.feature_gains("q90")
    order = sorted(gains, key=lambda name: -gains[name])
    utilization = f"prom_{UTILIZATION_FEATURE}"
    return {
        "promoted": True,
        "rows": len(rows),
        "flat_share": flat,
        "median_rise": float(np.median(rise)),
        "utilization_rank": order.index(utilization) + 1 if utilization in order else None,
        "load_rank": order.index(LOAD_FEATURE) + 1 if LOAD_FEATURE in order else None,
        "top3": order[:3],
        "moves": len(moved),
        "slope": slope,
    }


PROBE_SHARE = 0.1  # of the pool's servers probed at a time
PROBE_TICKS = 2  # how long each probe holds


def _patch(module: object, name: str, value: object) -> None:
    """Replace what ``module`` calls by ``name`` (the experiments change the agent's
    own code path in this worker only)."""
    setattr(module, name, value)


def _experiment(probes: float, monotone_utilization: bool) -> None:
    """Patch this worker's agent for an experiment (see the module's docstring)."""
    import veloflux.decide.planner as planner
    import veloflux.model.features as features
    import veloflux.model.train as train

    if monotone_utilization:
        load = (features.LOAD_FEATURE, f"prom_{UTILIZATION_FEATURE}")

        def constraints(names: tuple[str, ...] = features.FEATURES) -> str:
            return "(" + ",".join("1" if f in load else "0" for f in names) + ")"

        _patch(train, "monotone_constraints", constraints)
    if probes > 0:
        plain = vars(planner)["capacity_targets"]
        ticks = [0]

        def probed(rows: Any, capacity: Any, policy: Any, scale: Any, controller: Any,
                   tilt: Any = None) -> Any:  # fmt: skip
            ticks[0] += 1
            names = sorted(r.server for r in rows)
            size = max(1, round(len(names) * PROBE_SHARE))
            rounds, turn = math.ceil(len(names) / size), ticks[0] // PROBE_TICKS
            slot, sign = turn % rounds, 1 if (turn // rounds) % 2 == 0 else -1
            moved = dict(tilt or {})
            for name in names[slot * size : (slot + 1) * size]:
                moved[name] = moved.get(name, 0.0) + sign * probes
            return plain(rows, capacity, policy, scale, controller, moved)

        _patch(planner, "capacity_targets", probed)


def one(path: str, probes: float = 0.0, monotone_utilization: bool = False) -> dict[str, Any]:
    _experiment(probes, monotone_utilization)
    scenario: Scenario = load_scenario(Path(path))
    strategy = Examined()
    simulate(scenario, DISPATCHER, strategy, scenario.seed)
    return {"scenario": scenario.name, **strategy.figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument("--probes", type=float, default=0.0, help="experiment: probe size")
    parser.add_argument("--monotone-utilization", action="store_true", help="experiment")
    parser.add_argument("--only", default="", help="scenario names, comma-separated")
    opts = parser.parse_args()
    experiment = opts.probes > 0 or opts.monotone_utilization
    if experiment and opts.write:
        parser.error("an experiment is printed, never written to the doc")
    paths = [str(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
    if opts.only:
        paths = [p for p in paths if Path(p).stem in opts.only.split(",")]
    jobs = [(p, opts.probes, opts.monotone_utilization) for p in paths]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(one, jobs)
    for result in results:
        print(json.dumps(result), flush=True)
    if opts.write:
        replace_section(render(results), HEADING, MARK_BEGIN, MARK_END, DOC)


def describe(found: dict[str, Any]) -> str:
    return (
        f"{found['cpu']} ({found['usable_cores']} usable cores), Python {found['python']}, "
        f"XGBoost {found['xgboost']}"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def render(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if not r.get("promoted"):
            rows.append((r["scenario"], "no model promoted", "", "", "", ""))
            continue
        slope = "n/a" if math.isnan(r["slope"]) else f"{r['slope']:.2f}"
        rows.append(
            (
                r["scenario"],
                f"{r['flat_share']:.0%} ({_met(r['flat_share'] < 0.1)})",
                f"{r['median_rise']:+.1%}",
                f"{r['utilization_rank']} ({_met((r['utilization_rank'] or 99) <= 3)})",
                f"{r['load_rank']}",
                f"{slope} over {r['moves']} moves "
                f"({_met(not math.isnan(r['slope']) and 0.5 <= r['slope'] <= 1.5)})",
            )
        )
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/bench_model_load.py` measures: see its docstring (dispatcher "
            f"`{DISPATCHER}`, seed 1, the model the agent trained at the end of the warm-up, "
            "judged on the intervals after it). Targets: under 10% of curves flat, the "
            "utilization feature among the q90 booster's three largest by gain, a "
            "calibration slope within 0.5-1.5.",
            "",
            MARK_BEGIN,
            f"Measured on {describe(machine())}. Command: `{command(Path(__file__))}`.",
            "",
            *table(
                (
                    "scenario",
                    "flat curves",
                    "median rise 0.5x-1.5x",
                    "utilization's gain rank",
                    "next_rate's rank",
                    "calibration slope",
                ),
                rows,
            ),
            MARK_END,
        ]
    )


if __name__ == "__main__":
    main()
