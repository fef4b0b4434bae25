"""The demo scenario: the daemon beside a real HAProxy while one backend slows down.

Four equal backends share a seeded Poisson load; half-way through, s3 becomes three
times slower through the demo backend's own admin endpoint (``PUT /-/config``), as a
bad deploy would. ``run_scenario`` runs it once, with or without the daemon (in this
process), on a fresh stack, and returns the load generator's figures per phase and
the weights read from HAProxy after every tick. ``make demo`` (``integration.demo``)
prints it; ``tests/integration/test_demo_scenario.py`` asserts what the daemon does to
the weights, and ``bench/bench_demo.py`` measures the latencies.

Why the numbers: a backend serves ``concurrency / mean service time`` requests a
second: 4 / 20 ms = 200 healthy, 4 / 60 ms = 67 three times slower. 400 requests/s
shared equally is 100 each: half of a healthy backend's capacity, but 150% of the slow
one's, whose queue then grows without bound. At half weight (50 of 350) it gets 57/s,
86%: busy, yet stable. The outlier guard releases a server only after clean intervals,
so the slow one is not handed its weight back each time its queue briefly drains.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from integration.loadgen import LoadResult, run_load_sync
from integration.stack import DemoServer, LocalStack
from veloflux.config.load import load_config
from veloflux.daemon.api.client import ApiClient, ApiError
from veloflux.daemon.service import Daemon, DaemonOptions
from veloflux.haproxy.runtime import RuntimeAPI, RuntimeAPIError

BACKEND = "app"
SLOW = "s3"
STATIC_WEIGHT = 100
MEAN_MS = 20.0
SLOWDOWN = 3.0
SERVERS = tuple(
    DemoServer(name, weight=STATIC_WEIGHT, concurrency=4, mean_ms=MEAN_MS)
    for name in ("s1", "s2", "s3", "s4")
)
NAMES = tuple(s.name for s in SERVERS)
Status = Callable[[], dict[str, Any]]
HEADER = (
    f"{'':18}{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>8} {'timeouts':>8} "
    f"{'dropped':>7}   served by {'/'.join(NAMES)}"
)


@dataclass(frozen=True)
class ScenarioSettings:
    """The schedule of one run: a healthy phase, then the degraded one, at one rate."""

    healthy_s: float = 20.0
    degraded_s: float = 35.0
    rate_rps: float = 400.0
    interval_s: float = 1.0
    seed: int = 7


@dataclass(frozen=True)
class WeightSample:
    """HAProxy's weights read right after one daemon tick (or once an interval without)."""

    read_at: float  # epoch seconds
    tick: int | None  # the daemon's tick count, None without an agent
    tick_at: float  # when that tick observed HAProxy (epoch); read_at without an agent
    degraded: bool  # the tick came after the slowdown began
    weights: Mapping[str, int]
    slow_reason: str = ""  # the plan's reason for s3's weight

    @property
    def slow_below_healthy(self) -> bool:
        return self.weights[SLOW] < min(w for n, w in self.weights.items() if n != SLOW)


@dataclass(frozen=True)
class ScenarioResult:
    """What one run measured; the acceptance checks are read from here."""

    with_agent: bool
    settings: ScenarioSettings
    healthy: LoadResult
    degraded: LoadResult
    samples: tuple[WeightSample, ...]
    degraded_at: float  # epoch seconds, just before the ``PUT /-/config``

    @property
    def cut(self) -> WeightSample | None:
        """The first reading after the slowdown with s3 below its static weight."""
        return next(
            (s for s in self.samples if s.degraded and s.weights[SLOW] < STATIC_WEIGHT), None
        )

    @property
    def ticks_to_cut(self) -> int | None:
        """How many ticks after the slowdown it took, the cutting tick included."""
        cut = self.cut
        if cut is None or cut.tick is None:
            return None
        return sum(1 for s in self.samples if s.degraded and s.tick_at <= cut.tick_at)

    @property
    def seconds_to_cut(self) -> float | None:
        """From the slowdown to reading the lowered weight back from HAProxy."""
        cut = self.cut
        return None if cut is None else cut.read_at - self.degraded_at

    def after_cut(self) -> list[WeightSample]:
        """Every reading from the cut to the end of the run."""
        cut = self.cut
        return [] if cut is None else [s for s in self.samples if s.read_at >= cut.read_at]


def read_weights(socket: str) -> dict[str, int]:
    """``get weight`` straight from HAProxy: what is in effect, not what VeloFlux believes."""
    replies = RuntimeAPI(socket).run_many([f"get weight {BACKEND}/{n}" for n in NAMES])
    return {name: int(reply.split()[0]) for name, reply in zip(NAMES, replies, strict=True)}


def _slow_reason(status: Mapping[str, Any]) -> str:
    pools = (status.get("plan") or {}).get("pools", [])
    servers = [s for pool in pools for s in pool.get("servers", []) if s.get("server") == SLOW]
    return str(servers[0].get("reason", "")) if servers else ""


class WeightWatcher:
    """Reads HAProxy's weights after each daemon tick, on its own thread, while the load
    generator holds the main one. Without a daemon it reads once an interval."""

    def __init__(
        self,
        socket: str,
        status: Status | None,
        interval_s: float,
        on_sample: Callable[[WeightSample], None],
    ) -> None:
        self._socket = socket
        self._status = status
        self._interval_s = interval_s
        self._on_sample = on_sample
        self.samples: list[WeightSample] = []
        self.degraded_at = math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-watcher", daemon=True)

    def __enter__(self) -> WeightWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last_tick, ticks, next_due = "", 0, time.time()
        while not self._stop.wait(0.05):
            with contextlib.suppress(ApiError, RuntimeAPIError):  # the next poll retries
                if self._status is None:
                    if time.time() >= next_due:
                        next_due += self._interval_s
                        self._sample(None, time.time(), "")
                    continue
                status = self._status()
                tick = status["last_tick"]
                if tick["at"] and tick["at"] != last_tick:
                    last_tick, ticks = tick["at"], ticks + 1
                    at = datetime.fromisoformat(tick["at"]).timestamp()
                    self._sample(ticks, at, _slow_reason(status))

    def _sample(self, tick: int | None, tick_at: float, reason: str) -> None:
        weights = read_weights(self._socket)
        degraded = tick_at >= self.degraded_at
        sample = WeightSample(time.time(), tick, tick_at, degraded, weights, reason)
        self.samples.append(sample)
        self._on_sample(sample)


@contextlib.contextmanager
def running_daemon(config: Path) -> Iterator[Daemon]:
    """The daemon in this process, ready (one observation made), stopped however we leave."""
    daemon = Daemon(load_config(config), DaemonOptions(config, install_signals=False))
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while not daemon.ops.ready()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon made no observation: {daemon.ops.ready()[1]}")
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.shutdown()


def run_phase(stack: LocalStack, rate_rps: float, seconds: float, seed: int) -> LoadResult:
    """Open-loop load for one phase, bounded in count and in time."""
    cap = int(rate_rps * seconds * 1.5)
    return run_load_sync(stack.url, rate_rps, seconds, max_requests=cap, seed=seed)


def agent_config(stack: LocalStack, workdir: Path, interval_s: float) -> Path:
    """The stack's agent config (all state in ``workdir``), retraining once a day: no
    model may appear mid-run, as the default 6-hourly cron could make it."""
    path = stack.write_agent_config(workdir / "veloflux.yaml", interval=f"{interval_s:g}s")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["ai"]["training_interval"] = "24h"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _start_agent(
    stack: LocalStack, workdir: Path, interval_s: float, running: contextlib.ExitStack
) -> tuple[Status, str]:
    daemon = running.enter_context(running_daemon(agent_config(stack, workdir, interval_s)))
    host, port = daemon.api_address or ("127.0.0.1", 0)
    return ApiClient(host, port, token=None, timeout_seconds=2).status, f"http://{host}:{port}/"


def run_scenario(
    workdir: Path,
    with_agent: bool,
    settings: ScenarioSettings = ScenarioSettings(),
    say: Callable[[str], None] = lambda _text: None,
    on_sample: Callable[[WeightSample], None] = lambda _sample: None,
) -> ScenarioResult:
    """One run on a fresh stack: healthy phase, then s3 three times slower."""
    with LocalStack(workdir, SERVERS) as stack, contextlib.ExitStack() as running:
        status: Status | None = None
        if with_agent:
            status, url = _start_agent(stack, workdir, settings.interval_s, running)
            say(f"daemon running in this process, interval {settings.interval_s:g}s, API {url}")
        watcher = running.enter_context(
            WeightWatcher(stack.admin_socket, status, settings.interval_s, on_sample)
        )
        rate = settings.rate_rps
        say(f"healthy phase: {rate:g} requests/s for {settings.healthy_s:g}s")
        healthy = run_phase(stack, rate, settings.healthy_s, settings.seed)
        slow_ms = MEAN_MS * SLOWDOWN
        watcher.degraded_at = time.time()
        stack.reconfigure(SLOW, {"service": {"mean_ms": slow_ms}})
        say(f"PUT /-/config: {SLOW} is now {SLOWDOWN:g}x slower ({slow_ms:g} ms mean service)")
        degraded = run_phase(stack, rate, settings.degraded_s, settings.seed + 1)
    samples = tuple(watcher.samples)
    return ScenarioResult(with_agent, settings, healthy, degraded, samples, watcher.degraded_at)
