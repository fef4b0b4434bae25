"""The invariant checker's rules, as a pure state machine fed with what it saw.

``integration/invariants.py`` polls the proxies every 100 ms and tails the audit log,
the daemon's log and the fault scheduler's event log; everything it reads goes through
``Checker`` here, which holds no socket and reads no clock, so that the unit tests
replay recorded sequences through exactly the rules the soak runs. Nothing here imports
VeloFlux: the checker must judge the agent by its documented rules, not by its code
(a bug copied into the judge would pass).

Vocabulary. A *view* is one place a weight can be read: each HAProxy replica's runtime
API (named by its socket, as the audit log's ``replica`` names it), Envoy's admin API
(``envoy``) and the EDS file (``eds``). Views form *families*: the HAProxy replicas, and
Envoy with its EDS file, which must end equal. A *change* is a weight (or a state the
agent writes, an Envoy endpoint DRAINING) that differs between two consecutive polls of
one view. Every change must be explained: by an audit line (the agent's tick, or the
CLI), by a fault the scheduler injected (a reload resets weights to the
configuration's), or by a weight the scheduler set by hand. What is not explained is a
violation, and a change the audit explains is judged by the rules of the actor that
wrote it.

The rules, and what makes each exact (no false alarm on what the agent is documented
to do, no miss beyond the window named):

- ``out_of_bounds``: a tick's write outside [min_weight, max_weight] of the policy in
  force, unless it is a pin (or a hold of a weight set by hand), written as pinned, or
  a step back toward the bounds from a weight outside them (a bound tightened by a
  reload: the step limit still holds on the way back).
- ``step_too_large``: a tick's write further than ``max(1, floor(origin *
  max_step_ratio))`` from every legitimate origin: what each view of the family showed
  at the poll before the write (the agent plans from one replica's weight and writes
  it to all), or, once a view was reset (reload, restart), what VeloFlux had set
  before (the agent restores from there). 0 may become 1, 1 may become 0 or 2. Pins,
  holds, ``revert`` and ``apply`` have no step limit. The deadband only holds weights
  still: it allows no larger move, so it has no rule of its own.
- ``below_min_in_rotation``: a write of 0 after which fewer than
  ``min_servers_in_rotation`` other servers are UP with a weight; a server counts if
  it was UP at the agent's observation or at the poll after the write.
- ``held_server_written`` / ``static_pool_written``: any write (the CLI's too) to a
  server in MAINT or DRAIN both before the agent's observation and after the write,
  or to a backend with a static algorithm (static-rr, first).
- ``pin_violated``: a tick writing another weight to a pinned server, except the one
  tick that may have read the operator state before the pin command returned.
- ``pin_not_applied``: a pinned server showing another weight once two ticks have
  ended that began after the pin, after the server left MAINT/DRAIN, after a weight
  set by hand and after any fault that kept the agent from writing that proxy.
- ``written_while_paused``: a tick stamped after a pause command returned (the API
  answers only once a tick in progress has ended) and before resume was run; a
  ``revert`` pauses too.
- ``replicas_diverged``: two views of a family that both answer, apart on a server
  not in MAINT/DRAIN, after two ticks have ended that began after the difference
  appeared (and after any fault or pause that kept the agent from writing).
- ``unaudited_change``: a change no audit line explains within the grace (a tick's
  lines are appended at its end), that is not a reset by an injected fault, a weight
  the scheduler set by hand, an EDS update undone within the confirmation timeout (the
  agent puts the last confirmed file back when Envoy does not show an update), or a
  write of the tick that an injected ``kill -9`` cut short. A line lost to an injected
  full disk is not reported when the write came before the disk was freed (the agent
  is documented to go on), but the write is judged by the other rules.

Policies come from the config the daemon started with and from each reload the
scheduler made that the daemon adopted; between the SIGHUP and the daemon's "config
reloaded" line a tick may run on either, and is judged by the more lenient.

Times are seconds since the epoch (``time.time()``), the same clock the agent stamps
its audit lines with.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HAPROXY_MAX_WEIGHT = 256
STATIC_ALGORITHMS = frozenset({"static-rr", "first"})
# A tick's audit lines are appended at its end, after every proxy was written and
# Envoy confirmed (up to envoy.confirm_timeout): a change waits this long for its line.
DEFAULT_GRACE = 12.0
# How far an audit line's time (the tick's observation) may lie from the poll that saw
# its write: a tick over two proxies stamps its lines with the later observation.
MATCH_SPAN = 30.0
# How long operator actions without a scheduler record are taken to need to settle
# (the API waits up to max(5 s, 2 intervals) for a tick in progress after a pause).
QUIESCE_FLOOR = 5.0
# The longest a tick can take (Prometheus's and Envoy's timeouts, Envoy's confirmation):
# a write this long before a kill -9 may have lost its audit line with the process.
KILLED_TICK = 6.0
# How long before a tick's audit time its first proxy may have been written (a tick
# over HAProxy and Envoy stamps its lines with Envoy's observation, read after
# HAProxy was written).
FLEET_SLACK = 1.5
# How long after a change its audit line may come (the tick's end: Envoy confirmed,
# up to envoy.confirm_timeout, then every line appended): until then a change takes
# only a line stamped close to it.
AUDIT_LAG = 5.0
# How much earlier than its log line's time minus its duration a tick may have begun
# (the operator state is read just before the tick's clock starts).
TICK_START_SLACK = 0.1


# --- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The part of ``policy`` the rules need (the agent's defaults where unset)."""

    min_weight: int = 1
    max_weight: int = HAPROXY_MAX_WEIGHT
    max_step_ratio: float = 0.5
    min_servers_in_rotation: int = 1
    external_change_hold: float = 900.0  # seconds: the documented default, 15m

    @staticmethod
    def from_config(data: Mapping[str, Any]) -> Policy:
        policy = data.get("policy") or {}
        return Policy(
            int(policy.get("min_weight", 1)),
            int(policy.get("max_weight", HAPROXY_MAX_WEIGHT)),
            float(policy.get("max_step_ratio", 0.5)),
            int(policy.get("min_servers_in_rotation", 1)),
            duration(policy.get("external_change_hold", "15m"), 900.0),
        )

    def max_step(self, origin: int) -> int:
        """The largest move one tick may make from ``origin``: a ratio of it, at least 1
        (so 0 may become 1, and 1 may become 0 or 2)."""
        return max(1, math.floor(origin * self.max_step_ratio))

    def step_ok(self, origin: int, new: int) -> bool:
        return abs(new - origin) <= self.max_step(origin)


@dataclass(frozen=True)
class Server:
    """One server as one view shows it: its weight (0 for an Envoy endpoint DRAINING,
    which is how the agent writes a planned 0), its state (UP, DOWN, MAINT, DRAIN) and,
    on HAProxy, its configured (initial) weight."""

    weight: int | None
    state: str = "UP"
    initial: int | None = None


@dataclass(frozen=True)
class Reading:
    """One view at one poll. ``identity`` names the process (pid and start time): a new
    one means the weights were reset to the configuration's."""

    view: str
    family: str
    up: bool
    identity: str = ""
    pools: Mapping[str, Mapping[str, Server]] = field(default_factory=dict)
    algorithms: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    time: float
    readings: Mapping[str, Reading]


@dataclass(frozen=True)
class Violation:
    time: float
    rule: str
    view: str
    pool: str
    server: str
    evidence: str

    def to_json(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "rule": self.rule,
            "view": self.view,
            "pool": self.pool,
            "server": self.server,
            "evidence": self.evidence,
        }


# Rule names, as they appear in the violation lines and the soak's figures.
RULES = (
    "out_of_bounds",
    "step_too_large",
    "below_min_in_rotation",
    "held_server_written",
    "static_pool_written",
    "pin_violated",
    "pin_not_applied",
    "written_while_paused",
    "replicas_diverged",
    "unaudited_change",
)

# Faults that reset a view's runtime weights to the configuration's (and what each
# targets: a HAProxy replica by its socket, Envoy by "envoy").
RESETTING = frozenset({"haproxy_reload", "haproxy_restart", "haproxy_kill", "replica_gone"})
# Faults during which the agent cannot (or may not) bring a family to its weights: the
# liveness rules (replicas equal, pins applied) wait until they are over.
DISTURBING = RESETTING | frozenset({"envoy_restart", "eds_unwritable"})


@dataclass
class Fault:
    """One action of the scheduler, from its event log: a start line, later an end."""

    kind: str
    start: float
    end: float | None = None
    target: str = ""
    ok: bool = True
    data: Mapping[str, Any] = field(default_factory=dict)

    def covers(self, t: float, after: float = 0.0) -> bool:
        end = math.inf if self.end is None else self.end + after
        return self.start <= t <= end


@dataclass(frozen=True)
class TickLine:
    """One tick of the daemon, from its JSON log: when it began and ended, whether it
    was paused, and which proxies failed in it."""

    start: float
    end: float
    paused: bool
    failed: tuple[str, ...] = ()


@dataclass
class Change:
    """A value that differs between two consecutive polls of one view."""

    view: str
    family: str
    pool: str
    server: str
    old: int | None
    new: int | None
    before: float  # the poll that still showed ``old``
    seen: float  # the poll that first showed ``new``
    index: int  # position of ``before`` in the checker's history
    matched: bool = False


@dataclass
class AuditLine:
    entry: Mapping[str, Any]
    time: float
    read_at: float
    views: tuple[str, ...]  # the views this write landed on
    consumed: set[str] = field(default_factory=set)
    judged: bool = False


@dataclass(frozen=True)
class Pin:
    weight: int
    since: float  # when the operator's command returned: the pin is in force
    until: float = math.inf
    start: float = -math.inf  # when the command started: the pin may be written from then


# --- the checker -------------------------------------------------------------------------


class Checker:
    """Every rule, judged as the readings, audit lines, ticks and faults come in.

    ``families`` maps each family to its views and how the audit names them: HAProxy
    replicas by their socket (the audit's ``replica``), Envoy's two views by nothing
    (its writes carry no replica). ``policies`` starts with the config the daemon
    started with; a reload the scheduler made adds one (``reload_config`` faults carry
    the policy they wrote and whether the daemon took it).
    """

    def __init__(
        self,
        policy: Policy,
        families: Mapping[str, Sequence[str]],
        audit_names: Mapping[str, str],
        interval: float,
        managed: Mapping[str, Sequence[str]],
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.policies: list[tuple[float, float, Policy]] = [(-math.inf, -math.inf, policy)]
        self.families = {name: tuple(views) for name, views in families.items()}
        self.family_of = {v: f for f, views in self.families.items() for v in views}
        self.audit_names = dict(audit_names)  # audit replica name -> view
        self.interval = interval
        self.managed = {f: tuple(pools) for f, pools in managed.items()}
        self.grace = grace
        self.history: deque[Snapshot] = deque()
        self.offset = 0  # index of history[0] since the start
        self.pending: list[Change] = []
        self.unexplained: list[Change] = []  # the last ones no audit line took
        self.lines: list[AuditLine] = []
        self.faults: list[Fault] = []
        self.open_faults: dict[str, Fault] = {}
        self.ticks: list[TickLine] = []
        self.pins: dict[str, list[Pin]] = {}  # "pool/server" -> its pins, in order
        self.holds: dict[str, list[Pin]] = {}  # weights set outside VeloFlux, held
        self.paused: list[tuple[float, float]] = []  # [effective, ended)
        self._pause_from: float | None = None
        self.last_written: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.resets: dict[str, list[float]] = {}  # view -> times it was reset or left
        self.divergence: dict[tuple[str, str, str], float] = {}
        # When each server was last seen in MAINT or DRAIN: nothing is written to it
        # then, so the liveness rules count ticks from after it left.
        self.held_seen: dict[tuple[str, str, str], float] = {}
        self.reported: set[tuple[str, ...]] = set()
        self.violations: list[Violation] = []
        self.snapshots = 0
        self.now = -math.inf  # the latest time fed in

    # --- feeding -----------------------------------------------------------------------

    def add_fault(self, record: Mapping[str, Any]) -> None:
        """A line of the scheduler's event log: ``{"id", "kind", "phase", "time", ...}``."""
        key = str(record.get("id"))
        t = float(record["time"])
        if record.get("phase") == "start":
            fault = Fault(str(record["kind"]), t, target=str(record.get("target", "")))
            self.open_faults[key] = fault
            self.faults.append(fault)
            if fault.kind == "pin":  # written from now on, in force once the command returns
                server = str(record["server"])
                self._end_pin(server, t)
                self.pins.setdefault(server, []).append(
                    Pin(int(record["weight"]), math.inf, start=t)
                )
            elif fault.kind == "unpin":
                # A tick that starts while the command runs may already read the pin
                # cleared (the API clears it before it answers): over from the start.
                # An unpin that fails puts the pin back (``_operator``).
                self._end_pin(str(record["server"]), t)
            return
        fault_or_none = self.open_faults.pop(key, None)
        if fault_or_none is None:
            fault_or_none = Fault(str(record["kind"]), t, target=str(record.get("target", "")))
            self.faults.append(fault_or_none)
        fault = fault_or_none
        fault.end = t
        fault.ok = bool(record.get("ok", True))
        fault.data = {k: v for k, v in record.items() if k not in ("id", "kind", "phase", "time")}
        self._operator(fault)

    def _operator(self, fault: Fault) -> None:
        """Operator actions, as the scheduler ran them: pause (and revert, which pauses
        first) take effect when the command returns, since the API answers only once
        a tick in progress has ended; resume ends a pause when the command starts."""
        if fault.kind == "pin":
            self._settle_pin(fault)
        if fault.kind == "unpin" and not fault.ok:
            self._unpin_failed(fault)
        if not fault.ok or fault.end is None:
            return
        if fault.kind in ("pause", "revert") and self._pause_from is None:
            self._pause_from = fault.end
        elif fault.kind == "resume" and self._pause_from is not None:
            self.paused.append((self._pause_from, fault.start))
            self._pause_from = None
        elif fault.kind == "unpin":
            self._end_pin(str(fault.data["server"]), fault.start)
        elif fault.kind == "reload_config" and fault.data.get("adopted"):
            policy = Policy.from_config(fault.data.get("config") or {})
            self.policies.append((fault.start, fault.end, policy))

    def _unpin_failed(self, fault: Fault) -> None:
        """An unpin that was refused: the pin it ended at its start holds on."""
        pins = self.pins.get(str(fault.data.get("server")), [])
        if pins and pins[-1].until == fault.start:
            pins[-1] = Pin(pins[-1].weight, pins[-1].since, math.inf, pins[-1].start)

    def _settle_pin(self, fault: Fault) -> None:
        """A pin's command returned: in force from now, or, refused, never was."""
        pins = self.pins.get(str(fault.data.get("server")), [])
        for i, pin in enumerate(pins):
            if pin.start == fault.start and pin.since == math.inf:
                if fault.ok and fault.end is not None:
                    pins[i] = Pin(pin.weight, fault.end, pin.until, pin.start)
                else:
                    del pins[i]
                return

    def _end_pin(self, server: str, t: float) -> None:
        pins = self.pins.get(server)
        if pins and pins[-1].until == math.inf:
            pins[-1] = Pin(pins[-1].weight, pins[-1].since, t, pins[-1].start)

    def _hold(self, entry: Mapping[str, Any]) -> None:
        """A weight set outside VeloFlux, which the agent holds as a temporary pin until
        ``held_until``: writing it (to a replica that lacks it) is a pin's write."""
        server, found = entry.get("server"), _int(entry.get("new"))
        if not isinstance(server, str) or found is None:
            return
        until = _seconds(entry.get("held_until"))
        since = _seconds(entry.get("time"))
        self.holds.setdefault(server, []).append(
            Pin(found, since, until if not math.isnan(until) else math.inf)
        )

    def add_tick(self, tick: TickLine) -> None:
        self.ticks.append(tick)

    def add_audit(self, entry: Mapping[str, Any], read_at: float) -> None:
        action = entry.get("action", "tick")
        if action == "external_change":
            self._hold(entry)
            return
        if action not in ("tick", "apply", "revert", "on_exit"):
            return  # operator actions come from the scheduler's log, with their timing
        replica = entry.get("replica")
        family = self._family_of_pool(str(entry.get("backend", "")))
        if replica is not None:
            view = self.audit_names.get(str(replica))
            views: tuple[str, ...] = (view,) if view else ()
        else:
            views = self.families.get(family, ())
        line = AuditLine(entry, _seconds(entry.get("time")), read_at, views)
        self.now = max(self.now, read_at)
        self.lines.append(line)
        self._match_lines()

    def add_snapshot(self, snap: Snapshot) -> list[Violation]:
        """One poll of every view: find changes, match and judge, then the liveness
        rules. Returns the violations found in this step."""
        before = len(self.violations)
        self.snapshots += 1
        self.now = max(self.now, snap.time)
        previous = self.history[-1] if self.history else None
        self.history.append(snap)
        if previous is not None:
            self._changes(previous, snap)
        self._match_lines()
        self._expire(snap.time)
        self._liveness(snap)
        self._trim(snap.time)
        return self.violations[before:]

    def finish(self, now: float) -> list[Violation]:
        """Judge what is still waiting (the end of a run): a change with no line by now,
        after the grace, is unexplained."""
        before = len(self.violations)
        self.now = max(self.now, now + AUDIT_LAG)
        self._match_lines()
        self._expire(now + self.grace + 1, final=True)
        return self.violations[before:]

    # --- changes -----------------------------------------------------------------------

    def _changes(self, previous: Snapshot, snap: Snapshot) -> None:
        index = self.offset + len(self.history) - 2
        for view, reading in snap.readings.items():
            old = previous.readings.get(view)
            if old is None or not reading.up:
                if old is not None and old.up and not reading.up:
                    self.resets.setdefault(view, []).append(snap.time)
                continue
            if not old.up or old.identity != reading.identity:
                # Back, or a new process: its weights are the configuration's (or, for
                # Envoy, the EDS file's). Such a return is judged against the faults.
                self.resets.setdefault(view, []).append(snap.time)
                self._returned(view, old, reading, previous.time, snap.time, index)
                continue
            for pool, servers in reading.pools.items():
                before_pool = old.pools.get(pool, {})
                for server, now in servers.items():
                    was = before_pool.get(server)
                    if was is None or was.weight == now.weight:
                        continue
                    self.pending.append(
                        Change(
                            view,
                            reading.family,
                            pool,
                            server,
                            was.weight,
                            now.weight,
                            previous.time,
                            snap.time,
                            index,
                        )
                    )

    def _returned(
        self, view: str, old: Reading, now: Reading, before: float, seen: float, index: int
    ) -> None:
        """A view back from an outage or restarted: HAProxy comes back at its configured
        weights, which only a fault the scheduler injected may explain; Envoy comes back
        with the EDS file's. A difference otherwise is left to the other rules."""
        if now.family != "haproxy":
            return
        explained = any(
            f.kind in RESETTING and f.target in (view, "") and f.covers(seen, after=2.0)
            for f in self.faults
        ) or any(f.kind == "haproxy_reload" and f.covers(before) for f in self.faults)
        if explained:
            return
        for pool, servers in now.pools.items():
            for server, s in servers.items():
                was = old.pools.get(pool, {}).get(server)
                if was is not None and was.weight != s.weight and s.weight == s.initial:
                    self._report(
                        seen,
                        "unaudited_change",
                        view,
                        pool,
                        server,
                        f"{view} restarted (weights {was.weight} -> {s.weight}, its configured "
                        "weight) with no fault injected",
                    )

    def _match_lines(self) -> None:
        """Pair each audit line with the change that shows its write: same view, pool,
        server and new weight, first seen no earlier than the line's time (the tick's
        observation; less ``FLEET_SLACK``, since a tick over two proxies stamps its
        lines with the later observation, after the first proxy was written) and
        begun no later than a tick's length after it. The closest pairs in time are
        made first, so a change whose own line was lost (a full disk) never takes a
        later write's line, and a line whose write never showed (its replica reloaded
        under it) never takes a later change."""
        pairs: list[tuple[float, int, int, str]] = []
        for i, line in enumerate(self.lines):
            e = line.entry
            new = _int(e.get("new"))
            for view in line.views:
                if view in line.consumed:
                    continue
                for j, change in enumerate(self.pending):
                    if change.matched or change.view != view or change.new != new:
                        continue
                    if e.get("backend") != change.pool or e.get("server") != change.server:
                        continue
                    if change.seen < line.time - FLEET_SLACK:
                        continue
                    if change.before > line.time + KILLED_TICK:
                        continue
                    distance = abs(change.seen - line.time)
                    if distance > FLEET_SLACK and self.now - change.seen < AUDIT_LAG:
                        continue  # a far line: wait, the write's own may still come
                    pairs.append((distance, i, j, view))
        for _distance, i, j, view in sorted(pairs):
            line, change = self.lines[i], self.pending[j]
            if change.matched or view in line.consumed:
                continue
            change.matched = True
            line.consumed.add(view)
            self._judge_write(line, change)

    def _expire(self, now: float, final: bool = False) -> None:
        """Changes past the grace with no line, and lines nobody's change matched."""
        waiting: list[Change] = []
        for change in self.pending:
            if change.matched:
                continue
            if now - change.seen < self.grace:
                waiting.append(change)
                continue
            self._unexplained(change)
        self.pending = waiting
        kept: list[AuditLine] = []
        for line in self.lines:
            if not line.judged and (final or now - line.read_at > self.grace):
                # A write no poll saw (overwritten within 100 ms, or its view reset):
                # its own figures are all there is to judge it by.
                self._judge_write(line, None)
            if now - line.read_at <= 2 * MATCH_SPAN and not final:
                kept.append(line)
        self.lines = kept

    def _unexplained(self, change: Change) -> None:
        self.unexplained.append(change)
        self.unexplained = [c for c in self.unexplained if change.seen - c.seen <= MATCH_SPAN]
        self._explain(change)

    def _explain(self, change: Change) -> None:
        """A change no audit line explains: a weight the scheduler set by hand, Envoy's
        own rollback of an update it did not confirm, an audit line lost to the full
        disk; otherwise a violation, and judged as the agent's write all the same."""
        if self._hand_set(change) or self._killed_mid_tick(change):
            return
        if self._reset_by_fault(change):
            return
        if change.family == "envoy" and self._rolled_back(change):
            return  # a file written, then put back when Envoy did not confirm it
        full = self._disk_full(change)
        if not full:
            self._report(
                change.seen,
                "unaudited_change",
                change.view,
                change.pool,
                change.server,
                f"{change.old} -> {change.new} seen between {change.before:.3f} and "
                f"{change.seen:.3f}, no audit line, no fault",
            )
        entry = {
            "backend": change.pool,
            "server": change.server,
            "old": change.old,
            "new": change.new,
            "action": "tick",
            "reason": "(presumed: unaudited)",
        }
        line = AuditLine(entry, self._observed_for(change), change.seen, (change.view,))
        self._judge_write(line, change)

    def _read_from(self, line: AuditLine) -> float:
        """The earliest the write of ``line`` may have read the proxies: the start of
        the tick logged around the line's time, or, that tick not logged yet (its line
        comes at its end, after its audit lines), ``FLEET_SLACK`` before the line's
        time, which is the plan's and comes after every proxy was read (a slow source
        can hold a tick a second and more between its read of HAProxy and its write)."""
        starts = self._tick_of(line)
        if starts:
            return min(max(starts) - TICK_START_SLACK, line.time)
        first = self.history[0].time if self.history else line.time
        return max(line.time - FLEET_SLACK, min(first, line.time))

    def _set_by_hand_between(self, key: str, start: float, end: float) -> bool:
        return any(
            f.kind == "hand_set" and f.data.get("server") == key and start <= f.start <= end
            for f in self.faults
        )

    def _tick_of(self, line: AuditLine) -> list[float]:
        """The start of the logged tick whose span holds the line's time (none yet: a
        tick's log line comes at its end, after its audit lines)."""
        return [
            t.start
            for t in self.ticks
            if t.start - TICK_START_SLACK <= line.time <= t.end + TICK_START_SLACK
        ]

    def _observed_for(self, change: Change) -> float:
        """When the tick that made an unaudited write began (what stands for its audit
        line's time): the latest tick logged around the write, or, none logged, a
        tick's length before it. A state set after that, the tick could not see."""
        starts = [
            t.start
            for t in self.ticks
            if t.start - TICK_START_SLACK <= change.seen
            and t.end + TICK_START_SLACK >= change.before
        ]
        return max(starts) - TICK_START_SLACK if starts else change.before - KILLED_TICK

    def _reset_by_fault(self, change: Change) -> bool:
        """A HAProxy weight back at its configured value while a fault that resets the
        view acted, seen without a new process: a reload that fell between two reads
        of one poll (the old process's identity, the new one's weights)."""
        if change.family != "haproxy":
            return False
        snap = self._before(change.seen + 1e-6)
        reading = snap.readings.get(change.view) if snap is not None else None
        s = reading.pools.get(change.pool, {}).get(change.server) if reading else None
        if s is None or s.initial is None or change.new != s.initial:
            return False
        return any(
            f.kind in RESETTING
            and f.target in (change.view, "")
            and (f.covers(change.seen, after=2.0) or f.covers(change.before))
            for f in self.faults
        )

    def _hand_set(self, change: Change) -> bool:
        for f in self.faults:
            if f.kind != "hand_set" or not f.covers(change.seen, after=1.0):
                continue
            d = f.data
            same = d.get("server") == f"{change.pool}/{change.server}"
            if same and d.get("weight") == change.new and f.target in (change.view, ""):
                return True
        return False

    def _killed_mid_tick(self, change: Change) -> bool:
        """A write of a tick the scheduler's ``kill -9`` cut short: the tick in flight,
        or the last one logged (its line is logged before its audit lines are
        appended). Only a change that may have happened after the start of the last
        tick logged before the kill, and before the kill, is exempt."""
        for f in self.faults:
            if f.kind != "daemon_kill" or change.before > f.start:
                continue
            logged = [t.start for t in self.ticks if t.end <= f.start]
            last = max(logged, default=f.start - KILLED_TICK)
            if change.seen >= last - TICK_START_SLACK:
                return True
        return False

    def _rolled_back(self, change: Change) -> bool:
        """An EDS update Envoy did not confirm (restarting, slow, rejecting it): the
        agent put the last confirmed file back, and says so in no audit line since
        nothing changed in the end. Exactly a change undone on the same view within
        ``KILLED_TICK`` (envoy.confirm_timeout and a poll), neither of them audited."""
        for other in [*self.pending, *self.unexplained]:
            if other is change or other.matched or other.view != change.view:
                continue
            if (other.pool, other.server) != (change.pool, change.server):
                continue
            if (other.old, other.new) == (change.new, change.old) and (
                abs(other.seen - change.seen) <= KILLED_TICK
            ):
                return True
        return False

    def _disk_full(self, change: Change) -> bool:
        """Whether the change's audit line may have been lost to an injected full disk:
        the tick appends its lines at its end, right after its writes, so the write
        came before the disk was freed, and no earlier than the longest tick around
        before it was filled (a tick that began before the fill and ended in it)."""
        for f in self.faults:
            if f.kind != "disk_full" or (f.end is not None and change.before >= f.end):
                continue
            around = [t.end - t.start for t in self.ticks if abs(t.end - f.start) <= KILLED_TICK]
            longest = max(around, default=1.0) + 2 * TICK_START_SLACK
            if change.seen >= f.start - longest:
                return True
        return False

    # --- judging one write ---------------------------------------------------------------

    def _judge_write(self, line: AuditLine, change: Change | None) -> None:
        """Judge one write, then remember it as what VeloFlux last set there (after:
        the origins of a write are what was there before it)."""
        try:
            if not line.judged:
                line.judged = True
                self._judge(line, change)
        finally:
            if change is not None:
                self._remember(line, change)

    def _judge(self, line: AuditLine, change: Change | None) -> None:
        e = line.entry
        pool, server = str(e.get("backend", "")), str(e.get("server", ""))
        new = _int(e.get("new"))
        view = change.view if change else (line.views[0] if line.views else "")
        seen = change.seen if change else line.read_at
        action = e.get("action", "tick")
        key = f"{pool}/{server}"
        if new is None:
            return
        family = self._family_of_pool(pool)
        state = self._state_at(family, pool, server, self._read_from(line), seen)
        if self._algorithm(family, pool) in STATIC_ALGORITHMS:
            self._report(
                seen,
                "static_pool_written",
                view,
                pool,
                server,
                f"{action} wrote {new} to a {self._algorithm(family, pool)} backend",
            )
        if state in ("MAINT", "DRAIN"):
            self._report(
                seen,
                "held_server_written",
                view,
                pool,
                server,
                f"{action} wrote {new} while the server was in {state}",
            )
        if action not in ("tick", "on_exit"):
            return  # the CLI's apply and revert: no step limit, nor pins, by design
        if action == "tick" and self._paused_at(line.time):
            self._report(
                seen,
                "written_while_paused",
                view,
                pool,
                server,
                f"tick of {line.time:.3f} wrote {new}; paused since "
                f"{self._paused_at(line.time):.3f}",
            )
        pin = self._pin_at(key, line.time)
        policies = self._policies_at(line.time)
        if self._pin_written(key, new, line.time):
            return  # a pin is written as pinned, at once: neither bounds nor step apply
        if pin is None and self._held(key, new, line.time):
            return  # a hold is written as found, like a pin
        if pin is not None and new != pin.weight and not self._stale_tick(pin, line.time):
            self._report(
                seen,
                "pin_violated",
                view,
                pool,
                server,
                f"tick of {line.time:.3f} wrote {new}; pinned at {pin.weight} since "
                f"{pin.since:.3f}",
            )
        if action == "on_exit":
            return
        origins = self._origins(line, change, family, pool, server)
        if not any(_within(new, p, origins) for p in policies):
            bounds = ", ".join(f"[{p.min_weight}, {p.max_weight}]" for p in policies)
            self._report(
                seen,
                "out_of_bounds",
                view,
                pool,
                server,
                f"tick wrote {new} from {sorted(origins)}, bounds {bounds}",
            )
        if origins and not any(p.step_ok(o, new) for p in policies for o in origins):
            steps = ", ".join(f"{p.max_step_ratio:g}" for p in policies)
            self._report(
                seen,
                "step_too_large",
                view,
                pool,
                server,
                f"tick wrote {new}; from {sorted(origins)} the step limit (ratio {steps}) "
                f"allows at most {[policies[-1].max_step(o) for o in sorted(origins)]}",
            )
        if new == 0:
            self._rotation(line, change, family, pool, server, policies, seen, view)

    def _remember(self, line: AuditLine, change: Change) -> None:
        new = _int(line.entry.get("new"))
        if new is not None:
            self.last_written[(change.view, change.pool, change.server)] = (change.seen, new)

    def _origins(
        self, line: AuditLine, change: Change | None, family: str, pool: str, server: str
    ) -> set[int]:
        """What a tick may have moved from: the weight every view of the family showed
        just before the write (the agent plans from one replica's, and writes each the
        same weight), and, after a reload reset the weights, what VeloFlux had set
        before it (the agent restores from there)."""
        origins: set[int] = set()
        if change is not None and change.old is not None:
            origins.add(change.old)
            snap = self._at_index(change.index)
        else:
            old = _int(line.entry.get("old"))
            if old is not None:
                origins.add(old)
            snap = self._before(line.time)
        # A weight set by hand between the tick's read and its write (the tick waiting on
        # a slow source) is one the tick could not see: it stepped from what it read,
        # what the views showed before it read them.
        read = self._read_from(line)
        seen = change.seen if change else line.read_at
        raced = self._set_by_hand_between(f"{pool}/{server}", read, seen)
        for shown in (snap, self._before(read) if raced else None):
            if shown is None:
                continue
            for view in self.families.get(family, ()):
                reading = shown.readings.get(view)
                if reading is None or not reading.up:
                    continue
                s = reading.pools.get(pool, {}).get(server)
                if s is not None and s.weight is not None:
                    origins.add(s.weight)
        for view in self.families.get(family, ()):
            written = self.last_written.get((view, pool, server))
            if written is None:
                continue
            at, weight = written
            if any(at <= r <= seen for r in self._resets(family)):
                origins.add(weight)
        return origins

    def _resets(self, family: str) -> Iterable[float]:
        for view in self.families.get(family, ()):
            yield from self.resets.get(view, ())

    def _rotation(
        self,
        line: AuditLine,
        change: Change | None,
        family: str,
        pool: str,
        server: str,
        policies: list[Policy],
        seen: float,
        view: str,
    ) -> None:
        """A write of 0 must leave the pool at least ``min_servers_in_rotation`` servers
        UP with a weight. A server counts if it was UP at the agent's observation or at
        the poll after the write (a state changed between the two is the agent's to
        miss), so a MAINT set by an operator mid-tick is never blamed on the agent."""
        after = self.history[-1] if change is None else self._at_index(change.index + 1)
        before = self._before(line.time)
        if after is None or view not in after.readings:
            return
        count = 0
        for name, s in after.readings[view].pools.get(pool, {}).items():
            if name == server or not s.weight:
                continue
            states = {s.state}
            if before is not None and view in before.readings:
                was = before.readings[view].pools.get(pool, {}).get(name)
                if was is not None:
                    states.add(was.state)
            if "UP" in states:
                count += 1
        need = min(p.min_servers_in_rotation for p in policies)
        if count < need:
            self._report(
                seen,
                "below_min_in_rotation",
                view,
                pool,
                server,
                f"wrote 0, leaving {count} server(s) in rotation; minimum {need}",
            )

    # --- liveness: replicas equal, pins applied ----------------------------------------

    def _liveness(self, snap: Snapshot) -> None:
        """Two views of a family that both answer must show the same weights once two
        ticks that began after they both answered (and after any fault that kept the
        agent from writing them) have ended; a pinned server must show its pin then."""
        for family, views in self.families.items():
            up = [snap.readings[v] for v in views if v in snap.readings and snap.readings[v].up]
            if len(up) < 2:
                for key in [k for k in self.divergence if k[0] == family]:
                    del self.divergence[key]
                continue
            first = up[0]
            for pool in self.managed.get(family, ()):
                if self._algorithm(family, pool) in STATIC_ALGORITHMS:
                    continue
                for server, s in first.pools.get(pool, {}).items():
                    others = [r.pools.get(pool, {}).get(server) for r in up[1:]]
                    states = {s.state} | {o.state for o in others if o is not None}
                    weights = {s.weight} | {o.weight for o in others if o is not None}
                    key = (family, pool, server)
                    if states & {"MAINT", "DRAIN"}:
                        self.held_seen[key] = snap.time
                    if len(weights) == 1 or states & {"MAINT", "DRAIN"}:
                        self.divergence.pop(key, None)
                    else:
                        since = self.divergence.setdefault(key, snap.time)
                        self._judge_divergence(snap, family, pool, server, since, weights)
        for pinned, pins in self.pins.items():
            if not pins:
                continue
            pin = pins[-1]
            if pin.until != math.inf or snap.time < pin.since:
                continue
            pool, _, server = pinned.partition("/")
            family = self._family_of_pool(pool)
            for view in self.families.get(family, ()):
                reading = snap.readings.get(view)
                if reading is None or not reading.up:
                    continue
                shown = reading.pools.get(pool, {}).get(server)
                if shown is None or shown.weight == pin.weight:
                    continue
                if shown.state in ("MAINT", "DRAIN"):
                    self.held_seen[(family, pool, server)] = snap.time
                    continue
                settled = max(
                    pin.since,
                    self._disturbed_until(family, view, snap.time),
                    self.held_seen.get((family, pool, server), -math.inf),
                    self._hand_set_until(pinned, snap.time),
                )
                if self._ticks_since(settled, family, snap.time) >= 2:
                    self._report(
                        snap.time,
                        "pin_not_applied",
                        view,
                        pool,
                        server,
                        f"shows {shown.weight}, pinned at {pin.weight} since {pin.since:.3f}; "
                        "two ticks have ended since",
                        once=("pin", pinned, str(pin.since), view),
                    )

    def _judge_divergence(
        self,
        snap: Snapshot,
        family: str,
        pool: str,
        server: str,
        since: float,
        weights: set[int | None],
    ) -> None:
        settled = max(since, self._disturbed_until(family, "", snap.time))
        if self._ticks_since(settled, family, snap.time) >= 2:
            self._report(
                snap.time,
                "replicas_diverged",
                family,
                pool,
                server,
                f"weights {sorted(w for w in weights if w is not None)} since {since:.3f}, "
                "two ticks ended since both answered",
                once=("diverged", family, pool, server, str(since)),
            )

    def _hand_set_until(self, key: str, now: float) -> float:
        """When the scheduler last set ``key``'s weight by hand (the agent puts a pin
        back at its next tick)."""
        times = [
            now if f.end is None else f.end
            for f in self.faults
            if f.kind == "hand_set" and f.data.get("server", "") == key
        ]
        return max(times, default=-math.inf)

    def _disturbed_until(self, family: str, view: str, now: float) -> float:
        """The end of the last fault that kept the agent from writing this family (or
        -inf); one still going reaches ``now``. A pause counts too (nothing is written
        while it lasts), and so does the daemon's own absence."""
        until = -math.inf
        for f in self.faults:
            if family == "haproxy":
                touches = (f.kind in RESETTING and f.target in (view, "")) or (
                    f.kind in RESETTING and not view
                )
            else:
                touches = f.kind in ("envoy_restart", "eds_unwritable")
            if touches or f.kind in ("daemon_kill", "reload_config"):
                until = max(until, now if f.end is None else f.end)
        for start, end in self.paused:
            if start <= now:
                until = max(until, min(end, now))
        if self._pause_from is not None:
            until = now
        return until

    def _ticks_since(self, t: float, family: str, now: float) -> int:
        """Ticks that began after ``t``, ended by ``now``, were not paused and read and
        wrote ``family`` (the tick line names a proxy that failed)."""
        return sum(
            1
            for tick in self.ticks
            if tick.start - TICK_START_SLACK >= t
            and tick.end + 0.2 <= now
            and not tick.paused
            and not any(family in f for f in tick.failed)
        )

    # --- lookups ---------------------------------------------------------------------------

    def _family_of_pool(self, pool: str) -> str:
        for family, pools in self.managed.items():
            if pool in pools:
                return family
        return ""

    def _algorithm(self, family: str, pool: str) -> str:
        for snap in reversed(self.history):
            for view in self.families.get(family, ()):
                reading = snap.readings.get(view)
                if reading is not None and pool in reading.algorithms:
                    return reading.algorithms[pool]
        return ""

    def _state_at(self, family: str, pool: str, server: str, at: float, seen: float) -> str:
        """MAINT or DRAIN when the server was so on some view both at the last poll
        before the agent's observation and at the poll that saw the write (a state set
        in between is one the agent could not have seen), else UP."""
        before, after = self._before(at), self._before(seen + 1e-6)
        found: list[set[str]] = []
        for snap in (before, after):
            states: set[str] = set()
            if snap is not None:
                for view in self.families.get(family, ()):
                    reading = snap.readings.get(view)
                    s = reading.pools.get(pool, {}).get(server) if reading and reading.up else None
                    if s is not None:
                        states.add(s.state)
            found.append(states)
        for held in ("MAINT", "DRAIN"):
            if all(held in states for states in found):
                return held
        return "UP"

    def _paused_at(self, t: float) -> float | None:
        for start, end in self.paused:
            if start < t < end:
                return start
        if self._pause_from is not None and t > self._pause_from:
            return self._pause_from
        return None

    def _pin_at(self, key: str, t: float) -> Pin | None:
        for pin in reversed(self.pins.get(key, [])):
            if pin.since < t < pin.until:
                return pin
        return None

    def _pin_written(self, key: str, weight: int, t: float) -> bool:
        """Whether ``weight`` is a pin of ``key`` the tick stamped ``t`` may have read:
        one whose command had started (the API sets it before it answers)."""
        return any(p.weight == weight and p.start <= t < p.until for p in self.pins.get(key, []))

    def _held(self, key: str, weight: int, t: float) -> bool:
        """Whether ``weight`` was a hold of ``key`` in force at ``t``: the audit line
        of the hold is written after the tick that found it, so a hold found up to one
        tick later counts too."""
        if any(
            h.weight == weight and h.since - 2 * self.interval - 1 <= t <= h.until
            for h in self.holds.get(key, [])
        ):
            return True
        # The hold's own audit line may be lost (a full disk): a weight the scheduler
        # set by hand on the server within the hold time is one the agent holds too.
        hold = max(p.external_change_hold for p in self._policies_at(t))
        return any(
            f.kind == "hand_set"
            and f.data.get("server") == key
            and f.data.get("weight") == weight
            and t - hold <= f.start <= t
            for f in self.faults
        )

    def _stale_tick(self, pin: Pin, t: float) -> bool:
        """Whether the tick stamped ``t`` may have read the operator state before the
        pin: only the first tick whose line is stamped after the command returned (a
        tick in progress then; every later one began after it)."""
        later = sorted(
            {line.time for line in self.lines if line.time > pin.since}
            | {tick.start for tick in self.ticks if tick.start > pin.since}
        )
        return not later or t <= later[0]

    def _policies_at(self, t: float) -> list[Policy]:
        """The policy in force at ``t``, or both around a reload: between the SIGHUP and
        the daemon saying it adopted the file, a tick may run on either."""
        current = self.policies[0][2]
        candidates = [current]
        for start, end, policy in self.policies[1:]:
            if t >= end:
                current, candidates = policy, [policy]
            elif t >= start:
                candidates = [current, policy]
        return candidates

    def _before(self, t: float) -> Snapshot | None:
        found = None
        for snap in self.history:
            if snap.time <= t:
                found = snap
            else:
                break
        return found

    def _at_index(self, index: int) -> Snapshot | None:
        i = index - self.offset
        return self.history[i] if 0 <= i < len(self.history) else None

    def _trim(self, now: float) -> None:
        keep = 3 * MATCH_SPAN
        while len(self.history) > 2 and now - self.history[0].time > keep:
            self.history.popleft()
            self.offset += 1
        self.ticks = [t for t in self.ticks if now - t.end < 600]

    def _report(
        self,
        t: float,
        rule: str,
        view: str,
        pool: str,
        server: str,
        evidence: str,
        once: tuple[str, ...] | None = None,
    ) -> None:
        if once is not None:
            if once in self.reported:
                return
            self.reported.add(once)
        self.violations.append(Violation(t, rule, view, pool, server, evidence))


def _within(new: int, policy: Policy, origins: set[int]) -> bool:
    """Whether ``new`` keeps the bounds: inside them, or on the way back into them from
    a weight outside (a bound tightened by a reload, a weight set by hand): the step
    limit holds then, so the way back may take several ticks."""
    if policy.min_weight <= new <= policy.max_weight:
        return True
    return any(o < new <= policy.min_weight or policy.max_weight <= new < o for o in origins)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def duration(value: object, default: float = 0.0) -> float:
    """A config duration (``20s``, ``15m``, ``500ms``, ``1h``, or a number of seconds)
    in seconds; ``default`` when it cannot be read."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        number = text.removesuffix(unit)
        if number != text:
            try:
                return float(number) * scale
            except ValueError:
                return default
    return default


def _seconds(value: object) -> float:
    """An audit line's ISO time as epoch seconds (NaN when it has none)."""
    from datetime import datetime

    if not isinstance(value, str):
        return math.nan
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return math.nan
