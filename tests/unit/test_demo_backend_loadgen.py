"""Demo backends and the open-loop load generator, against real servers on loopback.

Every server binds port 0 on 127.0.0.1 inside the test's own event loop; every wait has a
deadline, so a regression fails fast instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from integration import demo_backend, loadgen
from integration.behaviour import BackendBehaviour, ServiceTime
from integration.demo_backend import (
    ADMITTED_HEADER,
    DemoBackends,
    parse_backend_spec,
    serve_backends,
)
from integration.loadgen import (
    arrival_offsets,
    parse_duration,
    quantile,
    require_loopback_url,
    run_load,
)

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTANT = "constant"


def run(coro: Coroutine[Any, Any, T], deadline_s: float = 10.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, deadline_s))


def one(name: str = "s1", **kwargs: Any) -> list[tuple[str, int, BackendBehaviour]]:
    return [("127.0.0.1", 0, BackendBehaviour(name=name, **kwargs))]


def constant(mean_ms: float) -> ServiceTime:
    return ServiceTime(distribution=CONSTANT, mean_ms=mean_ms)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.json()


async def admitted_as(session: aiohttp.ClientSession, url: str) -> int:
    """Send one request; the order in which the backend gave it a service slot."""
    async with session.get(url) as response:
        await response.read()
        assert response.status == 200
        return int(response.headers[ADMITTED_HEADER])


async def wait_until(predicate: Any, deadline_s: float = 5.0) -> None:
    """Poll an async predicate with a deadline instead of sleeping a guessed time."""
    give_up = time.monotonic() + deadline_s
    while not await predicate():
        if time.monotonic() > give_up:
            pytest.fail("condition not reached before the deadline")
        await asyncio.sleep(0.005)


async def stats_of(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    stats: dict[str, Any] = await get_json(session, f"{base}/-/stats")
    return stats


async def queue_behind_a_held_slot(
    session: aiohttp.ClientSession, base: str, behind: int
) -> list[asyncio.Task[int]]:
    """One request in service for HELD_MS (longer than any test runs) on a one-slot
    backend, then ``behind`` more, each sent once the backend has counted the one
    before: they wait, in a known arrival order, until the test changes the config."""
    work: list[asyncio.Task[int]] = []
    for sent in range(1, behind + 2):
        work.append(asyncio.create_task(admitted_as(session, f"{base}/w{sent}")))

        async def arrived(count: int = sent) -> bool:
            return bool((await stats_of(session, base))["requests"] == count)

        await wait_until(arrived)
    stats = await stats_of(session, base)
    assert (stats["in_service"], stats["waiting"]) == (1, behind)
    return work


async def abandon(work: list[asyncio.Task[int]]) -> None:
    """Drop requests still held (the server cancels them when it stops)."""
    for task in work:
        task.cancel()
    await asyncio.gather(*work, return_exceptions=True)


HELD_MS = 60_000.0


def test_raising_mean_ms_at_run_time_lengthens_the_next_services() -> None:
    """The backend's own account of the service it gave (``busy_seconds``, the sum of the
    service times it drew) goes from 5 ms a request to 60 ms a request at the PUT, and no
    answer after it came back sooner than the new service time: that bound holds however
    slow the machine is, since the backend sleeps that long before answering."""

    async def scenario() -> None:
        async with serve_backends(one(concurrency=64, service=constant(5))) as demo:
            base = f"http://127.0.0.1:{demo.ports['s1']}"
            async with aiohttp.ClientSession() as session:
                before = await run_load(f"{base}/", 200, 0.3, 1000)
                first = await stats_of(session, base)
                patch = {"service": {"mean_ms": 60}}
                async with session.put(f"{base}/-/config", json=patch) as response:
                    assert response.status == 200
                    assert (await response.json())["service"]["mean_ms"] == 60.0
                after = await run_load(f"{base}/", 200, 0.3, 1000)
                second = await stats_of(session, base)
        assert before.ok == before.sent == first["requests"] > 0
        assert first["busy_seconds"] == pytest.approx(0.005 * first["requests"])
        served = second["requests"] - first["requests"]
        assert after.ok == after.sent == served > 0
        busy = second["busy_seconds"] - first["busy_seconds"]
        assert busy == pytest.approx(0.060 * served)
        fastest = after.latency_ms["p50"]
        assert fastest is not None
        assert fastest >= 59.9  # ms; the sleep's clock and the client's are both monotonic

    run(scenario())


def test_error_rate_one_fails_everything_and_zero_fails_nothing() -> None:
    specs = [
        ("127.0.0.1", 0, BackendBehaviour("bad", error_rate=1.0, service=constant(1))),
        ("127.0.0.1", 0, BackendBehaviour("good", error_rate=0.0, service=constant(1))),
    ]

    async def scenario() -> None:
        async with serve_backends(specs) as demo:
            bad = await run_load(f"http://127.0.0.1:{demo.ports['bad']}/", 500, 1, 40)
            good = await run_load(f"http://127.0.0.1:{demo.ports['good']}/", 500, 1, 40)
        assert bad.status_counts == {"500": 40}
        assert bad.errors == 40
        assert bad.error_rate == 1.0
        assert bad.served_by == {"bad": 40}
        assert good.status_counts == {"200": 40}
        assert good.errors == 0
        assert good.error_rate == 0.0
        assert good.served_by == {"good": 40}

    run(scenario())


def test_concurrency_one_admits_waiting_requests_in_arrival_order() -> None:
    """Three requests queue behind one held in the only slot; a second slot then serves
    them one at a time, and the admission number each answer carries follows the order
    they arrived in (the first request, still held, was number 1)."""

    async def scenario() -> list[int]:
        async with serve_backends(one(concurrency=1, service=constant(HELD_MS))) as demo:
            base = f"http://127.0.0.1:{demo.ports['s1']}"
            async with aiohttp.ClientSession() as session:
                held, *waiting = await queue_behind_a_held_slot(session, base, 3)
                patch = {"concurrency": 2, "service": {"mean_ms": 10}}
                async with session.put(f"{base}/-/config", json=patch) as r:
                    assert r.status == 200
                order = list(await asyncio.gather(*waiting))
                assert not held.done()
                await abandon([held])
        return order

    assert run(scenario()) == [2, 3, 4]


def test_raising_concurrency_at_run_time_admits_waiting_requests() -> None:
    """Every request waiting behind the held one gets a slot at the PUT itself: none of
    them finishes first (each holds its slot too), so the backend's own counts right
    after the PUT can only come from the new limit."""

    async def scenario() -> None:
        async with serve_backends(one(concurrency=1, service=constant(HELD_MS))) as demo:
            base = f"http://127.0.0.1:{demo.ports['s1']}"
            async with aiohttp.ClientSession() as session:
                work = await queue_behind_a_held_slot(session, base, 3)
                async with session.put(f"{base}/-/config", json={"concurrency": 4}) as r:
                    assert r.status == 200
                stats = await stats_of(session, base)
                assert (stats["in_service"], stats["waiting"]) == (4, 0)
                assert not any(task.done() for task in work)
                await abandon(work)

    run(scenario())


BAD_BODIES = [
    b"not json",
    b"[1, 2]",
    b'{"bogus": 1}',
    b'{"service": {"shape": "uniform"}}',
    b'{"service": {"distribution": "uniform"}}',
    b'{"service": {"mean_ms": -1}}',
    b'{"service": 5}',
    b'{"error_rate": 1.5}',
    b'{"error_rate": -0.1}',
    b'{"error_rate": NaN}',
    b'{"error_latency_ms": -3}',
    b'{"concurrency": 0}',
    b'{"concurrency": 2.5}',
    b'{"concurrency": true}',
    b'{"seed": "x"}',
    b'{"name": "renamed"}',
    b'{"error_rate": 0.5, "concurrency": -1}',
    b"{" + b" " * (64 * 1024) + b"}",
]


def test_bad_config_bodies_get_400_and_leave_behaviour_unchanged() -> None:
    async def scenario() -> None:
        async with serve_backends(one(concurrency=3, seed=7)) as demo:
            config_url = f"http://127.0.0.1:{demo.ports['s1']}/-/config"
            async with aiohttp.ClientSession() as session:
                original = await get_json(session, config_url)
                for body in BAD_BODIES:
                    async with session.put(config_url, data=body) as response:
                        assert response.status == 400, body[:60]
                        message = (await response.json())["error"]
                        assert isinstance(message, str), body[:60]
                        assert message, body[:60]
                    assert await get_json(session, config_url) == original
                async with session.post(config_url, json={"error_rate": 0.25}) as ok:
                    assert ok.status == 200
                assert (await get_json(session, config_url))["error_rate"] == 0.25

    run(scenario())


def test_health_ignores_error_rate_and_a_full_queue() -> None:
    """Health answers while the only slot is held by a request that will not finish
    before the test ends: it cannot have queued behind it, and error_rate=1 does not
    touch it."""

    async def scenario() -> None:
        async with serve_backends(one(concurrency=1, service=constant(HELD_MS))) as demo:
            base = f"http://127.0.0.1:{demo.ports['s1']}"
            async with aiohttp.ClientSession() as session:
                (busy,) = await queue_behind_a_held_slot(session, base, 0)
                async with session.put(f"{base}/-/config", json={"error_rate": 1}) as r:
                    assert r.status == 200
                async with session.get(f"{base}/-/health") as health:
                    assert health.status == 200
                    assert await health.text() == "ok"
                stats = await stats_of(session, base)
                assert (stats["in_service"], stats["requests"]) == (1, 1)
                assert not busy.done()
                await abandon([busy])

    run(scenario())


def test_loadgen_stops_at_max_requests() -> None:
    """The schedule runs for an hour: only stopping at max_requests ends the run inside
    the test's deadline (``run``), with exactly that many requests sent."""

    async def scenario() -> None:
        async with serve_backends(one(concurrency=64, service=constant(1))) as demo:
            result = await run_load(f"http://127.0.0.1:{demo.ports['s1']}/", 2000, 3600, 50)
        assert result.sent == result.completed == result.ok == 50
        assert result.served_by == {"s1": 50}
        assert result.dropped == 0

    run(scenario())


def test_loadgen_stops_at_duration() -> None:
    """max_requests is out of reach: the run sends exactly the arrivals its seeded
    schedule has before the duration ends, then stops."""

    async def scenario() -> None:
        async with serve_backends(one(concurrency=64, service=constant(1))) as demo:
            result = await run_load(f"http://127.0.0.1:{demo.ports['s1']}/", 200, 0.5, 10**6)
        assert result.sent == len(list(arrival_offsets(200, 0.5, 1)))
        assert 50 < result.sent < 160
        assert result.completed == result.ok == result.sent

    run(scenario())


def test_arrivals_beyond_max_in_flight_are_dropped_not_sent() -> None:
    async def scenario() -> None:
        async with serve_backends(one(concurrency=1, service=constant(100))) as demo:
            url = f"http://127.0.0.1:{demo.ports['s1']}/"
            result = await run_load(url, 200, 0.3, 10**6, max_in_flight=2, seed=3)
        assert result.dropped > 0
        assert result.timeouts == 0
        assert result.sent + result.dropped == len(list(arrival_offsets(200, 0.3, 3)))
        assert result.completed == result.sent

    run(scenario())


def test_slow_answers_count_as_timeouts_with_null_latency() -> None:
    async def scenario() -> None:
        async with serve_backends(one(concurrency=8, service=constant(500))) as demo:
            url = f"http://127.0.0.1:{demo.ports['s1']}/"
            result = await run_load(url, 100, 5, 3, timeout_s=0.2)
        assert result.sent == result.timeouts == 3
        assert result.completed == 0
        assert result.error_rate == 1.0
        assert set(result.latency_ms.values()) == {None}

    run(scenario())


def test_refused_connections_count_as_errors() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = run(run_load(f"http://127.0.0.1:{closed_port}/", 500, 1, 5))
    assert result.sent == result.completed == result.errors == 5
    assert result.status_counts == {}
    assert result.error_rate == 1.0


def test_result_json_has_exactly_the_documented_shape() -> None:
    async def scenario() -> dict[str, Any]:
        async with serve_backends(one(service=constant(1))) as demo:
            result = await run_load(f"http://127.0.0.1:{demo.ports['s1']}/", 500, 1, 10)
        return result.to_json()

    document = json.loads(json.dumps(run(scenario())))
    assert set(document) == {
        "target_rate_rps", "duration_s", "sent", "completed", "ok", "errors",
        "timeouts", "dropped", "error_rate", "throughput_rps", "latency_ms",
        "status_counts", "served_by",
    }  # fmt: skip
    assert set(document["latency_ms"]) == {"p50", "p95", "p99", "p999", "mean", "max"}
    assert document["status_counts"] == {"200": 10}
    assert document["served_by"] == {"s1": 10}


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/", "http://example.com/", "ftp://127.0.0.1/", "http://[::2]/", ""],
)
def test_non_loopback_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        run(run_load(url, 10, 1, 1))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/", "http://127.9.8.7/", "http://localhost:8/", "http://[::1]:9/"]
)
def test_loopback_urls_are_accepted(url: str) -> None:
    require_loopback_url(url)


def test_poisson_schedule_has_the_target_mean_and_unit_cv() -> None:
    offsets = list(arrival_offsets(100.0, 10_000.0, seed=42))[:20_000]
    gaps = np.diff([0.0, *offsets])
    assert gaps.mean() == pytest.approx(0.01, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert offsets == list(arrival_offsets(100.0, 10_000.0, seed=42))[:20_000]


@given(
    rate=st.floats(0.5, 5_000),
    duration=st.floats(0.001, 5),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=50, deadline=None)
def test_schedule_is_increasing_and_inside_the_duration(
    rate: float, duration: float, seed: int
) -> None:
    offsets = list(arrival_offsets(rate, duration, seed))
    assert all(0 < offset < duration for offset in offsets)
    assert all(a < b for a, b in pairwise(offsets))


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=200), st.floats(0, 1))
def test_quantile_matches_numpy(values: list[float], q: float) -> None:
    expected = float(np.quantile(values, q))
    assert quantile(sorted(values), q) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("distribution", "scv"), [("exponential", 1.0), ("lognormal", 0.5), ("lognormal", 4.0)]
)
def test_service_time_samples_have_the_requested_mean_and_scv(
    distribution: str, scv: float
) -> None:
    service = ServiceTime(distribution=distribution, mean_ms=20.0, scv=scv)
    rng = random.Random(5)
    samples = [service.sample_ms(rng) for _ in range(40_000)]
    mean = statistics.fmean(samples)
    assert mean == pytest.approx(20.0, rel=0.05)
    assert statistics.pvariance(samples) / mean**2 == pytest.approx(scv, rel=0.25)


def test_behaviour_validation_in_the_python_api() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        BackendBehaviour(name="s1", concurrency=0)
    with pytest.raises(ValueError, match="distribution"):
        ServiceTime(distribution="uniform")
    patched = BackendBehaviour(name="s1").patched({"service": {"mean_ms": 60}})
    assert patched.service == ServiceTime(mean_ms=60.0)
    assert isinstance(patched.service.mean_ms, float)


def test_parse_duration() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("10s") == 10.0
    assert parse_duration("5m") == 300.0
    for bad in ("10", "ten s", "-1s", ""):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_backend_spec_parsing_and_loopback_only() -> None:
    host, port, behaviour = parse_backend_spec(
        "s1=[::1]:0,concurrency=2,mean_ms=7.5,distribution=lognormal,scv=2,error_rate=0.1"
    )
    assert (host, port) == ("::1", 0)
    assert behaviour == BackendBehaviour(
        name="s1",
        concurrency=2,
        service=ServiceTime(distribution="lognormal", mean_ms=7.5, scv=2.0),
        error_rate=0.1,
    )
    for bad in ("s1=0.0.0.0:80", "s1=10.1.2.3:80", "s1=127.0.0.1", "s1=127.0.0.1:0,speed=3"):
        with pytest.raises(ValueError, match=r"loopback|must look like|unknown"):
            parse_backend_spec(bad)
    with pytest.raises(SystemExit) as exit_info:
        demo_backend.main(["--backend", "s1=192.168.1.1:8080"])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="unique"):
        DemoBackends([*one("s1"), *one("s1")])


def test_in_a_container_the_backends_may_bind_the_wildcard_and_nothing_else_wider() -> None:
    # The compose stack's backends listen on 0.0.0.0 inside their container.
    for spec, host in (("s1=0.0.0.0:8081", "0.0.0.0"), ("s1=[::]:8081", "::")):
        assert parse_backend_spec(spec, in_container=True)[0] == host
        with pytest.raises(ValueError, match="--in-container"):
            parse_backend_spec(spec)
    # A specific non-loopback address stays refused even there.
    for bad in ("s1=10.1.2.3:80", "s1=172.28.0.10:8081"):
        with pytest.raises(ValueError, match="loopback"):
            parse_backend_spec(bad, in_container=True)
    with pytest.raises(SystemExit) as exit_info:
        demo_backend.main(["--in-container", "--backend", "s1=192.168.1.1:8080"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/", "http://172.28.0.10:8080/", "http://[fd00::1]/"]
)
def test_in_a_container_load_may_go_to_private_addresses(url: str) -> None:
    require_loopback_url(url, in_container=True)
    with pytest.raises(ValueError, match="loopback"):
        require_loopback_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/",
        "http://[2001:4860::8888]/",
        "ftp://10.0.0.1/",
        "http://no-such-host.invalid/",
    ],
)
def test_in_a_container_load_never_goes_to_a_public_or_unknown_address(url: str) -> None:
    with pytest.raises(ValueError, match="private container-network"):
        run(run_load(url, 10, 1, 1, in_container=True))


def test_the_compose_stack_runs_the_demo_programs_in_container_mode() -> None:
    """Without the flag the compose stack's backends and load generators exit at once: the
    native twin rewrites 0.0.0.0 and the hostnames, so only this can catch it."""
    services = yaml.safe_load((REPO_ROOT / "integration/docker-compose.yml").read_text())[
        "services"
    ]
    commands = {
        name: service["command"].split()
        for name, service in services.items()
        if str(service.get("command", "")).startswith("integration.")
    }
    assert set(commands) == {"backends", "load-haproxy", "load-envoy"}
    for name, argv in commands.items():
        assert "--in-container" in argv, name
    with pytest.raises(SystemExit) as exit_info:  # --help: the flags parse, nothing runs
        demo_backend.main([*commands["backends"][1:], "--help"])
    assert exit_info.value.code == 0
    specs = [arg for arg in commands["backends"] if arg.startswith("s")]
    ports = [parse_backend_spec(spec, in_container=True)[1] for spec in specs]
    assert ports == [8081, 8082, 8083, 8084]


def test_command_lines_end_to_end(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    out = tmp_path / "result.json"
    demo = subprocess.Popen(
        [
            sys.executable, "-m", "integration.demo_backend",
            "--backend", "s1=127.0.0.1:0,mean_ms=1,concurrency=16",
            "--backend", "s2=127.0.0.1:0,error_rate=1",
            "--ready-file", str(ready),
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        give_up = time.monotonic() + 10
        while not ready.exists():
            assert demo.poll() is None
            if time.monotonic() > give_up:
                pytest.fail(f"no {ready} within 10s")
            time.sleep(0.02)
        announced = json.loads(ready.read_text())
        assert announced["pid"] == demo.pid
        assert set(announced["backends"]) == {"s1", "s2"}
        url = f"http://127.0.0.1:{announced['backends']['s1']}/"
        argv = ["--url", url, "--rate", "400", "--duration", "2s", "--max-requests", "20"]
        assert loadgen.main([*argv, "--timeout", "1s", "--out", str(out)]) == 0
        assert json.loads(out.read_text())["served_by"] == {"s1": 20}
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=5) == 0
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGKILL)
            demo.wait(timeout=5)
