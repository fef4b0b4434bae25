"""The VeloFlux Grafana dashboard, written as plain dicts and generated into JSON.

Grafana's dashboard JSON is long and hard to review by hand; this script is the source
and ``dashboards/veloflux.json`` (provisioned by ``provisioning/dashboards/veloflux.yml``)
its output, kept in step by tests/unit/test_grafana_dashboard.py::

    python -m integration.grafana.build_dashboard           # rewrite the JSON
    python -m integration.grafana.build_dashboard --check   # exit 1 if it is out of date

Every query goes to the Prometheus data source with uid ``prometheus``: the agent's own
``veloflux_*`` series and HAProxy's exporter (``haproxy_server_*``, whose ``proxy`` label
is the agent's ``backend``; the forecast series call it ``pool``, as the forecast API
does). No panel needs a recording rule, so every query also runs against a bare
Prometheus: ``panel_exprs()`` gives them with the dashboard variables filled in, for an
end-to-end test to send.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veloflux.daemon.metrics import MODES

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "veloflux.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
UID = "veloflux"
# Grafana's variables used in the queries, and what panel_exprs() puts in their place.
BACKEND = "$backend"
HORIZON = "$horizon"
RATE = "$__rate_interval"
DEFAULT_VARIABLES = {"backend": ".*", "horizon": "1h", "__rate_interval": "1m"}
# The forecast panel's series (legends): the band is drawn between the two bounds.
MEDIAN, UPPER, LOWER = "median (q0.5)", "80% interval top (q0.9)", "80% interval bottom (q0.1)"
# The agent's default tick interval (10 s) times 5: VelofluxNotTicking's threshold.
NOT_TICKING_S = 50
# Two retraining periods of the default ai.retrain_cron (6 h): VelofluxTrainingStale's.
TRAINING_STALE_S = 43200

Json = dict[str, Any]

_GREEN, _YELLOW, _RED, _BLUE, _PURPLE, _GREY = (
    "green",
    "yellow",
    "red",
    "blue",
    "purple",
    "text",
)
MODE_COLORS = {
    "model": _GREEN,
    "capacity": _BLUE,
    "fallback": _YELLOW,
    "hold": _PURPLE,
    "unmanaged": _GREY,
}


@dataclass(frozen=True)
class Query:
    """One target: PromQL and the legend Grafana draws for each series it returns."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """What differs between panels; ``_panel_json`` adds what they share."""

    kind: str  # timeseries, stat, state-timeline
    title: str
    description: str
    queries: tuple[Query, ...]
    width: int
    height: int = 8
    unit: str = "short"
    min: float | None = None
    max: float | None = None
    mappings: tuple[tuple[float, str, str], ...] = ()  # value, text, color
    thresholds: tuple[tuple[float | None, str], ...] = ((None, _GREEN),)
    stat_text: str = "value"  # stat panels: "value" or "name" (the legend)
    overrides: tuple[Json, ...] = field(default=())
    bars: bool = False
    steps: bool = False  # a value that holds until the next one (a forecast refresh)
    repeat: str | None = None  # one copy of the panel per value of this variable


def _b(metric: str, extra: str = "") -> str:
    """``metric`` restricted to the chosen backends (the agent's ``backend`` label)."""
    return f'{metric}{{backend=~"{BACKEND}"{extra}}}'


def _pool(metric: str, extra: str = "") -> str:
    """A forecast ``metric`` restricted to the chosen backends (its ``pool`` label)."""
    return f'{metric}{{pool=~"{BACKEND}"{extra}}}'


def _p(metric: str, extra: str = "") -> str:
    """``metric`` of HAProxy's exporter restricted to the chosen backends (``proxy``)."""
    return f'{metric}{{proxy=~"{BACKEND}"{extra}}}'


def _pool_mode_expr() -> str:
    """The pool's mode as one number per backend (1 + its index in MODES): a state
    timeline then shows one row per pool, named by the value mappings."""
    parts = [
        _b("veloflux_pool_mode", f', mode="{mode}"') + f" * {code}"
        for code, mode in enumerate(MODES, start=1)
    ]
    return f"max by (backend) ({' or '.join(parts)})"


def _dashed(name_regex: str) -> Json:
    return {
        "matcher": {"id": "byRegexp", "options": name_regex},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
    }


def _fixed_color(name: str, color: str, *more: Json) -> Json:
    properties = [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}, *more]
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


def _band() -> tuple[Json, ...]:
    """The 80% interval as a shaded band: its top filled down to its bottom, neither
    drawn as a line. Grafana pairs series by name, so each copy of the panel (one per
    backend) holds one series of each."""
    no_line = {"id": "custom.lineWidth", "value": 0}
    return (
        _fixed_color(MEDIAN, _BLUE),
        _fixed_color(
            UPPER,
            _BLUE,
            no_line,
            {"id": "custom.fillBelowTo", "value": LOWER},
            {"id": "custom.fillOpacity", "value": 20},
        ),
        _fixed_color(LOWER, _BLUE, no_line),
    )


def _forecasts() -> list[Panel]:
    forecast = "veloflux_pool_forecast_requests_per_second"
    at = f', horizon="{HORIZON}"'
    return [
        Panel(
            "timeseries",
            f"Load forecast {HORIZON} ahead: {BACKEND}",
            "The agent's forecast of the pool's requests per second at the chosen horizon "
            "ahead (the Horizon variable), as it stood at each moment: the median and the "
            "80% interval (quantiles 0.1 to 0.9) as a band. It changes once per "
            "forecast.refresh; a pool without three days of history has none. One panel "
            "per backend.",
            (
                Query(_pool(forecast, f'{at}, quantile="0.5"'), MEDIAN),
                Query(_pool(forecast, f'{at}, quantile="0.9"'), UPPER),
                Query(_pool(forecast, f'{at}, quantile="0.1"'), LOWER),
            ),
            width=24,
            unit="reqps",
            min=0,
            overrides=_band(),
            steps=True,
            repeat="backend",
        ),
        Panel(
            "timeseries",
            "Recommended servers vs in rotation",
            "Servers each pool needs for the forecast's peak (its 90% bound over the "
            "longest horizon) at forecast.target_utilization (dashed), against the servers "
            "the agent manages with a weight above 0 at its last tick.",
            (
                Query(_pool("veloflux_pool_recommended_servers"), "{{pool}} recommended"),
                Query(
                    f"count by (backend) ({_b('veloflux_server_weight')} > 0)",
                    "{{backend}} in rotation",
                ),
            ),
            width=24,
            height=7,
            min=0,
            overrides=(_dashed(".* recommended$"),),
            steps=True,
        ),
    ]


def _weights_and_modes() -> list[Panel]:
    return [
        Panel(
            "timeseries",
            "Weight in effect vs planned",
            "Per server: the weight in effect after the agent's last tick (read back after "
            "a write; solid) and the weight its plan asked for (dashed). They differ while "
            "the step limit, a pin, a pause or an external hold keeps the weight back.",
            (
                Query(_b("veloflux_server_weight"), "{{backend}}/{{server}}"),
                Query(_b("veloflux_server_planned_weight"), "{{backend}}/{{server}} planned"),
            ),
            width=12,
            min=0,
            overrides=(_dashed(".* planned$"),),
        ),
        Panel(
            "state-timeline",
            "Pool mode",
            "The mode each pool was planned in at each tick: model, capacity (the capacity "
            "rung), fallback (static weights), hold (no trustworthy data: weights held) "
            "or unmanaged.",
            (Query(_pool_mode_expr(), "{{backend}}"),),
            width=12,
            mappings=tuple(
                (float(code), mode, MODE_COLORS[mode]) for code, mode in enumerate(MODES, start=1)
            ),
        ),
        Panel(
            "timeseries",
            "Pool confidence",
            "Confidence (0..1) in each pool's model-driven plan at the last tick.",
            (Query(_b("veloflux_pool_confidence"), "{{backend}}"),),
            width=8,
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "timeseries",
            "Server confidence",
            "Confidence (0..1) in each server's prediction at the last tick.",
            (Query(_b("veloflux_server_confidence"), "{{backend}}/{{server}}"),),
            width=8,
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "state-timeline",
            "Pool overload",
            "Overload: the load offered to the pool reached its estimated capacity; static "
            "weights are held and no split helps (add capacity).",
            (Query(_b("veloflux_pool_overload"), "{{backend}}"),),
            width=8,
            mappings=((0.0, "ok", _GREEN), (1.0, "overload", _RED)),
        ),
    ]


def _servers() -> list[Panel]:
    responses = _p("haproxy_server_http_responses_total")
    errors = _p("haproxy_server_http_responses_total", ', code="5xx"')
    by_server = "sum by (proxy, server)"
    return [
        Panel(
            "timeseries",
            "Response time per server (HAProxy)",
            "HAProxy's average response time per server over its last 1024 requests "
            "(haproxy_server_response_time_average_seconds), and the backend's (dashed). "
            "HAProxy backends only: Envoy clusters have no per-endpoint series here.",
            (
                Query(_p("haproxy_server_response_time_average_seconds"), "{{proxy}}/{{server}}"),
                Query(_p("haproxy_backend_response_time_average_seconds"), "{{proxy}} backend"),
            ),
            width=12,
            unit="s",
            min=0,
            overrides=(_dashed(".* backend$"),),
        ),
        Panel(
            "timeseries",
            "Error rate per server (HAProxy)",
            "Share of each server's HTTP responses that were 5xx.",
            (
                Query(
                    f"{by_server} (rate({errors}[{RATE}])) / "
                    f"{by_server} (rate({responses}[{RATE}]))",
                    "{{proxy}}/{{server}}",
                ),
            ),
            width=12,
            unit="percentunit",
            min=0,
        ),
        Panel(
            "timeseries",
            "Requests per server (HAProxy)",
            "HTTP responses per second per server: where the weights send the traffic.",
            (Query(f"{by_server} (rate({responses}[{RATE}]))", "{{proxy}}/{{server}}"),),
            width=12,
            unit="reqps",
            min=0,
        ),
        Panel(
            "timeseries",
            "Weight writes",
            "Weights written and confirmed by the proxy, and writes it refused or did not "
            "confirm on read-back (VelofluxWeightWriteFailures).",
            (
                Query(
                    f"sum by (backend) (rate({_b('veloflux_weight_changes_total')}[{RATE}]))",
                    "{{backend}} written",
                ),
                Query(
                    "sum by (backend) "
                    f"(rate({_b('veloflux_weight_write_failures_total')}[{RATE}]))",
                    "{{backend}} failed",
                ),
            ),
            width=12,
            unit="wps",
            min=0,
            overrides=(
                {
                    "matcher": {"id": "byRegexp", "options": ".* failed$"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": _RED}}],
                },
            ),
        ),
    ]


def _loop() -> list[Panel]:
    buckets = f"sum by (le) (rate(veloflux_tick_duration_seconds_bucket[{RATE}]))"
    return [
        Panel(
            "timeseries",
            "Ticks and failures",
            "Successful ticks per second, failed ticks by what failed (source, sink, "
            "config, error) and ticks skipped because the previous one still ran.",
            (
                Query(f"sum(rate(veloflux_ticks_total[{RATE}]))", "ticks"),
                Query(
                    f"sum by (reason) (rate(veloflux_tick_failures_total[{RATE}]))",
                    "failed: {{reason}}",
                ),
                Query(f"sum(rate(veloflux_tick_overruns_total[{RATE}]))", "overruns"),
            ),
            width=8,
            unit="ops",
            min=0,
        ),
        Panel(
            "timeseries",
            "Tick duration",
            "Wall time of a tick (failed ones too), from the tick duration histogram.",
            tuple(
                Query(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)}")
                for q in (0.5, 0.9, 0.99)
            ),
            width=8,
            unit="s",
            min=0,
        ),
        Panel(
            "state-timeline",
            "Sources up",
            "Whether the agent could read each source at its last attempt: the proxies "
            "(haproxy, envoy) and Prometheus (VelofluxSourceDown).",
            (Query("veloflux_source_up", "{{source}}"),),
            width=8,
            mappings=((0.0, "down", _RED), (1.0, "up", _GREEN)),
        ),
        Panel(
            "timeseries",
            "Counted problems by kind",
            "Problems counted without stopping the agent (veloflux_events_total): bad "
            "input, refused writes, unreadable history, refused API requests...",
            (Query(f"sum by (kind) (rate(veloflux_events_total[{RATE}]))", "{{kind}}"),),
            width=24,
            unit="ops",
            min=0,
        ),
    ]


def _model_and_operator() -> list[Panel]:
    return [
        Panel(
            "stat",
            "Since the last successful tick",
            f"Red past {NOT_TICKING_S} s: 5 intervals of the default 10 s (VelofluxNotTicking).",
            (
                Query(
                    "max(time() - veloflux_last_successful_tick_timestamp_seconds)",
                    "since last tick",
                ),
            ),
            width=6,
            height=4,
            unit="s",
            thresholds=((None, _GREEN), (NOT_TICKING_S, _RED)),
        ),
        Panel(
            "stat",
            "Model in use",
            "The version of the model the agent plans with; empty when it has none.",
            (Query("veloflux_model_info", "{{version}}"),),
            width=6,
            height=4,
            stat_text="name",
        ),
        Panel(
            "stat",
            "Since the last finished training",
            "Time since a training run finished (promoted or not); empty before the first "
            "one. Red past 12 h, two periods of the default ai.retrain_cron "
            "(VelofluxTrainingStale).",
            (
                Query(
                    "max(time() - (veloflux_last_training_success_timestamp_seconds > 0))",
                    "since last training",
                ),
            ),
            width=6,
            height=4,
            unit="s",
            thresholds=((None, _GREEN), (TRAINING_STALE_S, _RED)),
        ),
        Panel(
            "stat",
            "Last training duration",
            "Wall time of the last training run that finished.",
            (Query("max(veloflux_last_training_duration_seconds)", "duration"),),
            width=6,
            height=4,
            unit="s",
        ),
        Panel(
            "timeseries",
            "Training runs by outcome (past hour)",
            "Training runs that ended in the hour before each point: promoted, "
            "not_promoted (refused by the promotion gate), skipped (too little history) "
            "or failed.",
            (
                Query(
                    "sum by (outcome) (increase(veloflux_trainings_total[1h]))",
                    "{{outcome}}",
                ),
            ),
            width=12,
            min=0,
            bars=True,
        ),
        Panel(
            "timeseries",
            "External changes (5 min)",
            "Weights found changed outside VeloFlux since it last wrote them, in the 5 "
            "minutes before each point (VelofluxExternalChanges).",
            (
                Query(
                    f"sum by (backend) (increase({_b('veloflux_external_changes_total')}[5m]))",
                    "{{backend}}",
                ),
            ),
            width=12,
            min=0,
            bars=True,
        ),
        Panel(
            "state-timeline",
            "Paused",
            "Whether an operator has paused weight writes (POST /api/v1/pause).",
            (Query("veloflux_paused", "{{instance}}"),),
            width=12,
            mappings=((0.0, "writing", _GREEN), (1.0, "paused", _YELLOW)),
        ),
        Panel(
            "timeseries",
            "Pins and external holds",
            "Servers whose weight an operator override pins, and servers held at a weight "
            "set outside VeloFlux (policy.external_change_hold).",
            (
                Query("veloflux_overrides_active", "overrides {{instance}}"),
                Query("veloflux_external_holds", "external holds {{instance}}"),
            ),
            width=12,
            min=0,
        ),
    ]


def panels() -> list[Panel]:
    """Every panel, top to bottom and left to right."""
    return [
        *_weights_and_modes(),
        *_servers(),
        *_forecasts(),
        *_loop(),
        *_model_and_operator(),
    ]


def _layout(specs: Sequence[Panel]) -> list[Json]:
    """Place panels left to right in rows of 24 columns, a new row when one is full."""
    placed: list[Json] = []
    x = y = row_height = 0
    for spec in specs:
        if x + spec.width > 24:
            x, y, row_height = 0, y + row_height, 0
        placed.append({"h": spec.height, "w": spec.width, "x": x, "y": y})
        x += spec.width
        row_height = max(row_height, spec.height)
    return placed


def _mappings(spec: Panel) -> list[Json]:
    if not spec.mappings:
        return []
    options = {
        f"{value:g}": {"color": color, "index": index, "text": text}
        for index, (value, text, color) in enumerate(spec.mappings)
    }
    return [{"type": "value", "options": options}]


def _field_config(spec: Panel) -> Json:
    defaults: Json = {
        "color": {"mode": "palette-classic" if spec.kind == "timeseries" else "thresholds"},
        "mappings": _mappings(spec),
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in spec.thresholds],
        },
        "unit": spec.unit,
    }
    if spec.min is not None:
        defaults["min"] = spec.min
    if spec.max is not None:
        defaults["max"] = spec.max
    if spec.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "bars" if spec.bars else "line",
            "fillOpacity": 60 if spec.bars else 0,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
        }
        if spec.steps:
            defaults["custom"]["lineInterpolation"] = "stepAfter"
    elif spec.kind == "state-timeline":
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
    return {"defaults": defaults, "overrides": list(spec.overrides)}


def _options(spec: Panel) -> Json:
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True}
    if spec.kind == "timeseries":
        return {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
    if spec.kind == "state-timeline":
        return {
            "alignValue": "left",
            "legend": legend,
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "auto",
            "tooltip": {"mode": "single", "sort": "none"},
        }
    return {
        "colorMode": "none" if spec.stat_text == "name" else "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": spec.stat_text,
    }


def _panel_json(spec: Panel, panel_id: int, grid: Json) -> Json:
    repeat: Json = {}
    if spec.repeat:
        repeat = {"maxPerRow": 2, "repeat": spec.repeat, "repeatDirection": "h"}
    return {
        "datasource": dict(DATASOURCE),
        "description": spec.description,
        "fieldConfig": _field_config(spec),
        "gridPos": grid,
        "id": panel_id,
        "options": _options(spec),
        "targets": [
            {
                "datasource": dict(DATASOURCE),
                "editorMode": "code",
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
                "refId": chr(ord("A") + index),
            }
            for index, query in enumerate(spec.queries)
        ],
        "title": spec.title,
        "type": spec.kind,
        **repeat,
    }


def _backend_variable() -> Json:
    query = "label_values(veloflux_server_weight, backend)"
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": dict(DATASOURCE),
        "definition": query,
        "includeAll": True,
        "label": "Backend",
        "multi": True,
        "name": "backend",
        "query": query,
        "refresh": 2,
        "sort": 1,
        "type": "query",
    }


def _horizon_variable() -> Json:
    """The forecast horizon the forecast panel shows: one, so that its band pairs one
    top with one bottom."""
    query = "label_values(veloflux_pool_forecast_requests_per_second, horizon)"
    default = DEFAULT_VARIABLES["horizon"]
    return {
        "current": {"selected": True, "text": default, "value": default},
        "datasource": dict(DATASOURCE),
        "definition": query,
        "includeAll": False,
        "label": "Horizon",
        "multi": False,
        "name": "horizon",
        "query": query,
        "refresh": 2,
        "sort": 0,
        "type": "query",
    }


def dashboard() -> Json:
    """The dashboard as Grafana's JSON model (what ``dashboards/veloflux.json`` holds)."""
    specs = panels()
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "VeloFlux: the weights it sets, why, and whether its loop, sources "
        "and training are healthy; per-server latency and errors from HAProxy's exporter; "
        "each pool's load forecast and the servers it needs. "
        "Generated by integration/grafana/build_dashboard.py.",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": [
            _panel_json(spec, panel_id, grid)
            for panel_id, (spec, grid) in enumerate(zip(specs, _layout(specs), strict=True), 1)
        ],
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["veloflux", "haproxy"],
        "templating": {"list": [_backend_variable(), _horizon_variable()]},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "VeloFlux",
        "uid": UID,
        "version": 1,
    }


def render() -> str:
    """The JSON text the committed file must equal."""
    return json.dumps(dashboard(), indent=2) + "\n"


def substitute(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """``expr`` with Grafana's ``$name`` variables replaced (longest names first)."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    return expr


def panel_exprs(variables: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Every panel's queries by panel title, as plain PromQL a Prometheus accepts.

    Grafana's variables are filled in: ``$backend`` with ``.*`` (every backend),
    ``$horizon`` with ``1h`` and ``$__rate_interval`` with ``1m`` unless ``variables``
    says otherwise (keys without the ``$``: ``{"backend": "app", "__rate_interval":
    "30s"}``). For an end-to-end test that sends each query to a real Prometheus.
    """
    return {
        spec.title: [substitute(query.expr, variables) for query in spec.queries]
        for spec in panels()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text("utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m integration.grafana.build_dashboard")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, "utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
