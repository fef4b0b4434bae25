"""Running the real CLI as a subprocess, reading HAProxy's weights independently, and
journals of a synthetic pool that end now."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from integration.synthetic import SyntheticPool
from tests.unit.learning_factories import synthetic_observation, synthetic_raw
from veloflux.haproxy.runtime import RuntimeAPI
from veloflux.history.journal import Journal
from veloflux.util.events import Events


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """``veloflux-agent ARGS`` in a fresh interpreter, exactly as an operator runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "veloflux", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def weights(socket: str, keys: list[str]) -> dict[str, int]:
    """Current weights straight from HAProxy with ``get weight``, not through VeloFlux."""
    api = RuntimeAPI(socket)
    replies = api.run_many([f"get weight {key}" for key in keys])
    return {key: int(reply.split()[0]) for key, reply in zip(keys, replies, strict=True)}


def set_weights(socket: str, values: dict[str, int]) -> None:
    api = RuntimeAPI(socket)
    replies = api.run_many([f"set server {key} weight {w}" for key, w in values.items()])
    assert all(not r.strip() for r in replies), replies


def recent_samples(spec: SyntheticPool) -> pd.DataFrame:
    """``spec``'s synthetic samples moved in time so that the last is a minute old: the
    forecasts read the last ``forecast.history`` before now."""
    raw = synthetic_raw(spec)
    now = pd.Timestamp(datetime.now(UTC)).floor("min")
    raw["time"] = raw["time"] + (now - raw["time"].max() - pd.Timedelta("1min"))
    return raw


def write_journal(path: Path, raw: pd.DataFrame) -> None:
    """Journal-format samples into the journal at ``path``, one observation per instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Journal(path, Events()) as journal:
        for _, frame in raw.groupby("time", sort=True):  # one instant's rows at a time
            journal.append(synthetic_observation(frame, frame["time"].iloc[0]))


def recent_journal(path: Path, spec: SyntheticPool) -> None:
    """A journal of ``spec``'s synthetic pool whose last sample is a minute old."""
    write_journal(path, recent_samples(spec))
