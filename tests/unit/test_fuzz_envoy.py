"""Envoy's admin API answers, mutated from real ones, through the agent's readers.

Each test takes an answer a real Envoy gave (``tests/fixtures/replies/envoy_*``),
breaks it (``mutations.py``: cut, bytes flipped, values of other types, keys twice,
NaN and huge numbers...) and hands it to the same code the source and sink use: the
admin client's JSON decoding, then the parser. The property: the parser returns names
that were in the answer and numbers that are finite (or NaN, the parsers' "Envoy did
not say"), or it raises ``EnvoyNotJson`` / ``EnvoyFormatError``; never anything else,
which would be a traceback in the tick instead of a counted, logged event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.unit.mutations import (
    decoded,
    fixture,
    fixture_json,
    fuzz,
    json_reply,
    strings_of,
    text_reply,
)
from veloflux.envoy.admin import EnvoyAdmin, EnvoyNotJson
from veloflux.envoy.replies import (
    EnvoyFormatError,
    parse_clusters,
    parse_histograms,
    parse_update_counters,
    parse_uptime,
    parse_weights_text,
    stat_values,
)
from veloflux.envoy.source import LATENCY_QUANTILE, EnvoyCluster, EnvoySource
from veloflux.errors import SourceUnavailable
from veloflux.util.events import Events

FUZZ = fuzz(150)
CLUSTERS = fixture_json("envoy_clusters.json")
STATS = fixture_json("envoy_stats.json")
SERVER_INFO = fixture_json("envoy_server_info.json")
CLUSTERS_TEXT = fixture("envoy_clusters.txt")
DEEP = b"[" * 100_000  # deeper than the JSON decoder's recursion limit


class Replayed(EnvoyAdmin):
    """An admin client whose answers are fixed bodies (by path prefix), decoded as
    ``EnvoyAdmin.get_text`` decodes what the network delivered."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        super().__init__("http://127.0.0.1:9", 1.0)
        self.bodies = bodies

    def get_text(self, path: str) -> str:
        prefix = next(p for p in self.bodies if path.startswith(p))
        return self.bodies[prefix].decode("utf-8", errors="replace")


def parsed(body: bytes, parse: Callable[[Any], Any]) -> Any:
    """What ``parse`` makes of ``body`` read as JSON, or None where either step refused it
    with the error it declares."""
    try:
        document = Replayed({"/": body}).get_json("/")
    except EnvoyNotJson:
        return None
    try:
        return parse(document)
    except EnvoyFormatError:
        return None


def unknown_or_finite(value: float) -> bool:
    """An admin API number: NaN ("not said") or finite and non-negative (Envoy's
    counters, gauges and weights are unsigned)."""
    return math.isnan(value) or (math.isfinite(value) and value >= 0)


@fuzz(300)
@given(json_reply(CLUSTERS))
@example(DEEP)
@example(
    b'{"cluster_statuses": [{"name": "app", "host_statuses": [{"address": {"socket_address":'
    b' {"address": "127.0.0.1", "port_value": 80}}, "weight": ' + b"9" * 400 + b"}]}]}"
)
@example(
    b'{"cluster_statuses": [{"name": "app", "host_statuses": [{"address": {"socket_address":'
    b' {"address": "127.0.0.1", "port_value": 80}}, "stats": true}]}]}'
)
def test_clusters_answer_parses_to_known_names_and_finite_numbers(body: bytes) -> None:
    clusters = parsed(body, parse_clusters)
    if clusters is None:
        return
    strings = strings_of(decoded(body))
    for name, hosts in clusters.items():
        assert name in strings
        for host in hosts:
            assert host.address in strings
            assert type(host.port) is int
            assert 0 < host.port < 65536
            assert unknown_or_finite(host.weight)
            assert host.health in strings or host.health == "UNKNOWN"
            assert set(host.failed_checks) <= strings
            assert set(host.stats) <= strings
            assert all(unknown_or_finite(v) for v in host.stats.values())


@FUZZ
@given(json_reply(STATS))
@example(DEEP)
def test_stats_answer_parses_to_known_names_and_finite_numbers(body: bytes) -> None:
    values = parsed(body, stat_values)
    if values is not None:
        strings = strings_of(decoded(body))
        assert set(values) <= strings
        assert all(unknown_or_finite(v) for v in values.values())
    counters = parsed(body, lambda document: parse_update_counters(document, "app"))
    if counters is not None:
        assert all(unknown_or_finite(v) for v in vars(counters).values())


@FUZZ
@given(json_reply(STATS))
def test_histograms_parse_to_quantiles_in_range_or_refuse(body: bytes) -> None:
    histograms = parsed(body, parse_histograms)
    if histograms is None:
        return
    strings = strings_of(decoded(body))
    for name, summary in histograms.items():
        assert name in strings
        assert all(math.isfinite(q) and 0 <= q <= 100 for q in summary.quantiles)
        assert len(summary.interval) == len(summary.cumulative) == len(summary.quantiles)
        assert all(unknown_or_finite(v) for v in summary.interval + summary.cumulative)
        try:
            assert unknown_or_finite(summary.interval_at(LATENCY_QUANTILE))
        except EnvoyFormatError:
            assert LATENCY_QUANTILE not in summary.quantiles


@FUZZ
@given(json_reply(SERVER_INFO))
@example(b'{"uptime_current_epoch": "' + b"9" * 400 + b's"}')
@example(b'{"uptime_current_epoch": "7s", "command_line_options": {"restart_epoch": true}}')
def test_server_info_parses_to_a_finite_uptime_and_an_epoch(body: bytes) -> None:
    info = parsed(body, parse_uptime)
    if info is None:
        return
    uptime, epoch = info
    assert math.isfinite(uptime)
    assert uptime >= 0
    assert type(epoch) is int
    assert epoch >= 0


@FUZZ
@given(st.sampled_from(["app", "ghost", "127.0.0.1"]), st.data())
def test_plain_clusters_text_gives_weights_of_named_endpoints(cluster: str, data: Any) -> None:
    body = data.draw(text_reply(CLUSTERS_TEXT, sep="::", first_row=0))
    text = body.decode("utf-8", errors="replace")
    weights = parse_weights_text(text, cluster)
    for endpoint, weight in weights.items():
        assert f"{cluster}::{endpoint}::weight::" in text
        assert unknown_or_finite(weight)


@fuzz(100)
@given(json_reply(SERVER_INFO), json_reply(CLUSTERS), json_reply(STATS))
def test_the_source_reads_mutated_answers_or_reports_the_source_unavailable(
    info: bytes, clusters: bytes, stats: bytes
) -> None:
    """The source end to end: an Observation of the answers' endpoints, or
    ``SourceUnavailable`` (counted); a /stats answer it cannot read costs the latency."""
    admin = Replayed({"/server_info": info, "/clusters": clusters, "/stats": stats})
    first = CLUSTERS["cluster_statuses"][0]["host_statuses"][0]["address"]["socket_address"]
    static = {f"{first['address']}:{first['port_value']}": 3}
    source = EnvoySource(
        admin, [EnvoyCluster("app", static)], lambda: datetime(2026, 1, 1, tzinfo=UTC), Events()
    )
    try:
        observation = source.observe()
    except SourceUnavailable:
        return
    strings = strings_of(decoded(clusters))
    for row in observation.rows:
        assert row.pool == "app"
        assert row.server.rsplit(":", 1)[0] in strings
        assert unknown_or_finite(row.weight)
        assert unknown_or_finite(row.response_time)
