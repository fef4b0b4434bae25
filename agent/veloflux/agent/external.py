"""Weights changed outside VeloFlux: seen, counted, and respected for a while.

An SRE who types ``set server app/s1 weight 10`` during an incident means it. Before,
the next tick stepped the weight back toward the plan without a word, so the agent
quietly fought the human. Now a managed server whose weight differs from what
VeloFlux last wrote (and whose proxy did not restart, which resets weights by
itself) is an *external change*: it becomes an event, and the weight is held as a
temporary pin for ``policy.external_change_hold`` (``0s``: not held, the old
behaviour). The daemon audits each one and counts it in
``veloflux_external_changes_total``; the plan's reason names it.

Only ticks that write compare: a paused daemon and a dry-run write nothing, so what
the operator set meanwhile becomes the baseline instead (resuming hands the weights
back to VeloFlux as they are, not as a stack of holds). An operator's pin, from the
config or the API, always wins over a hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from veloflux.domain.observation import Observation
from veloflux.domain.weightplan import ServerPlan, WeightPlan
from veloflux.util.names import server_key


@dataclass(frozen=True)
class ExternalChange:
    """One weight found different from what VeloFlux last wrote, and its hold."""

    server: str  # BACKEND/SERVER
    written: int  # what VeloFlux last wrote
    found: int  # what the proxy had at this tick
    seen_at: datetime
    held_until: datetime | None  # None: not held (policy.external_change_hold is 0s)

    def reason(self) -> str:
        until = f"; held until {self.held_until.isoformat()}" if self.held_until else ""
        return f"weight set outside VeloFlux ({self.found}; it had written {self.written}){until}"

    def to_json(self) -> dict[str, object]:
        return {
            "server": self.server,
            "written": self.written,
            "found": self.found,
            "seen_at": self.seen_at.isoformat(),
            "held_until": self.held_until.isoformat() if self.held_until else None,
        }


class ExternalChanges:
    """Finds external changes against the weights VeloFlux wrote and keeps their holds."""

    def __init__(self, hold_seconds: float) -> None:
        self._hold = timedelta(seconds=hold_seconds)
        self._holds: dict[str, ExternalChange] = {}

    def find(
        self, observation: Observation, written: Mapping[str, int], now: datetime
    ) -> list[ExternalChange]:
        """The changes new at this tick (a held server changed again counts anew)."""
        self._holds = {k: c for k, c in self._holds.items() if c.held_until and c.held_until > now}
        found = []
        for row in observation.rows:
            key = server_key(row.pool, row.server)
            last = written.get(key)
            if last is None or not math.isfinite(row.weight) or int(row.weight) == last:
                continue
            weight = int(row.weight)
            held = self._holds.get(key)
            if held is not None and held.found == weight:
                continue
            until = now + self._hold if self._hold > timedelta(0) else None
            change = ExternalChange(key, last, weight, now, until)
            found.append(change)
            if until is not None:
                self._holds[key] = change
        return found

    def holds(self) -> tuple[ExternalChange, ...]:
        return tuple(self._holds.values())

    def forget(self) -> None:
        """A tick that wrote nothing: the operator's weights are the new baseline."""
        self._holds.clear()


def name_holds(plan: WeightPlan, holds: Mapping[str, ExternalChange]) -> WeightPlan:
    """The plan with each held server's reason saying why it keeps its weight."""
    if not holds:
        return plan

    def named(s: ServerPlan) -> ServerPlan:
        change = holds.get(server_key(s.backend, s.server))
        if change is None or not s.reason.startswith("override"):
            return s
        return s._replace(reason=f"held: {change.reason()}")

    pools = tuple(replace(p, servers=tuple(map(named, p.servers))) for p in plan.pools)
    return replace(plan, pools=pools)
