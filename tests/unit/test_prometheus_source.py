"""The Prometheus source: how series join onto servers, and every bad answer it can get.

The join is driven through a scripted ``PrometheusAPI`` stand-in (what the series say
is the point, not HTTP); the client's own failure handling is driven through a tiny
HTTP server that answers what no real Prometheus would (garbage, a wrong shape, an
error page), since those are the faults a real process cannot be made to produce.
The integration tests drive both against a real Prometheus.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.unit.factories import Pool, Server, observation
from veloflux.domain.observation import Observation
from veloflux.prometheus.api import PrometheusAPI, PrometheusError, Series
from veloflux.prometheus.features import PrometheusFeatures, WithPrometheus
from veloflux.prometheus.promql import FeatureQuery
from veloflux.util.events import Events

Answer = list[Series] | PrometheusError


class ScriptedAPI(PrometheusAPI):
    """Answers each query with what ``script`` says (keyed by a substring of it)."""

    def __init__(self, script: Mapping[str, Answer]) -> None:
        super().__init__("http://scripted", 1.0)
        self.script = script
        self.queries: list[str] = []
        self.times: list[datetime | None] = []

    def instant(self, query: str, at: datetime | None = None) -> list[Series]:
        self.times.append(at)
        self.queries.append(query)
        for key, answer in self.script.items():
            if key in query:
                if isinstance(answer, PrometheusError):
                    raise answer
                return answer
        return []


def seen() -> Observation:
    return observation(
        [
            Pool("app", [Server("s1"), Server("s2"), Server("s3")]),
            Pool("api", [Server("s1")]),
            Pool("static", [Server("x")], algorithm="static-rr", managed=False),
        ]
    )


def series(value: float, **labels: str) -> Series:
    return Series(labels, value)


def read(
    features: list[FeatureQuery],
    script: Mapping[str, Answer],
    instance_map: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[float]], Any, Events, ScriptedAPI]:
    events = Events()
    api = ScriptedAPI(script)
    external = PrometheusFeatures(api, features, events, instance_map).read(seen())
    values = {name: list(v) for name, (_, v) in zip(external.names(), external.values, strict=True)}
    return values, external, events, api


def same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


NAN = math.nan


def test_series_join_by_backend_and_server_labels_and_a_missing_one_is_nan() -> None:
    feature = FeatureQuery("cpu", 'cpu{proxy="{backend}"}')
    script = {
        'proxy="app"': [
            series(0.5, proxy="app", server="s1"),
            series(0.7, proxy="app", server="s3"),
        ],
        'proxy="api"': [series(0.1, proxy="api", server="s1")],
    }
    values, external, _events, api = read([feature], script)
    # rows: app/s1 app/s2 app/s3 api/s1 static/x
    assert same(values["cpu"], [0.5, NAN, 0.7, 0.1, NAN])  # never 0 for "no series"
    assert external.error == ""
    assert external.problems == ()
    # one query per managed pool; the unmanaged pool is not asked for
    assert sorted(api.queries) == ['cpu{proxy="api"}', 'cpu{proxy="app"}']
    assert api.times == [seen().taken_at] * 2  # the moment the proxy was read


def test_a_pool_level_series_goes_to_every_server_and_a_server_series_wins() -> None:
    feature = FeatureQuery("p95", 'p95{cluster="{backend}"}', "cluster", "")
    script = {'cluster="app"': [series(0.2, cluster="app")]}
    values, *_ = read([feature], script)
    assert same(values["p95"], [0.2, 0.2, 0.2, NAN, NAN])
    mixed = FeatureQuery("lat", "lat")
    script2 = {"lat": [series(0.2, proxy="app"), series(0.9, proxy="app", server="s2")]}
    values, *_ = read([mixed], script2)
    assert same(values["lat"], [0.2, 0.9, 0.2, NAN, NAN])


def test_instance_map_places_node_level_series() -> None:
    feature = FeatureQuery("cpu", 'node_cpu{job="node"}')
    script = {"node_cpu": [series(0.3, instance="10.0.0.5:9100"), series(0.4, instance="other")]}
    values, external, *_ = read([feature], script, {"10.0.0.5:9100": "app/s2"})
    assert same(values["cpu"], [NAN, 0.3, NAN, NAN, NAN])
    assert external.problems == ()  # one series matched: the other is someone else's


def test_per_server_queries_fill_both_placeholders() -> None:
    feature = FeatureQuery("q", 'q{b="{backend}",s="{server}"}', "", "")
    script = {'s="s2"': [series(5.0)], 's="s1"': [series(1.0)]}
    values, _, _, api = read([feature], script)
    assert same(values["q"], [1.0, 5.0, NAN, 1.0, NAN])
    assert len(api.queries) == 4  # the managed pools' servers


def test_several_series_for_one_server_is_ambiguous_not_a_guess() -> None:
    feature = FeatureQuery("cpu", "cpu")
    script = {
        "cpu": [
            series(0.5, proxy="app", server="s1", instance="a"),
            series(0.6, proxy="app", server="s1", instance="b"),
            series(0.7, proxy="app", server="s2"),
        ]
    }
    values, external, events, _ = read([feature], script)
    assert same(values["cpu"], [NAN, 0.7, NAN, NAN, NAN])
    assert "several series for app/s1" in external.problems[0]
    assert events.count("prometheus_ambiguous", feature="cpu") == 1


def test_nan_and_infinite_samples_are_missing_and_counted() -> None:
    feature = FeatureQuery("ratio", "ratio")
    script = {
        "ratio": [
            series(math.inf, proxy="app", server="s1"),
            series(math.nan, proxy="app", server="s2"),
            series(0.25, proxy="app", server="s3"),
        ]
    }
    values, external, events, _ = read([feature], script)
    assert same(values["ratio"], [NAN, NAN, 0.25, NAN, NAN])
    assert "2 NaN or infinite sample(s) (1 infinite)" in external.problems[0]
    assert events.count("prometheus_nonfinite", feature="ratio") == 1


def test_series_that_name_no_server_are_reported_once() -> None:
    feature = FeatureQuery("up", "up")
    values, external, events, _ = read([feature], {"up": [series(1.0, job="haproxy")]})
    assert same(values["up"], [NAN] * 5)
    assert "none of them names a server here" in external.problems[0]
    assert events.count("prometheus_unmatched", feature="up") == 1


def test_a_refused_query_costs_its_feature_only() -> None:
    good = FeatureQuery("good", "good")
    bad = FeatureQuery("bad", "bad")
    script: dict[str, Answer] = {
        "good": [series(1.0, proxy="app", server="s1")],
        "bad": PrometheusError("bad_query", "refused 'bad': parse error"),
    }
    values, external, events, _ = read([good, bad], script)
    assert external.error == ""
    assert same(values["good"], [1.0, NAN, NAN, NAN, NAN])
    assert same(values["bad"], [NAN] * 5)
    assert external.problems == ("feature bad: refused 'bad': parse error",)
    assert events.count("prometheus_query_failed", feature="bad", reason="bad_query") == 1


@pytest.mark.parametrize("kind", ["unreachable", "timeout", "not_json"])
def test_prometheus_down_is_a_degraded_reading_not_a_failure(kind: str) -> None:
    features = [FeatureQuery("a", "a"), FeatureQuery("b", 'b{proxy="{backend}"}')]
    script = {"a": PrometheusError(kind, f"Prometheus: {kind}")}
    values, external, events, _ = read(features, script)
    assert external.error == f"Prometheus: {kind}"
    assert all(same(v, [NAN] * 5) for v in values.values())  # every feature, not just 'a'
    assert events.count("source_unavailable", source="prometheus", reason=kind) == 1


def test_the_wrapped_source_adds_the_features_to_its_observations() -> None:
    class Proxy:
        def observe(self) -> Observation:
            return seen()

    api = ScriptedAPI({"cpu": [series(0.5, proxy="app", server="s1")]})
    source = WithPrometheus(
        Proxy(), PrometheusFeatures(api, [FeatureQuery("cpu", "cpu")], Events())
    )
    got = source.observe()
    assert got.external is not None
    assert got.external.columns == ("prom_cpu",)
    assert got.rows == seen().rows
    source.close()


# --- the HTTP client against answers no real Prometheus gives ------------------------------


class FakePrometheus:
    """Loopback servers answering every request with (status, body), or with nothing
    until the test ends (``hang``). Every request's path is kept in ``paths``."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.release = threading.Event()
        self._servers: list[ThreadingHTTPServer] = []

    def __call__(self, status: int, body: bytes, hang: bool = False) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.paths.append(self.path)
                if hang:
                    fake.release.wait(30)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first: the timeout under test

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()


def wait_for(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it is truthy; fail naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def fake_prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.stop()


@pytest.mark.parametrize(
    ("status", "body", "kind", "words"),
    [
        (200, b"<html>not json</html>", "not_json", "not JSON"),
        (200, b'{"status": "success"}', "bad_shape", "no data.result"),
        (200, b'{"data": {"result": {"a": 1}}}', "bad_shape", "not a list"),
        (200, b'{"data": {"result": [{"metric": {}, "value": 3}]}}', "bad_shape", "[time, value]"),
        (200, b'{"data": {"result": [{"value": [1, "2"]}]}}', "bad_shape", "without labels"),
        (502, b"<html>bad gateway</html>", "http_error", "HTTP Status Code 502"),
    ],
)
def test_every_bad_answer_is_one_named_error(
    fake_prometheus: FakePrometheus,
    status: int,
    body: bytes,
    kind: str,
    words: str,
) -> None:
    url = fake_prometheus(status, body)
    with pytest.raises(PrometheusError) as caught:
        PrometheusAPI(url, 2.0).instant("up")
    assert caught.value.kind == kind
    assert words in str(caught.value)
    assert url in str(caught.value)


def test_an_answer_that_never_comes_is_one_timeout_without_retries(
    fake_prometheus: FakePrometheus,
) -> None:
    """The server holds its answer until the test ends, so only the client's own
    timeout can end the query: the error's kind proves it fired, and the server saw
    one request, so no retry (with back-off) stood behind it."""
    url = fake_prometheus(200, b'{"data": {"result": []}}', hang=True)
    with pytest.raises(PrometheusError) as caught:
        PrometheusAPI(url, 0.3).instant("up")
    assert caught.value.kind == "timeout"
    assert "no answer within 0.3s" in str(caught.value)
    wait_for(lambda: fake_prometheus.paths, "the request to reach the server")
    assert len(fake_prometheus.paths) == 1, fake_prometheus.paths


def test_a_closed_port_is_unreachable_at_once() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PrometheusError) as caught:
        PrometheusAPI(f"http://127.0.0.1:{port}", 2.0).instant("up")
    assert caught.value.kind == "unreachable"
    assert "Connection refused" in str(caught.value)


def test_values_come_back_as_floats_with_nan_and_infinities(
    fake_prometheus: FakePrometheus,
) -> None:
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":['
        b'{"metric":{"server":"a"},"value":[1.5,"0.25"]},'
        b'{"metric":{"server":"b"},"value":[1.5,"NaN"]},'
        b'{"metric":{"server":"c"},"value":[1.5,"+Inf"]}]}}'
    )
    got = PrometheusAPI(fake_prometheus(200, body), 2.0).instant("x")
    assert [s.labels["server"] for s in got] == ["a", "b", "c"]
    assert got[0].value == 0.25
    assert math.isnan(got[1].value)
    assert math.isinf(got[2].value)


def test_range_answers_become_float_arrays_and_bad_pairs_are_refused(
    fake_prometheus: FakePrometheus,
) -> None:
    from datetime import UTC

    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    body = (
        b'{"status":"success","data":{"resultType":"matrix","result":['
        b'{"metric":{"server":"a"},"values":[[10,"1.5"],[25,"NaN"],[40,"+Inf"]]}]}}'
    )
    (got,) = PrometheusAPI(fake_prometheus(200, body), 2.0).range("x", start, end, 15)
    assert got.times.tolist() == [10.0, 25.0, 40.0]
    assert got.values[0] == 1.5
    assert math.isnan(got.values[1])
    assert math.isinf(got.values[2])
    broken = b'{"data":{"result":[{"metric":{},"values":[[10,"1"],[25]]}]}}'
    with pytest.raises(PrometheusError, match="not \\[time, value\\] pairs") as caught:
        PrometheusAPI(fake_prometheus(200, broken), 2.0).range("x", start, end, 15)
    assert caught.value.kind == "bad_shape"


def test_loopback_answers_are_asked_for_uncompressed_unless_the_operator_says() -> None:
    assert PrometheusAPI("http://127.0.0.1:9090", 1)._headers == {"Accept-Encoding": "identity"}
    assert PrometheusAPI("http://localhost:9090", 1)._headers["Accept-Encoding"] == "identity"
    assert PrometheusAPI("https://prom.example:443", 1)._headers == {}
    mine = PrometheusAPI("http://127.0.0.1:9090", 1, {"accept-encoding": "gzip"})
    assert mine._headers == {"accept-encoding": "gzip"}


def test_every_query_refused_is_prometheus_down_too() -> None:
    features = [FeatureQuery("a", "a"), FeatureQuery("b", "b")]
    refused = PrometheusError("http_error", "Prometheus refused (HTTP Status Code 503)")
    values, external, events, _ = read(features, {"a": refused, "b": refused})
    assert external.error == "Prometheus refused (HTTP Status Code 503)"
    assert all(same(v, [NAN] * 5) for v in values.values())
    assert events.count("source_unavailable", source="prometheus", reason="http_error") == 1


def test_series_instance_map_gives_to_another_proxys_pool_are_not_unmatched() -> None:
    """With two proxies, each proxy's agent reads every series: one that instance_map
    places in the other proxy's pool is that proxy's, not a series nobody can place.
    Kills: every such series counted unmatched (a warning on every tick of a fleet)."""
    feature = FeatureQuery("cpu", "node_cpu")
    script = {"node_cpu": [series(0.3, instance="10.0.0.5:9100")]}
    values, external, events, _ = read([feature], script, {"10.0.0.5:9100": "web/w1"})
    assert same(values["cpu"], [NAN] * 5)
    assert external.problems == ()
    assert events.count("prometheus_unmatched", feature="cpu") == 0
    _, external, events, _ = read([feature], script, {"10.0.0.5:9100": "app/s9"})
    assert "none of them names a server here" in external.problems[0]  # a pool of ours
