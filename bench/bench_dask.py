"""Benchmark: training on 10 M rows in process, and on a Dask ``LocalCluster`` of two
workers whose memory limit is below what the in-process training needs.

Reproduce with ``.venv/bin/python bench/bench_dask.py --write`` from the repository
root (about 25 minutes on 2 cores, up to ~15 GB of memory for the in-process run).
``--quick`` shrinks the history for a smoke run and refuses ``--write``; ``--out``
keeps the JSON result.

The history is a synthetic pool (``integration.synthetic``: 1,000 servers, 10,000
intervals of 10 s, daily load curve, queueing latency, some failing servers),
written as a Parquet export (``history export``'s layout, a file per hour). Each
measurement runs in a fresh process, so each peak RSS (``ru_maxrss``) is its own:

1. in process: the whole export read into one frame, then ``train_from_samples``,
   with ``train``'s two threads;
2. on Dask: a ``LocalCluster`` of two worker processes, one thread each, each with
   ``memory_limit`` below figure 1's peak; ``train_on_cluster`` through a client in
   the measuring process (which also hosts the scheduler). Each worker's peak RSS is
   read from the worker itself at the end; a worker the nanny had to restart (over
   its limit) would show as a changed pid, and fails the run.

Both models are judged on the same held-out test rows (the split is the same).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_main, table_section, yes

MARK_BEGIN, MARK_END = "<!-- bench:dask -->", "<!-- /bench:dask -->"
HEADING = "## Training on Dask: 10 M rows on two workers with less memory than in process"
GIB = 1024**3


@dataclass(frozen=True)
class Sizes:
    servers: int
    intervals: int
    partition_rows: int
    worker_memory_gib: float


FULL = Sizes(1000, 10_000, 500_000, 3.0)
QUICK = Sizes(100, 2_000, 50_000, 1.0)


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _peak_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _settings() -> Any:
    from veloflux.model.train import TrainSettings

    return TrainSettings(nthread=2)


def _registry(path: Path) -> Any:
    from veloflux.model.registry import Registry
    from veloflux.util.events import Events

    return Registry(path, lambda: datetime.now(UTC), Events())


# --- the phases, each in its own process ---------------------------------------------------


def generate(sizes: Sizes, out: Path) -> dict[str, Any]:
    """The synthetic history as a Parquet export, a file per hour."""
    from integration.synthetic import SyntheticPool, synthetic_samples
    from veloflux.history.export import partition_dir, periods, write_parquet

    started = time.perf_counter()
    samples = synthetic_samples(
        SyntheticPool(servers=sizes.servers, intervals=sizes.intervals, seed=11)
    )
    first, last = samples["time"].min(), samples["time"].max()
    files = 0
    for start, end in periods(first.to_pydatetime(), last.to_pydatetime(), "hour"):
        hour = samples[(samples["time"] >= start) & (samples["time"] < end)]
        if not hour.empty:
            write_parquet(hour, partition_dir(out, start, "hour") / "samples.parquet")
            files += 1
    return {
        "rows": len(samples),
        "files": files,
        "bytes": sum(f.stat().st_size for f in out.rglob("*.parquet")),
        "seconds": round(time.perf_counter() - started, 1),
    }


def in_process(export: Path, models: Path) -> dict[str, Any]:
    from veloflux.history.partitions import ParquetReader
    from veloflux.model.pipeline import train_from_samples

    started = time.perf_counter()
    samples = ParquetReader(export).read(-math.inf, math.inf)
    read_seconds = time.perf_counter() - started
    report = train_from_samples(samples, _registry(models), _settings())
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "read_seconds": round(read_seconds, 1),
        "peak_rss_bytes": _peak_bytes(),
        "rows": report.metadata["rows"],
        "mae_p50_ms": round(report.metadata["metrics"]["mae_p50_seconds"] * 1000, 3),
        "naive_mae_ms": round(report.metadata["metrics"]["naive_mae_seconds"] * 1000, 3),
        "promoted": report.promoted,
    }


def on_dask(export: Path, models: Path, sizes: Sizes, spill: Path) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from veloflux.history.partitions import ParquetReader
    from veloflux.model.pipeline import train_on_cluster

    limit = int(sizes.worker_memory_gib * GIB)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=limit,
            dashboard_address=None,
            host="127.0.0.1",
            local_directory=str(spill),
        ) as cluster,
        Client(cluster) as client,
    ):
        pids_before = client.run(os.getpid)
        started = time.perf_counter()
        report = train_on_cluster(
            client,
            ParquetReader(export),
            _registry(models),
            _settings(),
            None,
            sizes.partition_rows,
        )
        seconds = time.perf_counter() - started
        pids_after = client.run(os.getpid)
        peaks = client.run(_peak_bytes)
    return {
        "seconds": round(seconds, 1),
        "worker_memory_limit_bytes": limit,
        "worker_peak_rss_bytes": sorted(peaks.values()),
        "workers_restarted": sum(1 for w, pid in pids_before.items() if pids_after.get(w) != pid),
        "client_and_scheduler_peak_rss_bytes": _peak_bytes(),
        "partitions": report.metadata["trained_on"]["partitions"],
        "rows": report.metadata["rows"],
        "mae_p50_ms": round(report.metadata["metrics"]["mae_p50_seconds"] * 1000, 3),
        "naive_mae_ms": round(report.metadata["metrics"]["naive_mae_seconds"] * 1000, 3),
        "promoted": report.promoted,
    }


def _phase(name: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """One phase in a fresh interpreter; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--sizes", json.dumps(asdict(sizes)),
         "--workdir", str(workdir)],
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_phase(name: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    export = workdir / "export"
    if name == "generate":
        return generate(sizes, export)
    if name == "in_process":
        return in_process(export, workdir / "models-in-process")
    return on_dask(export, workdir / "models-dask", sizes, workdir / "spill")


def _run(quick: bool, workdir: Path) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    _progress(f"writing {sizes.servers * sizes.intervals:,} samples as Parquet")
    history = _phase("generate", sizes, workdir)
    _progress(f"training in process on {history['rows']:,} samples")
    local = _phase("in_process", sizes, workdir)
    _progress(f"in process: {local['seconds']} s, peak {local['peak_rss_bytes'] / GIB:.2f} GiB")
    _progress(f"training on a LocalCluster of 2 workers of {sizes.worker_memory_gib} GiB")
    dask = _phase("dask", sizes, workdir)
    _progress(f"on Dask: {dask['seconds']} s, workers {dask['worker_peak_rss_bytes']}")
    return {"sizes": asdict(sizes), "history": history, "in_process": local, "dask": dask}


def _verdicts(r: dict[str, Any]) -> dict[str, bool]:
    local, dask = r["in_process"], r["dask"]
    return {
        "limit_below_in_process_peak": dask["worker_memory_limit_bytes"] < local["peak_rss_bytes"],
        "workers_within_limit": max(dask["worker_peak_rss_bytes"])
        <= dask["worker_memory_limit_bytes"],
        "no_worker_restarted": dask["workers_restarted"] == 0,
        "same_rows": dask["rows"] == local["rows"],
    }


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _render(r: dict[str, Any]) -> str:
    h, local, dask, v = r["history"], r["in_process"], r["dask"], r["verdicts"]
    rows_total = sum(local["rows"].values())
    prose = [
        "What `bench/bench_dask.py` measures: a synthetic history of "
        f"{h['rows']:,} samples (1,000 servers x 10,000 intervals of 10 s, written as "
        f"{h['files']} hourly Parquet files, {h['bytes'] / 2**20:.0f} MiB), trained once in "
        "process (the export read into one frame, `train_from_samples`, two threads) and "
        "once on a Dask `LocalCluster` of two worker processes of one thread each, through "
        "`train_on_cluster` (the path of `train --dask ADDRESS --parquet DIR`). Each run is a "
        "fresh process; peak RSS is `ru_maxrss`, the workers' read on each worker at the "
        "end. The client's figure includes the scheduler, which a `LocalCluster` runs in "
        "the client's process. Both models are judged on the same test rows.",
    ]
    table = [
        (
            "in process: time; peak RSS",
            f"{local['seconds']} s (read {local['read_seconds']} s); "
            + _gib(local["peak_rss_bytes"]),
            "(the comparison)",
            "",
        ),
        (
            "Dask, 2 workers: per-worker memory limit",
            _gib(dask["worker_memory_limit_bytes"]),
            "below the in-process peak",
            yes(v["limit_below_in_process_peak"]),
        ),
        (
            "Dask: time; workers' peak RSS; restarts",
            f"{dask['seconds']} s; "
            + ", ".join(_gib(b) for b in dask["worker_peak_rss_bytes"])
            + f"; {dask['workers_restarted']}",
            "within the limit, none restarted",
            yes(v["workers_within_limit"] and v["no_worker_restarted"]),
        ),
        (
            "Dask: client and scheduler peak RSS",
            _gib(dask["client_and_scheduler_peak_rss_bytes"]),
            "",
            "",
        ),
        (
            "training rows; partitions",
            f"{rows_total:,} (same split: {'yes' if v['same_rows'] else 'no'}); "
            f"{dask['partitions']}",
            "the same rows",
            yes(v["same_rows"]),
        ),
        (
            "test MAE p50: in process; Dask; naive",
            f"{local['mae_p50_ms']} ms; {dask['mae_p50_ms']} ms; {local['naive_mae_ms']} ms",
            "",
            "",
        ),
    ]
    return table_section(HEADING, prose, r, table, (MARK_BEGIN, MARK_END))


def main() -> None:
    if "--phase" in sys.argv:
        args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=False))
        sizes = Sizes(**json.loads(args["--sizes"]))
        result = run_phase(args["--phase"], sizes, Path(args["--workdir"]))
        print(json.dumps(result, default=str))
        return
    bench_main(Path(__file__), _run, _verdicts, _render, HEADING, (MARK_BEGIN, MARK_END))


if __name__ == "__main__":
    main()
