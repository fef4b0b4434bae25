"""Apply a WeightPlan to HAProxy through the runtime API, then read every weight back.

All ``set server`` commands and then one ``show servers state BACKEND`` per backend
written travel pipelined on one connection, so a 1,000-server update is one round
trip. A write counts as done only when HAProxy accepted it *and* the read-back shows
the planned weight. One state dump per backend, rather than a ``get weight`` per
server, means HAProxy answers one read-back command per backend, not one per server
(the whole update of 1,000 weights is timed in docs/benchmarks.md, "HAProxy with a
1,000-server backend", by bench/bench_haproxy_1000.py). ``send`` sends and
``PendingWrites.report`` checks, apart: replicas are all sent their writes first.
"""

from __future__ import annotations

from collections.abc import Sequence

from veloflux.domain.weightplan import ApplyReport, ServerPlan, WeightPlan, WriteResult
from veloflux.errors import SinkRejected, UnsafeName
from veloflux.haproxy.replies import StatsFormatError, parse_servers_state_columns
from veloflux.haproxy.runtime import PendingReplies, RuntimeAPI, RuntimeAPIError
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
        return self.send(plan, proxy_level).report()

    def send(self, plan: WeightPlan, proxy_level: str = "unknown") -> PendingWrites:
        """``apply`` in two halves: the commands are sent now, the replies read and
        checked by ``PendingWrites.report`` (which raises and counts what ``apply``
        does), so that HAProxy replicas all sent their writes work at the same time."""
        if proxy_level in ("user", "operator"):
            return PendingWrites(self._events, self._api.address, proxy_level, [], [])
        changes = plan.changes()
        writable, refused = _commands(changes)
        if not writable:
            return PendingWrites(self._events, self._api.address, proxy_level, [], refused)
        sets = [f"set server {c.backend}/{c.server} weight {c.planned_weight}" for c in writable]
        backends = list(dict.fromkeys(c.backend for c in writable))
        reads = [f"show servers state {backend}" for backend in backends]
        replies = self._api.send_many(sets + reads)
        return PendingWrites(
            self._events, self._api.address, proxy_level, writable, refused, backends, replies
        )


class PendingWrites:
    """Writes sent to HAProxy (``HAProxySink.send``) whose replies are still due."""

    def __init__(
        self,
        events: Events,
        address: str,
        proxy_level: str,
        writable: list[ServerPlan],
        refused: list[WriteResult],
        backends: Sequence[str] = (),
        replies: PendingReplies | None = None,
    ) -> None:
        self._events, self._address, self._level = events, address, proxy_level
        self._writable, self._refused = writable, refused
        self._backends, self._replies = backends, replies

    def report(self) -> ApplyReport:
        """Every write's outcome, checked against the read-back; raises ``SinkRejected``
        when nothing could be written (see ``HAProxySink.apply``)."""
        if self._level in ("user", "operator"):
            message = (
                f"HAProxy runtime API {self._address} is at level {self._level}: "
                "setting weights needs 'stats socket ... level admin'"
            )
            self._events.record("sink_rejected", message, sink="haproxy")
            raise SinkRejected(message)
        for result in self._refused:
            self._events.record("sink_refused_name", result.error, sink="haproxy")
        results = list(self._refused)
        if self._replies is not None:
            results += self._checked()
        return ApplyReport(tuple(results))

    def close(self) -> None:
        """Drop the replies unread."""
        if self._replies is not None:
            self._replies.close()

    def _checked(self) -> list[WriteResult]:
        assert self._replies is not None
        changes = self._writable
        try:
            replies = self._replies.wait()
        except RuntimeAPIError as exc:
            self._events.record("sink_unavailable", str(exc), sink="haproxy")
            raise SinkRejected(f"HAProxy runtime API {exc}") from exc
        shown = {
            backend: _read_back(text)
            for backend, text in zip(self._backends, replies[len(changes) :], strict=True)
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


def _read_back(text: str) -> dict[tuple[str, str], int] | str:
    """A backend's ``show servers state`` reply as each server's weight, or why it cannot
    be read. Read as columns: a 1,000-server backend has no ServerState made per line."""
    try:
        states = parse_servers_state_columns(text)
    except StatsFormatError as exc:
        return f"read-back failed: {exc}"
    return dict(
        zip(zip(states.backend, states.server, strict=True), states.user_weight, strict=True)
    )


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
    change: ServerPlan, set_reply: str, shown: dict[tuple[str, str], int] | str
) -> WriteResult:
    """One write's outcome: HAProxy's answer to the ``set``, then what the read-back
    (``shown``: the backend's servers, or why they could not be read) says."""
    assert change.planned_weight is not None
    confirmed: int | None = None
    error = f"HAProxy refused: {set_reply.strip()}" if set_reply.strip() else ""
    if isinstance(shown, str):
        error = error or shown
    elif (weight := shown.get((change.backend, change.server))) is None:
        error = error or "read-back failed: the server is not in 'show servers state'"
    else:
        confirmed = weight
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
