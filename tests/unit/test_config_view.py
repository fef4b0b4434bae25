"""The pieces behind the one-run config checks: the ``View`` that reads one value of
the raw mapping at a time, the crontab's retraining period, and ``validate_config``
listing each problem once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_config import base
from veloflux.config import checks
from veloflux.config.checks import CRON_MAX_FIRES, cron_period, run_checks
from veloflux.config.load import validate_config
from veloflux.config.schema import PolicySection
from veloflux.config.view import Unknown, View
from veloflux.errors import ConfigError, ConfigProblem

START = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)  # a Wednesday


def test_a_value_is_parsed_as_the_schema_parses_it() -> None:
    view = View({"interval": "2m", "haproxy": {"socket": "unix:///x", "backends": ["a"]}}, [])
    assert view.get("interval") == 120.0
    assert view.get("haproxy.backends") == ("a",)
    assert view.get("haproxy.timeout") == 2.0  # absent: the default


def test_an_absent_section_gives_its_defaults_or_nothing() -> None:
    view = View({}, [])
    assert view.get("policy") == PolicySection()
    assert view.get("policy.stale_after") is None
    assert view.get("policy.outlier.min_requests") == 20
    assert view.present("policy")
    assert not view.present("haproxy")
    with pytest.raises(Unknown):
        view.get("haproxy.timeout")  # no HAProxy, no timeout of its


def test_a_value_on_or_below_or_above_a_problem_is_unknown() -> None:
    data = {"policy": {"max_step_ratio": "x", "outlier": {"min_requests": 0}}}
    view = View(data, [("policy", "max_step_ratio"), ("policy", "outlier", "min_requests")])
    with pytest.raises(Unknown):
        view.get("policy.max_step_ratio")
    with pytest.raises(Unknown):
        view.get("policy.outlier")
    with pytest.raises(Unknown):
        view.get("policy")
    assert view.get("policy.min_weight") == 1  # a sibling is still known
    assert View({"policy": 5}, [("policy",)]).present("policy")
    with pytest.raises(Unknown):
        View({"policy": 5}, [("policy",)]).get("policy.min_weight")


def test_items_and_keys_are_read_one_at_a_time() -> None:
    clusters = [
        {"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 1}]},
        {"name": "web", "endpoints": [{"address": "db.local", "port": 1}]},
    ]
    view = View(
        {"envoy": {"admin": "http://e:1", "clusters": clusters}},
        [("envoy", "clusters", 1, "endpoints", 0, "address")],
    )
    assert view.size("envoy.clusters") == 2
    assert view.get("envoy.clusters", 1, "name") == "web"
    assert view.get("envoy.clusters", 0, "endpoints", 0).name == "127.0.0.1:1"
    with pytest.raises(Unknown):
        view.get("envoy.clusters", 1, "endpoints", 0)
    with pytest.raises(Unknown):
        view.get("envoy.clusters", 2, "name")
    weights = View({"policy": {"static_weights": {"app/10.0.0.1:80": 3}}}, [])
    assert weights.keys("policy.static_weights") == ["app/10.0.0.1:80"]
    assert weights.get("policy.static_weights", "app/10.0.0.1:80") == 3


def test_a_required_key_that_is_absent_is_unknown_not_undefined() -> None:
    with pytest.raises(Unknown):
        View({"haproxy": {}}, []).get("haproxy.socket")


def test_a_key_under_its_python_name_is_read_too() -> None:
    assert View({"interval_seconds": "5s"}, []).get("interval") == 5.0


def test_a_misspelt_path_in_a_check_is_a_mistake_not_unknown() -> None:
    with pytest.raises(KeyError):
        View({}, []).get("policy.stale_aftr")


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("0 */6 * * *", 6 * 3600),
        ("30 3 * * *", 86400),
        ("0 3 * * 1", 7 * 86400),
        ("*/5 0-11 * * *", 12 * 3600 + 5 * 60),
        ("0 0 1 * *", 28 * 86400),  # from 15 January: 1 February, then 1 March
        ("0 0 1,20 * *", 12 * 86400),  # 20 January, in the horizon, then 1 February
    ],
)
def test_the_retraining_period_is_the_longest_gap_between_fires(
    expression: str, seconds: float
) -> None:
    assert cron_period(expression, START) == seconds


def test_a_crontab_that_never_fires_has_no_period() -> None:
    assert cron_period("0 0 31 2 *", START) is None


def test_a_crontab_firing_every_minute_is_measured_on_its_first_fires() -> None:
    assert CRON_MAX_FIRES < 8 * 24 * 60
    assert cron_period("* * * * *", START) == 60


def test_the_period_is_measured_from_now_by_default() -> None:
    assert cron_period("0 */6 * * *") == 6 * 3600


def test_a_problem_found_twice_is_listed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    twice = ConfigProblem("policy", "min_weight (50) is above max_weight (10)")

    def doubled(view: View) -> list[ConfigProblem]:
        return [twice, twice]

    monkeypatch.setattr(checks, "CHECKS", (doubled, doubled))
    with pytest.raises(ConfigError) as caught:
        validate_config(base())
    assert caught.value.problems == (twice,)


def test_a_check_meeting_an_unknown_value_keeps_what_it_found_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def partial(view: View) -> Any:
        yield ConfigProblem("a", "first")
        view.get("interval")

    monkeypatch.setattr(checks, "CHECKS", (partial,))
    assert run_checks({"interval": "x"}, [("interval",)]) == [ConfigProblem("a", "first")]


def test_no_check_runs_on_a_mapping_that_is_not_one() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(5)  # type: ignore[arg-type]
    assert [p.path for p in caught.value.problems] == [""]


def test_the_token_file_is_read_where_the_config_says(tmp_path: Path) -> None:
    assert checks.token_file_problem(tmp_path / "none") is not None
    (tmp_path / "t").write_text("ok\n", encoding="utf-8")
    (tmp_path / "t").chmod(0o600)  # a token other users can read is refused
    assert checks.token_file_problem(tmp_path / "t") is None
