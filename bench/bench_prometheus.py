"""Benchmark: Prometheus as a source, per tick and for training history.

A real Prometheus (Debian's) is started on a data dir backfilled with ``promtool``:
seven days of HAProxy exporter series for one 100-server backend at 15 s steps
(synthetic journal samples turned into ``haproxy_server_*`` series, about 64 million
samples), ending a minute before the run. Two figures:

- **per tick**: ``PrometheusFeatures.read`` for an observation of those 100 servers
  with 10 features (the 6 built-in HAProxy ones and 4 more of the same kind), each a
  ``{backend}`` query, evaluated at the end of the history, as a tick does; wall time
  over ``--ticks`` reads (target < 200 ms).
- **range pull**: ``pull_history`` of the 13 exporter families and the 10 features
  over the 7 days at 15 s (chunks of at most 11,000 steps), as
  ``train --from-prometheus --since 7d --step 15s`` does: total time and rows per
  second (one row per server and step), then ``derive_rates`` + ``build_features`` on
  the result for comparison.

    .venv/bin/python bench/bench_prometheus.py [--write] [--days 7] [--servers 100] [--ticks 50]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from bench.common import cpu_model, replace_section, table
from integration.exporter_history import METRIC_TYPES, exporter_series, shifted
from integration.prometheus_proc import PrometheusProcess, backfill
from integration.synthetic import SyntheticPool, synthetic_samples
from veloflux.domain.observation import Observation, PoolInfo, ProxyIdentity
from veloflux.history.rates import derive_rates
from veloflux.model.features import build_features
from veloflux.prometheus.api import PrometheusAPI
from veloflux.prometheus.features import PrometheusFeatures
from veloflux.prometheus.history import pull_history
from veloflux.prometheus.promql import HAPROXY_DEFAULTS, FeatureQuery
from veloflux.util.events import Events

STEP = 15.0
HEADING = "## Prometheus: features per tick, history for training"
MARK_BEGIN, MARK_END = "<!-- bench:prometheus -->", "<!-- /bench:prometheus -->"
DOC = ROOT / "docs" / "benchmarks.md"
EXTRA = (
    FeatureQuery(
        "response_time_max_5m",
        'max_over_time(haproxy_server_response_time_average_seconds{proxy="{backend}"}[5m])',
    ),
    FeatureQuery(
        "sessions_max_5m",
        'max_over_time(haproxy_server_current_sessions{proxy="{backend}"}[5m])',
    ),
    FeatureQuery(
        "errors_5m",
        'sum by (proxy, server) (rate(haproxy_server_http_responses_total{proxy="{backend}",'
        'code="5xx"}[5m]))',
    ),
    FeatureQuery("weight", 'haproxy_server_weight{proxy="{backend}"}'),
)
FEATURES = (*HAPROXY_DEFAULTS, *EXTRA)


def _observation(samples: Any, at: datetime) -> Observation:
    """The newest instant of the history, as a source would have read it at ``at``."""
    newest = samples[samples["time"] == samples["time"].max()].reset_index(drop=True)
    newest["time"] = at
    pool = PoolInfo("app", "roundrobin", managed=True)
    proxy = ProxyIdentity("bench", 1, 0.0, 1.0, "", "admin")
    return Observation.from_frame(at, newest, (pool,), proxy)


def bench_ticks(url: str, observation: Observation, ticks: int) -> dict[str, Any]:
    events = Events()
    features = PrometheusFeatures(PrometheusAPI(url, 10.0), FEATURES, events)
    features.read(observation)  # the first read opens connections and starts the threads
    times: list[float] = []
    found = None
    for _ in range(ticks):
        started = time.perf_counter()
        found = features.read(observation)
        times.append((time.perf_counter() - started) * 1000)
    features.close()
    assert found is not None
    if found.error:
        raise SystemExit(f"feature reads failed: {found.error}")
    values = dict(found.values)
    with_value = {c: sum(1 for v in values[c] if math.isfinite(v)) for c in values}
    ordered = sorted(times)
    return {
        "ticks": ticks,
        "servers": len(observation.rows),
        "features": len(FEATURES),
        "queries_per_tick": len(FEATURES),
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 1),
        "min_ms": round(ordered[0], 1),
        "servers_with_value": with_value,
        "problems": list(found.problems),
    }


def bench_pull(url: str, start: datetime, end: datetime) -> dict[str, Any]:
    api = PrometheusAPI(url, 300.0)
    frame, report = pull_history(api, ["app"], FEATURES, start, end, STEP, Events())
    api.close()
    started = time.perf_counter()
    features = build_features(derive_rates(frame))
    featurize = time.perf_counter() - started
    return {
        "rows": report.rows,
        "servers": report.servers,
        "queries": report.queries,
        "seconds": round(report.seconds, 1),
        "rows_per_second": round(report.rows / report.seconds),
        "feature_rows": len(features),
        "featurize_seconds": round(featurize, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=50)
    opts = parser.parse_args()
    began = time.perf_counter()
    intervals = round(opts.days * 86400 / STEP)
    spec = SyntheticPool(servers=opts.servers, intervals=intervals, interval_seconds=STEP)
    end_epoch = math.floor(time.time()) - 60
    samples = shifted(synthetic_samples(spec), end_epoch)
    end = datetime.fromtimestamp(end_epoch, UTC)
    with tempfile.TemporaryDirectory(prefix="veloflux-bench-prom-") as tmp:
        prometheus = PrometheusProcess(Path(tmp) / "prometheus", {})
        started = time.perf_counter()
        summary = backfill(prometheus.data_dir, exporter_series(samples), Path(tmp), METRIC_TYPES)
        backfill_s = time.perf_counter() - started
        observation = _observation(samples, end)
        del samples
        with prometheus:
            ticks = bench_ticks(prometheus.url, observation, opts.ticks)
            print(json.dumps(ticks, indent=2), flush=True)
            pull = bench_pull(prometheus.url, end - timedelta(days=opts.days), end)
    result = {
        "machine": f"{cpu_model()}, Python {platform.python_version()}, Prometheus 2.42",
        "command": shlex.join([".venv/bin/python", "bench/bench_prometheus.py", *sys.argv[1:]]),
        "days": opts.days,
        "backfill": {
            "series": summary.series,
            "samples": summary.samples,
            "seconds": round(backfill_s, 1),
        },
        "tick": ticks,
        "pull": pull,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, indent=2))
    if opts.write:
        replace_section(render_section(result), HEADING, MARK_BEGIN, MARK_END, DOC)


def render_section(r: dict[str, Any]) -> str:
    tick, pull = r["tick"], r["pull"]
    met = "met" if tick["median_ms"] < 200 else "**not met**"
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/bench_prometheus.py` measures: see its docstring. A real "
            "Prometheus on loopback, serving a backfilled week of HAProxy exporter series "
            "for a 100-server backend at 15 s steps.",
            "",
            MARK_BEGIN,
            f"Measured on {r['machine']}. Command: `{r['command']}` "
            f"({r['wall_seconds']:.0f} s in all; the backfill of {r['backfill']['samples']:,} "
            f"samples in {r['backfill']['series']:,} series took {r['backfill']['seconds']} s).",
            "",
            *table(
                ("figure", "value"),
                [
                    (
                        f"feature reads per tick, {tick['servers']} servers x "
                        f"{tick['features']} features ({tick['queries_per_tick']} queries, "
                        "in parallel), median over "
                        f"{tick['ticks']} ticks (target < 200 ms)",
                        f"**{tick['median_ms']} ms** (p95 {tick['p95_ms']}, "
                        f"min {tick['min_ms']}): {met}",
                    ),
                    (
                        f"range pull, {pull['servers']} servers x 13 exporter families + "
                        f"10 features x {r['days']:g} days at 15 s",
                        f"**{pull['rows']:,} rows in {pull['seconds']} s, "
                        f"{pull['rows_per_second']:,} rows/s** ({pull['queries']} queries)",
                    ),
                    (
                        "then `derive_rates` + `build_features` on it",
                        f"{pull['featurize_seconds']} s, {pull['feature_rows']:,} feature rows",
                    ),
                    (
                        "peak RSS of the benchmark process (making the week of synthetic "
                        "history and its series included)",
                        f"{pull['peak_rss_mb']:,} MB",
                    ),
                ],
            ),
            "",
            "Every server had a value for every feature at the tick: "
            + (
                "yes."
                if set(tick["servers_with_value"].values()) == {tick["servers"]}
                else f"no: {tick['servers_with_value']}."
            ),
            MARK_END,
        ]
    )


if __name__ == "__main__":
    main()
