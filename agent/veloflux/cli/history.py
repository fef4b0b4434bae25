"""Commands about the journal itself: ``history export``, its samples as Parquet files
for offline analysis and for a training cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from veloflux.agent.build import open_journal
from veloflux.cli.app import EXIT_CONFIG, config_option, duration_option, fail, load, output_option
from veloflux.cli.render import make_console
from veloflux.util.events import Events


@click.group("history")
def history() -> None:
    """The journal of observations (ai.history_path)."""


@history.command("export")
@config_option
@output_option
@click.option(
    "--format", "fmt", type=click.Choice(["parquet"]), default="parquet", show_default=True
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="directory: date=YYYY-MM-DD[/hour=HH]/samples.parquet inside")  # fmt: skip
@click.option("--period", type=click.Choice(["day", "hour"]), default="day", show_default=True,
              help="one file per day or per hour of samples")  # fmt: skip
@click.option("--since", default=None, help="only the last DURATION (e.g. 7d) [default: all]")
def export(config_path: str | None, output: str, fmt: str, out: Path, period: str,
           since: str | None) -> None:  # fmt: skip
    """Write the journal's samples as time-partitioned Parquet files (written whole and
    renamed, one period at a time; running it again replaces the files)."""
    from veloflux.history.export import ExportError, export_parquet

    seconds = duration_option(since, "--since")
    config = load(config_path)
    journal = open_journal(config, Events(), create=False)
    if journal is None:
        fail(EXIT_CONFIG, f"ai.history_path: no journal at {config.ai.history_path}")
    start = datetime.now(UTC) - timedelta(seconds=seconds) if seconds else None
    try:
        with journal:
            files = export_parquet(journal, out, period, since=start)
    except ExportError as exc:
        fail(EXIT_CONFIG, str(exc))
    if output == "json":
        listing = [
            {"path": str(f.path), "start": f.start.isoformat(), "rows": f.rows, "bytes": f.bytes}
            for f in files
        ]
        click.echo(json.dumps({"format": fmt, "files": listing}, indent=2))
        return
    rows, size = sum(f.rows for f in files), sum(f.bytes for f in files)
    make_console().print(
        f"{len(files)} {fmt} file(s) under {out}: {rows:,} samples, {size / 1e6:.1f} MB"
    )


COMMANDS = (history,)
