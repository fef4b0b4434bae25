"""Benchmark: every scenario x dispatcher x weight strategy in the simulator.

For each scenario in ``bench/scenarios/``, each weighted dispatcher (``roundrobin``,
``leastconn``, ``random`` (2 draws), Envoy's ``least_request``) runs with each weight
strategy (``static-equal``, ``capacity-oracle``, ``heuristic``, ``veloflux``, and
``veloflux-proxy-only``, the agent without the utilization signal on servers with
HAProxy's ``maxconn``, beside ``static-maxconn``, static weights on the same servers),
and the
per-request anchors no weight can emulate (``p2c_peak_ewma``, ``jsq``) run once with
static weights; every cell over 5 seeds (``--seeds``). Cells run in parallel in
``spawn`` processes (XGBoost must not train after a fork). Writes the comparison
tables and the goals into docs/benchmarks.md, and two plots into docs/img/: the
latency CDF of each strategy on one scenario, and the weights over time against the
true capacities on another.

    .venv/bin/python bench/run_sim.py [--write] [--seeds 5] [--jobs N] [--only SCENARIO]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from bench.common import cpu_model, replace_section, table
from veloflux.sim.dispatchers import DISPATCHERS, WEIGHTED
from veloflux.sim.run import ON_MAXCONN, PROXY_ONLY, STATIC_MAXCONN, STRATEGIES, run_cell
from veloflux.sim.scenario import Scenario, load_scenario

SCENARIOS = ROOT / "bench" / "scenarios"
IMAGES = ROOT / "docs" / "img"
DOC = ROOT / "docs" / "benchmarks.md"
ANCHORS = tuple(d for d in DISPATCHERS if d not in WEIGHTED)  # ignore weights
HEADING = "## Simulator: VeloFlux against the baselines"
MARK_BEGIN, MARK_END = "<!-- bench:sim -->", "<!-- /bench:sim -->"
CDF_CELL = ("slow-server", "leastconn")
WEIGHTS_CELL = ("static-heterogeneity", "leastconn")


def cells(scenarios: list[Path]) -> list[tuple[str, str, str]]:
    out = []
    for path in scenarios:
        out += [(str(path), d, s) for d in WEIGHTED for s in (*STRATEGIES, *ON_MAXCONN)]
        out += [(str(path), d, "static-equal") for d in ANCHORS]
    # Longest first, so that the pool is not left waiting on one big cell at the end.
    return sorted(out, key=lambda c: ("hundred" not in c[0], not c[2].startswith("veloflux")))


def _run(job: tuple[str, str, str, int]) -> dict[str, Any]:
    path, dispatcher, strategy, seeds = job
    scenario = load_scenario(Path(path))
    return run_cell(scenario, dispatcher, strategy, [scenario.seed + k for k in range(seeds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md + plots")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default="", help="one scenario's name (a quick look)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/veloflux-sim.json"))
    parser.add_argument(
        "--render", type=Path, default=None, help="rewrite the doc and plots from a --out file"
    )
    opts = parser.parse_args()
    if opts.render is not None:
        write(json.loads(opts.render.read_text()))
        return
    began = time.perf_counter()
    paths = sorted(SCENARIOS.glob("*.yaml"))
    if opts.only:
        paths = [p for p in paths if p.stem == opts.only]
    jobs = [(p, d, s, opts.seeds) for p, d, s in cells(paths)]
    results: list[dict[str, Any]] = []
    with multiprocessing.get_context("spawn").Pool(opts.jobs) as pool:
        for i, result in enumerate(pool.imap_unordered(_run, jobs), start=1):
            results.append(result)
            print(
                f"[{i}/{len(jobs)}] {result['scenario']} {result['dispatcher']} "
                f"{result['strategy']}: p99 {result['p99_ms']['mean']:.1f} ms, "
                f"{result['wall_seconds']:.1f} s",
                flush=True,
            )
    report = {
        "machine": f"{cpu_model()}, Python {platform.python_version()}, {opts.jobs} process(es)",
        "command": shlex.join([".venv/bin/python", "bench/run_sim.py", *sys.argv[1:]]),
        "seeds": opts.seeds,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "cells": results,
    }
    opts.out.write_text(json.dumps(report, indent=1))
    print(f"results: {opts.out}")
    if opts.write:
        write(report)


def write(report: dict[str, Any]) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    plot_cdf(IMAGES / "sim-latency-cdf.png")
    plot_weights(IMAGES / "sim-weights.png")
    replace_section(render_section(report), HEADING, MARK_BEGIN, MARK_END, DOC)


# --- the plots (one seed each, re-run here to keep every request) ---------------------------


def plot_cdf(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from veloflux.sim.engine import simulate
    from veloflux.sim.run import make_strategy

    scenario = load_scenario(SCENARIOS / f"{CDF_CELL[0]}.yaml")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = [(CDF_CELL[1], s) for s in STRATEGIES] + [(a, "static-equal") for a in ANCHORS]
    for dispatcher, strategy in runs:
        run = simulate(scenario, dispatcher, make_strategy(strategy))
        kept = run.arrival >= scenario.warmup_s
        latency = np.sort(np.nan_to_num(run.latency[kept], nan=np.inf)) * 1000
        share = np.arange(1, len(latency) + 1) / len(latency)
        label = strategy if dispatcher == CDF_CELL[1] else f"{dispatcher} (per request)"
        ax.plot(latency, 1 - share, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of requests slower")
    ax.set_title(f"{scenario.name}, {CDF_CELL[1]}: latency after the warm-up (seed 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from veloflux.sim.engine import simulate
    from veloflux.sim.run import make_strategy

    scenario: Scenario = load_scenario(SCENARIOS / f"{WEIGHTS_CELL[0]}.yaml")
    run = simulate(scenario, WEIGHTS_CELL[1], make_strategy("veloflux"))
    capacity = [g.speed * g.concurrency for _, g in scenario.expanded()]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    times = [t.time for t in run.ticks]
    colors = plt.get_cmap("viridis")
    for i, name in enumerate(run.names):
        total = [sum(t.weights) for t in run.ticks]
        share = [t.weights[i] / s for t, s in zip(run.ticks, total, strict=True)]
        color = colors(i / max(len(run.names) - 1, 1))
        ax.plot(times, share, color=color, label=name)
        ax.axhline(capacity[i] / sum(capacity), color=color, linestyle=":", linewidth=0.8)
    ax.axvline(scenario.warmup_s, color="grey", linewidth=0.8)
    ax.set_xlabel("simulated time (s); warm-up ends at the grey line")
    ax.set_ylabel("share of the pool's weight")
    ax.set_title(
        f"{scenario.name}, {WEIGHTS_CELL[1]}, seed 1: VeloFlux's weights (solid) "
        "and true capacity shares (dotted)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the section ------------------------------------------------------------------------------


def _cell(report: dict[str, Any], scenario: str, dispatcher: str, strategy: str) -> dict[str, Any]:
    found: dict[str, Any]
    for found in report["cells"]:
        key = (found["scenario"], found["dispatcher"], found["strategy"])
        if key == (scenario, dispatcher, strategy):
            return found
    raise KeyError((scenario, dispatcher, strategy))


def _p99(c: dict[str, Any], figure: str = "slo_p99_ms") -> str:
    low, high = c[figure]["ci95"]
    return f"{c[figure]['mean']:.0f} [{low:.0f}, {high:.0f}]"


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _mean(c: dict[str, Any], figure: str) -> float:
    value = c.get(figure, {}).get("mean")
    return float(value) if value is not None else 0.0


def _failed(c: dict[str, Any]) -> float:
    return _mean(c, "error_rate") + _mean(c, "timeout_rate")


# Scenarios in which a server fails requests: there a p99 of successes alone says less.
FAILING = ("gray-failure",)


def harm(report: dict[str, Any], strategy: str, baseline: str = "static-equal") -> list[str]:
    """The cells where ``strategy`` does harm against static weights (``baseline``):
    SLO p99 (errors and timeouts at the deadline) above 1.05x static's, errors +
    timeouts more than 0.1 point above static's, or (where no server fails) the p99 of
    successes above 1.05x."""
    found = []
    scenarios = sorted({c["scenario"] for c in report["cells"]})
    for s in scenarios:
        for d in WEIGHTED:
            mine, static = _cell(report, s, d, strategy), _cell(report, s, d, baseline)
            slo, slo_static = _mean(mine, "slo_p99_ms"), _mean(static, "slo_p99_ms")
            ok, ok_static = _mean(mine, "success_p99_ms"), _mean(static, "success_p99_ms")
            if slo > 1.05 * slo_static:
                found.append(f"{s}/{d} (SLO p99 {slo:.0f} vs {slo_static:.0f} ms)")
            elif _failed(mine) > _failed(static) + 0.001:
                found.append(
                    f"{s}/{d} (errors + timeouts {_pct(_failed(mine))} vs {_pct(_failed(static))})"
                )
            elif s not in FAILING and ok > 1.05 * ok_static:
                found.append(f"{s}/{d} (success p99 {ok:.0f} vs {ok_static:.0f} ms)")
    return found


def _best(report: dict[str, Any], scenario: str, strategy: str, figure: str) -> float:
    return min(_mean(_cell(report, scenario, d, strategy), figure) for d in WEIGHTED)


def tilt_note(report: dict[str, Any]) -> str:
    """How much of the margin the model's tilt can claim, from the switchback log."""
    mine = [c for c in report["cells"] if c["strategy"] == "veloflux"]
    granted = [_mean(c, "tilt_granted_share") for c in mine]
    if not granted:
        return ""
    widest = max(range(len(mine)), key=lambda i: granted[i])
    return (
        "From the switchback log: the model's tilt held a grant for "
        f"{sum(granted) / len(granted):.1%} of veloflux's ticks on average over the "
        f"{len(mine)} cells (at most {granted[widest]:.0%}, "
        f"{mine[widest]['scenario']}/{mine[widest]['dispatcher']}), so the margin is the "
        "capacity rung's, not the model's."
    )


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, each with what was measured and whether it is met."""
    scenarios = sorted({c["scenario"] for c in report["cells"]})
    lines = []
    for strategy, baseline in (("veloflux", "static-equal"), (PROXY_ONLY, STATIC_MAXCONN)):
        cells = harm(report, strategy, baseline)
        lines.append(
            f"- Do no harm, `{strategy}` against `{baseline}` (SLO p99 at most 1.05x static "
            "weights', errors + "
            "timeouts at most static's + 0.1 point, success p99 at most 1.05x where no "
            "server fails; every scenario and weighted dispatcher): "
            + (
                "**met** in every cell."
                if not cells
                else f"**not met** in {len(cells)} of {len(scenarios) * len(WEIGHTED)} "
                f"cell(s): {'; '.join(cells)}."
            )
        )
    if "static-heterogeneity" in scenarios:
        het = _mean(_cell(report, "static-heterogeneity", "roundrobin", "veloflux"), "p99_ms")
        oracle = _cell(report, "static-heterogeneity", "roundrobin", "capacity-oracle")
        ratio = het / _mean(oracle, "p99_ms")
        lines.append(
            "- `roundrobin` on static heterogeneity, veloflux p99 within 1.15x of "
            f"capacity-oracle: {ratio:.2f}x: **{'met' if ratio <= 1.15 else 'not met'}**."
        )
    tilt = tilt_note(report)
    for figure, label in (("slo_p99_ms", "SLO p99"), ("p99_ms", "p99 as the proxy counts it")):
        ahead = [
            s
            for s in scenarios
            if _best(report, s, "veloflux", figure) < _best(report, s, "heuristic", figure)
        ]
        lines.append(
            f"- Ahead of the heuristic (best {label} over the weighted dispatchers below "
            f"the heuristic's) in {len(ahead)} of {len(scenarios)} scenarios "
            f"({', '.join(ahead) or 'none'}): "
            f"**{'met' if len(ahead) >= 6 else 'not met'}** (target: 6 of 8). {tilt}"
        )
    if "gray-failure" in scenarios:
        mine = _cell(report, "gray-failure", "leastconn", "veloflux")
        alone = _cell(report, "gray-failure", "leastconn", "static-equal")
        errors, errors_alone = _mean(mine, "error_rate"), _mean(alone, "error_rate")
        factor = errors_alone / errors if errors > 0 else float("inf")
        slo = _mean(mine, "slo_p99_ms") / _mean(alone, "slo_p99_ms")
        met = factor >= 5 and slo <= 1.05
        lines.append(
            "- Gray failure, `leastconn`: at least 5x fewer errors than static weights and "
            f"SLO p99 at most 1.05x: {_pct(errors_alone)} alone, {_pct(errors)} with "
            f"veloflux ({factor:.1f}x), SLO p99 {slo:.2f}x: **{'met' if met else 'not met'}**."
        )
    static_cells = [c for c in report["cells"] if not c["strategy"].startswith("veloflux")]
    speed = sum(c["requests_simulated"] for c in static_cells) / max(
        sum(c["wall_seconds"] for c in static_cells), 1e-9
    )
    lines.append(
        f"- Simulator speed (requests simulated per second of one process's time, runs "
        f"without the agent): {speed:,.0f}: **{'met' if speed >= 100_000 else 'not met'}** "
        "(target 100,000)."
    )
    return lines


def render_section(report: dict[str, Any]) -> str:
    scenarios = sorted({c["scenario"] for c in report["cells"]})
    strategies = (*STRATEGIES, *ON_MAXCONN)
    rows = []
    for s in scenarios:
        for d in WEIGHTED:
            by = {st: _cell(report, s, d, st) for st in strategies}
            static, mine = by["static-equal"], by["veloflux"]
            rows.append(
                (
                    s,
                    d,
                    *(_p99(by[st]) for st in strategies),
                    f"{_mean(mine, 'slo_p99_ms') / _mean(static, 'slo_p99_ms'):.2f}",
                    f"{_mean(static, 'success_p99_ms'):.0f} / {_mean(mine, 'success_p99_ms'):.0f}",
                    f"{_pct(_mean(static, 'error_rate'))} / {_pct(_mean(mine, 'error_rate'))}",
                    f"{_pct(_mean(static, 'timeout_rate'))} / {_pct(_mean(mine, 'timeout_rate'))}",
                    f"{_mean(mine, 'capacity_tick_share'):.0%} / "
                    f"{_mean(mine, 'model_tick_share'):.0%}",
                )
            )
    anchors = []
    for s in scenarios:
        best_mine = _best(report, s, "veloflux", "slo_p99_ms")
        heuristic = _best(report, s, "heuristic", "slo_p99_ms")
        raw, raw_heuristic = (
            _best(report, s, "veloflux", "p99_ms"),
            _best(report, s, "heuristic", "p99_ms"),
        )
        peak = _mean(_cell(report, s, "p2c_peak_ewma", "static-equal"), "slo_p99_ms")
        jsq = _mean(_cell(report, s, "jsq", "static-equal"), "slo_p99_ms")
        anchors.append(
            (
                s,
                f"{best_mine:.0f}",
                f"{heuristic:.0f} ({best_mine / heuristic:.3f}x)",
                f"{raw:.0f} / {raw_heuristic:.0f} ({raw / raw_heuristic:.3f}x)",
                f"{peak:.0f} ({best_mine / peak:.2f}x)",
                f"{jsq:.0f} ({best_mine / jsq:.2f}x)",
            )
        )
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/run_sim.py` runs: see its docstring; the scenarios are the files in "
            "`bench/scenarios/` (format: docs/simulator.md). Latency figures in ms, mean over "
            "the seeds [95% interval]. The p99 columns are **SLO p99**: every error and "
            "timeout counted as a request that missed the deadline, so a fast error cannot "
            "make a p99 look good; `success p99` is the p99 of requests that did not fail "
            "(static / veloflux). `veloflux` reads each server's utilization as a Prometheus "
            "feature would supply it (the heuristic's signal); `veloflux-proxy-only` sees "
            "only what HAProxy shows, on the same servers each given HAProxy's `maxconn` "
            "at its concurrency (what waits, waits in the proxy's queue; its capacity "
            "signal is Little's law, `maxconn / Tr`), judged against `static-maxconn`, "
            "static weights on those servers. Errors and timeouts as static / veloflux; `rungs`: "
            "the share of veloflux's ticks after the warm-up on the capacity rung / in model "
            "mode (the rest: fallback, overload included).",
            "",
            MARK_BEGIN,
            f"Measured on {report['machine']}, {report['seeds']} seeds per cell. Command: "
            f"`{report['command']}` ({report['wall_seconds']:.0f} s in all).",
            "",
            *table(
                (
                    "scenario",
                    "dispatcher",
                    *(f"SLO p99 {st}" for st in strategies),
                    "veloflux / static",
                    "success p99",
                    "errors",
                    "timeouts",
                    "rungs",
                ),
                rows,
            ),
            "",
            "Best SLO p99 of each weight strategy over the weighted dispatchers, against the "
            "heuristic and the per-request anchors (ratio: veloflux's over theirs; below 1, "
            "veloflux is faster), and the best p99 as the proxy counts it (errors at their "
            "own latency) for veloflux / the heuristic:",
            "",
            *table(
                (
                    "scenario",
                    "veloflux",
                    "heuristic",
                    "p99 veloflux / heuristic",
                    "p2c_peak_ewma",
                    "jsq",
                ),
                anchors,
            ),
            "",
            "Goals:",
            "",
            *goals(report),
            "",
            "![latency CDF](img/sim-latency-cdf.png)",
            "![weights over time](img/sim-weights.png)",
            MARK_END,
        ]
    )


if __name__ == "__main__":
    main()
