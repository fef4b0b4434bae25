"""Benchmark: does the model learn load? Its curves, features and slope, per scenario.

For each scenario in ``bench/scenarios/`` (dispatcher ``leastconn``, seed 1), the real
agent runs in the simulator with the utilization feature and retrains as the strategy
does (at the end of the warm-up, then every half warm-up). The newest model it trained
on history that ended by the middle of the measured period, promoted or not, is then
examined on every interval the run recorded after that history:

- **flat curves**: the share of (server, interval) rows whose predicted p90 latency
  rises by less than 1% from half to one and a half times the server's current rate
  (the optimizer can only rank servers along a flat curve, never weigh load);
- **feature gain**: the rank of the utilization feature by total gain among the q90
  latency booster's features (the load response, ``model/load_response.py``, reads
  utilization alone: its fitted scale is shown instead);
- **calibration slope**: on the agent's weight probes (``decide/probes.py``, the
  schedule recomputed from the journal's times), the latency change the probes
  caused over the change the model predicts for them: sum(z x measured) / sum(z x
  predicted), z the sign of the schedule's load change (a probe's start or its end,
  run or not: ``model/features.py``'s ``probe_moves`` says why; the moves counted
  are those that ran), measured the change of log latency from the interval to the next
  less the change of log service time (utilization over request rate: what a drift
  of the server's own speed moved, not the load; the slope on the raw latency change
  is shown beside it), predicted the model's p50 at the row's load step against its
  p50 at no step. The
  probe's timing is drawn by a schedule no latency moved, so
  whatever else changed latency averages out of both sums: 1 is a model whose load
  response matches what the probes did, 0 one with none. (Over moves the agent and
  the dispatchers *reacted* with, this slope measures the reaction, not the model:
  a server slows, gets less, and rate and latency move against each other.) The
  interval in brackets is a bootstrap 90% interval over the probed rows;
- **what the probes moved**: over every probe move of the run, before and after
  that model's history ended, the server's request rate, latency and service time
  changes per unit of the probe's weight step (the same ratios on the probe's sign), and the
  mean utilization: a dispatcher that amplifies a weight step, or a response that
  changed between the windows, shows here.

The targets (issue: under 10% flat, utilization among the top three features, slope
within 0.5-1.5) are reported as met or not; the figures are what was measured, with
the promotion gate's verdict on the model. ``--only`` picks scenarios
(comma-separated names).

    .venv/bin/python bench/bench_model_load.py [--write] [--only slow-server] [--out F]
    .venv/bin/python bench/bench_model_load.py --render F   # the doc from a kept run
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
from veloflux.model.registry import CURRENT, RETIRED
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
    import pandas as pd

    from veloflux.history.rates import derive_rates
    from veloflux.model.features import LOAD_STEP, build_features
    from veloflux.model.load_response import IN_FLIGHT, measured_change
    from veloflux.model.predict import Predictor

    registry, journal = strategy.registry, strategy.journal
    features = build_features(derive_rates(journal.read()))
    scenario = strategy.scenario
    middle = scenario.warmup_s + (scenario.duration_s - scenario.warmup_s) / 2
    halfway = features["time"].min() + np.timedelta64(int(middle), "s")
    # The newest model the agent trained (promoted or not) on history that ended by the
    # middle of the measured period, judged only on what came after its history.
    ended = [(pd.Timestamp(e.metadata["window"]["end"]), e) for e in registry.entries()]
    candidates = [(end, e) for end, e in ended if end <= halfway]
    if not candidates:
        return {"trained": False}
    end, newest = max(candidates, key=lambda pair: pair[0])
    predictor = Predictor(registry.load(newest.version))
    rows = features[features["time"] > end]
    rows = rows[np.isfinite(rows["request_rate"]) & (rows["request_rate"] > 0)]
    sample = rows.sample(MAX_ROWS, random_state=1) if len(rows) > MAX_ROWS else rows
    rate = sample["request_rate"].to_numpy(dtype=float)
    grid = np.column_stack([0.5 * rate, rate, 1.5 * rate])
    curves = predictor.curves(sample, grid, with_median=False)
    rise = curves.latency_p90[:, 2] / curves.latency_p90[:, 0] - 1.0
    flat = float(np.mean(rise < FLAT))

    # The probe schedule orders a pool's servers by name over the rows it is given:
    # recomputed on the filtered rows alone (a server missing for a while), it would
    # not be the schedule the agent ran. So the moves come from the whole journal.
    moved = _probe_signs(strategy, features)
    before = (moved["time"] <= end).to_numpy()
    known = moved["request_rate"].to_numpy(dtype=float)
    usable = moved[~before & np.isfinite(known) & (known > 0)]
    slope, low, high = math.nan, math.nan, math.nan
    raw, raw_low, raw_high = math.nan, math.nan, math.nan
    if usable["ran"].sum() >= 10:
        now = usable["request_rate"].to_numpy(dtype=float)
        step = usable[LOAD_STEP].to_numpy(dtype=float)
        # A curve's rates must rise along it (it is rearranged to never fall): the pair
        # in rising order, and the change signed by the step.
        pair = np.sort(np.column_stack([now, now * np.exp(step)]), axis=1)
        at = predictor.curves(usable, pair, with_median=True).latency_p50
        predicted = np.sign(step) * np.log(at[:, 1] / at[:, 0])
        z = usable["probe"].to_numpy(dtype=float)
        queueing = measured_change(usable, predictor.load.feature if predictor.load else IN_FLIGHT)
        latency = measured_change(usable, IN_FLIGHT)  # the raw change of log latency
        slope, low, high = _slope(z, queueing, predicted)
        raw, raw_low, raw_high = _slope(z, latency, predicted)

    gains = predictor.feature_gains("q90")
    order = sorted(gains, key=lambda name: -gains[name])
    utilization = f"prom_{UTILIZATION_FEATURE}"
    return {
        "trained": True,
        "promoted": newest.status in (CURRENT, RETIRED),  # retired: promoted, since replaced
        "gate": newest.reason,
        "trained_on_until_s": float((end - features["time"].min()).total_seconds()),
        "rows": len(sample),
        "flat_share": flat,
        "median_rise": float(np.median(rise)),
        "utilization_rank": order.index(utilization) + 1 if utilization in order else None,
        "load_rank": order.index(LOAD_STEP) + 1 if LOAD_STEP in order else None,
        "top3": order[:3],
        "load_response": newest.metadata.get("load_response"),
        "probes": int(usable["ran"].sum()),
        "slope": slope,
        "slope_interval": [low, high],
        "raw_slope": raw,
        "raw_slope_interval": [raw_low, raw_high],
        "probes_moved": _what_probes_moved(moved, before),
    }


def _what_probes_moved(moved: Any, before: Any) -> dict[str, Any]:
    """Over every probe move of the run, before and after the examined model's
    history ended: how far the server's request rate moved per unit of the probe's
    weight step, its latency, and its service time (utilization over request rate; log
    changes, instrumental-variable ratios on the probe's sign, as the calibration slope
    is), and the mean utilization."""
    import numpy as np

    from veloflux.model.features import LOAD_FEATURE, LOAD_STEP
    from veloflux.model.load_response import IN_FLIGHT, measured_change

    z = moved["probe"].to_numpy(dtype=float)
    step = moved[LOAD_STEP].to_numpy(dtype=float)
    rate = np.log(moved[LOAD_FEATURE].to_numpy(dtype=float) / moved["request_rate"].to_numpy())
    latency = np.log(moved["target_latency"].to_numpy(dtype=float) / moved["latency"].to_numpy())
    column = f"prom_{UTILIZATION_FEATURE}"
    utilization = moved[column].to_numpy(dtype=float)
    service = measured_change(moved, IN_FLIGHT) - measured_change(moved, column)
    known = np.isfinite(rate) & np.isfinite(latency) & np.isfinite(service)
    out: dict[str, Any] = {}
    for name, side in (("before", before), ("after", ~before)):
        part = side & known
        zs = z[part]
        out[name] = {
            "moves": int((part & moved["ran"].to_numpy(dtype=bool)).sum()),
            "scheduled": int(part.sum()),
            "rate_per_weight": _ratio(zs * rate[part], zs * step[part]),
            "latency_per_weight": _ratio(zs * latency[part], zs * step[part]),
            "service_per_weight": _ratio(zs * service[part], zs * step[part]),
            "utilization": float(np.nanmean(utilization[part])) if part.any() else math.nan,
        }
    return out


BOOTSTRAP = 400


def _slope(z: Any, measured: Any, predicted: Any) -> tuple[float, float, float]:
    """sum(z x measured) / sum(z x predicted), and its bootstrap 90% interval."""
    import numpy as np

    known = np.isfinite(measured) & np.isfinite(predicted)
    z, measured, predicted = z[known], measured[known], predicted[known]
    draws = np.random.default_rng(1).integers(0, len(z), (BOOTSTRAP, len(z)))
    spread = [_ratio((z * measured)[d], (z * predicted)[d]) for d in draws]
    low, high = (float(q) for q in np.nanquantile(spread, [0.05, 0.95]))
    return _ratio(z * measured, z * predicted), low, high


def _ratio(numerator: Any, denominator: Any) -> float:
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total != 0 else math.nan


def _probe_signs(strategy: VelofluxStrategy, rows: Any) -> Any:
    """The rows of ``rows`` at which the probe schedule changed a server's load (a
    probe's start or its end), with the change's sign as ``probe`` (+1: the load went
    up into the next interval) and whether it ran: ``model/features.py``'s
    ``probe_moves``, on the agent's schedule (``ai.probe_*``)."""
    from veloflux.domain.probe_schedule import ProbeSettings
    from veloflux.model.features import probe_moves

    ai, interval = strategy.config.ai, strategy.config.interval_seconds
    settings = ProbeSettings(ai.probe_size, ai.probe_share, ai.probe_ticks, interval)
    return probe_moves(rows, settings)


def one(path: str) -> dict[str, Any]:
    scenario: Scenario = load_scenario(Path(path))
    strategy = Examined()
    simulate(scenario, DISPATCHER, strategy, scenario.seed)
    return {"scenario": scenario.name, **strategy.figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument("--only", default="", help="scenario names, comma-separated")
    parser.add_argument("--out", type=Path, help="also keep the results in this JSON file")
    parser.add_argument("--render", type=Path, help="write the doc from a --out file; run nothing")
    opts = parser.parse_args()
    if opts.render:
        kept = json.loads(opts.render.read_text())
        replace_section(
            render(kept["results"], kept["command"]), HEADING, MARK_BEGIN, MARK_END, DOC
        )
        return
    paths = [str(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
    if opts.only:
        paths = [p for p in paths if Path(p).stem in opts.only.split(",")]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(one, paths)
    for result in results:
        print(json.dumps(result), flush=True)
    shown = command(Path(__file__), dropped=("--out",))
    if opts.out:
        opts.out.write_text(json.dumps({"command": shown, "results": results}))
    if opts.write:
        replace_section(render(results, shown), HEADING, MARK_BEGIN, MARK_END, DOC)


def describe(found: dict[str, Any]) -> str:
    return (
        f"{found['cpu']} ({found['usable_cores']} usable cores), Python {found['python']}, "
        f"XGBoost {found['xgboost']}"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def render(results: list[dict[str, Any]], shown: str) -> str:
    rows = []
    for r in results:
        if not r.get("trained"):
            rows.append((r["scenario"], "no model trained", "", "", "", "", "", ""))
            continue
        in_band = not math.isnan(r["slope"]) and 0.5 <= r["slope"] <= 1.5
        response = r.get("load_response") or {}
        scale = response.get("scale")
        fitted = (
            f"{scale:.3f} x pressure ({response['features'][0]})" if scale is not None else "none"
        )
        rank = r["utilization_rank"]
        rows.append(
            (
                r["scenario"],
                f"{r['flat_share']:.0%} ({_met(r['flat_share'] < 0.1)})",
                f"{r['median_rise']:+.1%}",
                f"{rank or '-'} ({_met((rank or 99) <= 3)})",
                f"{fitted}, {response.get('moves', 0)} probe moves",
                f"{_interval(r['slope'], r['slope_interval'])} over {r['probes']} probe moves "
                f"({_met(in_band)})",
                _interval(r.get("raw_slope", math.nan), r.get("raw_slope_interval", [0, 0])),
                f"{'yes' if r['promoted'] else 'no'}; {r['gate']}",
            )
        )
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/bench_model_load.py` measures: see its docstring (dispatcher "
            f"`{DISPATCHER}`, seed 1; the newest model the agent trained on history that "
            "ended by the middle of the measured period, promoted or not, judged on the "
            "intervals after that history). Targets: under 10% of curves flat, the "
            "utilization feature among the q90 latency booster's three largest by gain, "
            "a calibration slope within 0.5-1.5 (on the weight probes; judged on the "
            "latency change less the service time's, the part a load step can cause, and "
            "shown on the raw latency change beside it).",
            "",
            MARK_BEGIN,
            f"Measured on {describe(machine())}. Command: `{shown}`.",
            "",
            *table(
                (
                    "scenario",
                    "flat curves",
                    "median rise 0.5x-1.5x",
                    "utilization's rank in q90",
                    "load response: elasticity",
                    "calibration slope [90%]",
                    "on raw latency [90%]",
                    "promoted; the gate's reason",
                ),
                rows,
            ),
            "",
            "What the probes moved, over every probe move of the run, before / after "
            "the examined model's history ended (log changes per unit of the probe's "
            "log weight step, as ratios on the probe's sign):",
            "",
            *table(
                (
                    "scenario",
                    "probe moves",
                    "request rate per weight step",
                    "latency per weight step",
                    "service time per weight step",
                    "mean utilization",
                ),
                [_moved_row(r) for r in results if r.get("probes_moved")],
            ),
            MARK_END,
        ]
    )


def _interval(value: float, interval: list[float]) -> str:
    low, high = interval
    return "n/a" if math.isnan(value) else f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _moved_row(r: dict[str, Any]) -> tuple[str, ...]:
    def pair(key: str, form: str) -> str:
        # With under 10 probes that ran, or fewer than half the scheduled moves, the
        # ratios over every scheduled move are noise (the probes moved almost nothing).
        sides = [r["probes_moved"][side] for side in ("before", "after")]
        strong = [s["moves"] >= max(10, s.get("scheduled", 0) / 2) for s in sides]
        values = [s[key] if ok else math.nan for s, ok in zip(sides, strong, strict=True)]
        return " / ".join("n/a" if math.isnan(v) else format(v, form) for v in values)

    moves = " / ".join(str(r["probes_moved"][side]["moves"]) for side in ("before", "after"))
    return (
        r["scenario"],
        moves,
        pair("rate_per_weight", ".2f"),
        pair("latency_per_weight", ".2f"),
        pair("service_per_weight", ".2f"),
        pair("utilization", ".2f"),
    )


if __name__ == "__main__":
    main()
