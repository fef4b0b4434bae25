"""Open-loop load generator for the local stack.

A closed-loop generator (N workers, each waiting for its previous answer) slows down
exactly when the server does and so hides the queueing the agent has to learn from.
Here arrivals follow a seeded Poisson process scheduled against the clock, latency is
measured from the *scheduled* send time (a late send counts against the system), and an
arrival that would push past ``max_in_flight`` is dropped and counted, so a run stays
bounded in time and memory whatever the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

_UNITS_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "p999": 0.999}


def parse_duration(text: str) -> float:
    """Seconds from ``500ms``, ``10s``, ``5m`` or ``1h``; a bare number is ambiguous."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 10s or 5m")
    return float(match.group(1)) * _UNITS_SECONDS[match.group(2)]


def require_loopback_url(url: str, *, in_container: bool = False) -> None:
    """Refuse anything but loopback: this tool must never load someone else's server.

    ``in_container`` (the compose stack's load generators, ``--in-container``) also lets
    a host whose every address is private (RFC 1918, IPv6 ULA) through: a compose
    service name on the stack's own bridge network. A public address is always refused.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme in ("http", "https") and (loopback or (in_container and _private(host))):
        return
    allowed = "loopback (127.0.0.0/8, localhost, [::1])"
    if in_container:
        allowed += " or private container-network addresses"
    raise ValueError(
        f"refusing to send load to {url!r}: only http(s) URLs on {allowed} are allowed"
    )


def _private(host: str) -> bool:
    """Whether ``host`` resolves, and only to private, non-global addresses."""
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found}
    return bool(addresses) and all(a.is_private and not a.is_global for a in addresses)


def arrival_offsets(rate_rps: float, duration_s: float, seed: int) -> Iterator[float]:
    """Poisson arrival times in seconds from the start, strictly before ``duration_s``.

    A pure function of its arguments, so the schedule of a run can be reproduced and
    tested without any network.
    """
    rng = random.Random(seed)
    offset = rng.expovariate(rate_rps)
    while offset < duration_s:
        yield offset
        offset += rng.expovariate(rate_rps)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); needs a non-empty list."""
    position = (len(sorted_values) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * fraction


@dataclass(frozen=True)
class LoadResult:
    """Summary of one run; ``to_json`` is the stable shape benchmarks and tests read.

    ``duration_s`` is measured wall time from the start of the schedule until the last
    request finished or the drain deadline passed, so ``throughput_rps`` (completed per
    second) reflects what the system delivered, not what was asked. ``error_rate`` is
    (errors + timeouts) / sent; latency quantiles cover every completed request,
    failures included, and are None when nothing completed.
    """

    target_rate_rps: float
    duration_s: float
    sent: int
    completed: int
    ok: int
    errors: int
    timeouts: int
    dropped: int
    error_rate: float
    throughput_rps: float
    latency_ms: dict[str, float | None]
    status_counts: dict[str, int]
    served_by: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    """Mutable counters the request tasks fill in; frozen into a LoadResult at the end."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    dropped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    status_counts: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)

    def record(self, scheduled: float, status: int | None, backend: str | None) -> None:
        """One completed request; ``status`` None means the connection itself failed."""
        self.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        if status is not None:
            self.status_counts[str(status)] += 1
        if status is not None and 200 <= status < 300:
            self.ok += 1
        else:
            self.errors += 1
        if backend is not None:
            self.served_by[backend] += 1

    def result(self, target_rate_rps: float, elapsed_s: float) -> LoadResult:
        latencies = sorted(self.latencies_ms)
        latency_ms: dict[str, float | None] = dict.fromkeys([*QUANTILES, "mean", "max"])
        if latencies:
            latency_ms = {k: round(quantile(latencies, q), 3) for k, q in QUANTILES.items()}
            latency_ms["mean"] = round(math.fsum(latencies) / len(latencies), 3)
            latency_ms["max"] = round(latencies[-1], 3)
        failed = self.errors + self.timeouts
        return LoadResult(
            target_rate_rps=float(target_rate_rps),
            duration_s=round(elapsed_s, 3),
            sent=self.sent,
            completed=len(latencies),
            ok=self.ok,
            errors=self.errors,
            timeouts=self.timeouts,
            dropped=self.dropped,
            error_rate=failed / self.sent if self.sent else 0.0,
            throughput_rps=round(len(latencies) / elapsed_s, 3) if elapsed_s > 0 else 0.0,
            latency_ms=latency_ms,
            status_counts=dict(sorted(self.status_counts.items())),
            served_by=dict(sorted(self.served_by.items())),
        )


def _backend_named_in(body: bytes) -> str | None:
    """Demo backends answer ``{"backend": NAME}``; anything else is simply not counted."""
    if not body.startswith(b"{"):
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    backend = payload.get("backend") if isinstance(payload, dict) else None
    return backend if isinstance(backend, str) else None


async def _one_request(
    session: aiohttp.ClientSession, url: str, scheduled: float, tally: _Tally
) -> None:
    try:
        async with session.get(url) as response:
            body = await response.read()
    except TimeoutError:  # before ClientError: aiohttp's timeouts derive from both
        tally.timeouts += 1
        return
    except asyncio.CancelledError:  # still running when the drain deadline passed
        tally.timeouts += 1
        raise
    except (aiohttp.ClientError, OSError):
        tally.record(scheduled, None, None)
        return
    tally.record(scheduled, response.status, _backend_named_in(body))


def _target_url(url: str, path: str) -> str:
    """``path`` is appended to the URL's own path; the default ``/`` keeps ``url`` as is."""
    suffix = path.lstrip("/")
    return f"{url.rstrip('/')}/{suffix}" if suffix else url


def check_arguments(
    url: str,
    rate_rps: float,
    duration_s: float,
    max_requests: int,
    max_in_flight: int,
    timeout_s: float,
    *,
    in_container: bool = False,
) -> None:
    """Fail before any request is sent, with a message naming the bad argument."""
    require_loopback_url(url, in_container=in_container)
    for name, value in (("rate_rps", rate_rps), ("duration_s", duration_s)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    if max_requests < 0 or max_in_flight < 1:
        raise ValueError("max_requests must be >= 0 and max_in_flight >= 1")


async def run_load(
    url: str,
    rate_rps: float,
    duration_s: float,
    max_requests: int,
    max_in_flight: int = 512,
    timeout_s: float = 2.0,
    seed: int = 1,
    path: str = "/",
    *,
    in_container: bool = False,
    offsets: Iterable[float] | None = None,
) -> LoadResult:
    """Offer Poisson load to ``url`` until ``max_requests`` are sent or ``duration_s``
    has passed, then wait at most ``timeout_s`` for the requests still in flight.

    ``offsets`` (seconds from the start, ascending) replaces the Poisson schedule at
    ``rate_rps``: a rate that changes over the run (``integration.compressed_load``).
    Offsets at or past ``duration_s`` are not sent."""
    check_arguments(
        url, rate_rps, duration_s, max_requests, max_in_flight, timeout_s, in_container=in_container
    )
    target = _target_url(url, path)
    tally = _Tally()
    in_flight: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        schedule = arrival_offsets(rate_rps, duration_s, seed) if offsets is None else offsets
        for offset in schedule:
            if tally.sent >= max_requests or offset >= duration_s:
                break
            scheduled = start + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                tally.dropped += 1
                continue
            tally.sent += 1
            task = asyncio.create_task(_one_request(session, target, scheduled, tally))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            _, late = await asyncio.wait(set(in_flight), timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        elapsed_s = time.perf_counter() - start
    return tally.result(rate_rps, elapsed_s)


def run_load_sync(
    url: str,
    rate_rps: float,
    duration_s: float,
    max_requests: int,
    max_in_flight: int = 512,
    timeout_s: float = 2.0,
    seed: int = 1,
    path: str = "/",
    *,
    in_container: bool = False,
) -> LoadResult:
    """For callers without an event loop (benchmarks, scripts)."""
    return asyncio.run(
        run_load(
            url,
            rate_rps,
            duration_s,
            max_requests,
            max_in_flight,
            timeout_s,
            seed,
            path,
            in_container=in_container,
        )
    )


def _duration_argument(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integration.loadgen",
        description="Offer open-loop Poisson load to a loopback URL; print JSON results.",
    )
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=_duration_argument, required=True)
    parser.add_argument("--max-requests", type=int, required=True)
    parser.add_argument("--max-in-flight", type=int, default=512)
    parser.add_argument("--timeout", type=_duration_argument, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--path", default="/", help="appended to the URL's path")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--in-container",
        action="store_true",
        help="also allow hosts on a private container network (a compose service name)",
    )
    args = parser.parse_args(argv)
    try:
        check_arguments(
            args.url,
            args.rate,
            args.duration,
            args.max_requests,
            args.max_in_flight,
            args.timeout,
            in_container=args.in_container,
        )
    except ValueError as exc:
        parser.error(str(exc))
    result = run_load_sync(
        args.url,
        args.rate,
        args.duration,
        args.max_requests,
        args.max_in_flight,
        args.timeout,
        args.seed,
        args.path,
        in_container=args.in_container,
    )
    text = json.dumps(result.to_json(), indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
