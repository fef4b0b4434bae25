"""The veloflux-agent command line, grouped by audience, and its terminal rendering."""

from veloflux.cli.commands import main

__all__ = ["main"]
