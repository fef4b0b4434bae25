"""Benchmark: the weight strategies on the real local stack, against HAProxy's leastconn.

Four demo backends of unequal capacity (concurrency 6, 4, 4 and 2 at 30 ms mean
service: about 200, 133, 133 and 67 requests/s) behind a real HAProxy, a seeded
open-loop Poisson load at 60% of their capacity with real concurrency, and one
schedule for every run, each on a fresh stack:

- warm-up (not measured): the agent records history, and trains at its end;
- ``steady``: as configured;
- ``slow``: s2 four times slower (``PUT /-/config``);
- ``gray``: s2 back, s3 answering 30% of requests with fast errors (1 ms).

Strategies: HAProxy ``leastconn`` and ``roundrobin`` with static equal weights, the
capacity oracle (weights proportional to true capacity, set once through the runtime
API), the client-side WRR heuristic (``qps / (utilization + eps / qps)`` every tick
from each backend's own counters), and VeloFlux (the daemon in this process, trained
through ``train_from_journal`` at the end of the warm-up), each with both algorithms.
VeloFlux reads the same busy-time signal as the heuristic, through a real Prometheus
that scrapes the demo backends every second (``capacity.utilization_feature``: busy
seconds per second over the backend's concurrency limit, mapped to its server by
``prometheus.instance_map``); ``veloflux-proxy-only`` is the same daemon without it,
seeing only what HAProxy shows, on servers given ``maxconn`` at their concurrency
(HAProxy queues the rest; the agent's capacity signal is then Little's law,
``maxconn / Tr``), beside ``static-maxconn``, static weights on the same servers.
Each phase's p99 and error rate are reported as a ratio to ``leastconn`` alone in the
same phase, all measured in one invocation.

    .venv/bin/python bench/run_haproxy.py [--write] [--warmup 90] [--phase 40]
        [--only ALGORITHM:WEIGHTS ...] [--trace] [--agent-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shlex
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from bench.common import cpu_model, replace_section, table
from integration.scenario import agent_config, run_phase, running_daemon
from integration.stack import DemoServer, LocalStack
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.sim.engine import scaled

MEAN_MS = 30.0
SERVERS = (
    DemoServer("s1", concurrency=6, mean_ms=MEAN_MS),
    DemoServer("s2", concurrency=4, mean_ms=MEAN_MS),
    DemoServer("s3", concurrency=4, mean_ms=MEAN_MS),
    DemoServer("s4", concurrency=2, mean_ms=MEAN_MS),
)
CAPACITY = sum(s.concurrency for s in SERVERS) * 1000 / MEAN_MS
LOAD = 0.6
INTERVAL_S = 1.0
RUNS = (
    ("leastconn", "static-equal"),
    ("roundrobin", "static-equal"),
    ("roundrobin", "capacity-oracle"),
    ("leastconn", "capacity-oracle"),
    ("roundrobin", "heuristic"),
    ("leastconn", "heuristic"),
    ("roundrobin", "veloflux"),
    ("leastconn", "veloflux"),
    ("roundrobin", "static-maxconn"),
    ("leastconn", "static-maxconn"),
    ("roundrobin", "veloflux-proxy-only"),
    ("leastconn", "veloflux-proxy-only"),
)
ON_MAXCONN = ("static-maxconn", "veloflux-proxy-only")
PHASES = ("steady", "slow", "gray")
HEADING = "## Real HAProxy: the weight strategies against leastconn"
MARK_BEGIN, MARK_END = "<!-- bench:real-haproxy -->", "<!-- /bench:real-haproxy -->"
DOC = ROOT / "docs" / "benchmarks.md"


def set_weights(stack: LocalStack, weights: dict[str, int]) -> None:
    replies = RuntimeAPI(stack.admin_socket).run_many(
        [f"set server app/{name} weight {w}" for name, w in weights.items()]
    )
    bad = [r for r in replies if r.strip()]
    if bad:
        raise RuntimeError(f"HAProxy refused a weight: {bad}")


def backend_stats(stack: LocalStack, name: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.backend_url(name)}/-/stats", timeout=2) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


@contextlib.contextmanager
def heuristic(stack: LocalStack) -> Iterator[None]:
    """gRPC's client-side WRR weight every tick, from each backend's own counters (what
    it would report through ORCA: queries, errors and busy time), smoothed by half."""
    stop = threading.Event()

    def loop() -> None:
        last = {s.name: backend_stats(stack, s.name) for s in SERVERS}
        smoothed: dict[str, float] = {}
        while not stop.wait(INTERVAL_S):
            raw: dict[str, float] = {}
            for s in SERVERS:
                now = backend_stats(stack, s.name)
                done = (now["requests"] - last[s.name]["requests"]) / INTERVAL_S
                errors = (now["errors"] - last[s.name]["errors"]) / INTERVAL_S
                busy = (now["busy_seconds"] - last[s.name]["busy_seconds"]) / INTERVAL_S
                last[s.name] = now
                utilization = busy / s.concurrency
                denominator = utilization + (errors / done if done else 0.0)
                if done and denominator > 0:
                    raw[s.name] = done / denominator
            mean = sum(raw.values()) / len(raw) if raw else 1.0
            for s in SERVERS:
                value = raw.get(s.name, mean)
                old = smoothed.get(s.name)
                smoothed[s.name] = value if old is None else old + 0.5 * (value - old)
            names = [s.name for s in SERVERS]
            set_weights(stack, dict(zip(names, scaled([smoothed[n] for n in names]), strict=True)))

    thread = threading.Thread(target=loop, name="heuristic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def with_utilization(stack: LocalStack, path: Path) -> None:
    """Add the utilization feature (the stack's Prometheus) to the agent's config."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(stack.utilization_sections())
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@contextlib.contextmanager
def veloflux(
    stack: LocalStack, workdir: Path, overrides: dict[str, Any]
) -> Iterator[Callable[[], dict[str, Any]]]:
    """The daemon in this process, its config with ``overrides`` (dotted key: value)
    on top; the callable trains from its journal (the normal training path and gate)
    and says what came of it."""
    path = agent_config(stack, workdir, INTERVAL_S)
    text = path.read_text().replace("ai:\n", "ai:\n  min_training_rows: 100\n", 1)
    path.write_text(text)
    if stack.prometheus is not None:
        with_utilization(stack, path)
    if overrides:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for dotted, value in overrides.items():
            *parents, key = dotted.split(".")
            section = data
            for name in parents:
                section = section.setdefault(name, {})
            section[key] = value
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with running_daemon(path):

        def train() -> dict[str, Any]:
            from veloflux.agent.build import open_registry
            from veloflux.agent.learn import training_settings
            from veloflux.config.load import load_config
            from veloflux.history.journal import Journal
            from veloflux.model.pipeline import train_from_journal
            from veloflux.model.train import NotEnoughData
            from veloflux.util.events import Events

            config = load_config(path, {})
            events = Events()
            settings = replace(training_settings(config, threads=1), min_rows=100)
            with Journal(config.ai.history_path, events) as journal:
                try:
                    report = train_from_journal(journal, open_registry(config, events), settings)
                except NotEnoughData as exc:
                    return {"promoted": False, "reason": str(exc)}
            return {"promoted": report.promoted, "reason": report.reason}

        yield train


def writes_by_mode(audit: Path) -> dict[str, int]:
    """How many weight writes the agent made on each rung (its audit log)."""
    counts: dict[str, int] = {}
    if audit.exists():
        for line in audit.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if "server" in entry and "new" in entry:  # a weight, not an operator action
                mode = entry.get("mode", "unknown")
                counts[mode] = counts.get(mode, 0) + 1
    return counts


def weight_trace(audit: Path, started: dict[str, float]) -> list[list[Any]]:
    """Every weight the agent wrote from the steady phase on, from its audit log:
    ``[phase, seconds into it, server, old, new, mode, reason]``, so that how fast it
    reacted to each phase's fault can be read off (``--trace`` prints it)."""
    rows: list[list[Any]] = []
    if not audit.exists():
        return rows
    order = sorted(started.items(), key=lambda item: item[1])
    for line in audit.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "server" not in entry or "new" not in entry:  # a model promotion, not a weight
            continue
        at = datetime.fromisoformat(entry["time"]).timestamp()
        phase = [(name, began) for name, began in order if began <= at]
        if phase:
            name, began = phase[-1]
            rows.append([name, round(at - began, 1), entry["server"], entry["old"],
                         entry["new"], entry.get("mode", ""), entry.get("reason", "")])  # fmt: skip
    return rows


def one_run(
    algorithm: str,
    strategy: str,
    warmup_s: float,
    phase_s: float,
    workdir: Path,
    seed: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rate = LOAD * CAPACITY
    prometheus = strategy == "veloflux"
    maxconn = strategy in ON_MAXCONN
    stack = LocalStack(
        workdir, SERVERS, algorithm=algorithm, prometheus=prometheus, maxconn=maxconn
    )
    with stack, contextlib.ExitStack() as on:
        training: dict[str, Any] = {}
        train: Callable[[], dict[str, Any]] | None = None
        if strategy == "capacity-oracle":
            set_weights(stack, dict(zip(
                [s.name for s in SERVERS], scaled([s.concurrency for s in SERVERS]), strict=True
            )))  # fmt: skip
        elif strategy == "heuristic":
            on.enter_context(heuristic(stack))
        elif strategy.startswith("veloflux"):
            train = on.enter_context(veloflux(stack, workdir, overrides or {}))
        run_phase(stack, rate, warmup_s, seed)
        if train is not None:
            training = train()
        started = {"steady": time.time()}
        phases = {"steady": run_phase(stack, rate, phase_s, seed + 1)}
        stack.reconfigure("s2", {"service": {"mean_ms": MEAN_MS * 4}})
        started["slow"] = time.time()
        phases["slow"] = run_phase(stack, rate, phase_s, seed + 2)
        stack.reconfigure("s2", {"service": {"mean_ms": MEAN_MS}})
        stack.reconfigure("s3", {"error_rate": 0.3, "error_latency_ms": 1.0})
        started["gray"] = time.time()
        phases["gray"] = run_phase(stack, rate, phase_s, seed + 3)
    return {
        "algorithm": algorithm,
        "strategy": strategy,
        "training": training,
        "writes_by_mode": writes_by_mode(workdir / "audit.jsonl"),
        "weight_trace": weight_trace(workdir / "audit.jsonl", started),
        "phases": {
            name: {
                "p99_ms": result.latency_ms.get("p99"),
                "p50_ms": result.latency_ms.get("p50"),
                "error_rate": result.error_rate,
                "sent": result.sent,
                "served_by": result.served_by,
            }
            for name, result in phases.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    parser.add_argument("--warmup", type=float, default=90.0)
    parser.add_argument("--phase", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--only",
        action="append",
        metavar="ALGORITHM:WEIGHTS",
        help="run only these (e.g. roundrobin:veloflux); repeatable; not with --write",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print each VeloFlux run's weight writes by phase"
    )
    parser.add_argument(
        "--agent-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an agent config key for the VeloFlux runs (e.g. policy.max_step_ratio=1.0; "
        "the value is YAML); repeatable; not with --write",
    )
    opts = parser.parse_args()
    overrides: dict[str, Any] = {}
    for item in opts.agent_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--agent-set wants KEY=VALUE, not {item!r}")
        overrides[key] = yaml.safe_load(value)
    if overrides and opts.write:
        parser.error("--write measures the shipped config (no --agent-set)")
    chosen: tuple[tuple[str, str], ...] = RUNS
    if opts.only:
        wanted = [tuple(item.split(":", 1)) for item in opts.only]
        unknown = [":".join(item) for item in wanted if item not in RUNS]
        if unknown or opts.write:
            parser.error(
                f"unknown runs {unknown}" if unknown else "--write needs every run (no --only)"
            )
        chosen = tuple(run for run in RUNS if run in wanted)
    began = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="veloflux-bench-real-") as tmp:
        for i, (algorithm, strategy) in enumerate(chosen):
            workdir = Path(tmp) / f"run{i}"
            run = one_run(
                algorithm, strategy, opts.warmup, opts.phase, workdir, opts.seed, overrides
            )
            runs.append(run)
            print(json.dumps(run), flush=True)
    report = {
        "machine": f"{cpu_model()}, Python {platform.python_version()}",
        "command": shlex.join([".venv/bin/python", "bench/run_haproxy.py", *sys.argv[1:]]),
        "rate_rps": round(LOAD * CAPACITY, 1),
        "wall_seconds": round(time.perf_counter() - began, 1),
        "warmup_s": opts.warmup,
        "phase_s": opts.phase,
        "runs": runs,
    }
    print(json.dumps(report, indent=1))
    if opts.trace:
        for run in runs:
            for phase, seconds, server, before, after, mode, reason in run["weight_trace"]:
                print(f"{run['algorithm']}/{run['strategy']} {phase:6} {seconds:5.1f} s "
                      f"{server} {before} -> {after} {mode}: {reason}")  # fmt: skip
    if opts.write:
        replace_section(render_section(report), HEADING, MARK_BEGIN, MARK_END, DOC)


def exceeded(t_ms: float, mix: list[tuple[float, float]]) -> float:
    """The share of requests whose service time alone passes ``t_ms`` when a share
    ``f`` of them is served in an exponential time of mean ``m`` ms, for each (f, m)."""
    return sum(f * math.exp(-t_ms / m) for f, m in mix)


def p99_of(mix: list[tuple[float, float]]) -> float:
    """The p99 (ms) of the service time alone over ``mix`` (see ``exceeded``)."""
    low, high = 0.0, 100.0 * max(m for _, m in mix)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if exceeded(middle, mix) > 0.01 else (low, middle)
    return high


def largest_share(t_ms: float, slow_ms: float, fast_ms: float) -> float:
    """The largest share of requests a server of mean ``slow_ms`` may serve for the
    service time alone to keep the p99 at ``t_ms`` when the rest take ``fast_ms``."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        fine = exceeded(t_ms, [(middle, slow_ms), (1 - middle, fast_ms)]) <= 0.01
        low, high = (middle, high) if fine else (low, middle)
    return low


def floors(base: dict[str, Any]) -> str:
    """What the service time alone allows, against ``leastconn``'s p99 in this run.

    Every request's service time is exponential, whatever the dispatcher, so no
    weights can bring a phase's p99 below the p99 of the service times it draws: in
    the steady phase all servers draw from one distribution and that floor is the
    same for every split; in the slow phase it depends on the share s2 is sent.
    """
    steady, slow = base["phases"]["steady"]["p99_ms"], base["phases"]["slow"]["p99_ms"]
    floor = p99_of([(1.0, MEAN_MS)])
    share = (SERVERS[1].concurrency / (MEAN_MS * 4)) / sum(
        (s.concurrency / MEAN_MS) if s.name != "s2" else s.concurrency / (MEAN_MS * 4)
        for s in SERVERS
    )
    fair = p99_of([(share, MEAN_MS * 4), (1 - share, MEAN_MS)])
    most = largest_share(0.5 * slow, MEAN_MS * 4, MEAN_MS)
    return (
        f"What the service time alone allows (exponential, mean {MEAN_MS:g} ms; s2's "
        f"{MEAN_MS * 4:g} ms in the slow phase; no queueing at all): a p99 of "
        f"{floor:.0f} ms in the steady phase, {floor / steady:.2f}x of `leastconn`'s "
        f"{steady:.0f} ms here, for every split of the load; in the slow phase "
        f"{fair:.0f} ms ({fair / slow:.2f}x) when s2 is sent its share of the capacity "
        f"({share:.1%}), and 0.5x needs s2 sent at most {most:.1%} of the requests."
    )


def render_section(report: dict[str, Any]) -> str:
    base = next(r for r in report["runs"] if r["algorithm"] == "leastconn"
                and r["strategy"] == "static-equal")  # fmt: skip
    rows = []
    for run in report["runs"]:
        cells = []
        for phase in PHASES:
            mine, theirs = run["phases"][phase], base["phases"][phase]
            p99 = (mine["p99_ms"] or 0) / (theirs["p99_ms"] or 1)
            errors = (mine["error_rate"] + 1e-4) / (theirs["error_rate"] + 1e-4)
            cells.append(
                f"{mine['p99_ms']:.0f} ms ({p99:.2f}x), {mine['error_rate'] * 100:.2f}% "
                f"({errors:.2f}x)"
            )
        note = ""
        if run["strategy"].startswith("veloflux"):
            note = "promoted" if run["training"].get("promoted") else "not promoted"
            writes = run.get("writes_by_mode") or {}
            if writes:
                note += "; writes " + ", ".join(f"{m} {n}" for m, n in sorted(writes.items()))
        rows.append((run["algorithm"], run["strategy"], *cells, note))
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/run_haproxy.py` measures: see its docstring. Per phase: p99 and "
            "error rate, and in brackets their ratio to HAProxy's `leastconn` with static "
            "weights in the same phase (error ratios with 0.01% added to both sides, so "
            "that zero stays readable).",
            "",
            MARK_BEGIN,
            f"Measured on {report['machine']}, {report['rate_rps']} requests/s, warm-up "
            f"{report['warmup_s']:g} s, phases {report['phase_s']:g} s. Command: "
            f"`{report['command']}` ({report['wall_seconds']:.0f} s in all).",
            "",
            *table(("algorithm", "weights", *PHASES, "model; weight writes by mode"), rows),
            "",
            floors(base),
            MARK_END,
        ]
    )


if __name__ == "__main__":
    main()
