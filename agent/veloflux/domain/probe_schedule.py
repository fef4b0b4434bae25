"""The weight-probe schedule: which servers are probed at a given time, and how.

A pure function of the pool, its servers and the time, so that the agent that probes
(``decide/probes.py``) and whatever reads the journal later (training, the
benchmarks) agree on which intervals were probed without a log of their own.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from veloflux.util.names import server_key

if TYPE_CHECKING:  # numpy itself is loaded on first use: the CLI's start-up need not
    import numpy as np


@dataclass(frozen=True)
class ProbeSettings:
    size: float = 0.1  # a probe multiplies a weight by e^-size; 0 turns probes off
    share: float = 0.1  # of a pool's servers probed at a time
    hold_ticks: int = 2  # how long one group's probe lasts
    interval_seconds: float = 5.0  # the agent's tick


def probe_order(pool: str, servers: Iterable[str]) -> list[str]:
    """The pool's servers in the schedule's order: by a hash of their names, so that a
    group is not a run of neighbours (one rack, one zone)."""
    return sorted(servers, key=lambda name: (zlib.crc32(server_key(pool, name).encode()), name))


def scheduled(
    pool: str, servers: Iterable[str], taken_at: datetime, settings: ProbeSettings
) -> dict[str, float]:
    """The log factor the schedule gives each probed server of ``pool`` at ``taken_at``
    (servers not in this turn's group are absent).

    Time is cut into turns of ``hold_ticks`` ticks; the servers, in ``probe_order``,
    are cut into groups of ``share`` of the pool, and each turn probes the next group:
    its weights go down by e^-size, and come back when the turn ends. A probe only
    ever lowers a weight: the load it moves is spread over the rest of the pool (a
    tenth of a probe's tenth, shared by nine tenths of the servers, is about 1% each),
    where a probe up would put a whole tenth more on one server, which under round
    robin at high utilization times requests out (the simulator measured it). The
    start and the end of a probe are load changes of either sign all the same.
    """
    import numpy as np

    names = probe_order(pool, servers)
    seconds = np.full(len(names), epoch_seconds(taken_at))
    values = factors(len(names), np.arange(len(names)), seconds, settings)
    return {name: float(v) for name, v in zip(names, values, strict=True) if v != 0}


def factors(
    n: int, rank: int | np.ndarray, seconds: np.ndarray, settings: ProbeSettings
) -> np.ndarray:
    """The schedule's log factor for the server at ``rank`` of ``probe_order`` (of ``n``
    servers) at each of ``seconds`` (since the epoch, UTC): 0 when it is not probed.
    ``rank`` may be an array as long as ``seconds``: one row per (server, time)."""
    import numpy as np

    if settings.size <= 0 or n < 2:
        return np.zeros(len(seconds))
    group = max(1, round(n * settings.share))
    rounds = math.ceil(n / group)
    turn = np.floor(seconds / (settings.hold_ticks * settings.interval_seconds)).astype(np.int64)
    out: np.ndarray = np.where(np.asarray(rank) // group == turn % rounds, -settings.size, 0.0)
    return out


def epoch_seconds(at: datetime) -> float:
    """Seconds since the epoch; a naive time is taken as UTC, as the journal keeps it."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
