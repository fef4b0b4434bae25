"""Benchmark: the learning core (training, per-tick advice, calibration, real accuracy).

Reproduce with ``.venv/bin/python bench/bench_learning.py --write`` from the repository
root (a few minutes on 2 cores; it records two minutes of real traffic unless given
``--journal`` or ``--skip-real``). ``--quick`` shrinks every size about tenfold for a
smoke run; its figures are not the reported ones, so it refuses ``--write``.

Figures (what each one measures is also written into docs/benchmarks.md by
``render_prose``, so the doc and this script cannot disagree):
1. training on 1,000,000 synthetic journal rows with 2 threads, per stage and in total,
   and the peak RSS of the fresh ``spawn`` process that did it;
2. what the advisor computes per tick for one 1,000-server pool (curves, cost,
   water-filling, confidence), median and p95 over 50 runs, with the split;
3. calibrated 80% interval coverage on held-out synthetic data, three seeds;
4. p50 MAE and pinball losses against the naive baseline on a journal recorded from the
   local stack (HAProxy + four demo backends).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd

from bench.common import (
    REAL_SERVERS,
    command,
    machine,
    median_p95,
    noise_note,
    replace_section,
    rss_mb,
    table,
    timed,
    with_noise,
    yes,
)
from integration.loadgen import run_load_sync
from integration.stack import LocalStack
from integration.synthetic import SyntheticPool, synthetic_samples
from veloflux.agent.tick import HISTORY_WINDOW_INTERVALS
from veloflux.config.schema import AISection, OutlierSection
from veloflux.decide.advisor import AdvisorSettings, _pool_advice
from veloflux.decide.optimize import rate_grid, water_fill
from veloflux.decide.outlier_guard import OutlierFindings
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates
from veloflux.model.features import TARGET_LATENCY, at_status_quo, build_features, newest_rows
from veloflux.model.predict import Predictor
from veloflux.model.registry import Registry
from veloflux.model.train import TrainSettings, train_model
from veloflux.util.events import Events

MARK_BEGIN, MARK_END = "<!-- bench:learning -->", "<!-- /bench:learning -->"
HEADING = "## Learning core: training, per-tick advice, calibration, accuracy"
ERROR_PENALTY_SECONDS = 1.0  # the config default (ai.error_penalty)
T = TypeVar("T")
# What contention inflates besides wall time, for the note on other processes' share.
CPU_INFLATED = (
    "XGBoost's OpenMP threads spin while they wait for a core, so under contention"
    " training's CPU time is inflated too"
)
REAL_PHASES_RPS = (200, 320, 260, 360, 220, 300, 340, 240)


@dataclass(frozen=True)
class Sizes:
    """Every size the benchmark uses; ``quick`` divides them by about ten."""

    train_servers: int
    train_intervals: int
    train_min_rows: int
    tick_servers: int
    tick_intervals: int
    tick_runs: int
    coverage_servers: int
    coverage_intervals: int
    coverage_seeds: tuple[int, ...]
    real_phase_seconds: float
    real_min_rows: int

    @property
    def real_record_seconds(self) -> int:
        return int(self.real_phase_seconds * len(REAL_PHASES_RPS))


FULL = Sizes(100, 10_000, 1000, 1000, 300, 50, 50, 2000, (1, 2, 3), 15.0, 200)
QUICK = Sizes(100, 1000, 200, 100, 300, 10, 50, 200, (1, 2, 3), 3.0, 20)


# --- figure 1: training on a million rows, in a fresh spawn process ----------------------


def _training_child(servers: int, intervals: int, min_rows: int, conn: Connection) -> None:
    """Runs in a ``spawn`` child: generate, then time derive/features/train; send figures."""
    try:
        rss_imports = rss_mb()
        samples = synthetic_samples(SyntheticPool(servers=servers, intervals=intervals))
        rss_samples = rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        rates = derive_rates(samples)
        t_rates = time.perf_counter()
        features = build_features(rates)
        t_features, cpu_features = time.perf_counter(), time.process_time()
        stages: dict[str, float] = {}  # train_model's progress stage -> when it began

        def progress(stage: str, _fraction: float) -> None:
            stages.setdefault(stage, time.perf_counter())

        settings = TrainSettings(nthread=2, min_rows=min_rows)
        model, _split = train_model(features, settings, progress)
        t_train, cpu_train = time.perf_counter(), time.process_time()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        meta = model.metadata
        conn.send(
            {
                "journal_rows": len(samples),
                "derive_rates_s": round(t_rates - wall, 2),
                "build_features_s": round(t_features - t_rates, 2),
                "train_model_s": round(t_train - t_features, 2),
                "total_s": round(t_train - wall, 2),
                "train_model_cpu_s": round(cpu_train - cpu_features, 2),
                "train_model_split_s": {
                    "select_and_split_rows": round(stages["latency q10"] - t_features, 2),
                    "latency_booster": round(stages["error model"] - stages["latency q10"], 2),
                    "error_booster": round(stages["calibration"] - stages["error model"], 2),
                    "calibration_metrics_ood": round(stages["done"] - stages["calibration"], 2),
                },
                "total_cpu_s": round(cpu_train - cpu, 2),
                "peak_rss_mb": round(peak_mb, 1),
                "rss_after_imports_mb": round(rss_imports, 1),
                "rss_with_samples_mb": round(rss_samples, 1),
                "rows_used": meta["rows"],
                "rows_used_total": sum(meta["rows"].values()),
                "best_iteration": meta["best_iteration"],
                "max_rounds": TrainSettings().max_rounds,
                "coverage_80": round(meta["metrics"]["coverage_80"], 3),
            }
        )
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()


def bench_training(sizes: Sizes) -> dict[str, Any]:
    """Figure 1. Spawn, never fork: XGBoost's thread pool does not survive a fork."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    args = (sizes.train_servers, sizes.train_intervals, sizes.train_min_rows, child)
    process = ctx.Process(target=_training_child, args=args, name="bench-training")
    process.start()
    child.close()
    try:
        result: dict[str, Any] = parent.recv()
    except EOFError:
        result = {"error": "the training process died without a result"}
    process.join()
    if "error" in result:
        raise SystemExit(f"figure 1 failed (exit code {process.exitcode}): {result['error']}")
    result["settings"] = f"TrainSettings(nthread=2, min_rows={sizes.train_min_rows})"
    result["synthetic"] = (
        f"SyntheticPool(servers={sizes.train_servers}, intervals={sizes.train_intervals})"
    )
    return result


# --- figure 2: per-tick advice for one large pool ----------------------------------------


def _trained_predictor(samples: pd.DataFrame, registry_dir: Path) -> Predictor:
    """Train once, save and promote through a Registry, load back the way the agent does."""
    model, _ = train_model(build_features(derive_rates(samples)), TrainSettings(nthread=2))
    registry = Registry(registry_dir, lambda: datetime.now(UTC), Events())
    entry = registry.save(model.booster_bytes(), model.metadata)
    registry.promote(entry.version, "benchmark")
    return Predictor(registry.load())


def _tick_once(
    predictor: Predictor, now: pd.DataFrame, features: pd.DataFrame, forecast: float
) -> dict[str, float]:
    """The advisor's per-pool work with every server confident (``_shares`` + confidence)."""
    current = now["request_rate"].to_numpy(dtype=float)
    status_quo = at_status_quo(now)
    ms: dict[str, float] = {}

    def part(name: str, fn: Callable[[], T]) -> T:
        done = timed(fn)
        ms[name] = done.wall_ms
        return done.value

    part("confidence", lambda: predictor.confidence(status_quo, features, fresh=True))
    anchor = current * (forecast / current.sum())
    grid = part("rate_grid", lambda: rate_grid(anchor, forecast))
    curves = part("curves", lambda: predictor.curves(now, grid))
    cost = part("cost", lambda: curves.latency_p90 + ERROR_PENALTY_SECONDS * curves.error_rate)
    assigned = part("water_fill", lambda: water_fill(grid, cost, forecast))
    if not np.isclose(assigned.sum(), forecast):
        raise SystemExit(f"water_fill handed out {assigned.sum()} of {forecast} requests/s")
    ms["total"] = sum(ms.values())
    return ms


def bench_tick(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Figure 2: the model's per-tick work for one pool of ``tick_servers`` servers."""
    spec = SyntheticPool(servers=sizes.tick_servers, intervals=sizes.tick_intervals, seed=11)
    samples = synthetic_samples(spec)
    predictor = _trained_predictor(samples, workdir / "models")
    # The agent featurizes the last HISTORY_WINDOW_INTERVALS intervals each tick.
    instants = np.sort(samples["time"].unique())
    window = samples[samples["time"] >= instants[-(HISTORY_WINDOW_INTERVALS + 1)]]
    features_ms = [timed(lambda: build_features(derive_rates(window))).wall_ms for _ in range(3)]
    features = build_features(derive_rates(window))
    now = newest_rows(features)
    judged = features[features[TARGET_LATENCY].notna()]
    forecast = float(features.groupby("time")["request_rate"].sum().sort_index().tail(3).mean())
    settings = AdvisorSettings(
        0.0, ERROR_PENALTY_SECONDS, 60.0, 86400.0, OutlierSection(), AISection().min_gain
    )
    with warnings.catch_warnings():
        # Predictor._ood computes 0.5 / lost inside np.where for every row, lost == 0 too:
        # a harmless warning that would otherwise be printed on every run.
        warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
        for _ in range(3):  # warm-up: first calls allocate XGBoost's buffers
            _tick_once(predictor, now, features, forecast)
        runs = [_tick_once(predictor, now, features, forecast) for _ in range(sizes.tick_runs)]
        advisor_ms = []
        for _ in range(sizes.tick_runs):
            advised = timed(
                lambda: _pool_advice("app", features, predictor, settings, OutlierFindings({}))
            )
            advisor_ms.append(advised.wall_ms)
    advice = advised.value
    if advice.blocked or len(advice.servers) != sizes.tick_servers:
        raise SystemExit(f"_pool_advice did not advise every server: {advice.blocked!r}")
    split = {part: median_p95([r[part] for r in runs]) for part in runs[0]}
    return {
        "servers": sizes.tick_servers,
        "runs": sizes.tick_runs,
        "model_trained_on": f"SyntheticPool(servers={spec.servers}, intervals={spec.intervals})",
        "window_rows": len(features),
        "judged_rows": len(judged),
        "grid_points_per_server": int(rate_grid(np.ones(1), 1.0).shape[1]),
        "parts_total": split.pop("total"),
        "split": split,
        "total": median_p95(advisor_ms),
        "features_for_window_ms": round(statistics.median(features_ms), 1),
    }


# --- figure 3: calibration on held-out synthetic data ------------------------------------


def bench_coverage(sizes: Sizes) -> dict[str, Any]:
    """Figure 3: conformal q10..q90 coverage on each seed's time-ordered test window."""
    runs = []
    for seed in sizes.coverage_seeds:
        spec = SyntheticPool(
            servers=sizes.coverage_servers, intervals=sizes.coverage_intervals, seed=seed
        )
        features = build_features(derive_rates(synthetic_samples(spec)))
        model, _ = train_model(features, TrainSettings(nthread=2, seed=seed))
        metrics = model.metadata["metrics"]
        runs.append(
            {
                "seed": seed,
                "test_rows": int(metrics["rows"]),
                "coverage_80": round(metrics["coverage_80"], 3),
                "mae_p50_ms": round(metrics["mae_p50_seconds"] * 1000, 3),
                "naive_mae_ms": round(metrics["naive_mae_seconds"] * 1000, 3),
            }
        )
    return {
        "synthetic": f"SyntheticPool(servers={sizes.coverage_servers}, "
        f"intervals={sizes.coverage_intervals}, seed=s), TrainSettings(seed=s)",
        "runs": runs,
    }


# --- figure 4: accuracy on a journal recorded from the local stack -----------------------


def _drive_load(url: str, phase_s: float, stop: threading.Event, log: list[dict[str, Any]]) -> None:
    for i, rate in enumerate(REAL_PHASES_RPS):
        if stop.is_set():
            return
        result = run_load_sync(url, rate, phase_s, int(rate * phase_s), seed=i)
        log.append(
            {
                "target_rps": rate,
                "throughput_rps": round(result.throughput_rps, 1),
                "dropped": result.dropped,
                "error_rate": round(result.error_rate, 3),
            }
        )


def record_real_journal(sizes: Sizes, workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Two minutes of ``veloflux record`` at 1 s against HAProxy + four demo backends."""
    phases: list[dict[str, Any]] = []
    with LocalStack(workdir / "stack", REAL_SERVERS) as stack:
        config = stack.write_agent_config(workdir / "veloflux.yaml", interval="1s")
        stop = threading.Event()
        args = (stack.url, sizes.real_phase_seconds, stop, phases)
        loader = threading.Thread(target=_drive_load, args=args, daemon=True)
        loader.start()
        try:
            command = [sys.executable, "-m", "veloflux", "record", "-c", str(config)]
            command += ["--duration", f"{sizes.real_record_seconds}s"]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=sizes.real_record_seconds + 60
            )
            if done.returncode != 0:
                raise SystemExit(f"veloflux record failed ({done.returncode}): {done.stderr}")
        finally:
            stop.set()
            loader.join(timeout=sizes.real_phase_seconds + 10)
        return stack.workdir / "history.sqlite", phases


def bench_real(sizes: Sizes, journal_path: Path, recorded: bool) -> dict[str, Any]:
    """Figure 4: train on the journal; the model against next = last on the test window."""
    with Journal(journal_path, Events()) as journal:
        samples = journal.read()
    features = build_features(derive_rates(samples))
    model, _ = train_model(features, TrainSettings(nthread=2, min_rows=sizes.real_min_rows))
    m = model.metadata["metrics"]

    def ms(key: str) -> float:
        return round(float(m[key]) * 1000, 3)

    return {
        "journal": "recorded by this run" if recorded else str(journal_path),
        "journal_rows": len(samples),
        "rows_used": model.metadata["rows"],
        "test_rows": int(m["rows"]),
        "mae_p50_ms": ms("mae_p50_seconds"),
        "naive_mae_ms": ms("naive_mae_seconds"),
        "pinball_p50_ms": ms("pinball_p50"),
        "naive_pinball_p50_ms": ms("naive_pinball_p50"),
        "pinball_p90_ms": ms("pinball_p90"),
        "naive_pinball_p90_ms": ms("naive_pinball_p90"),
        "coverage_80": round(m["coverage_80"], 3),
        "error_rate_mae": round(m["error_rate_mae"], 4),
        "naive_error_rate_mae": round(m["naive_error_rate_mae"], 4),
        "best_iteration": model.metadata["best_iteration"],
    }


# --- the report --------------------------------------------------------------------------


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Whether each target of the issue is met (absent figures are left out)."""
    out = {
        "training_under_60s": r["training"]["total_s"] < 60.0,
        "tick_median_under_20ms": r["tick"]["total"]["median_ms"] < 20.0,
        "coverage_within_0.75_0.85": all(
            0.75 <= run["coverage_80"] <= 0.85 for run in r["coverage"]["runs"]
        ),
    }
    if r.get("real"):
        out["real_beats_naive_mae"] = r["real"]["mae_p50_ms"] < r["real"]["naive_mae_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 1/10 sizes: a smoke run")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    parser.add_argument("--journal", type=Path, help="a journal recorded from the local stack")
    parser.add_argument("--skip-real", action="store_true", help="skip figure 4 (real stack)")
    opts = parser.parse_args()
    if opts.quick and opts.write:
        parser.error("--quick figures are a smoke run; they must not be written to the doc")
    if opts.journal is not None and not opts.journal.is_file():
        parser.error(f"--journal: no file at {opts.journal}")
    sizes = QUICK if opts.quick else FULL
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine(),
        "command": command(Path(__file__)),
        "quick": opts.quick,
    }
    noise: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="veloflux-bench-") as tmp:
        workdir = Path(tmp)
        journal: Path | None = opts.journal
        phases: list[dict[str, Any]] | None = None
        recorded = False
        if not opts.skip_real and journal is None:
            # Recorded first, while this process has not run XGBoost yet.
            recording, noise["recording"] = with_noise(
                lambda: record_real_journal(sizes, workdir / "real")
            )
            (journal, phases), recorded = recording, True
        result["training"], noise["training"] = with_noise(lambda: bench_training(sizes))
        result["tick"], noise["tick"] = with_noise(lambda: bench_tick(sizes, workdir / "tick"))
        result["coverage"], noise["coverage"] = with_noise(lambda: bench_coverage(sizes))
        if journal is not None:
            result["real"], noise["real"] = with_noise(lambda: bench_real(sizes, journal, recorded))
            if phases is not None:
                result["real"]["load_phases"] = phases
    result["verdicts"] = verdicts(result)
    result["other_cpu_share"] = noise
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if opts.write:
        write_section(result)


# --- docs/benchmarks.md -------------------------------------------------------------------


def render_prose() -> str:
    """The fixed explanation above the markers: what each figure measures (full sizes)."""
    f = FULL
    phases = ", ".join(str(rate) for rate in REAL_PHASES_RPS)
    return f"""{HEADING}

What `bench/bench_learning.py` measures (targets from the learning-core issue; the
synthetic history comes from `integration/synthetic.py`: journal-format rows with
HAProxy's cumulative counters and 512-request moving averages):

1. **Training**: a synthetic journal of {f.train_servers:,} servers x
   {f.train_intervals:,} intervals ({f.train_servers * f.train_intervals:,} rows), then
   the wall time of `derive_rates`, `build_features` and
   `train_model(TrainSettings(nthread=2))` (three-quantile latency booster, error
   booster, early stopping, conformal calibration, test metrics), each and in total.
   It runs in a fresh `spawn` process; peak memory is that process's peak RSS
   (`ru_maxrss`), which includes the input frame itself.
2. **Per-tick advice, one {f.tick_servers:,}-server pool**: a model trained on
   {f.tick_servers:,} servers x {f.tick_intervals} intervals, saved to a `Registry` and
   loaded as a `Predictor`; the input is the features of the last
   {HISTORY_WINDOW_INTERVALS} intervals (the agent's per-tick window). Timed over
   {f.tick_runs} runs of `_pool_advice`, the advisor's whole per-pool step: the
   newest rows, the rate forecast, `predictor.confidence` (all four parts, with the
   realized error of the last three judged intervals), `rate_grid`,
   `predictor.curves`, the cost (p90 latency + error penalty x error rate),
   `water_fill`, the predicted gain over the status quo (`total_cost`), and the
   advice values. Every server counts as confident (threshold 0),
   so all of them are water-filled: the worst case. The split times the same public
   calls one by one. Building the window's features (`derive_rates` +
   `build_features`), which the agent also pays each tick, is shown apart: the target
   does not cover it.
3. **Calibration**: the share of held-out test rows (the last 12.5% by time) whose
   next-interval latency falls inside the conformally calibrated q10-q90 interval,
   for {f.coverage_servers} servers x {f.coverage_intervals:,} intervals and
   {len(f.coverage_seeds)} seeds (data and training seed alike).
4. **Real accuracy**: {f.real_record_seconds} s recorded at 1 s by `veloflux record`
   from HAProxy and four demo backends (s1, s2: 20 ms; s3: 60 ms; s4: 20 ms failing
   20%) under open-loop load in {f.real_phase_seconds:.0f} s phases of {phases}
   requests/s; then p50 MAE and pinball losses on the test window against the naive
   forecast "next interval's latency = this interval's". The test window is small (its
   size is in the table), so this figure is noisy. While the model predicted absolute
   latency it went both ways between runs; it now predicts the ratio to each server's
   moving average, and the table says whether it was ahead on this run's recording.

Medians; p95 in brackets."""


def _table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    t, k, c, v = r["training"], r["tick"], r["coverage"], r["verdicts"]
    best = t["best_iteration"]
    split = k["split"]
    rows = [
        (
            f"training, {t['journal_rows']:,} rows, 2 threads: total",
            f"{t['total_s']} s (derive_rates {t['derive_rates_s']} s, build_features "
            f"{t['build_features_s']} s, train_model {t['train_model_s']} s)",
            "< 60 s",
            yes(v["training_under_60s"]),
        ),
        (
            "training: train_model split (latency boosters q10+q50+q90 / error booster / "
            "calibration, "
            "metrics, OOD reference); CPU time",
            "{latency_booster} / {error_booster} / {calibration_metrics_ood} s; ".format(
                **t["train_model_split_s"]
            )
            + f"{t['train_model_cpu_s']} CPU s",
            "-",
            "-",
        ),
        (
            "training: peak RSS of the process",
            f"{t['peak_rss_mb']:,.0f} MB (input frame alone: "
            f"{t['rss_with_samples_mb'] - t['rss_after_imports_mb']:,.0f} MB)",
            "-",
            "-",
        ),
        (
            "training: rows used (train/valid/calib/test); best iteration",
            "{train:,}/{valid:,}/{calib:,}/{test:,}; ".format(**t["rows_used"])
            + ", ".join(f"{name} {n}" for name, n in best.items())
            + f" (of {t['max_rounds']})",
            "-",
            "-",
        ),
        (
            "training: calibrated 80% coverage on its own test window (not figure 3's setup)",
            f"{t['coverage_80']:.3f}",
            "(0.75-0.85)",
            "in band" if 0.75 <= t["coverage_80"] <= 0.85 else "out of band",
        ),
        (
            f"per-tick prediction + optimization, {k['servers']:,}-server pool "
            "(`_pool_advice` end to end)",
            f"{k['total']['median_ms']} ms [{k['total']['p95_ms']}]",
            "< 20 ms median",
            yes(v["tick_median_under_20ms"]),
        ),
        (
            "split, timed call by call: curves / confidence / water_fill (all parts)",
            f"{split['curves']['median_ms']} / {split['confidence']['median_ms']} / "
            f"{split['water_fill']['median_ms']} ms ({k['parts_total']['median_ms']} ms)",
            "-",
            "-",
        ),
        (
            f"outside the target: features of the {HISTORY_WINDOW_INTERVALS}-interval window "
            f"({k['window_rows']:,} rows)",
            f"{k['features_for_window_ms']} ms",
            "-",
            "-",
        ),
        (
            "calibrated 80% interval coverage, seeds "
            + ", ".join(str(run["seed"]) for run in c["runs"]),
            " / ".join(f"{run['coverage_80']:.3f}" for run in c["runs"]),
            "0.75-0.85",
            yes(v["coverage_within_0.75_0.85"]),
        ),
        (
            "same runs: p50 MAE vs naive MAE",
            " / ".join(f"{run['mae_p50_ms']:.2f} vs {run['naive_mae_ms']:.2f}" for run in c["runs"])
            + " ms",
            "-",
            "-",
        ),
    ]
    return rows + _real_rows(r)


def _real_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    real = r.get("real")
    if not real:
        return [("real stack: p50 MAE vs naive MAE", "not measured (--skip-real)", "-", "-")]
    source = "this run's recording" if real["journal"] == "recorded by this run" else "--journal"
    return [
        (
            f"real stack ({source}, {real['test_rows']} test rows): p50 MAE vs naive",
            f"{real['mae_p50_ms']} vs {real['naive_mae_ms']} ms",
            "model < naive",
            yes(r["verdicts"]["real_beats_naive_mae"]),
        ),
        (
            "real stack: pinball p50 / p90, model vs naive",
            f"{real['pinball_p50_ms']} vs {real['naive_pinball_p50_ms']} / "
            f"{real['pinball_p90_ms']} vs {real['naive_pinball_p90_ms']} ms",
            "-",
            "-",
        ),
        (
            "real stack: calibrated 80% coverage; error-rate MAE vs naive",
            f"{real['coverage_80']:.3f}; {real['error_rate_mae']:.4f} vs "
            f"{real['naive_error_rate_mae']:.4f}",
            "-",
            "-",
        ),
    ]


def render_section(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        render_prose(),
        "",
        MARK_BEGIN,
        f"Measured {datetime.now(UTC).date()} on {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, XGBoost {m['xgboost']}, numpy {m['numpy']}, "
        f"pandas {m['pandas']}.",
        f"Command: `{r['command']}` ({r['wall_seconds']:.0f} s in all).",
        noise_note(r["other_cpu_share"], CPU_INFLATED),
        "",
        *table(("figure", "measured", "target", "met?"), _table_rows(r)),
        MARK_END,
    ]
    return "\n".join(lines)


def write_section(result: dict[str, Any]) -> None:
    """Replace this benchmark's section (heading, prose and markers), or append it."""
    replace_section(render_section(result), "## Learning", MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
