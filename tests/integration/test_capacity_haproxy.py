"""The capacity rung on the real stack: demo backends of unequal capacity behind a
real HAProxy, their busy time scraped by a real Prometheus every second, the agent
ticking every second with writes. It must find each server's capacity from the busy
time and move the weights toward it, and a one-shot dry-run afterwards must replay the
journal into the same rung instead of warming up from nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from integration.scenario import run_phase
from integration.stack import DemoServer, LocalStack
from tests.integration.helpers import run_cli
from veloflux.agent.build import build_agent
from veloflux.agent.ports import TickResult
from veloflux.config.load import load_config
from veloflux.domain.weightplan import PoolPlan
from veloflux.util.events import Events

pytestmark = [pytest.mark.integration, pytest.mark.solo]

MEAN_MS = 20.0
# Capacities 200, 100 and 50 requests/s (concurrency / mean service time).
SERVERS = (
    DemoServer("s1", concurrency=4, mean_ms=MEAN_MS),
    DemoServer("s2", concurrency=2, mean_ms=MEAN_MS),
    DemoServer("s3", concurrency=1, mean_ms=MEAN_MS),
)
RATE_RPS = 120.0  # about a third of the pool's capacity: no server saturates
TICKS = 25


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("capacity-stack")
    with LocalStack(workdir, SERVERS, prometheus=True) as running:
        yield running


def config_path(stack: LocalStack, path: Path) -> Path:
    stack.write_agent_config(path, interval="1s")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(stack.utilization_sections())
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def app(pool_plans: tuple[PoolPlan, ...]) -> PoolPlan:
    (pool,) = [p for p in pool_plans if p.backend == "app"]
    return pool


def ticks_under_load(stack: LocalStack, path: Path, seed: int) -> tuple[TickResult, list[str]]:
    """The agent of ``path`` ticking every second, with writes, under Poisson load at
    ``RATE_RPS``: its last tick, and the pool's mode at each."""
    agent = build_agent(load_config(path, {}), Events(), write=True)
    load = threading.Thread(
        target=run_phase, args=(stack, RATE_RPS, TICKS + 3, seed), name="load", daemon=True
    )
    load.start()
    modes: list[str] = []
    try:
        for _ in range(TICKS):  # bounded in count; each tick is bounded by its timeouts
            time.sleep(1.0)
            result = agent.tick(write=True)
            modes.append(app(result.plan.pools).mode)
    finally:
        load.join(timeout=30)
    return result, modes


def test_the_agent_finds_each_capacity_and_weights_follow_it(
    stack: LocalStack, tmp_path: Path
) -> None:
    path = config_path(stack, tmp_path / "veloflux.yaml")
    result, modes = ticks_under_load(stack, path, seed=7)
    pool = app(result.plan.pools)
    assert pool.mode in ("capacity", "model"), (modes, pool.reason)
    weights = {s.server: s.current_weight or 0 for s in pool.servers}
    planned = {s.server: s.planned_weight or 0 for s in pool.servers}
    # Toward 200 : 100 : 50, from equal weights, damped and step-limited.
    assert planned["s1"] > planned["s2"] > planned["s3"], (weights, planned)
    assert planned["s1"] >= 2 * planned["s3"], planned
    reasons = {s.server: s.reason for s in pool.servers}
    assert all(r.startswith("capacity") for r in reasons.values()), reasons

    # A dry-run now, a fresh process with the journal the agent wrote: the rung is
    # replayed from it, so the preview is on the capacity rung at once.
    preview = run_cli("dry-run", "-c", path, "--output", "json")
    assert preview.code == 0, preview.stderr
    (dry,) = [p for p in preview.json()["pools"] if p["backend"] == "app"]
    assert dry["mode"] in ("capacity", "model"), dry["reason"]
    assert dry["overload"] is False


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("maxconn-stack")
    with LocalStack(workdir, SERVERS, maxconn=True) as running:
        yield running


def test_without_prometheus_maxconn_gives_the_capacity_by_littles_law(
    limited_stack: LocalStack, tmp_path: Path
) -> None:
    """Proxy-only: servers with ``maxconn`` at their concurrency and no utilization
    feature. The agent reads each limit (``slim``) and finds capacity as maxconn / Tr."""
    path = tmp_path / "veloflux.yaml"
    limited_stack.write_agent_config(path, interval="1s")
    result, modes = ticks_under_load(limited_stack, path, seed=8)
    limits = {r.server: r.max_sessions for r in result.observation.rows if r.pool == "app"}
    assert limits == {"s1": 4.0, "s2": 2.0, "s3": 1.0}
    pool = app(result.plan.pools)
    assert pool.mode in ("capacity", "model"), (modes, pool.reason)
    planned = {s.server: s.planned_weight or 0 for s in pool.servers}
    assert planned["s1"] > planned["s2"] > planned["s3"], planned
    assert planned["s1"] >= 2 * planned["s3"], planned
