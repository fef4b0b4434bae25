"""Apply a WeightPlan to HAProxy through the runtime API, then read every weight back.

All ``set server`` commands and then one ``show servers state BACKEND`` per backend
written travel pipelined on one connection, so a 1,000-server update is one round
trip. A write counts as done only when HAProxy accepted it *and* the read-back shows
the planned weight. One state dump per backend, rather than a ``get weight`` per
server, means HAProxy answers one read-back command per backend, not one per server
(the whole update of 1,000 weights is timed in docs/benchmarks.md, "HAProxy with a
1,000-server backend", by bench/bench_haproxy_1000.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from veloflux.domain.weightplan import ApplyReport, ServerPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, UnsafeName
from veloflux.haproxy.replies import ServerState, StatsFormatError, parse_servers_state
from veloflux.haproxy.runtime import RuntimeAPI, RuntimeAPIError
from veloflux.util.events import Events
from veloflux.util.names import check_name


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
        backends = list(dict.fromkeys(c.backend for c in changes))
        reads = [f"show servers state {backend}" for backend in backends]
        try:
            replies = self._api.run_many(sets + reads)
        except RuntimeAPIError as exc:
            self._events.record("sink_unavailable", str(exc), sink="haproxy")
            raise SinkRejected(f"HAProxy runtime API {exc}") from exc
        shown = {
            backend: _read_back(text)
            for backend, text in zip(backends, replies[len(changes) :], strict=True)
        }
        results = []
        for change, set_reply in zip(changes, replies[: len(changes)], strict=True):
            result = _verify(change, set_reply, shown[change.backend])
            if not result.ok:
                self._events.record(
                    "sink_rejected",
                    f"{change.backend}/{change.server}: {result.error}",
                    sink="haproxy",
                )
            results.append(result)
        return results


def _read_back(text: str) -> dict[tuple[str, str], ServerState] | str:
    """A backend's ``show servers state`` reply, or why it cannot be read."""
    try:
        return parse_servers_state(text)
    except StatsFormatError as exc:
        return f"read-back failed: {exc}"


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


def _verify(
    change: ServerPlan, set_reply: str, shown: dict[tuple[str, str], ServerState] | str
) -> WriteResult:
    """One write's outcome: HAProxy's answer to the ``set``, then what the read-back
    (``shown``: the backend's servers, or why they could not be read) says."""
    assert change.planned_weight is not None
    confirmed: int | None = None
    error = f"HAProxy refused: {set_reply.strip()}" if set_reply.strip() else ""
    if isinstance(shown, str):
        error = error or shown
    elif (state := shown.get((change.backend, change.server))) is None:
        error = error or "read-back failed: the server is not in 'show servers state'"
    else:
        confirmed = state.user_weight
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
