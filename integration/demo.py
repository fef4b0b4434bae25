"""``make demo``: the VeloFlux daemon beside a real HAProxy while one backend slows down.

It shows the issue's acceptance, measured rather than asserted: four equal backends
share the load; half-way through, s3 becomes three times slower (through the demo
backend's own admin endpoint, ``PUT /-/config``, as a bad deploy would). With the
daemon running, s3's weight comes down within a few ticks; the load generator's
latency over the degraded phase is then compared with the same run without the agent.
``tests/integration/test_demo_scenario.py`` runs the same scenario, shorter, and checks
that the cut comes within three ticks; ``bench/bench_demo.py`` measures the latencies.

Why each choice:
- Both runs start a fresh stack and replay the same seeded Poisson schedule, so the
  agent is the only difference between the two sets of figures.
- There is no model yet: a model needs recorded history (``veloflux-agent record``,
  then ``train``). What acts is the outlier guard, which runs in fallback too: a
  server whose last-interval latency is ``policy.outlier.latency_ratio`` (3x) the
  pool's median loses ``reduce_ratio`` (half) of its weight.
- The load makes the slowdown matter (the numbers are explained in
  ``integration/scenario.py``, which runs it).
- The load generator runs once per phase, so the degraded figures cover that phase
  only, and the weights are read from HAProxy itself (``get weight``), not from the
  agent's own account.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

from integration.loadgen import LoadResult
from integration.scenario import (
    HEADER,
    MEAN_MS,
    NAMES,
    SERVERS,
    SLOW,
    SLOWDOWN,
    STATIC_WEIGHT,
    ScenarioResult,
    ScenarioSettings,
    WeightSample,
    run_scenario,
)

# --- what the demo prints -----------------------------------------------------------------


def _slow_note(sample: WeightSample) -> str:
    """Why s3 has its weight, when that is news: an outlier finding, or the way back."""
    reason = sample.slow_reason
    if not sample.degraded or not reason:
        return ""
    if reason.startswith("outlier"):
        return reason
    if sample.weights[SLOW] < STATIC_WEIGHT:
        return "not an outlier this tick: " + reason.rpartition(" (")[2].rstrip(")")
    return ""


def tick_line(sample: WeightSample, start: float) -> str:
    """One compact line per reading: when, which phase, the four weights, s3's reason."""
    tick = f"tick {sample.tick:3d}" if sample.tick is not None else "no agent"
    phase = "degraded" if sample.degraded else "healthy "
    weights = "  ".join(f"{n} {w:3d}" for n, w in sample.weights.items())
    note = _slow_note(sample)
    return f"  +{sample.read_at - start:5.1f}s  {tick}  {phase}  {weights}" + (
        f"   {SLOW}: {note}" if note else ""
    )


def _ms(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


def figures(result: LoadResult) -> str:
    """p50/p95/p99, errors (5xx, failed and timed-out requests), timeouts, drops, spread."""
    lat = result.latency_ms
    served = "/".join(str(result.served_by.get(n, 0)) for n in NAMES)
    return (
        f"{_ms(lat['p50'])} {_ms(lat['p95'])} {_ms(lat['p99'])} "
        f"{result.error_rate:8.1%} {result.timeouts:8d} {result.dropped:7d}   {served}"
    )


def _cut_line(result: ScenarioResult) -> str:
    cut, ticks, seconds = result.cut, result.ticks_to_cut, result.seconds_to_cut
    if cut is None or ticks is None or seconds is None:
        return f"{SLOW} weight was NOT lowered during the degraded phase"
    after = result.after_cut()
    below = sum(1 for s in after if s.slow_below_healthy)
    return (
        f"{SLOW} weight lowered after {ticks} tick(s), {seconds:.1f}s after it slowed down: "
        f"{STATIC_WEIGHT} -> {cut.weights[SLOW]} (lowest {min(s.weights[SLOW] for s in after)}"
        f"); below the healthy servers' in {below} of the {len(after)} readings since"
    )


def comparison(with_agent: ScenarioResult, without: ScenarioResult) -> list[str]:
    """The closing table: the degraded phase with and without the agent."""
    lines = [
        HEADER,
        f"{'without the agent':18}{figures(without.degraded)}",
        f"{'with the agent':18}{figures(with_agent.degraded)}",
        "(percentiles cover completed requests; a request still unanswered after 2 s is "
        "a timeout, counted in errors)",
        _cut_line(with_agent),
    ]
    before, after = without.degraded.latency_ms["p99"], with_agent.degraded.latency_ms["p99"]
    if before is not None and after is not None and after > 0:
        lines.append(
            f"degraded-phase p99: {before:.0f} ms without the agent, {after:.0f} ms with it "
            f"({before / after:.1f}x lower)"
        )
    return lines


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _say(text: str) -> None:
    print(text, flush=True)


def _describe(settings: ScenarioSettings) -> None:
    slots = SERVERS[0].concurrency
    print(
        f"Four equal demo backends behind a real HAProxy (backend app, roundrobin, weight "
        f"{STATIC_WEIGHT}),\n{', '.join(NAMES)}: {slots} slots x {MEAN_MS:g} ms mean service "
        f"= {slots * 1000 / MEAN_MS:.0f} requests/s each."
    )
    slow = slots * 1000 / (MEAN_MS * SLOWDOWN)
    share = settings.rate_rps / len(SERVERS)
    print(f"Load: {settings.rate_rps:g} requests/s, Poisson, open loop: {share:g}/s each.")
    print(
        f"After {settings.healthy_s:g}s {SLOW} becomes {SLOWDOWN:g}x slower: {slow:.0f} "
        f"requests/s, less than its equal share, for {settings.degraded_s:g}s."
    )
    print(
        "There is no model yet (it needs history: `veloflux-agent record`, then `train`),\n"
        "so the pool is in fallback and the outlier guard acts: a server at 3x the pool's\n"
        "median latency loses half its weight, and gets it back step by step once it no\n"
        "longer stands out."
    )


def _run(title: str, workdir: Path, with_agent: bool, settings: ScenarioSettings) -> ScenarioResult:
    _banner(title)
    start = time.time()
    shown: list[WeightSample] = []

    def show(sample: WeightSample) -> None:
        # Without an agent nothing moves: one line every five readings is enough.
        if with_agent or sample.tick_at - start < 1 or len(shown) % 5 == 0:
            print(tick_line(sample, start), flush=True)
        shown.append(sample)

    result = run_scenario(workdir, with_agent, settings, _say, show)
    print(HEADER)
    print(f"{'healthy phase':18}{figures(result.healthy)}")
    print(f"{'degraded phase':18}{figures(result.degraded)}")
    return result


def _next_steps() -> None:
    _banner("where to look next")
    print("Run the daemon beside your HAProxy:  veloflux-agent run -c veloflux.yaml")
    print("  veloflux-agent status -c veloflux.yaml   the plan: each pool's mode, each reason")
    print("  curl -s http://127.0.0.1:9477/metrics    veloflux_server_weight, veloflux_pool_mode")
    print("  veloflux-agent record -c veloflux.yaml --duration 10m, then veloflux-agent train")
    print("                                           history and a model, so the model acts too")
    print("docs/operations.md describes the metrics, the API and the operator controls.")


def main(settings: ScenarioSettings | None = None) -> int:
    settings = settings or ScenarioSettings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with tempfile.TemporaryDirectory(prefix="veloflux-demo-") as tmp:
            _describe(settings)
            agent = _run("1. with the VeloFlux daemon", Path(tmp) / "agent", True, settings)
            alone = _run("2. the same, without the agent", Path(tmp) / "alone", False, settings)
    except KeyboardInterrupt:
        print("\ninterrupted: daemon, HAProxy and backends stopped, temp dir removed")
        return 130
    _banner(f"degraded phase: {SLOW} {SLOWDOWN:g}x slower for {settings.degraded_s:g}s, same load")
    print("\n".join(comparison(agent, alone)))
    _next_steps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
