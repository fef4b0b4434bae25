"""The alert rules, run by the real ``promtool`` (Debian's prometheus package).

``promtool check rules`` parses them, ``promtool test rules`` runs their unit tests
(integration/prometheus/veloflux-rules.test.yml), and the unit tests are shown to bite:
each alert fires in one test and stays silent in another, a copy with one expected alert
removed fails, and a copy whose rule fires on everything fails its silent tests. The
dashboard's queries are parsed by promtool too, and the HAProxy metric names that the
dashboard's unit test allows are checked against a real HAProxy's exporter.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.grafana.build_dashboard import panel_exprs
from integration.haproxy_proc import BackendSpec, ServerSpec
from tests.conftest import StartHAProxy
from tests.unit.test_grafana_dashboard import HAPROXY_METRICS, metric_names

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "integration" / "prometheus" / "veloflux-rules.yml"
UNIT_TESTS = ROOT / "integration" / "prometheus" / "veloflux-rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = ("critical", "warning", "info")


def _promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.fail("promtool is not installed (make deps installs Debian's prometheus)")
    return found


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *map(str, args)], capture_output=True, text=True, check=False, timeout=120
    )


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    return data


def alert_rules() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in load(RULES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


ALERTS = sorted(alert_rules())


def cases(alert: str) -> tuple[list[str], list[str]]:
    """Names of the unit tests in which ``alert`` is expected to fire, and of those in
    which every evaluation of it expects silence."""
    firing, silent = [], []
    for test in load(UNIT_TESTS)["tests"]:
        checks = [c for c in test.get("alert_rule_test", []) if c["alertname"] == alert]
        if any(c.get("exp_alerts") for c in checks):
            firing.append(test["name"])
        elif checks:
            silent.append(test["name"])
    return firing, silent


def write_copy(
    workdir: Path, rules: dict[str, Any], tests: dict[str, Any], only: list[str]
) -> Path:
    """Rules and unit tests in ``workdir``, keeping only the tests named in ``only``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False), "utf-8")
    kept = {**tests, "tests": [t for t in tests["tests"] if t["name"] in only]}
    path = workdir / UNIT_TESTS.name
    path.write_text(yaml.safe_dump(kept, sort_keys=False), "utf-8")
    return path


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in load(RULES)["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_the_rule_unit_tests_pass() -> None:
    assert load(UNIT_TESTS)["rule_files"] == [RULES.name]
    result = promtool("test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_a_for_a_severity_and_annotations(alert: str) -> None:
    rule = alert_rules()[alert]
    assert "for" in rule, alert
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description"}
    assert "$labels." in annotations["summary"] + annotations["description"]


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_fires_in_one_unit_test_and_stays_silent_in_another(alert: str) -> None:
    firing, silent = cases(alert)
    assert firing, f"no unit test expects {alert} to fire"
    assert silent, f"no unit test expects {alert} to stay silent"
    for test in load(UNIT_TESTS)["tests"]:
        for check in test.get("alert_rule_test", []):
            for expected in check.get("exp_alerts") or []:
                # The exact labels: the severity and every label of the series.
                assert (
                    expected["exp_labels"]["severity"]
                    == alert_rules()[check["alertname"]]["labels"]["severity"]
                ), test["name"]
                assert set(expected["exp_annotations"]) == {"summary", "description"}


@pytest.mark.parametrize("alert", ALERTS)
def test_a_missing_expected_alert_fails_promtool(alert: str, tmp_path: Path) -> None:
    """Each firing test bites: with its expected alert taken out, promtool fails it."""
    firing, _ = cases(alert)
    rules, tests = load(RULES), load(UNIT_TESTS)
    # The same subset unchanged passes, so the failure below is the removal's.
    kept = write_copy(tmp_path / "same", rules, tests, firing)
    same = promtool("test", "rules", kept)
    assert same.returncode == 0, same.stdout + same.stderr

    emptied = copy.deepcopy(tests)
    for test in emptied["tests"]:
        for check in test.get("alert_rule_test", []):
            if check["alertname"] == alert and check.get("exp_alerts"):
                check["exp_alerts"] = []
    result = promtool("test", "rules", write_copy(tmp_path / "removed", rules, emptied, firing))
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert f"alertname: {alert}" in report
    for name in firing:
        assert f"name: {name}" in report


@pytest.mark.parametrize("alert", ALERTS)
def test_an_alert_firing_on_healthy_series_fails_promtool(alert: str, tmp_path: Path) -> None:
    """Each silent test bites: a rule that always fires makes promtool fail it."""
    _, silent = cases(alert)
    rules, tests = load(RULES), load(UNIT_TESTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"], rule["for"] = "vector(1)", "0m"
    result = promtool("test", "rules", write_copy(tmp_path, rules, tests, silent))
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    for name in silent:
        assert f"name: {name}" in report


def test_operations_md_lists_every_alert_with_its_for_and_severity() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in OPERATIONS.read_text("utf-8").splitlines()
        if line.startswith("| `Veloflux")
    }
    assert sorted(rows) == ALERTS
    for alert, rule in alert_rules().items():
        cells = [cell.strip() for cell in rows[alert].split("|")]
        assert rule["for"] in cells, alert
        assert rule["labels"]["severity"] in cells, alert


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables filled in) as a recording rule's expression."""
    records = [
        {"record": f"dashboard_query_{index}", "expr": expr}
        for index, expr in enumerate(expr for queries in panel_exprs().values() for expr in queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout


def test_haproxy_names_are_what_haproxys_exporter_serves(start_haproxy: StartHAProxy) -> None:
    """The HAProxy names the dashboard test allows, and every haproxy_* name the rules and
    the dashboard use, appear on a real HAProxy's /metrics."""
    proxy = start_haproxy(
        [BackendSpec("web", (ServerSpec("s1", "127.0.0.1:9"), ServerSpec("s2", "127.0.0.1:9")))]
    )
    url = f"http://127.0.0.1:{proxy.exporter_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    served = {
        line.split("{")[0].split()[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert not HAPROXY_METRICS - served, sorted(HAPROXY_METRICS - served)
    used = {
        name
        for rule in alert_rules().values()
        for name in metric_names(rule["expr"])
        if name.startswith("haproxy_")
    } | {
        name
        for queries in panel_exprs().values()
        for expr in queries
        for name in metric_names(expr)
        if name.startswith("haproxy_")
    }
    assert used, "nothing uses HAProxy's exporter"
    assert used <= served, sorted(used - served)
    # The labels the rules and panels join and filter on.
    assert 'haproxy_server_response_time_average_seconds{proxy="web",server="s1"}' in text
    assert 'haproxy_backend_response_time_average_seconds{proxy="web"}' in text
