"""How plans and apply reports look on a terminal (rich table) and to scripts (JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from veloflux.model.pipeline import TrainingReport
    from veloflux.model.registry import ModelEntry

from veloflux.domain.observation import ExternalFeatures, ReplicaStatus
from veloflux.domain.weightplan import ApplyReport, WeightPlan

_MODE_STYLE = {
    "model": "green",
    "capacity": "cyan",
    "fallback": "yellow",
    "hold": "magenta",
    "unmanaged": "dim",
}


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
            | ({"replica": f.replica} if f.replica else {})
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


def external_json(external: ExternalFeatures) -> dict[str, Any]:
    """What the Prometheus source gave this tick: each feature and how many servers
    it had a value for, or why it gave nothing."""
    return {
        "source": external.source,
        "available": not external.error,
        "error": external.error,
        "features": {
            name: sum(1 for v in values if v == v)  # v == v: not NaN
            for name, (_, values) in zip(external.names(), external.values, strict=True)
        },
        "problems": list(external.problems),
    }


def external_line(external: ExternalFeatures, servers: int) -> str:
    """The one line a person reads about the Prometheus features of this tick."""
    if external.error:
        return (
            f"{external.source}: unavailable, every feature missing (degraded mode: the "
            f"proxy's own stats only; confidence sees the gap): {external.error}"
        )
    counts = external_json(external)["features"]
    read = ", ".join(f"{name} {n}/{servers}" for name, n in counts.items())
    return f"{external.source} features in use (servers with a value): {read}"


def print_plan(
    plan: WeightPlan,
    output: str,
    title: str,
    report: ApplyReport | None = None,
    external: ExternalFeatures | None = None,
    servers: int = 0,
    replicas: Sequence[ReplicaStatus] = (),
) -> None:
    """Print the plan (and, after a write, what happened) in the chosen format;
    ``external``: the Prometheus features of the observation behind it; ``replicas``:
    each replica's state when a proxy runs as several."""
    if output == "json":
        document = plan.to_json()
        if report is not None:
            document["apply"] = report_json(report)
        if external is not None:
            document["prometheus"] = external_json(external)
        if replicas:
            document["replicas"] = [r.to_json() for r in replicas]
        # Indented for a person at a terminal; compact when piped, so that json can use
        # its C encoder on a large plan (indentation forces the pure-Python one).
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json.dumps(document, indent=indent) + "\n")
        return
    console = make_console()
    model = f"model {plan.model_version}" if plan.model_version else "no model"
    console.print(plan_table(plan, f"{title}; {model}"))
    for pool in plan.pools:
        if pool.mode in ("unmanaged", "hold"):
            console.print(f"[dim]{pool.backend}: {pool.mode}: {pool.reason}[/dim]")
    for replica in replicas:
        from rich.markup import escape

        state = "up" if replica.up else f"[red]down: {escape(replica.problem)}[/red]"
        console.print(f"replica {escape(replica.name)}: {state}")
    if external is not None:
        from rich.markup import escape

        style = "yellow" if external.error else "dim"
        console.print(f"[{style}]{escape(external_line(external, servers))}[/{style}]")
        for problem in external.problems:
            console.print(f"[yellow]  {escape(problem)}[/yellow]")
    if report is not None:
        console.print(
            f"written {len(report.applied)} weight(s), each confirmed by read-back; "
            f"{len(report.failures)} failed"
        )
        for f in report.failures:
            where = f" on {f.replica}" if f.replica else ""
            console.print(
                f"  [red]{f.backend}/{f.server} -> {f.new_weight}{where}: {f.error}[/red]"
            )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def training_table(result: TrainingReport) -> Table:
    """What one training produced, and whether it became current, for an operator."""
    from rich.table import Table

    meta, metrics = result.metadata, result.metadata["metrics"]
    verdict = "promoted to current" if result.promoted else "kept as a candidate"
    table = Table(
        title=f"model {result.entry.version}: {verdict}", title_justify="left", show_header=False
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = meta["rows"]
    table.add_row("why", result.reason)
    table.add_row(
        "rows used",
        f"{sum(rows.values())} (train {rows['train']}, validation "
        f"{rows['valid']}, calibration {rows['calib']}, test {rows['test']})",
    )
    table.add_row("training window", f"{meta['window']['start']} .. {meta['window']['end']}")
    table.add_row(
        "p50 latency MAE (test)",
        f"{_ms(metrics['mae_p50_seconds'])} vs naive "
        f"{_ms(metrics['naive_mae_seconds'])} (naive: next = last observed)",
    )
    table.add_row(
        "pinball loss p50 / p90",
        f"{_ms(metrics['pinball_p50'])} / "
        f"{_ms(metrics['pinball_p90'])} (naive {_ms(metrics['naive_pinball_p50'])} / "
        f"{_ms(metrics['naive_pinball_p90'])})",
    )
    table.add_row("80% interval coverage (calibrated)", f"{metrics['coverage_80']:.1%}")
    table.add_row(
        "error-rate MAE",
        f"{metrics['error_rate_mae']:.4f} vs naive {metrics['naive_error_rate_mae']:.4f}",
    )
    if result.current_version:
        theirs = result.current_metrics
        shown = _ms(theirs["mae_p50_seconds"]) if theirs else "could not be judged"
        table.add_row("previous model, same window", f"{result.current_version}: {shown}")
    table.add_row("duration", f"{meta['duration_seconds']:.1f} s")
    return table


def models_table(entries: list[ModelEntry]) -> Table:
    """Every kept version, newest first."""
    from rich.table import Table

    table = Table(title="models", title_justify="left", header_style="bold")
    for column in ("version", "created", "status", "p50 MAE", "naive MAE", "coverage", "reason"):
        table.add_column(column)
    for entry in entries:
        metrics = entry.metadata.get("metrics", {})
        mae, naive = metrics.get("mae_p50_seconds"), metrics.get("naive_mae_seconds")
        coverage = metrics.get("coverage_80")
        table.add_row(
            entry.version,
            entry.created_at.isoformat(timespec="seconds"),
            entry.status,
            _ms(mae) if mae is not None else "-",
            _ms(naive) if naive is not None else "-",
            f"{coverage:.1%}" if coverage is not None else "-",
            entry.reason,
        )
    return table


def simulation_table(result: dict[str, Any]) -> Table:
    """``simulate``'s figures: each a mean over the seeds with its 95% interval."""
    from rich.table import Table

    seeds = len(result["seeds"])
    table = Table(
        title=f"{result['scenario']}: {result['dispatcher']} + {result['strategy']}, "
        f"{seeds} seed(s), mean [95% interval]"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in result.items():
        if isinstance(value, dict) and "mean" in value:
            low, high = value["ci95"]
            shown = "-" if value["mean"] is None else f"{value['mean']:.4g} [{low:.4g}, {high:.4g}]"
            table.add_row(name, shown)
    return table
