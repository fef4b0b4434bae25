"""The soak's invariant checker (``integration/invariant_rules.py``), on recorded
sequences: polls of the proxies, audit lines, ticks and injected faults fed in time
order, as the checker process feeds them. Each rule is shown to fire on the sequence
that breaks it and to stay quiet on the legitimate sequence closest to it (a reload,
a tick in flight at a pause, a pin's first tick, a state changed mid-tick), since a
checker that cries wolf is as useless as one that never does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from integration.invariant_rules import Checker, Policy, Reading, Server, Snapshot, TickLine
from integration.invariants import (
    Tail,
    consistent,
    parse_algorithms,
    parse_clusters,
    parse_eds,
    parse_servers_state,
    tick_line,
)

A, B = "unix:///run/a.sock", "unix:///run/b.sock"
T0 = 1_800_000_000.0
POLICY = Policy(min_weight=1, max_weight=200, max_step_ratio=0.5, min_servers_in_rotation=2)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class Run:
    """A recorded sequence: HAProxy replicas A and B (backends ``app``, roundrobin, and
    ``fixed``, static-rr), Envoy and its EDS file (cluster ``web``); weights set with
    ``set`` and shown at the next ``poll``."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.checker = Checker(
            policy,
            {"haproxy": [A, B], "envoy": ["envoy", "eds"]},
            {A: A, B: B},
            interval=1.0,
            managed={"haproxy": ["app", "fixed"], "envoy": ["web"]},
            grace=3.0,
        )
        self.t = T0
        self.weights: dict[str, dict[str, int]] = {
            A: {"s1": 100, "s2": 100, "s3": 100},
            B: {"s1": 100, "s2": 100, "s3": 100},
            "envoy": {"e1": 10, "e2": 10},
            "eds": {"e1": 10, "e2": 10},
        }
        self.states: dict[str, dict[str, str]] = {A: {}, B: {}}
        self.identity = {A: "pid 1", B: "pid 2"}
        self.down: set[str] = set()
        self.poll()

    def set(self, view: str, **weights: int) -> None:
        self.weights[view].update(weights)

    def both(self, **weights: int) -> None:
        self.set(A, **weights)
        self.set(B, **weights)

    def reading(self, view: str) -> Reading:
        if view in self.down:
            return Reading(view, "haproxy" if view in (A, B) else "envoy", False)
        if view in (A, B):
            app = {
                s: Server(w, self.states[view].get(s, "UP"), 100)
                for s, w in self.weights[view].items()
            }
            fixed = {"s1": Server(10, "UP", 10)}
            return Reading(
                view,
                "haproxy",
                True,
                self.identity[view],
                {"app": app, "fixed": fixed},
                {"app": "roundrobin", "fixed": "static-rr"},
            )
        web = {s: Server(w) for s, w in self.weights[view].items()}
        return Reading(view, "envoy", True, "e", {"web": web}, {"web": "eds"})

    def poll(self, seconds: float = 0.1) -> list[str]:
        self.t += seconds
        readings = {v: self.reading(v) for v in (A, B, "envoy", "eds")}
        return [v.rule for v in self.checker.add_snapshot(Snapshot(self.t, readings))]

    def wait(self, seconds: float) -> list[str]:
        rules: list[str] = []
        for _ in range(round(seconds / 0.1)):
            rules += self.poll()
        return rules

    def audit(
        self,
        server: str,
        old: int,
        new: int,
        *,
        at: float | None = None,
        replica: str | None = None,
        pool: str = "app",
        action: str = "tick",
    ) -> None:
        replicas = [replica] if replica else ([A, B] if pool != "web" else [None])
        for r in replicas:
            entry: dict[str, Any] = {
                "time": iso(self.t - 0.05 if at is None else at),
                "backend": pool,
                "server": server,
                "old": old,
                "new": new,
                "action": action,
                "actor": "veloflux",
            }
            if r is not None:
                entry["replica"] = r
            self.checker.add_audit(entry, self.t)

    def tick(self, *, paused: bool = False, duration: float = 0.05) -> None:
        self.checker.add_tick(TickLine(self.t - duration, self.t, paused))

    def fault(self, kind: str, target: str = "", *, end: bool = True, **data: Any) -> int:
        ident = len(self.checker.faults) + 100
        start = {"id": ident, "kind": kind, "phase": "start", "time": self.t, "target": target}
        start |= {k: v for k, v in data.items() if k not in ("ok",)}
        self.checker.add_fault(start)
        if end:
            self.end(ident, kind, target, **data)
        return ident

    def end(self, ident: int, kind: str, target: str = "", ok: bool = True, **data: Any) -> None:
        record = {
            "id": ident,
            "kind": kind,
            "phase": "end",
            "time": self.t + 0.01,
            "target": target,
            "ok": ok,
            **data,
        }
        self.checker.add_fault(record)

    def write(self, server: str, old: int, new: int, **kw: Any) -> list[str]:
        """A tick that writes one server on both replicas, seen, then audited."""
        self.both(**{server: new})
        rules = self.poll()
        self.audit(server, old, new, **kw)
        self.tick()
        return rules + self.poll()

    def rules(self) -> list[str]:
        return [v.rule for v in self.checker.violations]

    def finish(self) -> list[str]:
        self.checker.finish(self.t)
        return self.rules()


# --- step and bounds -------------------------------------------------------------------------


def test_a_step_within_the_limit_is_quiet_and_one_beyond_it_fires() -> None:
    run = Run()
    run.write("s1", 100, 150)  # max_step(100) = 50
    run.wait(1.0)
    assert run.rules() == []
    run.write("s1", 150, 226 - 1)  # max_step(150) = 75: 225 is allowed
    run.wait(1.0)
    assert run.rules() == ["out_of_bounds", "out_of_bounds"]  # 225 > max_weight 200
    run = Run(Policy(max_weight=256, max_step_ratio=0.5))
    run.write("s1", 100, 151)
    assert run.finish() == ["step_too_large", "step_too_large"]  # once per replica


def test_the_step_limit_from_and_to_zero() -> None:
    """max(1, floor(w * ratio)): 0 may become 1 (not 2), 1 may become 0 (not 2 to 0)."""
    policy = Policy(min_weight=0, max_weight=200, max_step_ratio=0.5)
    assert policy.step_ok(0, 1)
    assert not policy.step_ok(0, 2)
    assert policy.step_ok(1, 0)
    assert policy.step_ok(1, 2)
    assert not policy.step_ok(2, 0)
    assert policy.step_ok(3, 2)
    assert not policy.step_ok(3, 1)
    run = Run(Policy(min_weight=0, max_weight=200, max_step_ratio=0.5))
    run.write("s1", 100, 1)
    assert run.finish().count("step_too_large") == 2


def test_a_restore_after_a_reload_steps_from_what_veloflux_had_set() -> None:
    run = Run()
    for old, new in ((100, 50), (50, 25)):
        run.write("s1", old, new)
    run.wait(0.5)
    # Both replicas reloaded (a fault): back at the configured 100; the agent restores
    # from 25, one step: 37. From 100 that would be a step of 63 > 50.
    run.fault("haproxy_reload", A)
    run.fault("haproxy_reload", B)
    run.identity = {A: "pid 3", B: "pid 4"}
    run.both(s1=100)
    run.poll()
    run.write("s1", 100, 37)
    run.wait(4.0)
    assert run.finish() == []


def test_the_same_jump_without_a_reset_fires() -> None:
    run = Run()
    for old, new in ((100, 50), (50, 25)):
        run.write("s1", old, new)
    run.write("s1", 25, 100)  # no reload: 25 -> 100 is a step of 75 > 12
    assert run.finish() == ["step_too_large", "step_too_large"]


def test_a_replica_brought_to_the_pool_weight_steps_from_the_other_replica() -> None:
    """B restarted at its configured 100 while A holds 40: the next tick moves the pool
    from 40 (A's) and writes B straight to it."""
    run = Run()
    run.write("s1", 100, 60)
    run.write("s1", 60, 40)
    ident = run.fault("replica_gone", B, end=False)
    run.down.add(B)
    run.wait(1.0)
    run.down.discard(B)
    run.identity[B] = "pid 9"
    run.set(B, s1=100, s2=100, s3=100)
    run.end(ident, "replica_gone", B)
    run.poll()
    run.set(B, s1=45)
    run.set(A, s1=45)
    run.poll()
    run.audit("s1", 100, 45, replica=B)
    run.audit("s1", 40, 45, replica=A)
    run.tick()
    run.wait(4.0)
    assert run.finish() == []


# --- unexplained changes ---------------------------------------------------------------------


def test_a_change_without_an_audit_line_fires_after_the_grace() -> None:
    run = Run()
    run.both(s2=90)
    run.poll()
    assert run.wait(2.0) == []  # still within the grace: its line may come
    assert run.wait(2.0) == ["unaudited_change", "unaudited_change"]


def test_a_weight_set_by_the_scheduler_by_hand_is_explained() -> None:
    run = Run()
    run.fault("hand_set", A, server="app/s2", weight=7)
    run.set(A, s2=7)
    run.wait(4.0)
    assert run.finish() == []
    run.set(B, s2=7)  # the same weight on B, by no one
    run.wait(4.0)
    assert run.finish() == ["unaudited_change"]


def test_a_restart_is_explained_only_by_an_injected_fault() -> None:
    run = Run()
    run.write("s1", 100, 60)
    run.fault("haproxy_restart", A)
    run.identity[A] = "pid 5"
    run.set(A, s1=100)  # its configured weight
    run.wait(1.0)
    assert run.rules() == []
    run.identity[B] = "pid 6"  # B restarts on its own
    run.set(B, s1=100)
    run.wait(1.0)
    assert run.rules() == ["unaudited_change"]


def test_on_a_full_disk_a_lost_line_is_not_reported_but_the_write_is_still_judged() -> None:
    run = Run()
    ident = run.fault("disk_full", "state", end=False)
    run.both(s1=120)  # a step of 20: fine, its line lost to the full disk
    run.poll()
    run.both(s2=20)  # a step of 80 > 50: judged all the same
    run.poll()
    run.end(ident, "disk_full", "state")
    run.wait(4.0)
    assert run.finish() == ["step_too_large", "step_too_large"]


# --- held servers, static pools, rotation ----------------------------------------------------


def test_a_server_in_maintenance_must_not_be_written() -> None:
    run = Run()
    run.states[A]["s3"] = "MAINT"
    run.states[B]["s3"] = "MAINT"
    run.wait(2.0)  # in MAINT for longer than any tick could have read it UP
    run.write("s3", 100, 90)
    assert run.finish() == ["held_server_written", "held_server_written"]


def test_a_drain_set_between_the_observation_and_the_write_is_not_blamed() -> None:
    run = Run()
    observed = run.t + 0.02  # the agent read s3 UP here
    run.states[A]["s3"] = "DRAIN"
    run.states[B]["s3"] = "DRAIN"
    run.both(s3=90)
    run.poll()
    run.audit("s3", 100, 90, at=observed)
    run.wait(4.0)
    assert run.finish() == []


def test_a_drain_set_while_a_slow_tick_waited_is_not_blamed() -> None:
    """The soak's case: a tick read HAProxy (s3 UP), waited on a slow source, and wrote
    s3 after a drain was set. Its audit line carries the plan's time, after the read;
    its log line says when it began."""
    run = Run()
    run.wait(2.0)
    began = run.t
    run.wait(0.2)
    run.states[A]["s3"] = "DRAIN"
    run.states[B]["s3"] = "DRAIN"
    run.wait(0.2)
    run.both(s3=90)
    run.poll()
    run.audit("s3", 100, 90, at=run.t - 0.1)  # the plan, made after the drain
    run.checker.add_tick(TickLine(began, run.t, False))
    run.wait(4.0)
    assert run.finish() == []


def test_a_weight_set_by_hand_while_a_slow_tick_waited_is_not_its_step() -> None:
    """A tick read s1 at 100, a weight was set by hand to 50 before the tick wrote 140
    (a step of 40 from what it read): the overwrite is the race every writer without
    compare-and-set has, not a step of 90 from 50. The same write after the previous
    tick wrote 50 (audited, no hand) is a step of 90 from 50 and fires."""
    for by_hand in (True, False):
        run = Run()
        run.wait(2.0)
        began = run.t
        if by_hand:
            run.fault("hand_set", "", server="app/s1", weight=50)
            run.both(s1=50)
        else:
            run.write("s1", 100, 50)
            began = run.t
        run.wait(0.5)
        run.both(s1=140)
        run.poll()
        run.audit("s1", 100 if by_hand else 50, 140, at=run.t - 0.1)
        run.checker.add_tick(TickLine(began, run.t, False))
        run.wait(4.0)
        expected = [] if by_hand else ["step_too_large", "step_too_large"]
        assert run.finish() == expected, by_hand


def test_a_reload_seen_without_its_new_process_is_still_a_reset() -> None:
    """The long soak's case: HAProxy reloaded between the two reads of one poll, so the
    poll paired the old process's identity with the new one's weights (back at the
    configured 100). Explained by the reload; the same change with no fault is not."""
    for reloaded in (True, False):
        run = Run()
        run.wait(1.0)
        run.fault("hand_set", A, server="app/s2", weight=6)
        run.set(A, s2=6)
        run.wait(2.0)
        if reloaded:
            reload = run.fault("haproxy_reload", A, end=False)
        run.set(A, s2=100)  # identity unchanged this poll
        run.poll()
        if reloaded:
            run.end(reload, "haproxy_reload", A)
            run.identity[A] = "pid 9"  # the next poll reads the new process
        run.wait(5.0)
        rules = [r for r in run.finish() if r == "unaudited_change"]
        assert rules == ([] if reloaded else ["unaudited_change"]), reloaded


def test_a_static_algorithm_backend_must_not_be_written() -> None:
    run = Run()
    run.audit("s1", 10, 20, pool="fixed", replica=A)
    run.wait(4.0)
    assert "static_pool_written" in run.finish()


def test_a_zero_that_leaves_too_few_servers_in_rotation_fires() -> None:
    run = Run(Policy(min_weight=0, max_weight=200, max_step_ratio=1.0, min_servers_in_rotation=2))
    run.states[A]["s3"] = run.states[B]["s3"] = "MAINT"
    run.poll()
    run.write("s1", 1, 0)  # s2 alone is left UP with a weight
    assert run.finish().count("below_min_in_rotation") == 2
    run = Run(Policy(min_weight=0, max_weight=200, max_step_ratio=1.0, min_servers_in_rotation=2))
    run.write("s1", 1, 0)  # s2 and s3 stay
    assert run.finish() == []


# --- operator actions --------------------------------------------------------------------------


def test_a_tick_after_the_pause_returned_fires_and_one_in_flight_does_not() -> None:
    run = Run()
    in_flight = run.t  # the tick read the proxy here, before the pause
    run.fault("pause", "daemon")
    run.both(s1=90)
    run.poll()
    run.audit("s1", 100, 90, at=in_flight)
    run.wait(4.0)
    assert run.rules() == []
    run.write("s1", 90, 80)  # a tick stamped after the pause took effect
    assert run.finish() == ["written_while_paused", "written_while_paused"]


def test_after_resume_ticks_write_again_and_revert_pauses_too() -> None:
    run = Run()
    run.fault("revert", "daemon")
    run.both(s1=100)
    run.audit("s1", 100, 100, action="revert")
    run.wait(1.0)
    run.fault("resume", "daemon")
    run.poll()
    run.write("s1", 100, 90)
    run.wait(4.0)
    assert run.finish() == []


def test_a_failed_pause_pauses_nothing() -> None:
    run = Run()
    run.fault("pause", "daemon", ok=False)
    run.write("s1", 100, 90)
    assert run.finish() == []


def test_a_pin_is_written_at_once_and_must_hold() -> None:
    run = Run()
    run.fault("pin", "daemon", server="app/s2", weight=7)
    run.wait(0.3)
    run.write("s2", 100, 110)  # the first tick after the pin may have read before it
    run.wait(1.0)
    assert run.rules() == []
    run.write("s2", 110, 7)  # the pin, at once: no step limit
    run.wait(1.0)
    assert run.rules() == []
    run.write("s2", 7, 10)  # off the pin: written so, and (two ticks on) shown so
    found = run.finish()
    assert found.count("pin_violated") == 2
    assert set(found) == {"pin_violated", "pin_not_applied"}


def test_a_pin_not_shown_two_ticks_later_fires_but_not_while_in_maintenance() -> None:
    run = Run()
    run.states[A]["s2"] = run.states[B]["s2"] = "MAINT"
    run.fault("pin", "daemon", server="app/s2", weight=7)
    for _ in range(3):
        run.poll()
        run.tick()
        run.wait(1.0)
    assert run.rules() == []
    run.states[A]["s2"] = run.states[B]["s2"] = "UP"
    run.poll()
    run.wait(0.5)
    assert run.rules() == []  # just out of maintenance: the agent has not ticked yet
    for _ in range(3):
        run.tick()
        run.wait(1.0)
    assert sorted(set(run.rules())) == ["pin_not_applied"]


def test_an_unpin_ends_the_pin() -> None:
    run = Run()
    run.fault("pin", "daemon", server="app/s2", weight=7)
    run.wait(0.3)
    run.write("s2", 100, 7)
    run.fault("unpin", "daemon", server="app/s2")
    run.wait(0.5)
    run.write("s2", 7, 10)
    run.wait(4.0)
    assert run.finish() == []


def test_a_tick_that_read_the_pin_cleared_before_the_unpin_returned_is_no_violation() -> None:
    """The short soak's case: the API cleared the pin, a tick wrote s2 from it, and only
    then did the unpin command return. An unpin that was refused keeps the pin: a write
    off it after the refusal fires (one while the refused command ran is not judged)."""
    for ok in (True, False):
        run = Run()
        run.fault("pin", "daemon", server="app/s2", weight=7)
        run.wait(0.3)
        run.write("s2", 100, 7)
        run.wait(2.0)
        unpin = run.fault("unpin", "daemon", end=False, server="app/s2")
        run.wait(0.3)
        run.write("s2", 7, 10)  # audited while the command still runs
        run.end(unpin, "unpin", "daemon", ok=ok, server="app/s2")
        run.wait(0.5)
        run.write("s2", 10, 12)
        run.wait(4.0)
        expected = [] if ok else ["pin_violated", "pin_violated"]
        assert [r for r in run.finish() if r != "pin_not_applied"] == expected, ok


def test_a_held_external_change_is_written_like_a_pin() -> None:
    run = Run()
    run.fault("hand_set", A, server="app/s1", weight=180)
    run.set(A, s1=180)
    run.poll()
    run.checker.add_audit(
        {
            "time": iso(run.t),
            "action": "external_change",
            "actor": "external",
            "server": "app/s1",
            "old": 100,
            "new": 180,
            "held_until": iso(run.t + 20),
        },
        run.t,
    )
    run.set(B, s1=180)  # B brought to the held weight: 100 -> 180 is no step
    run.poll()
    run.audit("s1", 100, 180, replica=B)
    run.wait(4.0)
    assert run.finish() == []


def test_a_hold_whose_audit_line_a_full_disk_took_is_still_a_hold() -> None:
    """The long soak's case: a weight set by hand while a pin held the server (the tick
    put the pin back), its external-change line lost to a full disk; once unpinned,
    the tick wrote the held weight, a step of 80 from 100. The hand's own record says
    what was held; past the hold time (15m by default) the same write is a step."""
    for hold_over in (False, True):
        run = Run()
        run.fault("hand_set", A, server="app/s1", weight=180)
        run.set(A, s1=180)
        run.poll()
        run.set(A, s1=100)  # the pin put back
        run.poll()
        run.audit("s1", 180, 100, replica=A)
        run.tick()
        run.wait(1.0)
        if hold_over:
            run.t += 901.0
        run.write("s1", 100, 180)
        run.wait(4.0)
        steps = [r for r in run.finish() if r == "step_too_large"]
        assert steps == (["step_too_large"] * 2 if hold_over else []), hold_over


# --- replicas ----------------------------------------------------------------------------------


def test_replicas_left_apart_for_two_ticks_fire_once() -> None:
    run = Run()
    run.set(A, s1=80)
    run.poll()
    run.audit("s1", 100, 80, replica=A)
    run.tick()
    run.wait(1.0)
    assert run.rules() == []  # one tick: B may still be written
    for _ in range(3):
        run.tick()
        run.wait(1.0)
    assert run.rules() == ["replicas_diverged"]


def test_replicas_apart_while_paused_or_one_down_are_not_judged() -> None:
    run = Run()
    run.fault("pause", "daemon")
    run.set(A, s1=80)
    run.fault("hand_set", A, server="app/s1", weight=80)
    for _ in range(4):
        run.tick(paused=True)
        run.wait(1.0)
    assert run.rules() == []


def test_envoy_and_its_eds_file_must_agree_too() -> None:
    run = Run()
    run.set("eds", e1=12)
    run.poll()
    run.audit("e1", 10, 12, pool="web")
    for _ in range(3):
        run.tick()
        run.wait(1.0)
    assert "replicas_diverged" in run.rules()


# --- policies across a reload ----------------------------------------------------------------


def test_a_reloaded_policy_applies_from_its_adoption_and_either_one_around_it() -> None:
    run = Run()
    wider = {"policy": {"max_step_ratio": 1.0, "max_weight": 256, "min_weight": 1}}
    run.fault("reload_config", "daemon", adopted=True, config=wider)
    run.wait(0.5)
    run.write("s1", 100, 190)  # a step of 90: allowed by the new ratio 1.0
    run.wait(4.0)
    assert run.finish() == []
    run.fault("reload_config", "daemon", adopted=False, config={"policy": {}})
    run.write("s1", 190, 256)  # a refused file changes nothing: still ratio 1.0
    run.wait(4.0)
    assert run.finish() == []


# --- the readers -----------------------------------------------------------------------------


def test_servers_state_gives_weights_states_and_initial_weights() -> None:
    text = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "
        "srv_uweight srv_iweight\n"
        "4 app 1 s1 127.0.0.1 2 0 7 10\n4 app 2 s2 127.0.0.1 2 8 20 20\n"
        "4 app 3 s3 127.0.0.1 0 1 5 5\n5 other 1 x 127.0.0.1 2 0 1 1\n"
    )
    pools = parse_servers_state(text, ["app"])
    assert pools == {
        "app": {
            "s1": Server(7, "UP", 10),
            "s2": Server(20, "DRAIN", 20),
            "s3": Server(5, "MAINT", 5),
        }
    }
    stat = "# pxname,svname,algo\napp,BACKEND,roundrobin\nfixed,BACKEND,static-rr\napp,s1,\n"
    assert parse_algorithms(stat) == {"app": "roundrobin", "fixed": "static-rr"}


def test_envoy_views_read_draining_as_zero() -> None:
    eds = {
        "resources": [
            {
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                    }
                                },
                                "load_balancing_weight": 3,
                            },
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 2}
                                    }
                                },
                                "load_balancing_weight": 1,
                                "health_status": "DRAINING",
                            },
                        ]
                    }
                ]
            }
        ]
    }
    assert parse_eds(eds) == {"127.0.0.1:1": Server(3), "127.0.0.1:2": Server(0)}
    clusters = {
        "cluster_statuses": [
            {
                "name": "web",
                "host_statuses": [
                    {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 2}},
                        "weight": 1,
                        "health_status": {"eds_health_status": "DRAINING"},
                    }
                ],
            },
            {"name": "other", "host_statuses": []},
        ]
    }
    assert parse_clusters(clusters, ["web"]) == {"web": {"127.0.0.1:2": Server(0)}}


def test_tail_reads_whole_lines_and_follows_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    tail = Tail(path)
    assert tail.read() == []
    path.write_text('{"a": 1}\n{"a": ')
    assert tail.read() == [{"a": 1}]
    with path.open("a") as file:
        file.write('2}\n{"a": 3}\n')
    assert tail.read() == [{"a": 2}, {"a": 3}]
    with path.open("a") as file:
        file.write('{"a": 4}\n')
    path.rename(tmp_path / "audit.jsonl.1")
    path.write_text('{"a": 5}\n')
    assert tail.read() == [{"a": 4}, {"a": 5}]


def test_a_tick_log_line_gives_when_the_tick_ran() -> None:
    record: Mapping[str, Any] = json.loads(
        '{"time": "2026-12-07T19:07:53.171+00:00", "event": "tick", "paused": false, '
        '"duration_ms": 171.0, "proxies_failed": ["envoy(source)"]}'
    )
    tick = tick_line(record)
    assert tick is not None
    assert round(tick.end - tick.start, 3) == 0.171
    assert tick.failed == ("envoy(source)",)
    assert tick_line({"event": "tick_failed", "time": "2026-12-07T19:07:53+00:00"}) is None


def test_consistent_means_every_view_shows_what_veloflux_last_wrote() -> None:
    run = Run()
    snap = run.checker.history[-1]
    from integration.invariants import Setup

    setup = Setup(
        POLICY,
        1.0,
        [],
        {"haproxy": [A, B], "envoy": ["envoy", "eds"]},
        {},
        {"haproxy": ["app", "fixed"], "envoy": ["web"]},
        Path("audit"),
    )
    assert consistent(snap, setup, {("app", "s1"): 100})
    assert not consistent(snap, setup, {("app", "s1"): 90})
    run.set(B, s2=50)
    run.poll()
    assert not consistent(run.checker.history[-1], setup, {})


def test_a_weight_outside_tightened_bounds_comes_back_a_step_at_a_time() -> None:
    run = Run(Policy(min_weight=1, max_weight=200, max_step_ratio=0.5))
    run.write("s1", 100, 50)
    run.write("s1", 50, 25)
    run.write("s1", 25, 13)
    run.fault("reload_config", "daemon", adopted=True, config={"policy": {"min_weight": 40}})
    run.wait(0.3)
    run.write("s1", 13, 19)  # below 40 still, but on its way up at the step limit
    run.wait(4.0)
    assert run.finish() == []
    run.write("s1", 19, 15)  # away from the bounds
    assert run.finish() == ["out_of_bounds", "out_of_bounds"]


def test_a_write_cut_off_by_a_kill_may_lack_its_line_but_an_older_one_may_not() -> None:
    run = Run()
    run.tick()
    run.poll()
    run.both(s1=90)  # the tick in flight writes, then is killed before its audit lines
    run.poll()
    run.fault("daemon_kill", "daemon")
    run.wait(4.0)
    assert run.finish() == []
    run.both(s2=90)  # written long before the next kill: its line must be there
    run.poll()
    run.tick()
    run.wait(1.0)
    run.tick()
    run.wait(1.0)
    run.fault("daemon_kill", "daemon")
    run.wait(4.0)
    assert run.finish() == ["unaudited_change", "unaudited_change"]


def test_tail_rereads_a_torn_line_undone_and_written_again(tmp_path: Path) -> None:
    """A writer on a full disk cuts a torn append back to the line's start, then
    appends again: the reader must not splice the torn bytes into what follows."""
    path = tmp_path / "audit.jsonl"
    path.write_text('{"a": 1}\n')
    tail = Tail(path)
    assert tail.read() == [{"a": 1}]
    with path.open("a") as file:
        file.write('{"a": 2, "torn')
    assert tail.read() == []
    with path.open("r+") as file:
        file.truncate(len('{"a": 1}\n'))
    with path.open("a") as file:
        file.write('{"a": 3}\n{"a": 4}\n')
    assert tail.read() == [{"a": 3}, {"a": 4}]


def test_a_pin_written_before_its_command_returned_is_still_a_pin() -> None:
    run = Run()
    ident = run.fault("pin", "daemon", end=False, server="app/s2", weight=7)
    run.wait(0.2)
    run.write("s2", 100, 7)  # the API set it, the tick wrote it, the CLI not back yet
    run.end(ident, "pin", "daemon", server="app/s2", weight=7)
    run.wait(4.0)
    assert run.finish() == []


def test_a_change_whose_line_was_lost_does_not_take_a_later_line() -> None:
    run = Run()
    ident = run.fault("disk_full", "state", end=False)
    run.both(s1=120)  # its line lost to the full disk
    run.poll()
    run.wait(1.0)
    run.end(ident, "disk_full", "state")
    run.wait(3.0)
    run.write("s1", 120, 100)
    run.write("s1", 100, 120)  # the same new weight: this line is this write's
    run.wait(4.0)
    assert run.finish() == []


def test_a_line_whose_write_a_reload_swallowed_does_not_take_a_later_change() -> None:
    """The tick wrote 51 to A as A reloaded: the new process shows 100, and the line
    stays unmatched. Four ticks later 51 is written again, from 34: that line is the
    one that explains it, under the policy in force then."""
    run = Run(Policy(min_weight=1, max_weight=200, max_step_ratio=0.25))
    run.write("s1", 100, 76)
    run.write("s1", 76, 57)
    run.fault("haproxy_reload", A)
    run.identity[A] = "pid 7"
    run.set(A, s1=100)
    run.set(B, s1=51)
    run.poll()
    run.audit("s1", 57, 51)  # on A too: its write went to the old process
    run.wait(0.5)
    run.write("s1", 51, 40)  # A from 100: the restore from what VeloFlux had set
    run.write("s1", 40, 34)
    run.fault("reload_config", "daemon", adopted=True, config={"policy": {"max_step_ratio": 0.5}})
    run.wait(0.5)
    run.write("s1", 34, 51)  # allowed by 0.5, not by 0.25
    run.wait(4.0)
    assert run.finish() == []


def test_a_recorded_poll_reads_back_as_it_was() -> None:
    """``--record`` writes every poll's inputs; ``--replay`` judges them again offline."""
    from integration.invariants import recorded, snapshot_of

    run = Run()
    snap = run.checker.history[-1]
    line = json.loads(json.dumps(recorded([{"id": 1}], [], snap, [({"a": 1}, 2.0)])))
    assert snapshot_of(line) == snap
    assert line["faults"] == [{"id": 1}]
    assert line["audit"] == [[{"a": 1}, 2.0]]


def test_a_line_lost_after_the_disk_was_freed_is_missing_all_the_same() -> None:
    """A torn append on the full disk may glue the next line to it, which no reader can
    parse: a write made after the disk was freed must have its line."""
    run = Run()
    ident = run.fault("disk_full", "state", end=False)
    run.wait(1.0)
    run.end(ident, "disk_full", "state")
    run.wait(3.0)
    run.both(s1=110)  # written after the disk was freed, and its line never came
    run.poll()
    run.wait(4.0)
    assert run.finish() == ["unaudited_change", "unaudited_change"]


def test_an_eds_file_put_back_after_an_unconfirmed_update_is_explained() -> None:
    run = Run()
    run.set("eds", e1=12)  # written; Envoy restarting does not confirm it
    run.poll()
    run.wait(3.0)
    run.set("eds", e1=10)  # the last confirmed file put back
    run.poll()
    run.wait(14.0)
    assert run.finish() == []
    run.set("eds", e2=12)  # written and left so, with no line: unexplained
    run.set("envoy", e2=12)
    run.poll()
    run.wait(14.0)
    assert run.finish() == ["unaudited_change", "unaudited_change"]


def test_an_unaudited_write_on_a_full_disk_is_judged_from_its_ticks_start() -> None:
    """The tick read s2 UP, waited on Prometheus, and wrote after s2 went to MAINT; its
    line was lost to the full disk: it is judged as of its tick's start."""
    run = Run()
    ident = run.fault("disk_full", "state", end=False)
    began = run.t
    run.wait(0.6)
    run.states[A]["s2"] = run.states[B]["s2"] = "MAINT"
    run.poll()
    run.both(s2=110)
    run.poll()
    run.checker.add_tick(TickLine(began, run.t + 0.05, False))
    run.end(ident, "disk_full", "state")
    run.wait(4.0)
    assert run.finish() == []
