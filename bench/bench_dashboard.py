"""Benchmark: what the built-in dashboard costs the 1,000-server tick.

Reproduce with ``.venv/bin/python bench/bench_dashboard.py --write`` from the repository
root (about 20 minutes on 2 cores). ``--quick`` shrinks the sizes for a smoke run and refuses
``--write``; ``--out`` keeps the JSON result.

The rig is figure 1 of ``bench/bench_daemon.py`` (a real HAProxy with one 1,000-server
``roundrobin`` backend over four demo backends, 200 requests/s of open-loop load, a
model trained on the pool's own recorded history and current), but the tick is the
daemon's own ``DaemonOps.tick`` (the agent's tick, then the metrics, the dashboard's
ring of recent ticks and the status the API serves), with the daemon's HTTP API
serving on loopback. The timed ticks alternate in blocks: the dashboard closed, then
open in a real headless Chromium (Debian's, driven by Playwright) that polls the
agent as an operator's browser would. Chromium renders on the same two cores as the
tick (in production it runs on the operator's machine), so the "open" figure is the
pessimistic one.
"""

from __future__ import annotations

import statistics
import sys
import tracemalloc
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_daemon import FULL as DAEMON_FULL
from bench.bench_daemon import POOL, Cadence, big_pool, tick_config, train_current
from bench.common import (
    Timed,
    bench_main,
    median_p95,
    table_section,
    timed,
    yes,
)
from integration.browser import headless_chromium, wait_for_polls
from integration.haproxy_proc import free_port
from veloflux import __version__
from veloflux.agent.build import build_daemon_agent, utc_now
from veloflux.agent.ports import TickResult
from veloflux.daemon.api.server import ApiServer
from veloflux.daemon.audit import open_audit
from veloflux.daemon.controls import OperatorControls
from veloflux.daemon.metrics import AgentMetrics
from veloflux.daemon.state import DaemonOps
from veloflux.daemon.timeline import TickTimeline
from veloflux.util.events import Events
from veloflux.util.heap import HeapSettler

MARK_BEGIN, MARK_END = "<!-- bench:dashboard -->", "<!-- /bench:dashboard -->"
HEADING = "## The dashboard: the 1,000-server tick with the page open"
TARGET_RATIO = 1.10  # "nothing measurable": the open median within 10% of the closed one


@dataclass(frozen=True)
class Sizes:
    servers: int
    interval_seconds: float
    load_rps: float
    record_ticks: int
    warm_ticks: int
    blocks: int  # pairs of (closed, open) blocks
    block_ticks: int


FULL = Sizes(DAEMON_FULL.servers, DAEMON_FULL.interval_seconds, DAEMON_FULL.load_rps, 22, 3, 4, 10)
QUICK = Sizes(100, 2.0, 50.0, 16, 2, 2, 4)


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


class DashboardPage:
    """The real page in headless Chromium, opened and closed between blocks."""

    def __init__(self, browser: Any, url: str) -> None:
        self._browser, self._url = browser, url
        self._context: Any = None
        self._page: Any = None
        self.requests = 0
        self.foreign: list[str] = []
        self.errors: list[str] = []

    def open(self) -> None:
        self._context = self._browser.new_context(viewport={"width": 1280, "height": 900})
        self._page = self._context.new_page()
        self._page.on("request", self._seen)
        self._page.on("pageerror", lambda error: self.errors.append(str(error)))
        self._page.goto(self._url + "/")
        wait_for_polls(self._page, 1)

    def _seen(self, request: Any) -> None:
        self.requests += 1
        if not request.url.startswith(self._url + "/"):
            self.foreign.append(request.url)

    def close(self) -> int:
        """Close it; return how many polls it completed while open."""
        polls = int(self._page.evaluate("Number(document.body.dataset.polls || 0)"))
        self._context.close()
        return polls


def _ops(config: Any, events: Events) -> DaemonOps:
    """``DaemonOps`` wired as ``veloflux.daemon.service.Daemon`` wires it."""
    return DaemonOps(
        config=config,
        agent=build_daemon_agent(config, events),
        controls=OperatorControls(config.api.state_path, utc_now, events),
        metrics=AgentMetrics(__version__, events),
        clock=utc_now,
        audit=open_audit(config.ai, events),
    )


def _ring_figures(result: TickResult, sizes: Sizes) -> dict[str, Any]:
    """An hour's ring (the default window at this interval) filled with copies of a
    real tick: its memory, and the whole-history answer the page loads when opened."""
    ring = TickTimeline(3600.0, 720, sizes.interval_seconds)
    record = [timed(lambda: ring.record(result, False, {"haproxy": True})) for _ in range(30)]
    ring = TickTimeline(3600.0, 720, sizes.interval_seconds)
    tracemalloc.start()
    for n in range(ring.capacity):
        at = datetime.fromtimestamp(n * sizes.interval_seconds, UTC)
        shifted = replace(result, plan=replace(result.plan, generated_at=at))
        ring.record(shifted, False, {"haproxy": True})
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cold = timed(lambda: ring.to_json(0, ()))
    warm = timed(lambda: ring.to_json(0, ()))
    newest = ring.samples()[-1].seq
    one = timed(lambda: ring.to_json(newest - 1, ()))
    return {
        "record": median_p95([t.cpu_ms for t in record]),
        "ticks": ring.capacity,
        "memory_mb": round(held / 1e6, 1),
        "full_bytes": len(cold.value),
        "full_cold_ms": round(cold.wall_ms, 1),
        "full_cached_ms": round(warm.wall_ms, 1),
        "one_tick_bytes": len(one.value),
    }


def _run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    with (
        big_pool(sizes.servers, sizes.load_rps, workdir) as (proxy, load),
        headless_chromium() as browser,
    ):
        return _phases(sizes, workdir, proxy.admin_socket, browser) | {"load": load.summary()}


def _phases(sizes: Sizes, workdir: Path, socket: str, browser: Any) -> dict[str, Any]:
    base = tick_config(socket, sizes.interval_seconds, workdir)
    port = free_port()
    api = base.api.model_copy(update={"listen": f"127.0.0.1:{port}"})
    config = base.model_copy(update={"api": api})
    events = Events()
    ops = _ops(config, events)
    server = ApiServer(
        "127.0.0.1",
        port,
        status=ops,
        controls=ops,
        metrics=lambda: (b"", AgentMetrics.CONTENT_TYPE),
        events=events,
        token=None,
    )
    server.start()
    cadence, settler = Cadence(sizes.interval_seconds), HeapSettler()
    try:
        _progress(f"recording {sizes.record_ticks} ticks (no model yet)")
        cadence.run(ops.tick)
        settler.settle("no model")
        for _ in range(sizes.record_ticks - 1):
            cadence.run(ops.tick)
        _progress("training on the recorded journal")
        training = train_current(config, events)
        cadence.run(ops.tick)  # loads the model
        settler.settle("model")
        for _ in range(sizes.warm_ticks - 1):
            cadence.run(ops.tick)
        page = DashboardPage(browser, f"http://127.0.0.1:{port}")
        closed: list[Timed[str]] = []
        opened: list[Timed[str]] = []
        polls = 0
        # Blocks in the order closed, open, open, closed, ...: a drift over the run (the
        # journal grows, the pool's rung changes) weighs on both sides alike.
        for block in range(2 * sizes.blocks):
            is_open = block % 4 in (1, 2)
            _progress(
                f"block {block + 1}/{2 * sizes.blocks}: dashboard {'open' if is_open else 'closed'}"
            )
            if is_open:
                page.open()
            for _ in range(sizes.block_ticks):
                done = cadence.run(ops.tick)
                latest = done.value
                (opened if is_open else closed).append(_kept(done))
                del done
            if is_open:
                polls += page.close()
        ring = _ring_figures(latest, sizes)
        del latest
    finally:
        server.stop()
        ops.close()
    return {
        "servers": sizes.servers,
        "interval_seconds": sizes.interval_seconds,
        "training": training,
        "closed": median_p95([t.wall_ms for t in closed]) | {"ticks": len(closed)},
        "open": median_p95([t.wall_ms for t in opened]) | {"ticks": len(opened)},
        "closed_cpu": median_p95([t.cpu_ms for t in closed]),
        "open_cpu": median_p95([t.cpu_ms for t in opened]),
        "closed_by_mode": _by_mode(closed),
        "open_by_mode": _by_mode(opened),
        "page_polls": polls,
        "page_requests": page.requests,
        "foreign_requests": page.foreign,
        "page_errors": page.errors,
        "ring": ring,
    }


def _kept(done: Timed[TickResult]) -> Timed[str]:
    """A tick's timings and its pool's mode, not the result (keeping 1,000-server results
    would make the garbage collector walk them inside later ticks)."""
    mode = next(p.mode for p in done.value.plan.pools if p.backend == POOL)
    return Timed(done.wall_ms, done.cpu_ms, mode)


def _by_mode(ticks: list[Timed[str]]) -> dict[str, dict[str, float]]:
    """Median wall time and count per pool mode: the model's ticks cost more than the
    capacity or fallback ones, so the two sides are compared mode by mode too."""
    modes = sorted({t.value for t in ticks})
    return {
        mode: {
            "median_ms": round(statistics.median(t.wall_ms for t in ticks if t.value == mode), 2),
            "ticks": sum(1 for t in ticks if t.value == mode),
        }
        for mode in modes
    }


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    ratio = r["open"]["median_ms"] / r["closed"]["median_ms"]
    return {"tick": ratio <= TARGET_RATIO, "only_the_agent": not r["foreign_requests"]}


def _modes_text(by_mode: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{m} {v['median_ms']:.1f} ms ({v['ticks']:.0f})" for m, v in by_mode.items())


def render_section(r: dict[str, Any]) -> str:
    ring = r["ring"]
    ok = verdicts(r)
    ratio = r["open"]["median_ms"] / r["closed"]["median_ms"]
    per_block = FULL.block_ticks
    rows = [
        (
            "full tick (`DaemonOps.tick`), 1,000 servers, a model current: dashboard closed",
            f"{r['closed']['median_ms']:.1f} ms [{r['closed']['p95_ms']:.1f}] "
            f"({r['closed']['ticks']} ticks)",
            "-",
            "-",
        ),
        (
            "the same, dashboard open in Chromium and polling",
            f"{r['open']['median_ms']:.1f} ms [{r['open']['p95_ms']:.1f}] "
            f"({r['open']['ticks']} ticks); ratio {ratio:.2f}",
            f"open / closed median <= {TARGET_RATIO:.2f}",
            yes(ok["tick"]),
        ),
        (
            "by the pool's mode in the tick: closed; open (median, ticks)",
            f"{_modes_text(r['closed_by_mode'])}; {_modes_text(r['open_by_mode'])}",
            "-",
            "-",
        ),
        (
            "CPU time of the ticking thread: closed; open",
            f"{r['closed_cpu']['median_ms']:.1f} ms; {r['open_cpu']['median_ms']:.1f} ms",
            "-",
            "-",
        ),
        (
            "the page meanwhile: polls completed; requests; requests not to the agent",
            f"{r['page_polls']}; {r['page_requests']}; {len(r['foreign_requests'])}",
            "0 elsewhere",
            yes(ok["only_the_agent"]),
        ),
        (
            "the ring's cost per tick (`TickTimeline.record`, CPU)",
            f"{ring['record']['median_ms']:.2f} ms [{ring['record']['p95_ms']:.2f}]",
            "-",
            "-",
        ),
        (
            f"an hour in the ring ({ring['ticks']} ticks of 1,000 servers): memory; "
            "the whole history as JSON (first encode; cached)",
            f"{ring['memory_mb']:.1f} MB; {ring['full_bytes'] / 1e6:.1f} MB in "
            f"{ring['full_cold_ms']:.0f} ms; {ring['full_cached_ms']:.0f} ms",
            "-",
            "-",
        ),
        (
            "one tick's answer to a polling page (`?since=`)",
            f"{ring['one_tick_bytes'] / 1e3:.0f} kB",
            "-",
            "-",
        ),
    ]
    prose = [
        "What `bench/bench_dashboard.py` measures: figure 1's rig of `bench/bench_daemon.py`",
        "(a real HAProxy with one 1,000-server `roundrobin` backend over four demo backends,",
        f"{FULL.load_rps:g} requests/s of load, a model trained on the pool's recorded history",
        f"and current, a tick every {FULL.interval_seconds:g} s), ticked by the daemon's own",
        "`DaemonOps.tick` (the agent's tick, then the metrics, the dashboard's ring and the",
        "status) with the HTTP API serving on loopback. The timed ticks come in blocks of",
        f"{per_block}, closed, open, open, closed, ... (so a drift weighs on both sides): the",
        "dashboard closed, or open in headless Chromium (Debian's, driven",
        "by Playwright), which loads the whole history when it opens and then polls `/status`,",
        "`/api/v1/history?since=` and `/api/v1/audit`. Chromium runs on the same two cores as",
        "the tick (an operator's browser would not), so the open figure is the pessimistic one.",
        "The ring's own figures come from an hour's ring filled with copies of the last real",
        "tick. Medians; p95 in brackets.",
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
