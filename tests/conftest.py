"""Fixtures shared by every test: a real HAProxy on loopback, temp sockets, free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec

# `make mutation` (bench/mutation.py) runs the tests once per mutant with
# --hypothesis-profile=mutation: the same examples every run, so that its figures repeat,
# and no shrinking, since a failing example only has to fail, not be read.
settings.register_profile(
    "mutation",
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)

StartHAProxy = Callable[..., HAProxyProcess]


def servers(
    count: int, weight: int = 10, prefix: str = "s", port: int = 9
) -> tuple[ServerSpec, ...]:
    """``count`` servers at a loopback address nobody answers on (checks are off)."""
    return tuple(
        ServerSpec(f"{prefix}{i}", f"127.0.0.1:{port}", weight) for i in range(1, count + 1)
    )


@pytest.fixture
def start_haproxy(tmp_path: Path) -> Iterator[StartHAProxy]:
    """Start real HAProxy processes with the given backends; all are stopped afterwards."""
    started: list[HAProxyProcess] = []

    def start(backends: Sequence[BackendSpec], name: str = "haproxy") -> HAProxyProcess:
        proc = HAProxyProcess(tmp_path / name, backends).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def haproxy(start_haproxy: StartHAProxy) -> HAProxyProcess:
    """A HAProxy with a managed pool, a static-rr pool and a source-hash pool."""
    return start_haproxy(
        [
            BackendSpec(
                "app",
                (
                    ServerSpec("s1", "127.0.0.1:9", 10),
                    ServerSpec("s2", "127.0.0.1:9", 20),
                    ServerSpec("s3", "127.0.0.1:9", 30),
                    ServerSpec("s4", "127.0.0.1:9", 40),
                ),
            ),
            BackendSpec("legacy", servers(2, weight=5, prefix="l"), algorithm="static-rr"),
            BackendSpec("sticky", servers(2, weight=5, prefix="h"), algorithm="source"),
        ]
    )


def write_config(path: Path, socket: str, extra: str = "", ai: str = "") -> Path:
    """A minimal veloflux.yaml for one HAProxy socket, plus ``extra`` YAML appended.

    History, models and the audit log live beside the file, never in the machine's /var/lib.
    """
    state = path.parent / f"{path.stem}-state"
    path.write_text(
        f"interval: 10s\nhaproxy:\n  socket: {socket}\n  timeout: 2s\n{extra}"
        f"\nai:\n  history_path: {state}/history.sqlite\n  model_dir: {state}/models\n"
        f"  audit_log: {state}/audit.jsonl\n{ai}"
    )
    return path
