"""``make demo``: VeloFlux beside a real HAProxy, end to end, in about a minute.

Four demo backends sit behind HAProxy with equal configured weights, but they are not
equal: s3 is three times slower and s4 fails 20% of its requests. The operator has
written static weights that match the capacities. Without a model VeloFlux is in
fallback, so it moves the weights toward those static weights, step-limited per tick.
The demo measures the same open-loop load before and after, then reverts and stops.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from integration.loadgen import LoadResult, run_load_sync
from integration.stack import DemoServer, LocalStack
from veloflux.haproxy_runtime import RuntimeAPI

SERVERS = (
    DemoServer("s1", weight=100, concurrency=8, mean_ms=20),
    DemoServer("s2", weight=100, concurrency=8, mean_ms=20),
    DemoServer("s3", weight=100, concurrency=8, mean_ms=60),
    DemoServer("s4", weight=100, concurrency=8, mean_ms=20, error_rate=0.2),
)
STATIC_WEIGHTS = "policy:\n  static_weights: {app/s1: 100, app/s2: 100, app/s3: 33, app/s4: 20}\n"
RATE_RPS = 360
PHASE_S = 15.0


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``veloflux-agent`` exactly as an operator would, and show its output."""
    print(f"$ veloflux-agent {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "veloflux", *args], capture_output=True, text=True, check=False
    )
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"veloflux-agent {args[0]} exited with {proc.returncode}")
    return proc


def load(stack: LocalStack, label: str) -> LoadResult:
    print(f"sending {RATE_RPS} requests/s (Poisson, open loop) for {PHASE_S:.0f}s ...", flush=True)
    result = run_load_sync(
        stack.url, RATE_RPS, PHASE_S, max_requests=int(RATE_RPS * PHASE_S * 1.5), seed=7
    )
    lat = result.latency_ms
    print(
        f"{label}: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"errors {result.error_rate:.1%}, served by {dict(sorted(result.served_by.items()))}"
    )
    return result


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="veloflux-demo-") as tmp,
        LocalStack(Path(tmp), SERVERS) as stack,
    ):
        banner("local stack up")
        print(f"HAProxy: {stack.url} (runtime API {stack.admin_socket})")
        for s in SERVERS:
            note = f", {s.error_rate:.0%} fast errors" if s.error_rate else ""
            print(f"  {s.name}: {s.concurrency} slots, mean service {s.mean_ms:.0f} ms{note}")
        config = stack.write_agent_config(Path(tmp) / "veloflux.yaml", STATIC_WEIGHTS)
        print(f"agent config {config}:\n{config.read_text()}")

        banner("1. equal weights, as HAProxy is configured")
        before = load(stack, "before")

        banner("2. dry-run: what VeloFlux would do (nothing is written)")
        agent("dry-run", "-c", str(config))

        banner("3. apply, one tick at a time (each change step-limited, then read back)")
        for tick in range(1, 6):
            print(f"--- tick {tick}")
            proc = agent("apply", "-c", str(config))
            if "written 0 weight(s)" in proc.stdout:
                print(f"tick {tick}: nothing left to change; weights are at their static values")
                break

        banner("4. the same load with the new weights")
        after = load(stack, "after")

        banner("5. someone sets s1 to 250 by hand; revert restores static weights at once")
        RuntimeAPI(stack.admin_socket).run("set server app/s1 weight 250")
        agent("revert", "-c", str(config))

        banner("summary")
        for key in ("p50", "p95", "p99"):
            print(f"{key}: {before.latency_ms[key]:.1f} ms -> {after.latency_ms[key]:.1f} ms")
        print(f"error rate: {before.error_rate:.1%} -> {after.error_rate:.1%}")
        print("stopping the stack")


if __name__ == "__main__":
    main()
