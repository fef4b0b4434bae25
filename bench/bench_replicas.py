"""Benchmark: the tick for a 1,000-server pool on two HAProxy replicas, against one.

Reproduce with ``.venv/bin/python bench/bench_replicas.py --write`` from the repository
root (about 5 minutes on 2 cores). ``--quick`` shrinks the sizes for a smoke run and
refuses ``--write``; ``--out`` keeps the JSON result.

The rig is figure 1's of ``bench/bench_daemon.py`` (one ``roundrobin`` backend of 1,000
servers over four demo backends) twice: HAProxy A and HAProxy B with the same config,
100 requests/s of open-loop load through each. Two agents tick in turn on the same
cadence: one reads and writes A alone (``haproxy.socket``), the other A and B as one
pool (``haproxy.replicas``: both read, merged, planned once, written to each). Each
tick is timed end to end (``Agent.tick(write=True)``), with the journal and the
capacity rung (``ai.enabled: true``, no model: what a new daemon runs), and again with
``ai.enabled: false`` (observe, outlier guard, plan, apply).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_daemon import Cadence, Load, big_pool, tick_config
from bench.common import (
    bench_main,
    median_p95,
    table_section,
    yes,
)
from integration.haproxy_proc import HAProxyProcess
from veloflux.agent.build import build_daemon_agent
from veloflux.config.schema import Config
from veloflux.util.events import Events

MARK_BEGIN, MARK_END = "<!-- bench:replicas -->", "<!-- /bench:replicas -->"
HEADING = "## Replicas: the 1,000-server tick on two HAProxy instances"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Sizes:
    servers: int
    interval_seconds: float
    load_rps: float  # through each replica
    ticks: int  # per agent and setting


FULL = Sizes(1000, 2.0, 100.0, 40)
QUICK = Sizes(100, 1.0, 20.0, 6)


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _configs(a: str, b: str, sizes: Sizes, workdir: Path, ai: bool) -> tuple[Config, Config]:
    """The single agent's config and the replicated one's, each with its own state."""
    single = tick_config(a, sizes.interval_seconds, workdir / f"single-{ai}")
    pair = tick_config(a, sizes.interval_seconds, workdir / f"pair-{ai}")
    haproxy = pair.haproxy
    assert haproxy is not None
    pair = pair.model_copy(update={"haproxy": haproxy.model_copy(update={"replicas": (b,)})})
    if not ai:
        single, pair = (
            c.model_copy(update={"ai": c.ai.model_copy(update={"enabled": False})})
            for c in (single, pair)
        )
    return single, pair


def _alternate(single: Config, pair: Config, sizes: Sizes) -> dict[str, Any]:
    """The two agents tick in turn on one cadence; each tick timed end to end."""
    events = Events()
    agents = {"one": build_daemon_agent(single, events), "two": build_daemon_agent(pair, events)}
    cadence = Cadence(sizes.interval_seconds / 2)
    times: dict[str, list[float]] = {name: [] for name in agents}
    written: dict[str, int] = dict.fromkeys(agents, 0)
    try:
        for agent in agents.values():  # untimed: the first tick opens everything
            agent.tick(write=True)
        for _ in range(sizes.ticks):
            for name, agent in agents.items():
                done = cadence.run(partial(agent.tick, True))
                times[name].append(done.wall_ms)
                report = done.value.report
                written[name] += len(report.applied) if report else 0
                replicas = done.value.observation.replicas
                assert all(r.up for r in replicas), replicas
    finally:
        for agent in agents.values():
            agent.close()
    result: dict[str, Any] = {
        name: median_p95(ms) | {"written": written[name]} for name, ms in times.items()
    }
    result["ratio"] = round(result["two"]["median_ms"] / result["one"]["median_ms"], 3)
    return result


def _run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    with big_pool(sizes.servers, sizes.load_rps, workdir) as (a, _):
        b = HAProxyProcess(workdir / "haproxy-b", a.backends).start()
        try:
            with Load(b.frontend_url, sizes.load_rps):
                figures = {}
                for ai in (True, False):
                    _progress(f"{sizes.ticks} ticks each, ai.enabled: {str(ai).lower()}")
                    single, pair = _configs(a.admin_socket, b.admin_socket, sizes, workdir, ai)
                    figures["ai" if ai else "no_ai"] = _alternate(single, pair, sizes)
                return figures | {"servers": sizes.servers}
        finally:
            b.stop()


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    return {key: r[key]["ratio"] < TARGET_RATIO for key in ("ai", "no_ai")}


def render_section(r: dict[str, Any]) -> str:
    ok = verdicts(r)
    rows = []
    for key, label in (("ai", "journal and capacity rung, no model"), ("no_ai", "ai off")):
        f = r[key]
        rows.append(
            (
                f"full tick, 1,000 servers, {label}: one replica; two replicas",
                f"{f['one']['median_ms']:.1f} ms [{f['one']['p95_ms']:.1f}]; "
                f"{f['two']['median_ms']:.1f} ms [{f['two']['p95_ms']:.1f}]; "
                f"ratio {f['ratio']:.2f}",
                f"two / one < {TARGET_RATIO:g}",
                yes(ok[key]),
            )
        )
    prose = [
        "What `bench/bench_replicas.py` measures: two HAProxy processes with the same",
        "1,000-server `roundrobin` backend (figure 1's rig of `bench/bench_daemon.py`, each",
        f"with {FULL.load_rps:g} requests/s of load). Two agents tick in turn: one drives",
        "HAProxy A alone, the other A and B as one pool (`haproxy.replicas`: both read,",
        "merged, planned once, written to each and read back). Each `Agent.tick(write=True)`",
        f"is timed end to end, {FULL.ticks} ticks each, with the journal and capacity rung",
        "(no model: what a new daemon runs) and with `ai.enabled: false`. Medians; p95 in",
        "brackets. Both agents drive HAProxy A, so a write by one is seen by the other (the",
        "`written` counts in the JSON). How the second replica is kept cheap: both are asked",
        "before either reply is read, and B's reply is taken in (pumped) before A's is",
        "parsed, so HAProxy B prepares its ~300 kB while this process parses A's; the",
        "replies are read into columns (a list per figure; `show stat` split as one string,",
        "not a list per line) and merged a column at a time; the writes go to both before",
        "either reply is read. What B still adds is Python work under the GIL, profiled at",
        "1,000 servers, ai off: its replies parsed into columns (about 2.5 ms of CPU on an",
        "idle core, twice that under this rig's load) and the merge (about 1 ms, 2 under",
        "load), against about 5 ms (10 under load) for the rest of a one-replica tick and",
        "its 4 ms wait for HAProxy, which the two replicas share. Threads would not help:",
        "the parsing holds the GIL.",
    ]
    return table_section(HEADING, prose, r, rows, (MARK_BEGIN, MARK_END))


def main() -> None:
    bench_main(
        Path(__file__),
        lambda quick, workdir: _run(QUICK if quick else FULL, workdir),
        verdicts,
        render_section,
        HEADING,
        (MARK_BEGIN, MARK_END),
    )


if __name__ == "__main__":
    main()
