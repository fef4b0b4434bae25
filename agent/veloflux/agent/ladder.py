"""The confidence ladder's memory across ticks, for one proxy's agent.

Each tick the ``Ladder`` joins to the model's advice what needs the past: the
capacity rung's estimates (``decide/capacity_rung.py``, replayed from the journal on
the first tick), the overloads that begin (counted once), and the model's authority
under each pool's switchback test (``decide/switchback.py``): a bounded tilt of the
capacity weights, or of the static weights when there is no capacity estimate, in
the test's tilt blocks only. The planner then reads it all from the Advice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from veloflux.config.schema import Config, PolicySection
from veloflux.decide.capacity_rung import CapacityRung, RungSettings
from veloflux.decide.planner import on_capacity_rung, static_weight
from veloflux.decide.probes import probe_factors
from veloflux.decide.switchback import Switchback
from veloflux.decide.tilt import capacity_base, headroom_bound, model_tilt, tilted_shares
from veloflux.domain.advice import Advice, PoolAdvice, PoolCapacity
from veloflux.domain.observation import Observation
from veloflux.domain.probe_schedule import ProbeSettings
from veloflux.util.events import Events
from veloflux.util.names import server_key

if TYPE_CHECKING:
    from veloflux.history.journal import Journal


class Ladder:
    """What the rungs remember between ticks; ``join`` once per tick."""

    def __init__(self, config: Config, events: Events, journal: Journal | None) -> None:
        self._config = config
        self._events = events
        self._journal = journal
        self._capacity = CapacityRung(RungSettings.from_config(config))
        self._overloaded: set[str] = set()
        self._replayed = False
        self._switchbacks: dict[str, Switchback] = {}
        ai = config.ai
        self._last_probes: dict[str, dict[str, float]] = {}  # each pool's last probes
        self._probes = ProbeSettings(
            ai.probe_size, ai.probe_share, ai.probe_ticks, config.interval_seconds
        )

    def join(self, advice: Advice, observation: Observation, policy: PolicySection) -> Advice:
        """The advice with this tick's capacity view, overload and gated tilt;
        ``policy`` is the tick's (the operator's run-time pins included)."""
        return self._ladder(advice, observation, self._capacity_view(observation), policy)

    def _capacity_view(self, observation: Observation) -> Mapping[str, PoolCapacity]:
        """The capacity rung's view after this observation. On the first tick the rung
        first replays what the journal recorded: a restarted daemon or a one-shot
        dry-run then starts from the estimates the running agent had."""
        if not self._replayed:
            self._replayed = True
            self._replay_capacity(observation)
        return self._capacity.update(observation)

    def _replay_capacity(self, observation: Observation) -> None:
        if self._journal is None or not self._capacity.has_signal(observation):
            return
        from veloflux.history.journal import HistoryError
        from veloflux.history.replay import replay

        span = self._capacity.memory_intervals * self._config.interval_seconds
        pools = [pool.name for pool in observation.pools]
        try:
            since = observation.taken_at - timedelta(seconds=span)
            frame = self._journal.read(since=since, until=observation.taken_at, pools=pools)
        except HistoryError as exc:
            self._events.record("history_read_failed", f"capacity replay: {exc}")
            return
        for past in replay(frame):
            self._capacity.update(past)

    def _ladder(
        self,
        advice: Advice,
        observation: Observation,
        capacity: Mapping[str, PoolCapacity],
        policy: PolicySection,
    ) -> Advice:
        """The capacity rung's view and the model's gated tilt joined to each pool's
        advice; an overload that begins is counted and logged once (the metric shows
        it while it lasts)."""
        overloaded = {name for name, view in capacity.items() if view.overload}
        for name in sorted(overloaded - self._overloaded):
            self._events.record("pool_overload", f"{name}: {capacity[name].overload}")
        self._overloaded = overloaded
        pools: dict[str, PoolAdvice] = {}
        for name, pool in advice.pools.items():
            probed = self._probed(pool, capacity.get(name), observation, policy)
            pools[name] = self._gated(probed, observation, policy)
        return replace(advice, pools=pools)

    def _probed(
        self,
        pool: PoolAdvice,
        view: PoolCapacity | None,
        observation: Observation,
        policy: PolicySection,
    ) -> PoolAdvice:
        """The pool's advice with its capacity view and, on the capacity rung, this
        tick's weight probes (``decide/probes.py``), whether or not a model exists:
        the first model learns from them. An overloaded pool's latency findings stand
        down (``PoolAdvice.without_latency_findings``): overload holds static weights."""
        before = self._last_probes.pop(pool.pool, {})
        if view is not None and view.overload:
            return replace(pool.without_latency_findings(), capacity=view)
        if view is None or not on_capacity_rung(observation, pool.pool, policy, view):
            return replace(pool, capacity=view)
        probe = probe_factors(pool.pool, view, observation.taken_at, self._probes)
        self._last_probes[pool.pool] = probe
        return replace(pool, capacity=view, probe=probe, probed_before=before)

    def _gated(
        self, pool: PoolAdvice, observation: Observation, policy: PolicySection
    ) -> PoolAdvice:
        """The model's authority for this tick, as the pool's switchback test allows.

        On the capacity rung the model's shares become a bounded tilt of the capacity
        weights; without capacity estimates, of the static weights: the model alone
        moves the split only by the same bound, and only in the test's tilt blocks
        (in the others the pool is in fallback). When the model may not act at all,
        the test pauses (its block under way is dropped unjudged)."""
        bound = self._config.ai.max_tilt
        test = self._switchbacks.setdefault(pool.pool, Switchback(pool.pool))
        view = pool.capacity
        if bound <= 0 and not pool.blocked:
            pool = replace(pool, blocked="the model does not act (ai.max_tilt is 0)")
        if pool.blocked or (view is not None and view.overload):
            test.pause()
            return replace(pool, switchback=test.snapshot())
        on_capacity = view is not None and on_capacity_rung(observation, pool.pool, policy, view)
        base = (
            capacity_base(view)
            if on_capacity and view is not None
            else _statics(observation, pool.pool, policy)
        )
        if on_capacity and view is not None:
            bound = headroom_bound(bound, view)
        tilt = model_tilt(base, pool, bound)
        if not tilt:
            test.pause()
            return replace(pool, switchback=test.snapshot())
        test.record(pool.cost)
        state = test.next_arm()
        tilt = {name: value * state.scale for name, value in tilt.items()}
        if on_capacity:
            return replace(pool, tilt=tilt if state.tilt_on else {}, switchback=state)
        if not state.tilt_on:
            return replace(pool, blocked=f"model held back: {state.describe()}", switchback=state)
        shares = tilted_shares(base, tilt)
        servers = {
            name: advice._replace(share=shares.get(name)) if advice.share is not None else advice
            for name, advice in pool.servers.items()
        }
        return replace(pool, servers=servers, switchback=state)


def _statics(observation: Observation, pool: str, policy: PolicySection) -> dict[str, float]:
    """Each server's static weight: the split the model alone may lean on."""
    out = {}
    for row in observation.servers_of(pool):
        current = row.weight if math.isfinite(row.weight) else None
        initial = row.initial_weight if math.isfinite(row.initial_weight) else None
        weight = static_weight(
            server_key(pool, row.server),
            int(initial) if initial is not None else None,
            int(current) if current is not None else None,
            policy,
        )
        if weight:
            out[row.server] = float(weight)
    return out
