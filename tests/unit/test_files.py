"""Temp files that a killed ``replace_atomically`` leaves behind are swept, old ones only.

bench/crash.py found them: a ``kill -9`` between creating the temp file and the rename
leaves ``.NAME.XXXXXXXX.tmp`` beside the state file, the registry's pointers and a
version's meta.json, one every few kills, and nothing ever removed them.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from veloflux.daemon.controls import OperatorControls
from veloflux.model.registry import Registry
from veloflux.util.events import Events
from veloflux.util.files import STALE_TEMP_SECONDS, replace_atomically, sweep_temps


def _temp(beside: Path, suffix: str = "0badc0de", age: float = 2 * STALE_TEMP_SECONDS) -> Path:
    """A temp file as a killed replacement of ``beside`` leaves it, ``age`` seconds old."""
    temp = beside.with_name(f".{beside.name}.{suffix}.tmp")
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"half")
    then = time.time() - age
    os.utime(temp, (then, then))
    return temp


def test_sweep_removes_old_temps_of_that_file_only(tmp_path: Path) -> None:
    target = tmp_path / "operator.json"
    replace_atomically(target, b"{}")
    old = _temp(target)
    young = _temp(target, "1234abcd", age=1.0)  # maybe a write in progress: kept
    other = _temp(tmp_path / "current")  # another file's: not this sweep's business
    assert sweep_temps(target) == 1
    assert not old.exists()
    assert young.exists()
    assert other.exists()
    assert target.read_bytes() == b"{}"


def test_sweep_of_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    assert sweep_temps(tmp_path / "nowhere" / "operator.json") == 0


def test_operator_controls_sweep_on_load(tmp_path: Path) -> None:
    path = tmp_path / "operator.json"
    old = _temp(path)
    controls = OperatorControls(path, lambda: datetime.now(UTC), Events())
    assert not old.exists()
    assert controls.snapshot().paused is False  # the temp was never read as state


def test_registry_prune_sweeps_pointer_and_meta_temps(tmp_path: Path) -> None:
    registry = Registry(tmp_path, lambda: datetime.now(UTC), Events())
    entry = registry.save({"model": b"{}"}, {})
    registry.promote(entry.version)
    leftovers = [
        _temp(tmp_path / "current"),
        _temp(tmp_path / "previous"),
        _temp(tmp_path / "versions" / entry.version / "meta.json"),
    ]
    young = _temp(tmp_path / "current", "1234abcd", age=1.0)
    registry.prune()
    assert [p for p in leftovers if p.exists()] == []
    assert young.exists()
    assert registry.load().version == entry.version
