"""The Grafana dashboard: the committed JSON is the generator's output, every panel is
well formed and queries the ``prometheus`` data source, and every metric it (or an alert
rule) names is one the agent exports or HAProxy's exporter has, so a renamed metric fails
here instead of leaving an empty panel. The HAProxy names below are checked against a
real HAProxy's exporter in tests/integration/test_alert_rules.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.grafana import build_dashboard
from veloflux.daemon.forecasts import ForecastBoard
from veloflux.daemon.metrics import MODES, AgentMetrics
from veloflux.util.events import Events

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "integration" / "grafana"
RULES = ROOT / "integration" / "prometheus" / "veloflux-rules.yml"
PANEL_TYPES = {"timeseries", "stat", "state-timeline"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}

# Series of HAProxy's built-in exporter (`use-service prometheus-exporter`, HAProxy 2.6)
# that panels and rules may use.
HAPROXY_METRICS = frozenset(
    {
        "haproxy_server_weight",
        "haproxy_server_status",
        "haproxy_server_http_responses_total",
        "haproxy_server_response_time_average_seconds",
        "haproxy_server_total_time_average_seconds",
        "haproxy_server_queue_time_average_seconds",
        "haproxy_server_connect_time_average_seconds",
        "haproxy_server_current_queue",
        "haproxy_server_current_sessions",
        "haproxy_server_sessions_total",
        "haproxy_server_connection_errors_total",
        "haproxy_server_response_errors_total",
        "haproxy_backend_weight",
        "haproxy_backend_status",
        "haproxy_backend_active_servers",
        "haproxy_backend_http_responses_total",
        "haproxy_backend_response_time_average_seconds",
        "haproxy_backend_total_time_average_seconds",
        "haproxy_backend_current_queue",
    }
)
# Series Prometheus makes itself for every scrape target.
PROMETHEUS_METRICS = frozenset({"up"})
# The forecast series name the pool `pool` (as /api/v1/forecast does), the rest `backend`.
POOL_LABELLED = frozenset(
    {"veloflux_pool_forecast_requests_per_second", "veloflux_pool_recommended_servers"}
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_WORD = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges and label lists are cut out, minus function calls and keywords."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {
        match.group(1)
        for match in _WORD.finditer(text)
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS
    }


def agent_metric_names() -> set[str]:
    """Every series name an agent's registry exposes (with the forecast board the daemon
    registers on it), from its real text exposition; families without samples yet
    (per-server, per-backend, per-pool) count by their TYPE line."""
    names: set[str] = set()
    metrics = AgentMetrics("test", Events())
    metrics.registry.register(ForecastBoard(lambda: datetime.now(UTC)))
    for line in metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            match = _NAME.match(line)
            assert match is not None, line
            names.add(match.group())
    return names


def known_metric_names() -> set[str]:
    return agent_metric_names() | HAPROXY_METRICS | PROMETHEUS_METRICS


def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(build_dashboard.OUTPUT.read_text("utf-8"))
    return data


def all_panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text("utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_committed_json_is_what_the_script_generates() -> None:
    assert build_dashboard.OUTPUT == GRAFANA / "dashboards" / "veloflux.json"
    assert build_dashboard.OUTPUT.read_text("utf-8") == build_dashboard.render(), (
        "dashboards/veloflux.json is stale: run python -m integration.grafana.build_dashboard"
    )
    assert build_dashboard.main(["--check"]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "veloflux.json"
    stale.write_text("{}\n")
    assert build_dashboard.main(["--check", "--out", str(stale)]) == 1
    assert build_dashboard.main(["--out", str(stale)]) == 0
    assert build_dashboard.main(["--check", "--out", str(stale)]) == 0


def test_every_panel_is_well_formed() -> None:
    dashboard = committed()
    assert dashboard["uid"] == "veloflux"
    assert dashboard["title"] == "VeloFlux"
    panels = dashboard["panels"]
    assert len(panels) >= 10
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), ids
    titles = [panel["title"] for panel in panels]
    assert len(set(titles)) == len(titles), titles
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel["title"]
        assert panel["type"] in PANEL_TYPES, title
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
        assert panel["description"], title
        targets = panel["targets"]
        assert targets, title
        assert len({target["refId"] for target in targets}) == len(targets), title
        for target in targets:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == "prometheus", title
        grid = panel["gridPos"]
        assert grid["w"] > 0, title
        assert grid["h"] > 0, title
        assert grid["x"] >= 0, title
        assert grid["x"] + grid["w"] <= 24, title
        assert grid["y"] >= 0, title
        for x in range(grid["x"], grid["x"] + grid["w"]):  # no two panels overlap
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells.get((x, y))}"
                cells[(x, y)] = title


def test_the_backend_variable_and_every_variable_used_is_defined() -> None:
    dashboard = committed()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    backend = variables["backend"]
    assert backend["query"] == "label_values(veloflux_server_weight, backend)"
    horizon = variables["horizon"]
    forecast = "veloflux_pool_forecast_requests_per_second"
    assert horizon["query"] == f"label_values({forecast}, horizon)"
    assert not horizon["multi"]  # the forecast panel's band pairs one top with one bottom
    assert not horizon["includeAll"]
    assert backend["datasource"]["uid"] == "prometheus"
    assert backend["includeAll"]
    assert backend["multi"]
    assert backend["allValue"] == ".*"
    used = {name for _, expr in all_panel_exprs(dashboard) for name in re.findall(r"\$(\w+)", expr)}
    assert "backend" in used
    assert used <= set(variables) | GRAFANA_BUILTINS, used


def test_panel_queries_filter_on_the_backend_variable() -> None:
    """A per-backend series shown without the variable's filter would ignore the choice."""
    for title, expr in all_panel_exprs(committed()):
        names = metric_names(expr)
        per_backend = {n for n in names if n.startswith(("veloflux_server_", "veloflux_pool_"))}
        per_proxy = {n for n in names if n.startswith(("haproxy_server_", "haproxy_backend_"))}
        if per_backend - POOL_LABELLED:
            assert 'backend=~"$backend"' in expr, title
        if per_backend & POOL_LABELLED:
            assert 'pool=~"$backend"' in expr, title
        if per_proxy:
            assert 'proxy=~"$backend"' in expr, title


def test_metric_names_finds_selectors_only() -> None:
    expr = (
        'sum by (proxy, server) (rate(haproxy_server_http_responses_total{code="5xx", '
        'proxy=~"$backend"}[$__rate_interval])) / on (proxy) group_left () '
        "max(time() - veloflux_x_seconds > 0.05 and up offset 5m) or vector(1e3)"
    )
    assert metric_names(expr) == {
        "haproxy_server_http_responses_total",
        "veloflux_x_seconds",
        "up",
    }
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(a_bucket[1m])))") == {"a_bucket"}


def test_every_metric_a_panel_uses_exists() -> None:
    known = known_metric_names()
    assert "veloflux_ticks_total" in known
    assert "veloflux_tick_duration_seconds_bucket" in known
    assert "veloflux_server_weight" in known  # no sample before a tick, but its TYPE line
    used: set[str] = set()
    for title, expr in all_panel_exprs(committed()):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: unknown {sorted(names - known)} in {expr!r}"
        used |= names
    # The brief of the dashboard: weights, modes, loop, training, operator, HAProxy.
    for required in (
        "veloflux_server_weight",
        "veloflux_server_planned_weight",
        "veloflux_pool_mode",
        "veloflux_pool_confidence",
        "veloflux_ticks_total",
        "veloflux_tick_failures_total",
        "veloflux_tick_duration_seconds_bucket",
        "veloflux_trainings_total",
        "veloflux_model_info",
        "veloflux_external_changes_total",
        "veloflux_paused",
        "veloflux_overrides_active",
        "veloflux_external_holds",
        "veloflux_source_up",
        "haproxy_server_response_time_average_seconds",
        "haproxy_server_http_responses_total",
        "veloflux_pool_forecast_requests_per_second",
        "veloflux_pool_recommended_servers",
    ):
        assert required in used, required


def test_every_metric_an_alert_rule_uses_exists() -> None:
    known = known_metric_names()
    known |= {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        names = metric_names(rule["expr"])
        assert names, name
        assert names <= known, f"{name}: unknown {sorted(names - known)}"


def test_the_dashboard_and_the_alerts_use_the_same_thresholds() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    assert f"> {build_dashboard.NOT_TICKING_S}" in by_name["VelofluxNotTicking"]
    assert f"> {build_dashboard.TRAINING_STALE_S}" in by_name["VelofluxTrainingStale"]


def test_pool_mode_names_every_mode() -> None:
    panel = next(p for p in committed()["panels"] if p["title"] == "Pool mode")
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {option["text"] for option in mapping["options"].values()}
    assert texts == set(MODES)
    expr = panel["targets"][0]["expr"]
    for mode in MODES:
        assert f'mode="{mode}"' in expr


def test_panel_exprs_gives_every_query_as_plain_promql() -> None:
    dashboard = committed()
    exprs = build_dashboard.panel_exprs()
    assert list(exprs) == [panel["title"] for panel in dashboard["panels"]]
    for panel in dashboard["panels"]:
        assert len(exprs[panel["title"]]) == len(panel["targets"])
    flat = [expr for queries in exprs.values() for expr in queries]
    assert all("$" not in expr for expr in flat), flat
    assert 'veloflux_server_weight{backend=~".*"}' in flat
    chosen = build_dashboard.panel_exprs({"backend": "web", "__rate_interval": "30s"})
    assert 'veloflux_server_weight{backend=~"web"}' in chosen["Weight in effect vs planned"]
    assert any("[30s]" in expr for queries in chosen.values() for expr in queries)


def test_provisioning_points_at_the_prometheus_uid_and_the_dashboards() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text("utf-8")
    )
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "veloflux.yml").read_text("utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] in ("/etc/grafana/dashboards", "/var/lib/grafana/dashboards")


@pytest.mark.parametrize("title", ["Pool mode", "Sources up", "Paused", "Pool overload"])
def test_state_timelines_name_their_values(title: str) -> None:
    panel = next(p for p in committed()["panels"] if p["title"] == title)
    assert panel["type"] == "state-timeline"
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert mapping["type"] == "value"
    assert all(option["text"] for option in mapping["options"].values())


def test_the_forecast_panel_shows_each_pools_interval_as_a_band() -> None:
    """One copy per backend, one horizon: each quantile is one series, so the top of
    the 80% interval can fill down to its bottom (Grafana pairs series by name)."""
    panel = next(p for p in committed()["panels"] if p["title"].startswith("Load forecast"))
    assert panel["repeat"] == "backend"
    targets = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    for legend, quantile in (
        (build_dashboard.MEDIAN, "0.5"),
        (build_dashboard.UPPER, "0.9"),
        (build_dashboard.LOWER, "0.1"),
    ):
        assert f'horizon="$horizon", quantile="{quantile}"' in targets[legend]
    fills = {
        o["matcher"]["options"]: p["value"]
        for o in panel["fieldConfig"]["overrides"]
        for p in o["properties"]
        if p["id"] == "custom.fillBelowTo"
    }
    assert fills == {build_dashboard.UPPER: build_dashboard.LOWER}
    exprs = build_dashboard.panel_exprs({"backend": "app"})[panel["title"]]
    assert all('pool=~"app", horizon="1h"' in expr for expr in exprs), exprs
