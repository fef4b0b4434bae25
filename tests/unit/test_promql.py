"""PromQL feature templates: placeholders filled safely, visible syntax problems found."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veloflux.prometheus import promql
from veloflux.prometheus.promql import any_of, fill, syntax_problems


def test_placeholders_are_filled_inside_their_label_values() -> None:
    template = 'rate(x{proxy="{backend}",server="{server}"}[1m])'
    assert fill(template, "app", "s1") == 'rate(x{proxy="app",server="s1"}[1m])'


def test_a_quote_or_backslash_in_a_name_cannot_end_the_string() -> None:
    query = fill('x{proxy="{backend}"}', backend='a"} or vector(1) #\\')
    assert query == 'x{proxy="a\\"} or vector(1) #\\\\"}'
    assert syntax_problems(query) == []  # still one string, one matcher


def test_regex_matchers_get_regex_escaping_too() -> None:
    assert fill('x{proxy=~"{backend}"}', backend="a.b") == 'x{proxy=~"a\\\\.b"}'
    assert fill("x{proxy!~'{backend}'}", backend="a|b") == "x{proxy!~'a\\\\|b'}"
    assert any_of(["app", "a.b"]) == '"app|a\\\\.b"'


def test_single_quoted_and_raw_strings() -> None:
    assert fill("x{proxy='{backend}'}", backend="it's") == "x{proxy='it\\'s'}"
    assert fill("x{proxy=`{backend}`}", backend="a`b") == "x{proxy=`ab`}"


def test_a_template_without_placeholders_is_left_alone() -> None:
    query = 'sum by (proxy, server) (rate(x{code="5xx"}[1m]))'
    assert fill(query, "app", "s1") == query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "the query is empty"),
        ("rate(x[1m]", "'(' at character 5 is never closed"),
        ("x{a='b'", "'{' at character 2 is never closed"),
        ("sum(x))", "')' at character 7 closes nothing"),
        ('x{a="b}', "the string opened at character 5 is never closed"),
        ("x{proxy={backend}}", "{backend} must be inside a quoted label value"),
        ("x{server={server}}", "{server} must be inside a quoted label value"),
    ],
)
def test_visible_syntax_problems_are_named(query: str, expected: str) -> None:
    assert any(expected in p for p in syntax_problems(query)), syntax_problems(query)


def test_brackets_inside_strings_and_comments_do_not_count() -> None:
    assert syntax_problems('x{a="(["} # a comment with ( in it') == []


def test_the_default_feature_sets_are_clean() -> None:
    for feature in (*promql.HAPROXY_DEFAULTS, *promql.ENVOY_DEFAULTS):
        assert syntax_problems(feature.template) == [], feature.name
        assert promql.FEATURE_NAME.match(feature.name)
        assert feature.per_backend  # each asks only for the pools it serves


@given(st.text(min_size=1, max_size=40))
def test_no_name_can_leave_its_string(name: str) -> None:
    query = fill('x{proxy="{backend}",server=~"{server}"}', name, name)
    spans, problems = promql._strings(query)
    assert problems == []
    assert len(spans) == 2  # exactly the two label values, whatever the name held
    outside = query[: spans[0][0]] + query[spans[0][1] : spans[1][0]] + query[spans[1][1] :]
    assert outside == "x{proxy=,server=~}"
