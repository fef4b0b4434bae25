"""The fallback path (no journal, no model) imports neither pandas nor XGBoost.

docs/architecture.md promises it, and many imports inside functions keep it so: a
one-shot dry-run should not pay half a second to learn that there is no model. Each
check runs in a fresh interpreter, since this pytest process has long imported both.
The probe watches the first import of each and prints where it came from, so a broken
promise names the import chain that broke it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WATCHED = ("pandas", "xgboost")

# Run as ``python probe.py STATE_DIR ai=on|off [MODULE ...]``: imports the CLI's module
# graph, builds an Agent as agent.build does for a config with no journal on disk and
# no promoted model, runs a dry-run tick and a write tick against an in-memory proxy,
# imports each MODULE (the control case), and prints one JSON line.
PROBE = r"""
import importlib
import json
import sys
import traceback
from importlib.abc import MetaPathFinder

WATCHED = ("pandas", "xgboost")
chains = {}


class Watch(MetaPathFinder):
    # Notes the stack of the first import of a watched package, then lets it load.
    def find_spec(self, name, path=None, target=None):
        if name in WATCHED and name not in chains:
            chains[name] = [
                f"{frame.filename}:{frame.lineno}: {frame.line}"
                for frame in traceback.extract_stack()[:-1]
                if not frame.filename.startswith("<frozen")
            ]
        return None


sys.meta_path.insert(0, Watch())

from datetime import UTC, datetime
from pathlib import Path

import veloflux.cli  # the CLI's whole module graph
from veloflux.agent.build import open_journal, open_registry
from veloflux.agent.tick import Agent
from veloflux.config.load import validate_config
from veloflux.domain.observation import (
    COLUMN_NAMES, Observation, PoolInfo, ProxyIdentity, ServerRow,
)
from veloflux.domain.weightplan import ApplyReport, WriteResult
from veloflux.util.events import Events

state, ai, extra = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
config = validate_config(
    {
        "haproxy": {"socket": "unix:///haproxy.sock", "backends": ["web"]},
        "ai": {
            "enabled": ai == "ai=on",
            "history_path": str(state / "history.sqlite"),
            "model_dir": str(state / "models"),
        },
    }
)
PROXY = ProxyIdentity("unix:///haproxy.sock", 1234, 1.7e9, 60.0, "2.6.12", "admin")
TEXT = {
    "source": "haproxy", "pool": "web", "address": "127.0.0.1:9", "state": "UP",
    "backup": False, "algorithm": "roundrobin", "check_status": "", "problem": "",
}


class Source:
    def observe(self):
        now = datetime.now(UTC)
        rows = tuple(
            ServerRow(**{
                **dict.fromkeys(COLUMN_NAMES, 0.0), **TEXT, "time": now, "server": name,
                "weight": weight, "initial_weight": 10.0, "response_time": seconds,
            })
            for name, weight, seconds in (("w1", 20.0, 0.02), ("w2", 10.0, 0.02),
                                          ("w3", 10.0, 0.5))
        )
        return Observation(now, rows, (PoolInfo("web", "roundrobin", True),), PROXY)


class Sink:
    def apply(self, plan, proxy_level="unknown"):
        return ApplyReport(tuple(
            WriteResult(s.backend, s.server, s.current_weight, s.planned_weight,
                        s.planned_weight, "")
            for s in plan.changes()
        ))


events = Events()
journal = open_journal(config, events, create=False)  # as build_agent(write=False)
registry = open_registry(config, events) if config.ai.enabled else None  # as build._driver
agent = Agent(config, Source(), Sink(), events, journal=journal, registry=registry)
dry = agent.tick(write=False)
dry.plan.to_json_text()  # what `dry-run --output json` prints
written = agent.tick(write=True)
for name in extra:
    importlib.import_module(name)
print(json.dumps({
    "journal": journal is not None,
    "modes": sorted({p.mode for r in (dry, written) for p in r.plan.pools}),
    "reasons": sorted({p.reason for r in (dry, written) for p in r.plan.pools}),
    "written": len(written.report.applied),
    "loaded": [name for name in WATCHED if name in sys.modules],
    "chains": chains,
}))
"""


def probe(state: Path, ai: str, *extra: str) -> dict[str, Any]:
    """Run PROBE in a fresh interpreter (the one running pytest, i.e. the venv's), from
    a file so that the import chains it prints show its own lines too."""
    (state / "models").mkdir(exist_ok=True)  # a model directory with no model in it
    script = state / "probe.py"
    script.write_text(PROBE, encoding="utf-8")
    child = subprocess.run(
        [sys.executable, str(script), str(state), ai, *extra],
        capture_output=True,
        text=True,
        cwd=state,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    found: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return found


def chains_text(found: dict[str, Any]) -> str:
    """Each watched package the probe saw imported, with the stack that imported it."""
    return "\n\n".join(
        f"{name} imported by:\n  " + "\n  ".join(stack) for name, stack in found["chains"].items()
    )


@pytest.mark.parametrize(
    ("ai", "reason"),
    [("ai=off", "ai disabled"), ("ai=on", "no model (none promoted yet")],
    ids=["ai-disabled", "ai-enabled-no-journal-no-model"],
)
def test_the_fallback_path_imports_neither_pandas_nor_xgboost(
    tmp_path: Path, ai: str, reason: str
) -> None:
    """A dry-run tick and a write tick, with the CLI imported too."""
    found = probe(tmp_path, ai)
    assert not found["journal"]
    assert found["modes"] == ["fallback"]  # the ticks really took the fallback path ...
    assert all(r.startswith(reason) for r in found["reasons"]), found["reasons"]
    assert found["written"] >= 1  # ... and the write tick wrote
    assert found["loaded"] == [], chains_text(found)


def test_the_probe_sees_pandas_when_something_on_the_path_imports_it(tmp_path: Path) -> None:
    """The control: the same probe, importing the journal's frames module at the end,
    reports pandas and the line that imported it (so the test above can fail)."""
    found = probe(tmp_path, "ai=off", "veloflux.history.frames")
    assert "pandas" in found["loaded"]
    *_, importer = found["chains"]["pandas"]
    assert importer.endswith("import pandas as pd")  # in history/frames.py, unless earlier


def test_the_clis_start_up_does_not_load_numpy() -> None:
    """numpy costs about 60 ms to import here, a fifth of the dry-run's start-up budget
    (docs/benchmarks.md, "HAProxy with a 1,000-server backend"); the modules on the
    CLI's import path load it on first use instead. Kills: a top-level ``import numpy``
    back in a module the CLI imports (the capacity rung's helpers and the probe
    schedule had one, and the cold dry-run had grown by 170 ms)."""
    probe = (
        "import sys, veloflux.cli; "
        "print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout
