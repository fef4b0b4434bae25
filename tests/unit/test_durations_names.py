"""Durations (one syntax everywhere) and names (nothing smuggled into a runtime command)."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from veloflux.errors import UnsafeName
from veloflux.util.durations import format_duration, parse_duration
from veloflux.util.names import check_name, is_safe_name, parse_server_key, server_key

PROPERTY = settings(max_examples=200, deadline=None)

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("6h", 21_600.0),
        ("14d", 1_209_600.0),
        ("0.5s", 0.5),
        ("1.5m", 90.0),
        (" 10s ", 10.0),
        ("0ms", 0.0),
    ],
)
def test_parse_duration_accepts_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        10,
        10.0,
        0,
        "10",
        "0.5",
        True,
        False,
        None,
        "",
        "s",
        "10 seconds",
        "10S",
        "-5s",
        "1e3s",
        "10sec",
        "5mm",
        "ms10",
        "10s 5s",
        "1_0s",
        "10µs",
    ],
)
def test_parse_duration_refuses_bare_numbers_and_garbage(value: object) -> None:
    with pytest.raises(ValueError, match=r"500ms, 10s, 5m, 6h or 14d"):
        parse_duration(value)  # type: ignore[arg-type]


def test_bare_number_message_says_it_lacks_a_unit() -> None:
    with pytest.raises(ValueError, match="has no unit"):
        parse_duration(10)


def test_absurdly_long_duration_is_refused_not_infinite() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9" * 400 + "d")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "500ms"),
        (10.0, "10s"),
        (300.0, "5m"),
        (21_600.0, "6h"),
        (1_209_600.0, "14d"),
        (90.0, "90s"),
        (3_600.0, "1h"),
        (7_200.0, "2h"),
        (0.0005, "0.5ms"),
        (1.25, "1250ms"),
    ],
)
def test_format_duration_picks_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@PROPERTY
@given(
    st.sampled_from(["s", "m", "h", "d"]),
    st.integers(min_value=1, max_value=10**6),
)
def test_whole_units_format_back_to_the_shortest_exact_text(unit: str, amount: int) -> None:
    seconds = parse_duration(f"{amount}{unit}")
    rendered = format_duration(seconds)
    # The rendering is exact and uses a unit no smaller than the one written.
    assert parse_duration(rendered) == seconds
    order = ["ms", "s", "m", "h", "d"]
    rendered_unit = rendered.lstrip("0123456789.")
    assert order.index(rendered_unit) >= order.index(unit)


@PROPERTY
@given(st.integers(min_value=0, max_value=999_999), st.sampled_from(list(UNIT_SECONDS)))
def test_format_then_parse_round_trips(amount: int, unit: str) -> None:
    seconds = parse_duration(f"{amount}{unit}")
    again = parse_duration(format_duration(seconds))
    assert math.isclose(again, seconds, rel_tol=1e-12, abs_tol=1e-9)


@PROPERTY
@given(st.integers(min_value=1_000_001, max_value=10**9).filter(lambda n: n % 1000))
@example(1_000_500)
def test_format_then_parse_round_trips_for_large_millisecond_counts(amount: int) -> None:
    seconds = parse_duration(f"{amount}ms")
    again = parse_duration(format_duration(seconds))
    assert math.isclose(again, seconds, rel_tol=1e-12)


# --- names -----------------------------------------------------------------------------

SAFE_ALPHABET = string.ascii_letters + string.digits + "-_.:"
safe_names = st.text(alphabet=SAFE_ALPHABET, min_size=1, max_size=128)

# Printable ASCII HAProxy's CLI treats specially, plus every C0 control, DEL, and a few
# Unicode separators that str.splitlines() would also break on.
FORBIDDEN = [
    ";",
    " ",
    "\n",
    "\r",
    "\t",
    "#",
    "\x00",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "/",
    "\\",
] + [chr(c) for c in range(0x20)]
forbidden_chars = st.sampled_from(FORBIDDEN) | st.characters(categories=["Cc", "Zs", "Zl", "Zp"])


@pytest.mark.parametrize(
    "name", ["app", "s1", "web-01", "api_v2", "node.example.com", "10.0.0.1:8080", "A", "x" * 128]
)
def test_haproxy_legal_names_are_accepted(name: str) -> None:
    assert is_safe_name(name)
    assert check_name("server", name) == name


@pytest.mark.parametrize(
    "name", ["", "a;b", "a b", "a\nb", "a\rb", "a\tb", "a#b", "a\x00b", "a\x1bb", "é", "a/b"]
)
def test_unsafe_names_are_refused(name: str) -> None:
    assert not is_safe_name(name)
    with pytest.raises(UnsafeName, match="refusing server name"):
        check_name("server", name)


@pytest.mark.parametrize("value", [None, 1, b"app", ["app"]])
def test_non_strings_are_not_names(value: object) -> None:
    assert not is_safe_name(value)
    with pytest.raises(UnsafeName):
        check_name("backend", value)


@PROPERTY
@given(safe_names)
def test_every_name_of_haproxy_characters_is_safe(name: str) -> None:
    assert is_safe_name(name)
    assert check_name("backend", name) == name


@PROPERTY
@given(safe_names, safe_names)
def test_server_key_round_trips(backend: str, server: str) -> None:
    assert parse_server_key(server_key(backend, server)) == (backend, server)


@PROPERTY
@given(st.text(max_size=20), forbidden_chars, st.text(alphabet=SAFE_ALPHABET, min_size=1))
def test_a_forbidden_character_anywhere_but_last_makes_a_name_unsafe(
    head: str, bad: str, tail: str
) -> None:
    name = head + bad + tail
    assert not is_safe_name(name)
    with pytest.raises(UnsafeName):
        check_name("server", name)
    with pytest.raises(UnsafeName):
        parse_server_key(f"app/{name}")
    with pytest.raises(UnsafeName):
        parse_server_key(f"{name}/s1")


@PROPERTY
@given(st.text(max_size=20), forbidden_chars)
@example("app", "\n")
def test_a_forbidden_character_at_the_end_makes_a_name_unsafe(head: str, bad: str) -> None:
    name = head + bad
    assert not is_safe_name(name)
    with pytest.raises(UnsafeName):
        check_name("server", name)
    with pytest.raises(UnsafeName):
        parse_server_key(f"app/{name}")


@PROPERTY
@given(st.text(max_size=40))
def test_is_safe_name_agrees_with_the_documented_alphabet(name: str) -> None:
    documented = 1 <= len(name) <= 128 and all(c in SAFE_ALPHABET for c in name)
    assert is_safe_name(name) is documented


@pytest.mark.parametrize("key", ["app", "", "app\\s1", "app s1"])
def test_parse_server_key_wants_backend_slash_server(key: str) -> None:
    with pytest.raises(UnsafeName):
        parse_server_key(key)


@pytest.mark.parametrize("key", ["/s1", "app/", "app/s1/x", "a;b/s1", "app/s1;x"])
def test_parse_server_key_checks_both_parts(key: str) -> None:
    with pytest.raises(UnsafeName, match="refusing"):
        parse_server_key(key)
