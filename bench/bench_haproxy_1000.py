"""Benchmark: dry-run and apply+verify against a real HAProxy with a 1,000-server backend.

Reproduce with ``make bench`` (or ``.venv/bin/python bench/bench_haproxy_1000.py``).
Servers point at a loopback port nobody answers on, with health checks off: VeloFlux
reads and writes weights, it never needs the servers to answer.

Figures (medians over repeated runs):
- cold CLI: ``veloflux-agent dry-run --output json`` wall time, and the same minus a bare
  ``python -c pass`` (interpreter start-up); the share spent importing is shown apart;
- in-process dry-run: one observe + plan + JSON render, as the daemon pays each tick;
- apply+verify: one ``show servers state`` to find weights set by hand since the plan
  was made, then 1,000 ``set server ... weight`` commands and one ``show servers state``
  read-back on one pipelined connection, every reply checked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, replace_between, table
from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec
from veloflux.agent.build import build_agent
from veloflux.config.load import validate_config
from veloflux.domain.weightplan import PoolPlan, ServerPlan, WeightPlan
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.haproxy.sink import HAProxySink
from veloflux.util.events import Events

SERVERS = 1000


def _median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return _median_p95(samples)


def _median_p95(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def _interleaved_ms(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    """Median and p95 of each command, run in turns (one of each per round) so that the
    differences between them ("minus start-up", "minus imports") do not depend on the
    machine being faster during one of them than during another."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, args in commands.items():
            started = time.perf_counter()
            _run(args)
            samples[name].append((time.perf_counter() - started) * 1000)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (
            statistics.median(values),
            values[min(len(values) - 1, int(len(values) * 0.95))],
        )
    return out


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _machine() -> str:
    first_line = subprocess.run(
        ["haproxy", "-v"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[0]
    haproxy = first_line.split(" - ")[0]
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {haproxy}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-runs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--write",
        action="store_true",
        help="replace this benchmark's section in docs/benchmarks.md",
    )
    opts = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        servers = tuple(ServerSpec(f"s{i}", "127.0.0.1:9", 10) for i in range(1, SERVERS + 1))
        with HAProxyProcess(Path(tmp) / "haproxy", [BackendSpec("big", servers)]) as proxy:
            config_path = Path(tmp) / "veloflux.yaml"
            config_path.write_text(f"haproxy:\n  socket: {proxy.admin_socket}\n")
            dry_run = ["dry-run", "-c", str(config_path), "--output", "json"]
            cold_commands = {
                "bare": [python, "-c", "pass"],
                "imports": [python, "-c", "import veloflux.cli"],
                "cold": [python, "-m", "veloflux", *dry_run],
            }
            timed = _interleaved_ms(cold_commands, opts.cold_runs)
            (bare, _), (imports, _), (cold, cold_p95) = (timed[k] for k in cold_commands)
            config = validate_config({"haproxy": {"socket": proxy.admin_socket}})
            agent = build_agent(config, Events(), write=False)
            warm, warm_p95 = _median_ms(
                lambda: agent.tick(write=False).plan.to_json_text(), opts.runs
            )
            sink = HAProxySink(RuntimeAPI(proxy.admin_socket), Events())
            state = {"weight": 10}

            def apply_all() -> None:
                old = state["weight"]
                new = 11 if old == 10 else 10
                changes = tuple(
                    ServerPlan("big", f"s{i}", "UP", old, new, 10, 0.0, "bench")
                    for i in range(1, SERVERS + 1)
                )
                plan = WeightPlan(
                    datetime.now(UTC),
                    (PoolPlan("big", "roundrobin", "fallback", 0.0, "bench", changes),),
                )
                report = sink.apply(plan, "admin")
                if len(report.applied) != SERVERS:
                    raise SystemExit(f"apply failed: {report.failures[:3]}")
                state["weight"] = new

            apply_ms, apply_p95 = _median_ms(apply_all, opts.runs)
    result = {
        "machine": _machine(),
        "servers": SERVERS,
        "interpreter_start_ms": round(bare, 1),
        "import_veloflux_cli_ms": round(imports, 1),
        "cold_dry_run_json_ms": round(cold, 1),
        "cold_dry_run_json_p95_ms": round(cold_p95, 1),
        "cold_dry_run_minus_interpreter_ms": round(cold - bare, 1),
        "cold_dry_run_minus_imports_ms": round(cold - imports, 1),
        "in_process_dry_run_ms": round(warm, 1),
        "in_process_dry_run_p95_ms": round(warm_p95, 1),
        "apply_verify_1000_ms": round(apply_ms, 1),
        "apply_verify_1000_p95_ms": round(apply_p95, 1),
        "command": "make bench",
    }
    print(json.dumps(result, indent=2))
    if opts.write:
        write_section(result)


MARK_BEGIN, MARK_END = "<!-- bench:haproxy-1000 -->", "<!-- /bench:haproxy-1000 -->"


def render_section(r: dict[str, object]) -> str:
    rows = [
        (
            "`dry-run --output json`, cold CLI, wall time",
            f"{r['cold_dry_run_json_ms']} ms [{r['cold_dry_run_json_p95_ms']}]",
            "-",
        ),
        (
            f"the same minus bare interpreter start (`python -c pass`, "
            f"{r['interpreter_start_ms']} ms)",
            f"{r['cold_dry_run_minus_interpreter_ms']} ms",
            "< 300 ms",
        ),
        (
            f'the same minus start-up *and* imports (`python -c "import veloflux.cli"`, '
            f"{r['import_veloflux_cli_ms']} ms)",
            f"{r['cold_dry_run_minus_imports_ms']} ms",
            "< 300 ms",
        ),
        (
            "dry-run in process (observe + plan + JSON; what the daemon pays per tick)",
            f"{r['in_process_dry_run_ms']} ms [{r['in_process_dry_run_p95_ms']}]",
            "-",
        ),
        (
            "apply and verify 1,000 weights (a state dump to compare, then 1,000 `set` + "
            "`show servers state` on one connection)",
            f"{r['apply_verify_1000_ms']} ms [{r['apply_verify_1000_p95_ms']}]",
            "< 50 ms",
        ),
    ]
    lines = [
        MARK_BEGIN,
        f"Measured {datetime.now(UTC).date()} on {r['machine']}.",
        "Command: `make bench` (runs `python bench/bench_haproxy_1000.py --write`). "
        "Medians; p95 in brackets.",
        "",
        *table(("figure", "measured", "target"), rows),
        MARK_END,
    ]
    return "\n".join(lines)


def write_section(result: dict[str, object]) -> None:
    replace_between(MARK_BEGIN, MARK_END, render_section(result))


if __name__ == "__main__":
    main()
