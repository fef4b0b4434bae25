"""Prometheus's query answers, mutated from real ones, through ``PrometheusAPI``.

The answers a real Prometheus gave (``tests/fixtures/replies/prometheus_*``: an instant
vector of the kind a feature query returns, a range matrix of the kind
``train --from-prometheus`` pulls, and the refusal of a bad query) are broken
(``mutations.py``) and served by a loopback HTTP server with Prometheus's status and
content type, so the whole path runs: the HTTP client, its JSON decoding, and the
checks in ``prometheus/api.py``. The property: series whose labels were in the answer,
sample times that are finite, values that are floats (NaN and the infinities are left
to the caller, as the module says), or one ``PrometheusError``; never another exception.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.unit.mutations import decoded, fixture_json, fuzz, json_reply, strings_of
from veloflux.prometheus.api import PrometheusAPI, PrometheusError

FUZZ = fuzz(150)
INSTANT = fixture_json("prometheus_instant.json")
RANGE = fixture_json("prometheus_range.json")
BAD_QUERY = fixture_json("prometheus_bad_query.json")
KINDS = {"unreachable", "timeout", "http_error", "bad_query", "not_json", "bad_shape"}
DEEP = b"[" * 100_000  # deeper than the JSON decoder's recursion limit
END = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class _Answer(BaseHTTPRequestHandler):
    """Answers every query with the server's current status and body."""

    server: _Prometheus
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus
    disable_nagle_algorithm = True  # the body is not held back for the headers' ACK

    def do_GET(self) -> None:
        status, body = self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Prometheus(ThreadingHTTPServer):
    daemon_threads = True
    answer: tuple[int, bytes] = (200, b"{}")


@pytest.fixture(scope="module")
def prometheus() -> Iterator[tuple[_Prometheus, PrometheusAPI]]:
    server = _Prometheus(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    api = PrometheusAPI(f"http://127.0.0.1:{server.server_address[1]}", timeout_seconds=5.0)
    try:
        yield server, api
    finally:
        api.close()
        server.shutdown()
        server.server_close()
        thread.join()


def _asked(
    prometheus: tuple[_Prometheus, PrometheusAPI], status: int, body: bytes, kind: str
) -> Any:
    server, api = prometheus
    server.answer = (status, body)
    refused: PrometheusError | None = None
    try:
        if kind == "instant":
            return api.instant('rate(x{proxy="app"}[1m])', END)
        return api.range('x{proxy=~"app"}', END - timedelta(seconds=4), END, 1.0)
    except PrometheusError as exc:
        refused = exc
    assert refused.kind in KINDS
    assert str(refused)
    return None


def _labels_from_answer(labels: Any, strings: set[str]) -> None:
    for key, value in labels.items():
        assert type(key) is str
        assert type(value) is str
        assert key in strings
        assert value in strings


statuses = st.sampled_from([200] * 6 + [400, 422, 500, 503])


@FUZZ
@given(statuses, json_reply(INSTANT))
@example(200, DEEP)
@example(200, b'{"data": {"result": [{"metric": {}, "value": [1, ' + b"9" * 400 + b"]}]}}")
@example(200, b'{"data": {"result": [{"metric": {}, "value": [1, "abc"]}]}}')
@example(200, b'{"data": {"result": [{"metric": {"a": 12345}, "value": [1, "1"]}]}}')
def test_instant_answers_give_series_from_the_answer_or_one_error(
    prometheus: tuple[_Prometheus, PrometheusAPI], status: int, body: bytes
) -> None:
    series = _asked(prometheus, status, body, "instant")
    if series is None:
        return
    assert status == 200
    strings = strings_of(decoded(body))
    for one in series:
        _labels_from_answer(one.labels, strings)
        assert type(one.value) is float


@FUZZ
@given(statuses, json_reply(RANGE))
@example(200, DEEP)
@example(200, b'{"data": {"result": [{"metric": {}, "values": [[1, ' + b"9" * 400 + b"]]}]}}")
@example(200, b'{"data": {"result": [{"metric": {}, "values": [[' + b"9" * 400 + b', "1"]]}]}}')
@example(200, b'{"data": {"result": [{"metric": {}, "values": [[NaN, "1"]]}]}}')
@example(200, b'{"data": {"result": [{"metric": {}, "values": [[1, [2, 3]], [2, [4, 5]]]}]}}')
def test_range_answers_give_series_with_finite_times_or_one_error(
    prometheus: tuple[_Prometheus, PrometheusAPI], status: int, body: bytes
) -> None:
    series = _asked(prometheus, status, body, "range")
    if series is None:
        return
    assert status == 200
    strings = strings_of(decoded(body))
    for one in series:
        _labels_from_answer(one.labels, strings)
        assert one.times.dtype == np.float64 == one.values.dtype
        assert one.times.shape == one.values.shape == (len(one.times),)
        assert all(math.isfinite(t) for t in one.times)


@FUZZ
@given(st.sampled_from([400, 422, 503]), json_reply(BAD_QUERY))
@example(400, DEEP)
@example(400, b'{"errorType": "bad_data", "error": ' + b"[" * 100_000 + b"}")
def test_refusals_are_one_error_whatever_their_body(
    prometheus: tuple[_Prometheus, PrometheusAPI], status: int, body: bytes
) -> None:
    server, api = prometheus
    server.answer = (status, body)
    with pytest.raises(PrometheusError) as raised:
        api.instant("rate(x[1m]")
    assert raised.value.kind in {"http_error", "bad_query"}
    if raised.value.kind == "bad_query":
        assert status == 400 or '"bad_data"' in body.decode(errors="replace")
