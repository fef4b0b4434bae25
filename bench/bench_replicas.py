"""Benchmark: the tick for a 1,000-server pool on two HAProxy replicas, against one.

Reproduce with ``.venv/bin/python bench/bench_replicas.py --write`` from the repository
root (about 5 minutes on 2 cores). ``--quick`` shrinks the sizes for a smoke run and
refuses ``--write``; ``--out`` keeps the JSON result.

The rig is figure 1's of ``bench/bench_daemon.py`` (one ``roundrobin`` backend of 1,000
servers over four demo backends) three times: HAProxy A, B and C with the same config.
The pool's 100 requests/s of open-loop load go through C alone, or half through each
of A and B, as when a pool's traffic is spread over its proxy's replicas. Two agents
tick in turn on the same cadence: one reads and writes C alone (``haproxy.socket``),
the other A and B as one pool (``haproxy.replicas``: both read, merged, planned once,
written to each). No proxy has two agents, so neither sees the other's writes as set
by hand. Each tick is timed end to end (``Agent.tick(write=True)``), with the journal
and the capacity rung (``ai.enabled: true``, no model: what a new daemon runs), and
again with ``ai.enabled: false`` (observe, outlier guard, plan, apply).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
    load_rps: float  # the pool's: through C alone, or half through each of A and B
    ticks: int  # per agent and setting


FULL = Sizes(1000, 2.0, 100.0, 40)
QUICK = Sizes(100, 1.0, 20.0, 6)


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _configs(
    sockets: tuple[str, str, str], sizes: Sizes, workdir: Path, ai: bool
) -> tuple[Config, Config]:
    """The single agent's config (C) and the replicated one's (A and B), each with its
    own state."""
    a, b, c = sockets
    single = tick_config(c, sizes.interval_seconds, workdir / f"single-{ai}")
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


@contextmanager
def rig(sizes: Sizes, workdir: Path) -> Iterator[tuple[str, str, str]]:
    """HAProxy A, B and C under load (the pool's split over A and B, whole through C):
    their admin sockets. Also ``bench/profile_replicas.py``'s."""
    half = sizes.load_rps / 2
    with big_pool(sizes.servers, half, workdir) as (a, _):
        b = HAProxyProcess(workdir / "haproxy-b", a.backends).start()
        c = HAProxyProcess(workdir / "haproxy-c", a.backends).start()
        try:
            with Load(b.frontend_url, half), Load(c.frontend_url, sizes.load_rps):
                yield a.admin_socket, b.admin_socket, c.admin_socket
        finally:
            c.stop()
            b.stop()


def _run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    figures = {}
    with rig(sizes, workdir) as sockets:
        for ai in (True, False):
            _progress(f"{sizes.ticks} ticks each, ai.enabled: {str(ai).lower()}")
            single, pair = _configs(sockets, sizes, workdir, ai)
            figures["ai" if ai else "no_ai"] = _alternate(single, pair, sizes)
    return figures | {"servers": sizes.servers}


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
        "What `bench/bench_replicas.py` measures: three HAProxy processes with the same",
        "1,000-server `roundrobin` backend (figure 1's rig of `bench/bench_daemon.py`).",
        "Two agents tick in turn: one drives HAProxy C alone, the other A and B as one pool",
        "(`haproxy.replicas`: both read, merged, planned once, written to each and read",
        f"back). The pool's {FULL.load_rps:g} requests/s of load go through C alone, or",
        "half through each of A and B, as when a pool's traffic is spread over replicas.",
        "No proxy has two agents, so neither takes the other's writes for weights set by",
        "hand. The rig before this one had both agents drive A and the pool's whole load",
        "through each replica, so the agent of A and B saw twice the traffic and had more to",
        "decide: on this machine, idle, it measured 1.29 and 1.47, the agent of A and B",
        "changing 50 weights where the other changed none (`git show",
        "c86a016:bench/bench_replicas.py > bench/replicas_before.py`, then run that file).",
        f"Each `Agent.tick(write=True)` is timed end to end, {FULL.ticks} ticks",
        "each, with the journal and capacity rung (no model: what a new daemon runs) and with",
        "`ai.enabled: false`. Medians; p95 in brackets; `written` in the JSON counts the",
        "weights each agent changed. How the second replica is kept cheap: both are asked",
        "before either reply is read, and B's reply is taken in (pumped) before A's is",
        "parsed, so HAProxy B prepares its ~300 kB while this process parses A's; the",
        "replies are read into columns (a list per figure; `show stat` split as one string,",
        "not a list per line) and merged a column at a time; the writes go to both before",
        "either reply is read. What B still adds is Python work under the GIL, split by",
        "`bench/profile_replicas.py` (this rig, ai off, 20 ticks each under cProfile, which",
        "inflates Python work): the two-replica tick took 60.0 ms against 40.4 ms, its",
        "reading 36.6 ms against 18.2 ms: B's `show stat` (3.4 ms more), its `show servers",
        "state` (1.9), both made numbers (2.3), the column-wise merge (7.6) and a longer",
        "wait on the sockets (1.7). The planner (about 22 ms) runs once for both. With the",
        "journal on (the daemon's default) the shared part is larger and the ratio lower.",
        "Threads would not help: the parsing holds the GIL.",
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
