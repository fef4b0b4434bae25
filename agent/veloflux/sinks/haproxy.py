"""Apply a WeightPlan to HAProxy through the runtime API, then read every weight back.

All ``set server`` commands and their ``get weight`` read-backs travel pipelined on
one connection, so a 1,000-server update is one round trip. A write counts as done
only when HAProxy accepted it *and* the read-back shows the planned weight.
"""

from __future__ import annotations

from collections.abc import Sequence

from veloflux.errors import SinkRejected, UnsafeName
from veloflux.events import Events
from veloflux.haproxy_replies import StatsFormatError, parse_weight_reply
from veloflux.haproxy_runtime import RuntimeAPI, RuntimeAPIError
from veloflux.names import check_name
from veloflux.weightplan import ApplyReport, ServerPlan, WeightPlan, WriteResult


class HAProxySink:
    """Writes weights to one HAProxy; the API client and event counter are injected."""

    def __init__(self, api: RuntimeAPI, events: Events) -> None:
        self._api = api
        self._events = events

    def apply(self, plan: WeightPlan, proxy_level: str = "unknown") -> ApplyReport:
        """Write every change in ``plan`` and verify it; never raises for one bad server.

        Raises ``SinkRejected`` only when nothing could be written at all (socket not
        reachable, or not at level admin, which is refused even with nothing to write
        so that a misconfigured socket is found before the day it matters).
        Per-server refusals are in the report.
        """
        if proxy_level in ("user", "operator"):
            message = (
                f"HAProxy runtime API {self._api.address} is at level {proxy_level}: "
                "setting weights needs 'stats socket ... level admin'"
            )
            self._events.record("sink_rejected", message, sink="haproxy")
            raise SinkRejected(message)
        changes = plan.changes()
        if not changes:
            return ApplyReport(())
        writable, refused = _commands(changes)
        for result in refused:
            self._events.record("sink_refused_name", result.error, sink="haproxy")
        results = list(refused)
        if writable:
            results += self._write(writable)
        return ApplyReport(tuple(results))

    def _write(self, changes: Sequence[ServerPlan]) -> list[WriteResult]:
        sets = [f"set server {c.backend}/{c.server} weight {c.planned_weight}" for c in changes]
        gets = [f"get weight {c.backend}/{c.server}" for c in changes]
        try:
            replies = self._api.run_many(sets + gets)
        except RuntimeAPIError as exc:
            self._events.record("sink_unavailable", str(exc), sink="haproxy")
            raise SinkRejected(f"HAProxy runtime API {exc}") from exc
        results = []
        for change, set_reply, get_reply in zip(
            changes, replies[: len(changes)], replies[len(changes) :], strict=True
        ):
            result = _verify(change, set_reply, get_reply)
            if not result.ok:
                self._events.record(
                    "sink_rejected",
                    f"{change.backend}/{change.server}: {result.error}",
                    sink="haproxy",
                )
            results.append(result)
        return results


def _commands(changes: Sequence[ServerPlan]) -> tuple[list[ServerPlan], list[WriteResult]]:
    """Split changes into those safe to send and those refused for their names."""
    safe: list[ServerPlan] = []
    refused: list[WriteResult] = []
    for change in changes:
        assert change.planned_weight is not None
        try:
            check_name("backend", change.backend)
            check_name("server", change.server)
        except UnsafeName as exc:
            refused.append(
                WriteResult(
                    change.backend,
                    change.server,
                    change.current_weight,
                    change.planned_weight,
                    None,
                    str(exc),
                )
            )
            continue
        safe.append(change)
    return safe, refused


def _verify(change: ServerPlan, set_reply: str, get_reply: str) -> WriteResult:
    assert change.planned_weight is not None
    confirmed: int | None = None
    error = ""
    if set_reply.strip():
        error = f"HAProxy refused: {set_reply.strip()}"
    try:
        confirmed, _initial = parse_weight_reply(get_reply)
    except StatsFormatError as exc:
        error = error or f"read-back failed: {exc}"
    if not error and confirmed != change.planned_weight:
        error = f"read-back shows weight {confirmed}, not {change.planned_weight}"
    return WriteResult(
        change.backend,
        change.server,
        change.current_weight,
        change.planned_weight,
        confirmed,
        error,
    )
