"""``veloflux-agent status`` for a person: the daemon's ``/status`` JSON as two tables.

At a terminal an operator wants to read in a few seconds whether the daemon is
paused, when it last ticked and whether that worked, which sources are down, which
model is in use, what is pinned or held, and the plan; a script wants the JSON, which
stays the default when the output is not a terminal (and with ``--output json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def status_view(status: Mapping[str, Any]) -> Group:
    """The summary (key: value) and the plan (one row per server)."""
    return Group(_summary(status), _plan(status.get("plan")))


def _summary(status: Mapping[str, Any]) -> Table:
    table = Table(title="VeloFlux agent", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    paused = status.get("paused")
    table.add_row(
        "state",
        Text(f"paused: {status.get('pause_reason')}", style="yellow")
        if paused
        else Text("writing" if status.get("ready") else "not ready yet", style="green"),
    )
    table.add_row("version", str(status.get("version")))
    table.add_row("last attempt", _attempt(status.get("last_attempt")))
    success = status.get("last_success") or {}
    table.add_row("last success", str(success.get("at") or "never"))
    for name, source in sorted((status.get("sources") or {}).items()):
        up = Text("up", style="green") if source.get("up") else Text("DOWN", style="bold red")
        table.add_row(f"source {name}", Text.assemble(up, f"  {source.get('address', '')}"))
    model = status.get("model") or {}
    table.add_row("model", str(model.get("version") or "none"))
    training = status.get("last_training") or {}
    if training:
        table.add_row("last training", f"{training.get('outcome')}: {training.get('message')}")
    table.add_row("pins", _listed(status.get("overrides"), "server", "weight") or "none")
    holds = _listed(status.get("external_holds"), "server", "found")
    table.add_row("held (set outside VeloFlux)", holds or "none")
    return table


def _attempt(attempt: Mapping[str, Any] | None) -> Text:
    if not attempt:
        return Text("none yet")
    if attempt.get("ok"):
        return Text(f"{attempt.get('at')} ok ({attempt.get('duration_seconds')} s)")
    return Text(f"{attempt.get('at')} FAILED: {attempt.get('error')}", style="bold red")


def _listed(items: object, key: str, value: str) -> str:
    if not isinstance(items, list):
        return ""
    return ", ".join(f"{i.get(key)}={i.get(value)}" for i in items if isinstance(i, dict))


def _plan(plan: Mapping[str, Any] | None) -> Table:
    table = Table(title="plan", title_justify="left", header_style="bold")
    for column in ("backend", "mode", "server", "current", "planned", "static", "reason"):
        table.add_column(column, overflow="fold" if column == "reason" else "ellipsis")
    for pool in (plan or {}).get("pools", []):
        for server in pool.get("servers", []):
            table.add_row(
                str(pool.get("backend")),
                str(pool.get("mode")),
                str(server.get("server")),
                _weight(server.get("current_weight")),
                _weight(server.get("planned_weight")),
                _weight(server.get("static_weight")),
                str(server.get("reason", "")),
            )
    if not table.row_count:
        table.add_row(
            "-", "-", "no plan yet: the daemon has not observed the proxy", "", "", "", ""
        )
    return table


def _weight(value: object) -> str:
    return "-" if value is None else str(value)
