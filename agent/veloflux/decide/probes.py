"""Weight probes: small scheduled moves of a few servers' capacity weights.

The model must learn how a server's latency answers its load, and a history recorded
under a controller holds almost no load change that was not a *reaction*: a server
gets less because it was slow, so rate and latency move against each other and a
model fitted to them learns that load lowers latency (bench/bench_model_load.py
measured it). Probes give the history load changes that nothing caused: on the
capacity rung, a rotating group of about a tenth of the pool has its weight
multiplied by e^-size (0.1: about -10%) for ``hold_ticks`` ticks, then given back:
down only, so that what a probe moves is spread thin over the rest of the pool. Near
a good split a deviation costs about its square, so this costs a fraction of a
percent of the pool's latency (docs/benchmarks.md measures what it costs).

The schedule (``domain/probe_schedule.py``) is a pure function of the pool, its
servers and the observation's time: anything that reads the journal (training, the
benchmarks) can tell which intervals were probed, and how, without a log of its own.
A server is probed only while its estimate is confident, healthy and has nothing to
drain, and none while the pool runs at ``MAX_PROBED_UTILIZATION`` of its capacity
or more.
"""

from __future__ import annotations

from datetime import datetime

from veloflux.domain.advice import PoolCapacity
from veloflux.domain.probe_schedule import ProbeSettings, scheduled

# No probe in a pool that runs at or past this utilization: there even the few percent
# a probe moves onto the other servers can start a queue that outlasts it.
MAX_PROBED_UTILIZATION = 0.8


def probe_factors(
    pool: str, capacity: PoolCapacity, taken_at: datetime, settings: ProbeSettings
) -> dict[str, float]:
    """This tick's probes of ``pool`` on the capacity rung: the schedule, less the
    servers it must leave alone (see the module's docstring)."""
    if capacity.overload or not capacity.offered_rps or not capacity.capacity_rps:
        return {}
    if capacity.offered_rps >= MAX_PROBED_UTILIZATION * capacity.capacity_rps:
        return {}
    plan = scheduled(pool, capacity.servers, taken_at, settings)
    out = {}
    for name, factor in plan.items():
        estimate = capacity.servers[name]
        steady = estimate.confidence > 0 and not estimate.fell and estimate.capacity
        steady = steady and estimate.health >= 0.995 and not estimate.health_limited
        steady = steady and estimate.drain >= 0.995
        if steady:
            out[name] = factor
    return out
