"""The agent against a real Prometheus: features every tick, degraded mode, training
from range queries.

Prometheus scrapes a real HAProxy's exporter every second (``LocalStack(prometheus=
True)``). History for training is backfilled with ``promtool`` from synthetic journal
samples, which also lets the test hold the pulled history against the journal's.
"""

from __future__ import annotations

import math
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from integration.exporter_history import METRIC_TYPES, exporter_series, shifted
from integration.prometheus_proc import PrometheusProcess, backfill
from integration.stack import DemoServer, LocalStack
from integration.synthetic import SyntheticPool, synthetic_samples
from tests.integration.daemon_helpers import running_daemon, samples, wait_turns, wait_until
from tests.integration.helpers import run_cli
from veloflux.agent.build import build_source
from veloflux.config.load import load_config
from veloflux.domain.observation import Observation, ProxyIdentity
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates
from veloflux.model.features import FEATURES, build_features
from veloflux.prometheus.api import PrometheusAPI
from veloflux.prometheus.history import pull_history
from veloflux.prometheus.promql import HAPROXY_DEFAULTS
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

DEFAULT_NAMES = [f.name for f in HAPROXY_DEFAULTS]
CUSTOM = "  features:\n    weight_now: 'haproxy_server_weight{proxy=\"{backend}\"}'\n"


def send(url: str, count: int, deadline_s: float = 20.0) -> None:
    """``count`` requests through the proxy, bounded in time too."""
    deadline = time.monotonic() + deadline_s
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("prom-stack")
    servers = [DemoServer("s1", mean_ms=5.0), DemoServer("s2", mean_ms=15.0)]
    with LocalStack(workdir, servers, prometheus=True) as running:
        assert running.prometheus is not None
        # Traffic across scrapes: rate() over [1m] needs two samples that differ.
        wanted = "count(rate(haproxy_server_http_responses_total{code='2xx'}[1m]) > 0) == 2"
        prometheus = running.prometheus

        def rated() -> bool:
            send(running.url, 10)
            return bool(prometheus.query(wanted))

        wait_until(rated, "both servers' request rates in Prometheus", timeout=30)
        yield running


def agent_config(stack: LocalStack, path: Path, features: str = CUSTOM) -> Path:
    return stack.write_agent_config(path, extra=stack.prometheus_config_section(features))


def observe(config_path: Path) -> Observation:
    return build_source(load_config(config_path, {}), Events()).observe()


def test_default_and_custom_features_are_in_the_observation_for_every_server(
    stack: LocalStack, tmp_path: Path
) -> None:
    send(stack.url, 20)
    seen = observe(agent_config(stack, tmp_path / "agent.yaml"))
    assert seen.external is not None
    assert seen.external.error == ""
    values = dict(seen.external.values)
    for name in DEFAULT_NAMES:
        column = values[f"prom_{name}"]
        assert len(column) == 2
        assert all(math.isfinite(v) for v in column), (name, column)
    assert values["prom_request_rate_1m"][0] > 0
    assert values["prom_weight_now"] == (100.0, 100.0)  # the custom feature, per server
    # The slower server's response time, as Prometheus averaged it, is the larger one.
    slow = values["prom_response_time_1m"]
    assert slow[1] > slow[0]


def test_dry_run_names_the_features_in_use_then_the_degraded_mode(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.prometheus is not None
    config = agent_config(stack, tmp_path / "agent.yaml")
    send(stack.url, 10)
    up = run_cli("dry-run", "-c", config, "--output", "json")
    assert up.code == 0, up.stderr
    prom = up.json()["prometheus"]
    assert prom["available"] is True
    assert prom["features"] == {**dict.fromkeys(DEFAULT_NAMES, 2), "weight_now": 2}
    table = run_cli("dry-run", "-c", config)
    assert "prometheus features in use" in table.stdout
    stack.prometheus.stop()
    try:
        down = run_cli("dry-run", "-c", config, "--output", "json")
        assert down.code == 0, down.stderr  # degraded, not an error
        document = down.json()
        assert document["prometheus"]["available"] is False
        assert "cannot connect" in document["prometheus"]["error"]
        assert document["pools"][0]["mode"] == "fallback"
        assert all(n == 0 for n in document["prometheus"]["features"].values())
        table = run_cli("dry-run", "-c", config)
        assert table.code == 0
        assert "prometheus: unavailable" in table.stdout
        assert "source_unavailable" in table.stderr
    finally:
        stack.prometheus.start()
    wait_until(lambda: observe(config).external.error == "", "Prometheus answering again")  # type: ignore[union-attr]


def test_a_query_prometheus_refuses_costs_its_feature_only(
    stack: LocalStack, tmp_path: Path
) -> None:
    features = "  features:\n    broken: 'rate(haproxy_server_weight[1m]) +'\n"
    result = run_cli(
        "dry-run", "-c", agent_config(stack, tmp_path / "a.yaml", features), "--output", "json"
    )
    assert result.code == 0, result.stderr
    prom = result.json()["prometheus"]
    assert prom["available"] is True
    assert prom["features"]["broken"] == 0
    assert prom["features"]["request_rate_1m"] == 2
    assert any("feature broken" in p and "parse error" in p for p in prom["problems"])


def test_the_daemon_degrades_when_prometheus_stops_or_hangs_and_recovers(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.prometheus is not None
    prom = stack.prometheus
    section = f"prometheus:\n  url: {prom.url}\n  timeout: 500ms\n"
    config = stack.write_agent_config(tmp_path / "agent.yaml", extra=section, interval="1s")
    with running_daemon(config) as daemon:

        def up() -> float | None:
            return samples(daemon).get("veloflux_source_up", source="prometheus")

        wait_until(lambda: up() == 1.0, "Prometheus up in /metrics")
        prom.stop()
        wait_until(lambda: up() == 0.0, "Prometheus down in /metrics")
        wait_turns(lambda: samples(daemon), 2, "ticks go on without Prometheus")
        assert samples(daemon).get("veloflux_source_up", source="haproxy") == 1.0
        assert samples(daemon).value("veloflux_tick_failures_total", reason="source") == 0
        prom.start()
        wait_until(lambda: up() == 1.0, "Prometheus back in /metrics", timeout=30)
        # A Prometheus that hangs (stopped, not dead): each query times out.
        assert prom._proc is not None
        os.kill(prom._proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: up() == 0.0, "a hung Prometheus is down")
            assert daemon.events.count("source_unavailable", reason="timeout") >= 1
        finally:
            os.kill(prom._proc.pid, signal.SIGCONT)
        wait_until(lambda: up() == 1.0, "Prometheus answering again", timeout=30)


# --- training from Prometheus's history -----------------------------------------------------

SPEC = SyntheticPool(servers=4, intervals=480, interval_seconds=15.0, seed=5)


@pytest.fixture(scope="module")
def history(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PrometheusProcess, pd.DataFrame]]:
    """Two hours of a 4-server pool ending a minute ago, backfilled into a Prometheus
    that scrapes nothing, and the same samples as journal rows."""
    workdir = tmp_path_factory.mktemp("prom-history")
    end = math.floor(time.time()) - 60
    journal_samples = shifted(synthetic_samples(SPEC), end)
    prometheus = PrometheusProcess(workdir / "prometheus", {})
    backfill(prometheus.data_dir, exporter_series(journal_samples), workdir, METRIC_TYPES)
    with prometheus:
        yield prometheus, journal_samples


def test_the_pulled_history_gives_the_journals_features(
    history: tuple[PrometheusProcess, pd.DataFrame], tmp_path: Path
) -> None:
    prometheus, journal_samples = history
    with Journal(tmp_path / "h.db", Events()) as journal:
        for _, at_once in journal_samples.groupby("time"):
            journal.append(
                Observation.from_frame(  # as `record` would have stored them
                    at_once["time"].iloc[0].to_pydatetime(), at_once, (), _identity()
                )
            )
        from_journal = build_features(derive_rates(journal.read()))
    start = journal_samples["time"].min().to_pydatetime()
    end = journal_samples["time"].max().to_pydatetime()
    frame, report = pull_history(
        PrometheusAPI(prometheus.url, 30), ["app"], (), start, end, 15.0, Events()
    )
    assert report.servers == SPEC.servers
    assert report.rows == len(journal_samples)
    pulled = build_features(derive_rates(frame))
    assert len(pulled) == len(from_journal)
    for column in ("time", "pool", "server"):
        assert pulled[column].astype(str).tolist() == from_journal[column].astype(str).tolist()
    for column in FEATURES:
        np.testing.assert_allclose(
            pulled[column].to_numpy(float),
            from_journal[column].to_numpy(float),
            rtol=1e-9,
            atol=1e-12,
            err_msg=column,
        )


def _identity() -> ProxyIdentity:
    return ProxyIdentity("synthetic", 1, 1_790_000_000.0, 1.0, "", "admin")


def test_train_from_prometheus_then_dry_run_uses_the_model(
    history: tuple[PrometheusProcess, pd.DataFrame], tmp_path: Path
) -> None:
    prometheus, _ = history
    with LocalStack(tmp_path / "stack", [DemoServer(f"s{i}") for i in range(4)]) as live:
        config = live.write_agent_config(
            tmp_path / "agent.yaml",
            extra=f"prometheus:\n  url: {prometheus.url}\n  timeout: 5s\n",
        )
        trained = run_cli(
            "train",
            "-c",
            config,
            "--from-prometheus",
            "--since",
            "3h",
            "--step",
            "15s",
            "--output",
            "json",
            timeout=300,
        )
        assert trained.code == 0, trained.stderr
        report = trained.json()
        assert report["promoted"] is True, report["reason"]
        assert f"of {SPEC.servers} server(s)" in trained.stderr
        version = report["version"]
        listed = run_cli("model", "show", "-c", config, version)
        features = listed.json()["features"]
        assert features[: len(FEATURES)] == list(FEATURES)
        assert {f"prom_{n}" for n in DEFAULT_NAMES} <= set(features[len(FEATURES) :])
        plan = run_cli("dry-run", "-c", config, "--output", "json")
        assert plan.code == 0, plan.stderr
        assert plan.json()["model_version"] == version


def test_train_from_prometheus_refuses_without_a_section_and_names_a_dead_url(
    tmp_path: Path,
) -> None:
    with LocalStack(tmp_path / "stack", [DemoServer("s1")]) as live:
        plain = live.write_agent_config(tmp_path / "plain.yaml")
        missing = run_cli("train", "-c", plain, "--from-prometheus")
        assert missing.code == 1
        assert "prometheus: required" in missing.stderr
        dead = live.write_agent_config(
            tmp_path / "dead.yaml", extra="prometheus:\n  url: http://127.0.0.1:9\n"
        )
        refused = run_cli("train", "-c", dead, "--from-prometheus", "--since", "1h")
        assert refused.code == 2
        assert "http://127.0.0.1:9" in refused.stderr
        bad = run_cli("train", "-c", plain, "--since", "1h")
        assert bad.code == 2  # click's usage error: --since without --from-prometheus
        assert "--from-prometheus" in bad.stderr
