"""Benchmark: every scenario x dispatcher x weight strategy in the simulator.

For each scenario in ``bench/scenarios/``, each weighted dispatcher (``roundrobin``,
``leastconn``, ``random`` (2 draws), Envoy's ``least_request``) runs with each weight
strategy (``static-equal``, ``capacity-oracle``, ``heuristic``, ``veloflux``), and the
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
from veloflux.sim.run import STRATEGIES, run_cell
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
        out += [(str(path), d, s) for d in WEIGHTED for s in STRATEGIES]
        out += [(str(path), d, "static-equal") for d in ANCHORS]
    # Longest first, so that the pool is not left waiting on one big cell at the end.
    return sorted(out, key=lambda c: ("hundred" not in c[0], c[2] != "veloflux"))


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


def _p99(c: dict[str, Any]) -> str:
    low, high = c["p99_ms"]["ci95"]
    return f"{c['p99_ms']['mean']:.0f} [{low:.0f}, {high:.0f}]"


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, each with what was measured and whether it is met."""
    scenarios = sorted({c["scenario"] for c in report["cells"]})
    lines = []
    harm = []
    for s in scenarios:
        for d in WEIGHTED:
            mine, static = _cell(report, s, d, "veloflux"), _cell(report, s, d, "static-equal")
            p99, p99_static = mine["p99_ms"]["mean"], static["p99_ms"]["mean"]
            late, late_static = mine["timeout_rate"]["mean"], static["timeout_rate"]["mean"]
            if p99 > 1.05 * p99_static:
                harm.append(f"{s}/{d} (p99 {p99:.0f} vs {p99_static:.0f} ms)")
            # A p99 at the deadline hides harm: timeouts that grew count too.
            elif late > 1.05 * late_static + 0.001:
                harm.append(f"{s}/{d} (timeouts {_pct(late)} vs {_pct(late_static)})")
    lines.append(
        "- Do no harm (veloflux p99 at most 5% above static weights, and no more "
        "timeouts than 5% + 0.1 point above them, every scenario and weighted dispatcher): "
        + ("**met**." if not harm else f"**not met** in {len(harm)} cell(s): {'; '.join(harm)}.")
    )
    if "static-heterogeneity" in scenarios:
        mine = _cell(report, "static-heterogeneity", "roundrobin", "veloflux")["p99_ms"]["mean"]
        oracle = _cell(report, "static-heterogeneity", "roundrobin", "capacity-oracle")
        ratio = mine / oracle["p99_ms"]["mean"]
        lines.append(
            "- `roundrobin` on static heterogeneity, veloflux p99 within 1.15x of "
            f"capacity-oracle: {ratio:.2f}x: **{'met' if ratio <= 1.15 else 'not met'}**."
        )
    if "gray-failure" in scenarios:
        mine = _cell(report, "gray-failure", "leastconn", "veloflux")["error_rate"]["mean"]
        alone = _cell(report, "gray-failure", "leastconn", "static-equal")["error_rate"]["mean"]
        factor = alone / mine if mine > 0 else float("inf")
        lines.append(
            "- Gray failure, `leastconn`: error rate at least 5x lower with veloflux: "
            f"{_pct(alone)} alone, {_pct(mine)} with veloflux ({factor:.1f}x): "
            f"**{'met' if factor >= 5 else 'not met'}**."
        )
    static_cells = [c for c in report["cells"] if c["strategy"] != "veloflux"]
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
    rows = []
    for s in scenarios:
        for d in WEIGHTED:
            by = {st: _cell(report, s, d, st) for st in STRATEGIES}
            static, mine = by["static-equal"], by["veloflux"]
            rows.append(
                (
                    s,
                    d,
                    *(_p99(by[st]) for st in STRATEGIES),
                    f"{mine['p99_ms']['mean'] / static['p99_ms']['mean']:.2f}",
                    f"{_pct(static['error_rate']['mean'])} / {_pct(mine['error_rate']['mean'])}",
                    f"{_pct(static['timeout_rate']['mean'])} / "
                    f"{_pct(mine['timeout_rate']['mean'])}",
                    f"{mine['model_tick_share']['mean']:.0%}",
                )
            )
    anchors = []
    for s in scenarios:
        mine = min(_cell(report, s, d, "veloflux")["p99_ms"]["mean"] for d in WEIGHTED)
        heuristic = min(_cell(report, s, d, "heuristic")["p99_ms"]["mean"] for d in WEIGHTED)
        peak = _cell(report, s, "p2c_peak_ewma", "static-equal")["p99_ms"]["mean"]
        jsq = _cell(report, s, "jsq", "static-equal")["p99_ms"]["mean"]
        anchors.append(
            (
                s,
                f"{mine:.0f}",
                f"{heuristic:.0f} ({mine / heuristic:.2f}x)",
                f"{peak:.0f} ({mine / peak:.2f}x)",
                f"{jsq:.0f} ({mine / jsq:.2f}x)",
            )
        )
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/run_sim.py` runs: see its docstring; the scenarios are the files in "
            "`bench/scenarios/` (format: docs/simulator.md). p99 in ms, mean over the seeds "
            "[95% interval]; errors and timeouts as static / veloflux; `model ticks`: the "
            "share of veloflux's ticks after the warm-up in model mode (the rest: fallback).",
            "",
            MARK_BEGIN,
            f"Measured on {report['machine']}, {report['seeds']} seeds per cell. Command: "
            f"`{report['command']}` ({report['wall_seconds']:.0f} s in all).",
            "",
            *table(
                (
                    "scenario",
                    "dispatcher",
                    *(f"p99 {st}" for st in STRATEGIES),
                    "veloflux / static",
                    "errors",
                    "timeouts",
                    "model ticks",
                ),
                rows,
            ),
            "",
            "Best p99 of each weight strategy over the weighted dispatchers, against the "
            "per-request anchors (ratio: veloflux's over theirs; below 1, veloflux is faster):",
            "",
            *table(
                ("scenario", "veloflux", "heuristic", "p2c_peak_ewma", "jsq"),
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
