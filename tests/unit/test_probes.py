"""Weight probes: the schedule (``domain/probe_schedule.py``), which servers the agent
probes (``decide/probes.py``), how a probe reaches the weights (``capacity_targets``)
and how training reads the probes back (``features.probed_steps``, ``load_step``).

Each test's docstring names the break it catches.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from tests.unit.factories import policy
from veloflux.decide.controller import ControllerSettings
from veloflux.decide.probes import MAX_PROBED_UTILIZATION, probe_factors
from veloflux.decide.targets import Row, capacity_targets
from veloflux.domain.advice import PoolCapacity, ServerCapacity
from veloflux.domain.probe_schedule import (
    ProbeSettings,
    epoch_seconds,
    factors,
    probe_order,
    scheduled,
)
from veloflux.model.features import LOAD_STEP, probed_steps

POOL = "app"
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = ProbeSettings(size=0.1, share=0.2, hold_ticks=2, interval_seconds=10.0)
NAMES = [f"s{i}" for i in range(10)]


def turns(count: int, settings: ProbeSettings = SETTINGS) -> list[datetime]:
    """The start of ``count`` consecutive turns of the schedule."""
    length = settings.hold_ticks * settings.interval_seconds
    first = math.ceil(epoch_seconds(START) / length) * length
    return [datetime.fromtimestamp(first + k * length, UTC) for k in range(count)]


def test_every_server_is_probed_once_a_round_and_only_down() -> None:
    """Catches a schedule that skips servers, probes one twice in a round, or raises a
    weight (a probe up puts a whole tenth more on one server: under round robin at
    high utilization that times requests out)."""
    rounds = 5  # ten servers in groups of two
    seen: dict[str, list[float]] = {name: [] for name in NAMES}
    for at in turns(rounds):
        plan = scheduled(POOL, NAMES, at, SETTINGS)
        assert list(plan.values()) == [-0.1, -0.1]
        for name, factor in plan.items():
            seen[name].append(factor)
    assert all(f == [-0.1] for f in seen.values()), seen


def test_a_probe_lasts_its_hold_and_then_moves_on() -> None:
    """Catches a turn that is not ``hold_ticks`` ticks long."""
    first = turns(1)[0]
    ticks = [first + timedelta(seconds=SETTINGS.interval_seconds * k) for k in range(4)]
    plans = [scheduled(POOL, NAMES, at, SETTINGS) for at in ticks]
    assert plans[0] == plans[1]
    assert plans[2] == plans[3]
    assert set(plans[0]).isdisjoint(plans[2])


@pytest.mark.parametrize(
    ("names", "settings"),
    [(["only"], SETTINGS), (NAMES, ProbeSettings(size=0.0))],
    ids=["one server", "size 0"],
)
def test_nothing_is_probed_alone_or_when_turned_off(
    names: list[str], settings: ProbeSettings
) -> None:
    """Catches probing a pool of one (its share cannot move) or with ``probe_size: 0``."""
    assert all(not scheduled(POOL, names, at, settings) for at in turns(12))


def test_the_vectorised_schedule_is_the_schedule() -> None:
    """Catches training reading the probes back differently from how the agent ran
    them: ``factors`` over many (server, time) rows equals ``scheduled`` per time."""
    order = probe_order(POOL, NAMES)
    times = turns(12)
    ranks = np.tile(np.arange(len(order)), len(times))
    seconds = np.repeat([epoch_seconds(t) for t in times], len(order))
    values = factors(len(order), ranks, seconds, SETTINGS).reshape(len(times), len(order))
    for at, row in zip(times, values, strict=True):
        expected = scheduled(POOL, NAMES, at, SETTINGS)
        assert {n: v for n, v in zip(order, row, strict=True) if v} == expected


# --- which servers the agent probes -------------------------------------------------------


def view(
    utilization: float = 0.5, overload: str = "", changes: dict[str, ServerCapacity] | None = None
) -> PoolCapacity:
    servers = {n: ServerCapacity(n, 100.0, 0.02, 1.0, long_run=100.0) for n in NAMES}
    servers.update(changes or {})
    return PoolCapacity(servers, utilization * 1000.0, 1000.0, overload)


def probed_at(capacity: PoolCapacity, at: datetime) -> dict[str, float]:
    return probe_factors(POOL, capacity, at, SETTINGS)


def test_a_steady_pool_is_probed_as_scheduled() -> None:
    """Catches the agent leaving out servers the schedule names, or adding others."""
    for at in turns(10):
        assert probed_at(view(), at) == scheduled(POOL, NAMES, at, SETTINGS)


@pytest.mark.parametrize(
    "estimate",
    [
        ServerCapacity("x", 100.0, 0.02, 0.0, reason="warming up"),
        ServerCapacity("x", 40.0, 0.02, 0.0, reason="capacity fell", fell=True),
        ServerCapacity("x", 100.0, 0.02, 1.0, health=0.5, error_rate=0.3),
        ServerCapacity("x", 100.0, 0.02, 1.0, backlog_seconds=3.0, drain=0.6),
    ],
    ids=["unconfident", "fell", "failing", "backlogged"],
)
def test_a_server_in_trouble_is_never_probed(estimate: ServerCapacity) -> None:
    """Catches a probe on a server whose estimate is unsure, that just slowed, that
    fails requests or has a backlog to drain: a probe up there is harm, and one down
    mixes with what the rung is already doing."""
    for at in turns(10):
        name = next(iter(scheduled(POOL, NAMES, at, SETTINGS)))
        assert name not in probed_at(view(changes={name: estimate._replace(server=name)}), at)


def test_a_busy_or_overloaded_pool_is_never_probed() -> None:
    """Catches probes in a pool near its capacity (the load a probe moves onto the
    other servers can start a queue there) or in overload mode (no split helps; the
    weights are static)."""
    for at in turns(10):
        below = probed_at(view(utilization=MAX_PROBED_UTILIZATION - 0.05), at)
        assert below == scheduled(POOL, NAMES, at, SETTINGS)
        assert probed_at(view(utilization=MAX_PROBED_UTILIZATION), at) == {}
        assert probed_at(view(overload="offered load at capacity"), at) == {}


# --- how a probe reaches the weights -------------------------------------------------------


def rows(weights: dict[str, int]) -> list[Row]:
    return [Row(f"{POOL}/{n}", POOL, n, "UP", False, w, 10, "") for n, w in weights.items()]


EVEN = {"a": 100, "b": 100, "c": 100, "d": 100}


def targets(
    weights: dict[str, int],
    probe: dict[str, float] | None = None,
    before: dict[str, float] | None = None,
) -> dict[str, int]:
    capacity = PoolCapacity(
        {n: ServerCapacity(n, 50.0, 0.05, 1.0, long_run=50.0) for n in weights}, 100.0, 200.0
    )
    out = capacity_targets(
        rows(weights), capacity, policy(), 10, ControllerSettings(), None, probe, before
    )
    return {n: w for n, (w, _exact, _why) in out.items()}


def test_a_probe_moves_the_weight_by_its_whole_factor() -> None:
    """Catches a probe fed to the controller's target: through the deadband and the
    gain a 10% probe became a 3% move, too small to show in latency."""
    plain = targets(EVEN)
    probed = targets(EVEN, {"a": -0.1, "b": -0.1})
    assert probed["a"] == round(plain["a"] * math.exp(-0.1))
    assert probed["b"] == round(plain["b"] * math.exp(-0.1))
    assert (probed["c"], probed["d"]) == (plain["c"], plain["d"])


def test_a_probe_ends_where_it_began() -> None:
    """Catches last tick's probe staying in the controller's starting point: the
    weights carry it, and without ``probed_before`` the controller would take the
    probed weight as where the server stands and walk back only part of the way."""
    plain = targets(EVEN)
    probed = targets(EVEN, {"a": -0.1})
    after = targets({**EVEN, "a": probed["a"]}, before={"a": -0.1})
    assert after["a"] == pytest.approx(plain["a"], abs=1)


# --- how training reads the probes back ----------------------------------------------------


def history(steps: float = 0.05) -> pd.DataFrame:
    """Ten servers over 12 turns of 2 ticks, every row with a load step ``steps``."""
    times = [
        at + timedelta(seconds=SETTINGS.interval_seconds * k) for at in turns(12) for k in (0, 1)
    ]
    return pd.DataFrame(
        [
            {"time": pd.Timestamp(at), "pool": POOL, "server": n, LOAD_STEP: steps}
            for at in times
            for n in NAMES
        ]
    )


def test_training_keeps_only_the_steps_the_probes_made() -> None:
    """Catches training on the controller's reactions: every row neither probed nor
    just after a probe has its load step set to 0, and the probed rows keep theirs."""
    frame = history()
    kept = probed_steps(frame, SETTINGS)
    for (time, server), step in zip(
        frame[["time", "server"]].itertuples(index=False), kept[LOAD_STEP], strict=True
    ):
        plan = scheduled(POOL, NAMES, time.to_pydatetime(), SETTINGS)
        earlier = time.to_pydatetime() - timedelta(seconds=SETTINGS.interval_seconds)
        previous = scheduled(POOL, NAMES, earlier, SETTINGS) if time > frame["time"].min() else {}
        if server in plan or server in previous:
            assert step == 0.05
        else:
            assert step == 0.0
    assert 0 < (kept[LOAD_STEP] != 0).mean() < 0.5


def test_without_probes_training_keeps_every_step() -> None:
    """Catches masking the load step when the agent ran no probes (then the steps are
    all there is to learn from)."""
    frame = history()
    kept = probed_steps(frame, ProbeSettings(size=0.0))
    assert (kept[LOAD_STEP] == 0.05).all()
