"""``history export --format parquet``: the journal as one Parquet file per UTC day (or
hour), Hive-style, read back as the same samples; bounded periods, replaced on a rerun.
Each docstring names the break it catches."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.unit.test_history import snapshot
from veloflux.cli import main
from veloflux.history.export import export_parquet, periods
from veloflux.history.journal import Journal
from veloflux.util.events import Events

T0 = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    """Samples every 30 minutes from 22:00 on the 5th to 03:30 on the 7th: three days."""
    journal = Journal(tmp_path / "history.sqlite", Events())
    for step in range(60):
        at = T0 + timedelta(minutes=30 * step)
        journal.append(snapshot(at, {"s1": {"requests_total": float(step)}, "s2": {}}))
    return journal


def test_one_file_per_day_reads_back_as_the_journal(journal: Journal, tmp_path: Path) -> None:
    """Kills: samples lost or doubled at a day's edge, a period's file overwritten by the
    next, or columns changed on the way (a training cluster would read other data)."""
    files = export_parquet(journal, tmp_path / "out")
    assert [f.path.parent.name for f in files] == [
        "date=2026-12-05", "date=2026-12-06", "date=2026-12-07",
    ]  # fmt: skip
    assert [f.rows for f in files] == [2 * 4, 2 * 48, 2 * 8]
    back = pd.concat([pd.read_parquet(f.path) for f in files], ignore_index=True)
    whole = journal.read()
    key = ["pool", "server", "time"]
    back = back.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(back, whole.sort_values(key, ignore_index=True))
    # The directory reads as one table, the date a column from its path.
    table = pd.read_parquet(tmp_path / "out")
    assert len(table) == len(whole)
    assert sorted(table["date"].astype(str).unique()) == ["2026-12-05", "2026-12-06", "2026-12-07"]


def test_hourly_since_and_a_rerun_replaces_what_it_wrote(journal: Journal, tmp_path: Path) -> None:
    """Kills: --since ignored, hours written under the wrong day, or a second export
    adding files beside the first's instead of replacing them."""
    since = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    files = export_parquet(journal, tmp_path / "out", "hour", since=since)
    assert [(f.path.parent.parent.name, f.path.parent.name) for f in files] == [
        ("date=2026-12-07", "hour=02"), ("date=2026-12-07", "hour=03"),
    ]  # fmt: skip
    assert sum(f.rows for f in files) == 2 * 4
    again = export_parquet(journal, tmp_path / "out", "hour", since=since)
    assert [f.path for f in again] == [f.path for f in files]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "samples.parquet", "samples.parquet",
    ]  # fmt: skip


def test_periods_tile_without_gaps() -> None:
    start, end = datetime(2026, 1, 1, 23, 59, tzinfo=UTC), datetime(2026, 1, 3, 0, 0, tzinfo=UTC)
    spans = list(periods(start, end, "day"))
    assert [a.day for a, _ in spans] == [1, 2, 3]
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(spans))


def test_the_command_exports_and_names_a_missing_journal(journal: Journal, tmp_path: Path) -> None:
    """Kills: the command writing nothing, or a traceback when there is no journal."""
    journal.close()
    config = tmp_path / "veloflux.yaml"
    config.write_text(
        "haproxy: {socket: unix:///tmp/none.sock}\n"
        f"ai: {{history_path: {tmp_path / 'history.sqlite'}, model_dir: {tmp_path / 'm'}}}\n"
    )
    runner = CliRunner()
    done = runner.invoke(main, ["history", "export", "-c", str(config), "--out",
                                str(tmp_path / "out"), "--output", "json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert len(json.loads(done.output)["files"]) == 3
    config.write_text(config.read_text().replace("history.sqlite", "absent.sqlite"))
    missing = runner.invoke(main, ["history", "export", "-c", str(config), "--out", "x"])
    assert missing.exit_code == 1
    assert "no journal at" in missing.output
