"""Pulling history from Prometheus: chunks within its point limit, and the layout of
what the exporter's series say as journal samples (a scripted API: what the series
hold is the point here; tests/integration/test_prometheus_agent.py pulls from a real
Prometheus and compares with the journal)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from veloflux.history.frames import STORED_COLUMNS
from veloflux.prometheus.api import PrometheusAPI, RangeSeries
from veloflux.prometheus.history import MAX_POINTS, chunks, pull_history
from veloflux.prometheus.promql import FeatureQuery
from veloflux.util.events import Events

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(("days", "step"), [(7, 15.0), (1, 1.0), (0.01, 15.0), (30, 60.0)])
def test_chunks_tile_the_span_on_one_grid_within_the_point_limit(days: float, step: float) -> None:
    end = T0 + timedelta(days=days)
    spans = chunks(T0, end, step)
    assert spans[0][0] == T0
    assert spans[-1][1] == end
    for lo, hi in spans:
        assert (hi - lo).total_seconds() / step + 1 <= MAX_POINTS
        assert ((lo - T0).total_seconds() / step) % 1 == 0  # on the grid
    for (_, hi), (lo, _) in itertools.pairwise(spans):
        assert (lo - hi).total_seconds() == step  # no step twice, none skipped


class ScriptedRange(PrometheusAPI):
    """Answers range queries from ``script`` (first key contained in the query)."""

    def __init__(self, script: Mapping[str, list[RangeSeries]]) -> None:
        super().__init__("http://scripted", 1.0)
        self.script = script
        self.queries: list[str] = []

    def range(
        self, query: str, start: datetime, end: datetime, step_seconds: float
    ) -> list[RangeSeries]:
        self.queries.append(query)
        lo, hi = start.timestamp(), end.timestamp()
        for key, answer in self.script.items():
            if key in query:
                out = []
                for s in answer:
                    inside = (s.times >= lo) & (s.times <= hi)
                    out.append(RangeSeries(s.labels, s.times[inside], s.values[inside]))
                return out
        return []


def series(values: list[float], **labels: str) -> RangeSeries:
    times = T0.timestamp() + 15.0 * np.arange(len(values))
    return RangeSeries(labels, times, np.asarray(values, dtype=float))


def test_exporter_series_become_journal_samples() -> None:
    a = {"proxy": "app", "server": "a", "instance": "h:8405"}
    b = {"proxy": "app", "server": "b", "instance": "h:8405"}
    script = {  # the first key a query contains answers it
        'code="5xx"': [series([1, 1, 2], **a)],
        "haproxy_server_http_responses_total{proxy=~": [
            series([10, 20, 30], **a),
            series([5, 6, np.nan], **b),
        ],
        "haproxy_server_response_time_average_seconds": [series([0.01, 0.02, 0.03], **a)],
        "haproxy_server_status": [
            RangeSeries({**a, "state": "UP"}, np.array([T0.timestamp()]), np.array([1.0])),
            RangeSeries({**b, "state": "NOLB"}, np.array([T0.timestamp()]), np.array([1.0])),
        ],
        "haproxy_process_start_time_seconds": [series([1.0e9, 1.0e9, 2.0e9], instance="h:8405")],
        'cpu{proxy="app"}': [series([0.5, 0.6, 0.7], proxy="app", server="a")],
    }
    api = ScriptedRange(script)
    cpu = FeatureQuery("cpu", 'cpu{proxy="{backend}"}')
    frame, report = pull_history(
        api, ["app"], [cpu], T0, T0 + timedelta(seconds=30), 15.0, Events()
    )
    assert report.servers == 2
    assert report.rows == 5  # b's counter has no sample at the last step: no row
    assert list(frame.columns) == [*STORED_COLUMNS, "prom_cpu"]
    a_rows = frame[frame["server"] == "a"]
    assert a_rows["requests_total"].tolist() == [10, 20, 30]
    assert a_rows["responses_5xx_total"].tolist() == [1, 1, 2]
    assert a_rows["response_time"].tolist() == [0.01, 0.02, 0.03]
    assert a_rows["proxy_started"].tolist() == [1.0e9, 1.0e9, 2.0e9]  # a reload, seen
    assert a_rows["prom_cpu"].tolist() == [0.5, 0.6, 0.7]
    # UP where the status said so; a step without a status series counts as UP; NOLB
    # (soft-stopped) is DRAIN in the Observation's terms.
    assert a_rows["state"].tolist() == ["UP", "UP", "UP"]
    assert frame[frame["server"] == "b"]["state"].tolist() == ["DRAIN", "UP"]
    assert 'proxy=~"app"' in api.queries[0]


def test_a_server_two_instances_report_is_left_out_and_named() -> None:
    one = {"proxy": "app", "server": "a", "instance": "h1:8405"}
    other = {"proxy": "app", "server": "a", "instance": "h2:8405"}
    fine = {"proxy": "app", "server": "b", "instance": "h1:8405"}
    script = {
        "haproxy_server_http_responses_total{proxy=~": [
            series([1, 2], **one),
            series([7, 8], **other),
            series([3, 4], **fine),
        ],
    }
    events = Events()
    frame, report = pull_history(
        ScriptedRange(script), ["app"], [], T0, T0 + timedelta(seconds=15), 15.0, events
    )
    assert report.skipped == ("app/a",)
    assert set(frame["server"]) == {"b"}
    assert events.count("prometheus_ambiguous") == 1


def test_without_an_allow_list_every_backend_is_pulled() -> None:
    api = ScriptedRange({})
    frame, report = pull_history(api, None, [], T0, T0 + timedelta(seconds=15), 15.0, Events())
    assert report.rows == 0
    assert frame.empty
    assert 'proxy!=""' in api.queries[0]
