"""Parsers for Envoy's admin API: documented shapes, Envoy's habits, and garbage."""

from __future__ import annotations

import math
from typing import Any

import pytest

from veloflux.envoy_replies import (
    EnvoyFormatError,
    endpoint_name,
    parse_clusters,
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
