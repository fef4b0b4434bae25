"""How plans and apply reports look on a terminal (rich table) and to scripts (JSON)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

from veloflux.weightplan import ApplyReport, WeightPlan

_MODE_STYLE = {"model": "green", "fallback": "yellow", "hold": "magenta", "unmanaged": "dim"}


def plan_table(plan: WeightPlan, title: str) -> Table:
    """One row per server; changed weights highlighted so the eye finds them."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold")
    for column in ("backend", "server", "state", "current", "planned", "static"):
        table.add_column(
            column, justify="right" if column in ("current", "planned", "static") else "left"
        )
    table.add_column("confidence", justify="right")
    table.add_column("mode")
    table.add_column("reason", overflow="fold")
    for pool in plan.pools:
        for s in pool.servers:
            planned = Text("-" if s.planned_weight is None else str(s.planned_weight))
            if s.changes:
                planned.stylize("bold cyan")
            table.add_row(
                pool.backend,
                s.server,
                s.state,
                "-" if s.current_weight is None else str(s.current_weight),
                planned,
                "-" if s.static_weight is None else str(s.static_weight),
                f"{s.confidence:.2f}",
                Text(pool.mode, style=_MODE_STYLE.get(pool.mode, "")),
                s.reason,
            )
    return table


def report_json(report: ApplyReport | None) -> dict[str, Any]:
    if report is None:
        return {"written": 0, "failed": 0, "failures": []}
    return {
        "written": len(report.applied),
        "failed": len(report.failures),
        "failures": [
            {"backend": f.backend, "server": f.server, "weight": f.new_weight, "error": f.error}
            for f in report.failures
        ],
    }


def make_console() -> Console:
    """A console that keeps the table readable when piped (rich assumes 80 columns).

    rich is imported here, not at module load, so a JSON-only run never pays for it.
    """
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=160)


def print_plan(
    console: Console, plan: WeightPlan, output: str, title: str, report: ApplyReport | None = None
) -> None:
    """Print the plan (and, after a write, what happened) in the chosen format."""
    if output == "json":
        document = plan.to_json()
        if report is not None:
            document["apply"] = report_json(report)
        console.file.write(json.dumps(document, indent=2) + "\n")
        return
    console.print(plan_table(plan, title))
    for pool in plan.pools:
        if pool.mode in ("unmanaged", "hold"):
            console.print(f"[dim]{pool.backend}: {pool.mode}: {pool.reason}[/dim]")
    if report is not None:
        console.print(
            f"written {len(report.applied)} weight(s), each confirmed by read-back; "
            f"{len(report.failures)} failed"
        )
        for f in report.failures:
            console.print(f"  [red]{f.backend}/{f.server} -> {f.new_weight}: {f.error}[/red]")
