"""The Envoy source against a fake admin API: faults no real Envoy produces on demand.

A real Envoy answers promptly and in its own JSON, so these faults (an admin API that
accepts and never answers, garbage or wrong-shape JSON, a broken ``/stats``) come from
a stdlib HTTP server on loopback port 0. Each must end as a counted event and either
``SourceUnavailable`` (no endpoints, no observation) or an observation whose latency is
NaN (weights can still be planned), never a traceback and never a made-up number.
What a real Envoy does produce (its histograms under traffic, ``null`` without) is
checked against the binary in tests/integration/test_envoy.py.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from veloflux.domain.observation import Observation
from veloflux.envoy.admin import EnvoyAdmin
from veloflux.envoy.source import EnvoyCluster, EnvoySource, latency_filter
from veloflux.errors import SourceUnavailable
from veloflux.util.events import Events

HANG = None  # an answer that never comes: the server reads the request and says nothing

SERVER_INFO = {"state": "LIVE", "uptime_current_epoch": "7s", "command_line_options": {}}
QUANTILES = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]


def host(port: int, health: str = "HEALTHY") -> dict[str, Any]:
    return {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "stats": [{"name": "rq_total", "value": "40"}],
        "health_status": {"eds_health_status": health},
        "weight": 2,
    }


CLUSTERS = {
    "cluster_statuses": [
        {"name": "app", "host_statuses": [host(8081), host(8082), host(8083, "DRAINING")]},
        {"name": "api", "host_statuses": [host(9091)]},
    ]
}


def rq_time(cluster: str, p50_ms: float | None) -> dict[str, Any]:
    values = [{"interval": p50_ms, "cumulative": 12.0} for _ in QUANTILES]
    return {"name": f"cluster.{cluster}.upstream_rq_time", "values": values}


def stats(*computed: dict[str, Any]) -> dict[str, Any]:
    block = {"supported_quantiles": QUANTILES, "computed_quantiles": list(computed)}
    return {"stats": [{"histograms": block}]}


class FakeAdmin:
    """A loopback HTTP server answering each path (by prefix) as the test says.

    An answer is a JSON-able value, a ``str`` sent as it is, or ``HANG``. Every request
    is kept in ``paths`` so that a test can see what the source asked for.
    """

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.paths: list[str] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.paths.append(self.path)
                prefix = max((p for p in fake.answers if self.path.startswith(p)), key=len)
                answer = fake.answers[prefix]
                if answer is HANG:
                    fake.release.wait(30)
                    return
                body = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_admin() -> Iterator[Callable[..., FakeAdmin]]:
    started: list[FakeAdmin] = []

    def start(**overrides: Any) -> FakeAdmin:
        answers = {"/server_info": SERVER_INFO, "/clusters": CLUSTERS, "/stats": stats()}
        answers |= {f"/{k}": v for k, v in overrides.items()}
        started.append(FakeAdmin(answers))
        return started[-1]

    yield start
    for fake in started:
        fake.stop()


def wait_for(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it is truthy; fail naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def source(fake: FakeAdmin, events: Events, timeout: float = 2.0) -> EnvoySource:
    clusters = [EnvoyCluster("app"), EnvoyCluster("api"), EnvoyCluster("gone")]
    admin = EnvoyAdmin(fake.url, timeout_seconds=timeout)
    return EnvoySource(admin, clusters, lambda: datetime.now(UTC), events)


def latencies(observation: Observation) -> dict[str, float]:
    return {f"{r.pool}/{r.server}": r.response_time for r in observation.rows}


def test_the_cluster_median_is_every_up_endpoints_response_time(
    fake_admin: Callable[..., FakeAdmin],
) -> None:
    fake = fake_admin(stats=stats(rq_time("app", 31.5), rq_time("api", None)))
    events = Events()
    observation = source(fake, events).observe()
    found = latencies(observation)
    assert found["app/127.0.0.1:8081"] == found["app/127.0.0.1:8082"] == pytest.approx(0.0315)
    assert math.isnan(found["app/127.0.0.1:8083"])  # DRAINING: not in rotation
    assert math.isnan(found["api/127.0.0.1:9091"])  # no request in Envoy's last interval
    assert all(math.isnan(r.total_time) for r in observation.rows)
    assert events.totals() == {("pool_missing", ()): 1}
    # One /stats call for every known cluster; the one Envoy lacks is not asked for.
    (stats_path,) = [p for p in fake.paths if p.startswith("/stats")]
    assert "(app|api)" in stats_path
    assert "gone" not in stats_path


def test_the_stats_filter_matches_exactly_the_clusters_histograms() -> None:
    assert latency_filter(["app"]) == r"^cluster\.(app)\.upstream_rq_time$"
    # Dots are literal; Envoy writes ':' in stat names as '_'.
    assert latency_filter(["a.b", "c:d"]) == r"^cluster\.(a\.b|c_d)\.upstream_rq_time$"


def test_an_admin_api_that_never_answers_is_unavailable_by_the_timeout(
    fake_admin: Callable[..., FakeAdmin],
) -> None:
    """The fake holds its answer until the test ends, so only the source's own timeout
    can end ``observe``: the message says that it fired, and the one request the fake
    saw says that nothing was retried or asked after it."""
    fake = fake_admin(server_info=HANG)
    events = Events()
    with pytest.raises(SourceUnavailable, match=r"no answer within 0\.5s"):
        source(fake, events, timeout=0.5).observe()
    assert events.count("source_unavailable", source="envoy") == 1
    wait_for(lambda: fake.paths, "the request to reach the fake")
    assert fake.paths == ["/server_info"]


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ("<html>502 Bad Gateway</html>", "not JSON"),
        ('{"cluster_statuses": [', "not JSON"),
        ([1, 2, 3], "the /clusters answer: expected an object"),
        ({"clusters": []}, "'cluster_statuses' is missing or not a list"),
        ({"cluster_statuses": [{"name": "app", "host_statuses": [{"address": 1}]}]}, "address"),
    ],
)
def test_garbage_from_clusters_is_source_unavailable_and_counted_as_malformed(
    fake_admin: Callable[..., FakeAdmin], clusters: Any, message: str
) -> None:
    fake = fake_admin(clusters=clusters)
    events = Events()
    with pytest.raises(SourceUnavailable, match=message) as raised:
        source(fake, events).observe()
    assert fake.url in str(raised.value)  # the message says which Envoy
    assert events.count("source_malformed", source="envoy") == 1
    assert events.count("source_unavailable") == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("not json at all", "not JSON"),
        ({"stats": "nope"}, "'stats' is missing or not a list"),
        ({"stats": [{"histograms": {"supported_quantiles": QUANTILES}}]}, "computed_quantiles"),
        (stats(rq_time("app", -3)), "interval -3"),
        (
            {
                "stats": [
                    {
                        "histograms": {
                            "supported_quantiles": [0, 100],
                            "computed_quantiles": [
                                {
                                    "name": "cluster.app.upstream_rq_time",
                                    "values": [
                                        {"interval": 1, "cumulative": 1},
                                        {"interval": 9, "cumulative": 9},
                                    ],
                                }
                            ],
                        }
                    }
                ]
            },
            "quantile 50 is not among",
        ),
    ],
)
def test_a_malformed_stats_answer_costs_the_latency_only(
    fake_admin: Callable[..., FakeAdmin],
    caplog: pytest.LogCaptureFixture,
    answer: Any,
    message: str,
) -> None:
    fake = fake_admin(stats=answer)
    events = Events()
    observation = source(fake, events).observe()
    assert [p.name for p in observation.pools] == ["app", "api"]
    assert {r.weight for r in observation.rows} == {2}  # weights still plannable
    assert all(math.isnan(v) for v in latencies(observation).values())
    assert events.count("source_malformed", source="envoy", part="latency") == 1
    assert message in caplog.text
    assert "latency left unknown" in caplog.text


def test_a_stats_call_that_times_out_costs_the_latency_only(
    fake_admin: Callable[..., FakeAdmin],
) -> None:
    fake = fake_admin(stats=HANG)
    events = Events()
    observation = source(fake, events, timeout=0.5).observe()
    assert len(observation.rows) == 4
    assert all(math.isnan(v) for v in latencies(observation).values())
    assert events.count("latency_unavailable", source="envoy") == 1
    assert events.count("source_unavailable") == 0
