"""Journal samples back into Observations, one per recorded instant.

What keeps state across ticks (the capacity rung's estimates) can then be rebuilt
from what the journal already holds: a restarted daemon, or a one-shot ``dry-run``
beside a running daemon, sees the same estimates the running agent would, instead of
warming up from nothing. Columns the journal does not keep (address, algorithm,
check status) come back empty; nothing that replays journal rows reads them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pandas as pd

from veloflux.domain.observation import (
    COLUMN_NAMES,
    ExternalFeatures,
    Observation,
    PoolInfo,
    ProxyIdentity,
    ServerRow,
)
from veloflux.history.frames import external_columns, instants

_EMPTY_TEXT = ("address", "algorithm", "check_status")


def replay(frame: pd.DataFrame) -> Iterator[Observation]:
    """The frame's samples (``Journal.read``'s format) as Observations, oldest first."""
    if frame.empty:
        return
    times = instants(frame)
    order = np.argsort(times, kind="stable")
    ordered = frame.iloc[order]
    moments = times[order]
    extra = external_columns(frame)
    starts = np.flatnonzero(np.r_[True, moments[1:] != moments[:-1]])
    ends = np.r_[starts[1:], len(moments)]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield _observation(ordered.iloc[start:end], extra)


def _observation(rows: pd.DataFrame, extra: tuple[str, ...]) -> Observation:
    taken_at: datetime = rows["time"].iloc[0].to_pydatetime()
    records = rows.to_dict("records")
    typed = []
    for record in records:
        values = {
            name: record.get(name, "" if name in _EMPTY_TEXT else math.nan) for name in COLUMN_NAMES
        }
        values["time"] = taken_at
        values["backup"] = bool(values["backup"])
        values["since_state_change"] = math.nan
        typed.append(ServerRow(**values))
    pools = tuple(PoolInfo(name, "", managed=True) for name in dict.fromkeys(rows["pool"]))
    first = records[0]
    pid, started = int(first.get("proxy_pid", 0)), float(first.get("proxy_started", 0.0))
    proxy = ProxyIdentity("journal", pid, started, 0.0, "", "")
    external = None
    if extra:
        features = tuple((c, tuple(rows[c].to_numpy(dtype=float).tolist())) for c in extra)
        external = ExternalFeatures("journal", features)
    return Observation(taken_at, tuple(typed), pools, proxy, external=external)
