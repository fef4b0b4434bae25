"""Apply a WeightPlan to HAProxy through the runtime API, then read every weight back.

All ``set server`` commands and then one ``show servers state BACKEND`` per backend
written travel pipelined on one connection, so a 1,000-server update is one round
trip. A write counts as done only when HAProxy accepted it *and* the read-back shows
the planned weight. One state dump per backend, rather than a ``get weight`` per
server, means HAProxy answers one read-back command per backend, not one per server
(the whole update of 1,000 weights is timed in docs/benchmarks.md, "HAProxy with a
1,000-server backend", by bench/bench_haproxy_1000.py).

HAProxy has no compare-and-set: a weight set by hand after a tick read the proxy and
before its write would be overwritten. So each backend to be written is read again just
before the write, and a server whose weight moved since the tick read it is left alone
(the next tick sees the change and holds it, ``policy.external_change_hold``). That
shrinks the window from the whole tick (its sources, its model, its plan) to one round
trip; it cannot close it. ``look`` sends that read, ``Look.send`` sends the writes and
``PendingWrites.report`` checks them, apart: replicas are all asked before any reply is
read, and all written before any write's reply is read.
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
        does)."""
        return self.look(plan, proxy_level).send()

    def look(self, plan: WeightPlan, proxy_level: str = "unknown") -> Look:
        """The first step of a write: each backend ``plan`` changes is read again now,
        its reply due at ``Look.send``, which leaves alone a server whose weight moved
        since the plan was made and writes the others."""
        if proxy_level in ("user", "operator"):
            return Look(self._api, self._events, proxy_level, [], [])
        writable, refused = _commands(plan.changes())
        if not writable:
            return Look(self._api, self._events, proxy_level, [], refused)
        backends = list(dict.fromkeys(c.backend for c in writable))
        check = self._api.send_many([f"show servers state {backend}" for backend in backends])
        return Look(self._api, self._events, proxy_level, writable, refused, check)


class Look:
    """The weights of the backends to be written, asked for again (``HAProxySink.look``)."""

    def __init__(
        self,
        api: RuntimeAPI,
        events: Events,
        proxy_level: str,
        writable: list[ServerPlan],
        refused: list[WriteResult],
        check: PendingReplies | None = None,
    ) -> None:
        self._api, self._events, self._level = api, events, proxy_level
        self._writable, self._refused, self._check = writable, refused, check

    def send(self) -> PendingWrites:
        """Wait for the fresh weights, then send the writes of every server still at the
        weight its plan was made from, each backend's read-back after them."""
        address = self._api.address
        if self._check is None:
            return PendingWrites(self._events, address, self._level, self._refused)
        try:
            writable, moved = self._unmoved()
        except RuntimeAPIError as exc:
            # HAProxy did not answer the read: nothing is sent to it this tick, and the
            # writes are reported as writes to an unreachable proxy are.
            failed = PendingReplies(self._api, 0, error=exc)
            return PendingWrites(
                self._events, address, self._level, self._refused, (), self._writable,
                replies=failed,
            )  # fmt: skip
        if not writable:
            return PendingWrites(self._events, address, self._level, self._refused, moved)
        sets = [f"set server {c.backend}/{c.server} weight {c.planned_weight}" for c in writable]
        backends = list(dict.fromkeys(c.backend for c in writable))
        reads = [f"show servers state {backend}" for backend in backends]
        replies = self._api.send_many(sets + reads)
        return PendingWrites(
            self._events, address, self._level, self._refused, moved, writable, backends, replies
        )

    def close(self) -> None:
        """Drop the fresh weights unread."""
        if self._check is not None:
            self._check.close()

    def _unmoved(self) -> tuple[list[ServerPlan], list[WriteResult]]:
        """The writes whose server HAProxy still has at the planned-from weight, and a
        result for each of the others; raises ``RuntimeAPIError`` when HAProxy did not
        answer. A reply that cannot be parsed holds nothing back: the writes go, and
        their own read-back judges them."""
        assert self._check is not None
        texts = self._check.wait()
        now: dict[tuple[str, str], int] = {}
        for text in texts:
            shown = _read_back(text)
            if isinstance(shown, dict):
                now.update(shown)
        keep: list[ServerPlan] = []
        moved: list[WriteResult] = []
        for change in self._writable:
            found = now.get((change.backend, change.server))
            if found is None or found == change.current_weight:
                keep.append(change)
                continue
            error = (
                f"left alone: its weight became {found} after this tick read "
                f"{change.current_weight} (set outside VeloFlux?)"
            )
            self._events.record(
                "weight_moved_before_write", f"{change.backend}/{change.server}: {error}",
                sink="haproxy",
            )  # fmt: skip
            moved.append(_unwritten(change, error))
        return keep, moved


class PendingWrites:
    """Writes sent to HAProxy (``HAProxySink.send``) whose replies are still due."""

    def __init__(
        self,
        events: Events,
        address: str,
        proxy_level: str,
        refused: list[WriteResult],
        moved: Sequence[WriteResult] = (),
        writable: Sequence[ServerPlan] = (),
        backends: Sequence[str] = (),
        replies: PendingReplies | None = None,
    ) -> None:
        self._events, self._address, self._level = events, address, proxy_level
        self._refused, self._moved, self._writable = refused, moved, writable
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
        results = [*self._refused, *self._moved]
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
            refused.append(_unwritten(change, str(exc)))
            continue
        safe.append(change)
    return safe, refused


def _unwritten(change: ServerPlan, why: str) -> WriteResult:
    """The result of a change not sent to HAProxy, and why."""
    assert change.planned_weight is not None
    return WriteResult(
        change.backend, change.server, change.current_weight, change.planned_weight, None, why
    )


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
