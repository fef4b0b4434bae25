"""Apply a WeightPlan to Envoy: one EDS file per changed cluster, swapped in and confirmed.

Envoy never answers a file write, and a rejected file leaves the old assignment in
place without a word. So each cluster's update is confirmed through the admin API:
its ``update_success`` counter must rise and ``/clusters`` must show the planned
weights within ``confirm_timeout``. A rejected or unconfirmed update is reported per
server, counted, and the last confirmed file is put back, so that the file on disk
never disagrees with what Envoy serves. Envoy weights are at least 1: a server planned
at 0 is written as DRAINING (weight 1), and never every server of a cluster.

Whatever stops a file from reaching Envoy (an EDS directory that cannot be written, a
template that fails, an admin API that does not answer) fails that cluster's changes
with a message saying why, counted as ``eds_update_failed``; the agent carries on.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from veloflux.domain.weightplan import (
    DRIVEN_MODES,
    ApplyReport,
    PoolPlan,
    ServerPlan,
    WeightPlan,
    WriteResult,
)
from veloflux.envoy.admin import EnvoyAdmin, EnvoyAdminError
from veloflux.envoy.eds import EdsError, Endpoint, eds_path, render_eds, write_eds
from veloflux.envoy.replies import (
    EnvoyFormatError,
    cluster_stat_prefix,
    parse_update_counters,
    parse_weights_text,
)
from veloflux.util.events import Events


class EnvoySink:
    """Writes EDS files into ``eds_dir`` and confirms each through Envoy's admin API."""

    def __init__(
        self,
        admin: EnvoyAdmin,
        eds_dir: Path,
        confirm_timeout_seconds: float,
        events: Events,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        templates_dir: Path | None = None,
    ) -> None:
        self._admin = admin
        self._eds_dir = eds_dir
        self._templates_dir = templates_dir  # None: the templates shipped in the package
        self._timeout = confirm_timeout_seconds
        self._events = events
        self._monotonic = monotonic
        self._sleep = sleep

    def apply(self, plan: WeightPlan, proxy_level: str = "admin") -> ApplyReport:
        results: list[WriteResult] = []
        for pool in plan.pools:
            changes = [s for s in pool.servers if s.changes]
            if pool.mode in DRIVEN_MODES and changes:
                results += self._apply_pool(pool, changes, plan.generated_at.isoformat())
        return ApplyReport(tuple(results))

    def _apply_pool(
        self, pool: PoolPlan, changes: Sequence[ServerPlan], version: str
    ) -> list[WriteResult]:
        try:
            endpoints = assignment(pool)
            text = render_eds(pool.backend, endpoints, version, self._templates_dir)
            previous = self._last_good(pool.backend)
        except (EdsError, ValueError) as exc:
            return self._failed(pool.backend, changes, f"not written: {exc}")
        wanted = {f"{e.address}:{e.port}": e.weight for e in endpoints}
        if text == previous:
            # Already on disk (another replica of this Envoy, sharing the directory, was
            # written first): nothing to swap in; this one must only show the weights.
            if problem := self._confirm(pool.backend, None, wanted):
                return self._failed(pool.backend, changes, problem)
            return self._done(changes, wanted)
        try:
            before = self._successes(pool.backend)
            write_eds(self._eds_dir, pool.backend, text)
        except (EdsError, EnvoyAdminError, EnvoyFormatError) as exc:
            return self._failed(pool.backend, changes, str(exc))
        problem = self._confirm(pool.backend, before, wanted)
        if problem:
            self._restore(pool.backend, previous)
            return self._failed(pool.backend, changes, problem)
        return self._done(changes, wanted)

    @staticmethod
    def _done(changes: Sequence[ServerPlan], wanted: dict[str, int]) -> list[WriteResult]:
        return [
            WriteResult(s.backend, s.server, s.current_weight, _written(s), wanted[s.server], "")
            for s in changes
        ]

    def _last_good(self, cluster: str) -> str | None:
        """The file in place now, to restore if Envoy refuses the new one; None if none."""
        path = eds_path(self._eds_dir, cluster)
        try:
            return path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise EdsError(f"cannot read the current {path}: {exc}") from None

    def _successes(self, cluster: str) -> tuple[float, float]:
        prefix = cluster_stat_prefix(cluster).replace(".", "\\.")
        query = urllib.parse.urlencode({"format": "json", "filter": f"^{prefix}update_"})
        stats = self._admin.get_json(f"/stats?{query}")
        counters = parse_update_counters(stats, cluster)
        return counters.success, counters.rejected

    def _confirm(
        self, cluster: str, before: tuple[float, float] | None, wanted: dict[str, int]
    ) -> str:
        """'' once Envoy took the file and serves ``wanted``; else why not. ``before``:
        the update counters before the swap (None: no swap, the weights alone count)."""
        deadline = self._monotonic() + self._timeout
        while True:
            try:
                success, rejected = self._successes(cluster) if before else (1.0, 0.0)
                if before and rejected > before[1]:
                    return "Envoy rejected the file (update_rejected rose); last good kept"
                shown = parse_weights_text(self._admin.get_text("/clusters"), cluster)
                took = before is None or success > before[0]
                if took and all(shown.get(k) == w for k, w in wanted.items()):
                    return ""
            except (EnvoyAdminError, EnvoyFormatError) as exc:
                last = str(exc)
            else:
                last = "Envoy did not show the planned weights"
            if self._monotonic() >= deadline:
                return f"not confirmed within {self._timeout:g}s: {last}"
            self._sleep(0.05)

    def _restore(self, cluster: str, previous: str | None) -> None:
        if previous is None:
            return
        try:
            write_eds(self._eds_dir, cluster, previous)
        except EdsError as exc:
            self._events.record("eds_restore_failed", str(exc))

    def _failed(self, cluster: str, changes: Sequence[ServerPlan], error: str) -> list[WriteResult]:
        self._events.record("eds_update_failed", f"cluster {cluster}: {error}")
        return [
            WriteResult(s.backend, s.server, s.current_weight, _written(s), None, error)
            for s in changes
        ]


def _written(server: ServerPlan) -> int:
    """The weight that goes into the file for a planned weight (0 becomes DRAINING at 1)."""
    return max(1, server.planned_weight or 0)


def assignment(pool: PoolPlan) -> list[Endpoint]:
    """Every endpoint of the cluster as the file must list it after this plan.

    The file is the whole assignment, so unchanged servers are written at their
    current weight. A server planned at 0 is DRAINING; if that would drain them all,
    the plan is refused (``EdsError``).
    """
    endpoints = []
    for s in pool.servers:
        address, _, port = s.server.rpartition(":")
        weight = s.planned_weight if s.planned_weight is not None else s.current_weight
        if weight is None:
            raise EdsError(f"{s.server}: no weight known, so the assignment cannot be written")
        health = "DRAINING" if weight == 0 else ""
        endpoints.append(Endpoint(address, int(port), max(1, weight), health))
    if endpoints and all(e.health == "DRAINING" for e in endpoints):
        raise EdsError(f"cluster {pool.backend}: the plan would drain every endpoint")
    return endpoints
