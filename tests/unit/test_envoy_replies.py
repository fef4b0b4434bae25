"""Parsers for Envoy's admin API: documented shapes, Envoy's habits, and garbage."""

from __future__ import annotations

import math
from typing import Any

import pytest

from veloflux.envoy.replies import (
    EnvoyFormatError,
    cluster_stat_prefix,
    endpoint_name,
    parse_clusters,
    parse_histograms,
    parse_update_counters,
    parse_uptime,
    parse_weights_text,
    stat_values,
)


def host(port: int, weight: Any = 3, health: dict[str, Any] | None = None, **stats: Any) -> Any:
    """A host status as Envoy 1.40 prints it: a counter at 0 has no ``value`` at all."""
    return {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "stats": [
            {"name": name, **({"value": value} if value else {})}
            for name, value in {"rq_total": 0, "rq_error": 0, "cx_active": 0, **stats}.items()
        ],
        "health_status": health if health is not None else {"eds_health_status": "HEALTHY"},
        "weight": weight,
        "locality": {},
    }


def clusters(*hosts: Any, name: str = "app") -> Any:
    return {"cluster_statuses": [{"name": name, "host_statuses": list(hosts)}]}


def test_hosts_are_read_with_absent_counters_as_zero() -> None:
    parsed = parse_clusters(clusters(host(8081, rq_total="1234", rq_error=5), host(8082, 1)))
    first, second = parsed["app"]
    assert first.name == "127.0.0.1:8081" == endpoint_name("127.0.0.1", 8081)
    assert first.weight == 3
    assert first.stats["rq_total"] == 1234  # 64-bit counters can arrive as strings
    assert first.stats["rq_error"] == 5
    assert second.stats["rq_total"] == 0
    assert first.health == "HEALTHY"
    assert first.failed_checks == ()


def test_health_flags_are_kept() -> None:
    failing = host(
        8081,
        health={
            "eds_health_status": "HEALTHY",
            "failed_active_health_check": True,
            "failed_outlier_check": True,
        },
    )
    (parsed,) = parse_clusters(clusters(failing))["app"]
    assert parsed.failed_checks == ("failed_active_health_check", "failed_outlier_check")


@pytest.mark.parametrize("weight", [None, "x", True, float("inf")])
def test_an_unreadable_weight_is_nan_not_zero(weight: Any) -> None:
    (parsed,) = parse_clusters(clusters(host(8081, weight=weight)))["app"]
    assert math.isnan(parsed.weight)


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"cluster_statuses": "nope"},
        {"cluster_statuses": [{"host_statuses": []}]},
        {"cluster_statuses": [{"name": "app", "host_statuses": {}}]},
        clusters({"address": {}}),
        clusters({"address": {"socket_address": {"address": "a", "port_value": 70000}}}),
        clusters(
            {"address": {"socket_address": {"address": "a", "port_value": 1}}, "health_status": 3}
        ),
    ],
)
def test_garbage_is_a_format_error_naming_what_was_expected(document: Any) -> None:
    with pytest.raises(EnvoyFormatError):
        parse_clusters(document)


def test_update_counters_and_stat_values() -> None:
    document = {
        "stats": [
            {"name": "cluster.app.update_attempt", "value": 4},
            {"name": "cluster.app.update_success", "value": 3},
            {"name": "cluster.app.update_rejected", "value": 1},
            {"name": "cluster.other.update_success", "value": 9},
            {"histograms": {"computed_quantiles": []}},
        ]
    }
    counters = parse_update_counters(document, "app")
    assert (counters.attempt, counters.success, counters.rejected) == (4, 3, 1)
    assert parse_update_counters({"stats": []}, "app").success == 0
    assert stat_values(document)["cluster.other.update_success"] == 9
    with pytest.raises(EnvoyFormatError):
        stat_values({"stats": None})


def test_uptime_and_restart_epoch() -> None:
    info = {"uptime_current_epoch": "7s", "command_line_options": {"restart_epoch": 2}}
    assert parse_uptime(info) == (7.0, 2)
    assert parse_uptime({"uptime_current_epoch": "12.5s"}) == (12.5, 0)
    with pytest.raises(EnvoyFormatError):
        parse_uptime({"uptime_current_epoch": "soon"})


def test_weights_from_the_text_form_of_clusters() -> None:
    text = "\n".join(
        [
            "app::default_priority::max_requests::1024",
            "app::127.0.0.1:8081::weight::3",
            "app::127.0.0.1:8081::rq_total::12",
            "app::127.0.0.1:8082::weight::1",
            "other::127.0.0.1:9000::weight::7",
            "app::127.0.0.1:8083::weight::x",
        ]
    )
    weights = parse_weights_text(text, "app")
    assert weights["127.0.0.1:8081"] == 3
    assert weights["127.0.0.1:8082"] == 1
    assert math.isnan(weights["127.0.0.1:8083"])
    assert "127.0.0.1:9000" not in weights


# --- histograms --------------------------------------------------------------------------

QUANTILES = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]


def histogram_stats(*computed: Any) -> Any:
    """``/stats?format=json`` with histograms, in Envoy 1.40's shape."""
    return {
        "stats": [
            {"name": "cluster.app.update_success", "value": 2},
            {
                "histograms": {
                    "supported_quantiles": QUANTILES,
                    "computed_quantiles": list(computed),
                }
            },
        ]
    }


def rq_time(interval: list[Any], cumulative: list[Any], name: str = "app") -> Any:
    values = [{"interval": i, "cumulative": c} for i, c in zip(interval, cumulative, strict=True)]
    return {"name": f"cluster.{name}.upstream_rq_time", "values": values}


def test_histogram_quantiles_over_the_interval_and_since_start() -> None:
    interval = [10, 20, 31.5, 40, 50, 60, 70, 80, 90, 100]
    cumulative = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    document = histogram_stats(rq_time(interval, cumulative))
    summary = parse_histograms(document)["cluster.app.upstream_rq_time"]
    assert summary.quantiles == tuple(QUANTILES)
    assert summary.interval_at(50) == 31.5
    assert summary.cumulative[2] == 3
    assert stat_values(document) == {"cluster.app.update_success": 2}  # histograms skipped


def test_a_histogram_without_samples_in_the_interval_is_nan_not_zero() -> None:
    quiet = rq_time([None] * 10, [5] * 10)
    summary = parse_histograms(histogram_stats(quiet))["cluster.app.upstream_rq_time"]
    assert math.isnan(summary.interval_at(50))
    assert summary.cumulative == (5.0,) * 10


def test_no_histogram_element_is_no_histograms() -> None:
    """Envoy leaves the element out when no histogram matched the filter."""
    assert parse_histograms({"stats": []}) == {}
    assert parse_histograms({"stats": [{"name": "x", "value": 1}]}) == {}


def test_an_unsupported_quantile_is_a_format_error_not_a_guess() -> None:
    summary = parse_histograms(histogram_stats(rq_time([1] * 10, [1] * 10)))
    with pytest.raises(EnvoyFormatError, match="quantile 42"):
        summary["cluster.app.upstream_rq_time"].interval_at(42)


def _block(**block: Any) -> Any:
    return {"stats": [{"histograms": block}]}


GOOD_VALUES = [{"interval": 1, "cumulative": 1}] * 10


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "expected an object"),
        ({"stats": {}}, "'stats' is missing or not a list"),
        ({"stats": [{"histograms": []}]}, "expected an object"),
        (_block(computed_quantiles=[]), "'supported_quantiles' is missing"),
        (_block(supported_quantiles=QUANTILES), "'computed_quantiles' is missing"),
        (_block(supported_quantiles=["50"], computed_quantiles=[]), "not in 0..100"),
        (_block(supported_quantiles=[150], computed_quantiles=[]), "not in 0..100"),
        (
            _block(supported_quantiles=QUANTILES, computed_quantiles=[{"values": GOOD_VALUES}]),
            "'name' is missing",
        ),
        (
            _block(supported_quantiles=QUANTILES, computed_quantiles=[{"name": "h"}]),
            "'values' is missing",
        ),
        (histogram_stats({"name": "h", "values": GOOD_VALUES[:3]}), "3 values for 10"),
        (histogram_stats({"name": "h", "values": [7] * 10}), "not an object"),
        (histogram_stats({"name": "h", "values": [{"interval": 1}] * 10}), "lacks 'cumulative'"),
        (histogram_stats(rq_time(["12"] * 10, [1] * 10)), "interval '12'"),
        (histogram_stats(rq_time([-1] * 10, [1] * 10)), "interval -1"),
        (histogram_stats(rq_time([1] * 10, [True] * 10)), "cumulative True"),
        (histogram_stats(rq_time([float("nan")] * 10, [1] * 10)), "interval nan"),
    ],
)
def test_malformed_histograms_are_format_errors_naming_what_was_expected(
    document: Any, message: str
) -> None:
    with pytest.raises(EnvoyFormatError, match=message):
        parse_histograms(document)


def test_a_colon_in_a_cluster_name_is_an_underscore_in_its_stat_names() -> None:
    assert cluster_stat_prefix("app") == "cluster.app."
    assert cluster_stat_prefix("app:v2") == "cluster.app_v2."
    counters = parse_update_counters(
        {"stats": [{"name": "cluster.app_v2.update_success", "value": 3}]}, "app:v2"
    )
    assert counters.success == 3
