"""PromQL feature queries: the placeholders, their safe filling, and what can be checked
without a Prometheus.

An operator writes a feature as PromQL with ``{backend}`` and ``{server}`` where a pool
or server name goes, always inside a quoted label value (``proxy="{backend}"``). The
names are filled in as PromQL string content: backslashes and quotes escaped, and
regex metacharacters escaped too when the string is the right side of ``=~`` or
``!~``, so no server name can change what a query selects. A placeholder outside a
string is refused: there it would be PromQL syntax, not a value.

VeloFlux has no PromQL parser; ``syntax_problems`` finds what can be seen without one
(unclosed strings and brackets, misplaced placeholders), and Prometheus reports the
rest when the query first runs, named with its feature.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

PLACEHOLDERS = ("{backend}", "{server}")
FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_QUOTES = "\"'`"
_REGEX_META = re.compile(r"[.^$*+?()\[\]{}|\\]")


@dataclass(frozen=True)
class FeatureQuery:
    """One feature: its name, its PromQL, and which labels name a series' pool and
    server. ``server_label`` empty: the series are pool-level, each value goes to every
    server of its pool. ``pool_names`` says how a pool's name appears in the labels
    (``envoy``: Envoy writes ``:`` in a cluster name as ``_`` in its stats)."""

    name: str
    template: str
    backend_label: str = "proxy"
    server_label: str = "server"
    pool_names: str = "as_is"

    @property
    def per_backend(self) -> bool:
        return "{backend}" in self.template

    @property
    def per_server(self) -> bool:
        return "{server}" in self.template

    def label_value(self, pool: str) -> str:
        """How ``pool`` is spelled in this query's series labels."""
        return pool.replace(":", "_") if self.pool_names == "envoy" else pool


def _strings(query: str) -> tuple[list[tuple[int, int, str]], list[str]]:
    """The string literals of ``query`` as (start, end, quote) spans (end exclusive,
    quotes included), and the problems found on the way (an unclosed string or bracket)."""
    spans: list[tuple[int, int, str]] = []
    problems: list[str] = []
    stack: list[tuple[str, int]] = []
    i = 0
    while i < len(query):
        char = query[i]
        if char in _QUOTES:
            end = i + 1
            while end < len(query) and query[end] != char:
                end += 2 if char != "`" and query[end] == "\\" else 1
            if end >= len(query):
                problems.append(f"the string opened at character {i + 1} is never closed")
                return spans, problems
            spans.append((i, end + 1, char))
            i = end + 1
            continue
        if char == "#":  # a comment runs to the end of the line
            newline = query.find("\n", i)
            i = len(query) if newline < 0 else newline
            continue
        if char in _CLOSERS:
            stack.append((char, i))
        elif char in _CLOSERS.values():
            if not stack or _CLOSERS[stack[-1][0]] != char:
                problems.append(f"{char!r} at character {i + 1} closes nothing")
                return spans, problems
            stack.pop()
        i += 1
    problems += [f"{opener!r} at character {at + 1} is never closed" for opener, at in stack]
    return spans, problems


def syntax_problems(query: str) -> list[str]:
    """What is visibly wrong with ``query`` as a feature template (empty: nothing seen)."""
    if not query.strip():
        return ["the query is empty"]
    spans, problems = _strings(query)
    outside = query
    for start, end, _ in reversed(spans):
        outside = outside[:start] + " " * (end - start) + outside[end:]
    for placeholder in PLACEHOLDERS:
        if placeholder in outside:
            problems.append(
                f'{placeholder} must be inside a quoted label value, e.g. proxy="{placeholder}"'
            )
    return problems


def fill(template: str, backend: str = "", server: str = "") -> str:
    """``template`` with its placeholders replaced, each escaped for the string it is
    in (and for a regex, after ``=~`` or ``!~``). Call only on a template without
    ``syntax_problems``."""
    if "{" not in template:
        return template
    spans, _ = _strings(template)
    out: list[str] = []
    last = 0
    for start, end, quote in spans:
        out.append(template[last:start])
        body = template[start + 1 : end - 1]
        regex = template[:start].rstrip().endswith(("=~", "!~"))
        for placeholder, value in (("{backend}", backend), ("{server}", server)):
            if placeholder in body:
                body = body.replace(placeholder, _escaped(value, quote, regex))
        out.append(quote + body + quote)
        last = end
    out.append(template[last:])
    return "".join(out)


def _escaped(value: str, quote: str, regex: bool) -> str:
    """``value`` as the content of a PromQL string literal delimited by ``quote``."""
    if regex:
        value = _REGEX_META.sub(lambda m: "\\" + m.group(0), value)
    if quote == "`":  # raw strings have no escapes: a backtick cannot be written at all
        return value.replace("`", "")
    value = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return value.replace("\n", "\\n")


def any_of(names: Sequence[str]) -> str:
    """A double-quoted PromQL string matching exactly ``names`` after ``=~``."""
    return '"' + "|".join(_escaped(n, '"', regex=True) for n in names) + '"'


# --- the default feature sets -------------------------------------------------------------

# HAProxy's built-in exporter (``http-request use-service prometheus-exporter``), labels
# ``proxy`` and ``server``: windowed figures the runtime API does not give per tick.
HAPROXY_DEFAULTS: tuple[FeatureQuery, ...] = tuple(
    FeatureQuery(name, template)
    for name, template in (
        (
            "request_rate_1m",
            "sum by (proxy, server) "
            '(rate(haproxy_server_http_responses_total{proxy="{backend}"}[1m]))',
        ),
        (
            "error_ratio_1m",
            "sum by (proxy, server) "
            '(rate(haproxy_server_http_responses_total{proxy="{backend}",code="5xx"}[1m]))'
            " / sum by (proxy, server) "
            '(rate(haproxy_server_http_responses_total{proxy="{backend}"}[1m]))',
        ),
        (
            "response_time_1m",
            'avg_over_time(haproxy_server_response_time_average_seconds{proxy="{backend}"}[1m])',
        ),
        (
            "queue_max_1m",
            'max_over_time(haproxy_server_current_queue{proxy="{backend}"}[1m])',
        ),
        (
            "sessions_avg_1m",
            'avg_over_time(haproxy_server_current_sessions{proxy="{backend}"}[1m])',
        ),
        (
            "connect_errors_1m",
            'rate(haproxy_server_connection_errors_total{proxy="{backend}"}[1m])',
        ),
    )
)

# Envoy's ``/stats/prometheus``: per cluster only (Envoy keeps no per-endpoint series
# there), so each value goes to every endpoint of its cluster.
ENVOY_DEFAULTS: tuple[FeatureQuery, ...] = tuple(
    FeatureQuery(name, template, "envoy_cluster_name", "", "envoy")
    for name, template in (
        (
            "cluster_p95_latency_1m",
            "histogram_quantile(0.95, sum by (le, envoy_cluster_name) (rate("
            'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="{backend}"}[1m]))) / 1000',
        ),
        (
            # Envoy has no 5xx series until the first 5xx: "or 0 x the total" makes it 0.
            "cluster_error_ratio_1m",
            "(sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_xx{"
            'envoy_cluster_name="{backend}",envoy_response_code_class="5"}[1m]))'
            " or 0 * sum by (envoy_cluster_name) "
            '(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name="{backend}"}[1m])))'
            " / sum by (envoy_cluster_name) "
            '(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name="{backend}"}[1m]))',
        ),
        (
            "cluster_pending_1m",
            'avg_over_time(envoy_cluster_upstream_rq_pending_active{envoy_cluster_name="{backend}"}[1m])',
        ),
        (
            "cluster_retries_1m",
            'rate(envoy_cluster_upstream_rq_retry{envoy_cluster_name="{backend}"}[1m])',
        ),
    )
)

DEFAULTS = {"haproxy": HAPROXY_DEFAULTS, "envoy": ENVOY_DEFAULTS}
