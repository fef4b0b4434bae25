"""A real Prometheus beside the local stack: it scrapes HAProxy and the demo backends,
serves backfilled history, and keeps its data across a stop (or a crash) and a restart at
the same URL. Every wait polls with a deadline; all traffic stays on loopback."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from integration.haproxy_proc import StackError
from integration.prometheus_proc import PrometheusProcess, backfill, write_openmetrics
from integration.stack import DemoServer, LocalStack

pytestmark = pytest.mark.integration

SERVERS = (DemoServer("a", mean_ms=1), DemoServer("b", mean_ms=1))
RESPONSES = 'haproxy_server_http_responses_total{job="haproxy",proxy="app"'


def _send(url: str, count: int) -> None:
    for _ in range(count):
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()


def test_prometheus_scrapes_haproxy_and_the_demo_backends(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "stack", SERVERS, prometheus=True) as stack:
        prometheus = stack.prometheus
        assert prometheus is not None
        _send(stack.url, 20)
        # Each query returns something only once both servers (or backends) are in it
        # and a scrape has seen all 20 requests.
        prometheus.wait_for_series(
            f"count(count by (server) ({RESPONSES}}})) == 2"
            f' and sum({RESPONSES},code="2xx"}}) >= 20',
            timeout_s=20,
        )
        prometheus.wait_for_series(
            'count(veloflux_demo_requests_total{job="backends"}) == 2'
            ' and sum(veloflux_demo_requests_total{job="backends"}) >= 20',
            timeout_s=20,
        )
        served = prometheus.query(f'sum by (server) ({RESPONSES},code="2xx"}})')
        config = stack.write_agent_config(
            tmp_path / "v.yaml", stack.prometheus_config_section("  features: []\n")
        )
        section = yaml.safe_load(config.read_text())["prometheus"]
    assert stack.prometheus is None  # stopped with the stack
    # Round robin over two servers: the 20 requests split evenly.
    assert {item["metric"]["server"]: item["value"][1] for item in served} == {
        "a": "10",
        "b": "10",
    }
    assert section == {"url": prometheus.url, "timeout": "2s", "features": []}


def test_backfilled_series_are_served_up_to_now(tmp_path: Path) -> None:
    """Two hours ending a minute ago: promtool makes blocks, and a Prometheus started on
    them answers a range query point for point and an instant query at now."""
    step = 15.0
    end = time.time() - 60
    end -= end % step
    stamps = end - step * np.arange(480)[::-1]
    odd = 'quote " backslash \\ newline \n end'
    series = [
        ("bench_load", {"server": "s1"}, np.column_stack([stamps, np.arange(480.0)])),
        ("bench_load", {"server": odd}, np.column_stack([stamps, np.arange(480.0) * 2])),
    ]
    prometheus = PrometheusProcess(tmp_path / "prometheus", {})
    summary = backfill(prometheus.data_dir, series, tmp_path / "backfill")
    assert (summary.series, summary.samples) == (2, 960)
    with prometheus:
        ranged = prometheus.query_range("bench_load", stamps[0], stamps[-1], step)
        latest = prometheus.query("bench_load")
    by_server = {item["metric"]["server"]: item["values"] for item in ranged}
    assert set(by_server) == {"s1", odd}  # the escaped label value reads back as written
    for server, scale in (("s1", 1), (odd, 2)):
        points = by_server[server]
        assert len(points) == 480
        assert [float(t) for t, _ in points] == stamps.tolist()
        assert [float(v) for _, v in points] == (np.arange(480.0) * scale).tolist()
    assert sorted(float(item["value"][1]) for item in latest) == [479.0, 958.0]


def test_a_restarted_prometheus_keeps_what_it_scraped(tmp_path: Path) -> None:
    """Stopped (SIGTERM) or killed (SIGKILL), then started again: the same URL serves the
    samples scraped before, unchanged."""
    with LocalStack(tmp_path / "stack", SERVERS, prometheus=True) as stack:
        prometheus = stack.prometheus
        assert prometheus is not None
        url = prometheus.url
        query = 'count_over_time(up{job="backends"}[10m])'
        prometheus.wait_for_series(f"count({query} >= 3) == 2", timeout_s=20)
        at = time.time()
        # A newer sample in both series means every scrape up to ``at`` is stored.
        prometheus.wait_for_series(f'count(timestamp(up{{job="backends"}}) > {at}) == 2', 10)
        before = prometheus.query(query, at=at)
        for halt in (prometheus.stop, prometheus.kill):
            halt()
            with pytest.raises(StackError):
                prometheus.query("up")
            prometheus.start()
            assert prometheus.url == url
            assert prometheus.query(query, at=at) == before
    assert len(before) == 2
    assert all(int(item["value"][1]) >= 3 for item in before)


def test_openmetrics_text_is_grouped_escaped_sorted_and_terminated(tmp_path: Path) -> None:
    path = tmp_path / "x.om.txt"
    summary = write_openmetrics(
        path,
        [
            ("up_total", {"v": 'a"b'}, [(20.0, 2.0), (10.0, 1.0)]),  # out of time order
            ("load", {"v": "c\\d\ne", "b": "x"}, [(10.5, 0.25), (11.0, float("nan"))]),
            ("up_total", {"v": "plain"}, [(10.0, 7.0)]),
            ("empty", {}, []),
        ],
        metric_types={"up_total": "counter"},
    )
    assert path.read_text() == (
        "# TYPE up counter\n"
        'up_total{v="a\\"b"} 1.0 10\n'
        'up_total{v="a\\"b"} 2.0 20\n'
        'up_total{v="plain"} 7.0 10\n'
        "# TYPE load gauge\n"
        'load{b="x",v="c\\\\d\\ne"} 0.25 10.500\n'
        'load{b="x",v="c\\\\d\\ne"} NaN 11.000\n'
        "# EOF\n"
    )
    assert (summary.series, summary.samples) == (3, 5)
    assert (summary.min_time, summary.max_time) == (10.0, 20.0)
    assert list(tmp_path.iterdir()) == [path]  # the per-family spool files are gone


def test_openmetrics_writer_refuses_what_promtool_would_drop_or_misread(tmp_path: Path) -> None:
    path = tmp_path / "x.om.txt"
    with pytest.raises(ValueError, match="same millisecond"):
        write_openmetrics(path, [("m", {}, [(1.0, 1.0), (1.0, 2.0)])])
    with pytest.raises(ValueError, match="_total"):
        write_openmetrics(path, [("m", {}, [(1.0, 1.0)])], metric_types={"m": "counter"})
    with pytest.raises(ValueError, match="label names"):
        write_openmetrics(path, [("m", {"bad-name": "x"}, [(1.0, 1.0)])])
