"""Envoy's built-in Prometheus features against a real Envoy scraped by a real Prometheus.

Envoy's ``/stats/prometheus`` has per-cluster series only, so each feature of the Envoy
set is one value per cluster, given to every endpoint of it. This checks that the set's
queries match what Envoy really exports (metric and label names) and that the values
land on the endpoints.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.stack import DemoServer, LocalStack
from tests.integration.daemon_helpers import wait_until
from veloflux.agent.build import build_source
from veloflux.config.load import load_config
from veloflux.prometheus.promql import ENVOY_DEFAULTS
from veloflux.util.events import Events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    servers = [DemoServer("s1", mean_ms=5.0), DemoServer("s2", mean_ms=5.0)]
    workdir = tmp_path_factory.mktemp("prom-envoy")
    with LocalStack(workdir, servers, proxies=("envoy",), prometheus=True) as running:
        prometheus = running.prometheus
        assert prometheus is not None
        wanted = (
            "histogram_quantile(0.95, sum by (le) "
            '(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="app"}[1m]))) > 0'
        )

        def rated() -> bool:
            for _ in range(10):
                with urllib.request.urlopen(running.url, timeout=5) as reply:
                    reply.read()
            return bool(prometheus.query(wanted))

        # Envoy flushes its histograms every 5 s; Prometheus needs two scrapes after.
        wait_until(rated, "Envoy's request-time histogram in Prometheus", timeout=60)
        yield running


def test_the_envoy_set_reads_every_feature_for_every_endpoint(
    stack: LocalStack, tmp_path: Path
) -> None:
    config = stack.write_agent_config(
        tmp_path / "agent.yaml", extra=stack.prometheus_config_section()
    )
    seen = build_source(load_config(config, {}), Events()).observe()
    assert seen.external is not None
    assert seen.external.error == ""
    assert seen.external.problems == ()
    values = dict(seen.external.values)
    assert sorted(values) == sorted(f"prom_{f.name}" for f in ENVOY_DEFAULTS)
    for column, per_endpoint in values.items():
        assert len(per_endpoint) == 2
        assert all(math.isfinite(v) for v in per_endpoint), (column, per_endpoint)
        assert per_endpoint[0] == per_endpoint[1]  # one cluster-level value for both
    # Seconds, not Envoy's milliseconds: exactly Prometheus's own quantile of Envoy's
    # histogram at the same instant, divided by 1000 (no bound on how fast it was).
    assert stack.prometheus is not None
    raw = stack.prometheus.query(
        "histogram_quantile(0.95, sum by (le) "
        '(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="app"}[1m])))',
        at=float(f"{seen.taken_at.timestamp():.3f}"),
    )
    (milliseconds,) = (float(item["value"][1]) for item in raw)
    assert milliseconds > 0
    assert values["prom_cluster_p95_latency_1m"][0] == pytest.approx(milliseconds / 1000)
    assert values["prom_cluster_error_ratio_1m"][0] == 0.0
