"""Running the real CLI as a subprocess, and reading HAProxy's weights independently."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veloflux.haproxy.runtime import RuntimeAPI


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
