"""Hypothesis strategies that break real replies the ways a broken proxy, a cut connection
or an upgrade would, for the fuzz tests (``test_fuzz_*.py``).

Every strategy starts from a reply a real program gave (``tests/fixtures/replies/``,
captured by ``python -m integration.capture_replies``), so that the mutants are close to
what the parsers really see: one field too many, a row twice, a number that is not one,
a document cut in the middle. Three levels:

- bytes: truncation, bit flips, insertions (non-UTF-8 sequences among them), deletions
  and duplicated spans;
- lines and fields of a text reply (HAProxy's CSV and space-separated tables, ``Key:
  value`` lines): rows duplicated, deleted or swapped, fields replaced with odd values,
  added or dropped, names replaced by ones the reply never had;
- the values of a JSON document (Envoy, Prometheus): keys deleted or given twice,
  values replaced with other JSON types, NaN, infinities, -1 and huge numbers, list
  items duplicated or dropped.

``strings_of`` gives every string of a JSON document, for the property that a parser's
names come from its input.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"
# ``VELOFLUX_FUZZ_SCALE=50 pytest tests/unit/test_fuzz_*.py``: fifty times the examples,
# for a long hunt; the suite's own runs stay at a few seconds.
SCALE = float(os.environ.get("VELOFLUX_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    """The fuzz tests' settings: ``max_examples`` (times ``VELOFLUX_FUZZ_SCALE``), no
    deadline (a refused answer may take a socket round trip)."""
    return settings(max_examples=max(1, round(max_examples * SCALE)), deadline=None)


# Byte sequences worth inserting: broken UTF-8, NUL, separators, and number spellings.
ODD_BYTES = (
    b"\xff",
    b"\xc3(",
    b"\xed\xa0\x80",  # a UTF-16 surrogate, refused by a strict UTF-8 decoder
    b"\x00",
    b",",
    b"\n",
    b"\r\n",
    b" ",
    b'"',
    b"{",
    b"[",
    b"]}",
    b":",
    b"-1",
    b"NaN",
    b"Infinity",
    b"1e999",
    b"9" * 400,
)
# Field values a text reply may carry where a name or a number should be.
ODD_FIELDS = (
    "",
    "-1",
    "0",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "1e999",
    "1e308",
    "9" * 30,
    "9" * 5000,
    "0x10",
    "1_000",
    "٣",  # an Arabic-Indic digit: int() reads it
    "1.5",
    " 7 ",
    "abc",
    "é",
    "\ufffd",
    "-",
    "#",
    "a,b",
    '"',
    "ghost",
    "s9",
)
# JSON values of every type, and the numbers that break arithmetic.
ODD_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -0.0,
    10**30,
    10**400,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "0",
    "-1",
    "NaN",
    "+Inf",
    "Infinity",
    "1e999",
    "abc",
    "\ufffd",
    [],
    [1, 2],
    ["a", "b", "c"],
    {},
    {"name": "x"},
)


def _odd_value() -> st.SearchStrategy[Any]:
    """One of ``ODD_VALUES``, a fresh copy: a later edit must not change the constant."""
    return st.sampled_from(ODD_VALUES).map(copy.deepcopy)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture(name))


# --- bytes ------------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes, max_edits: int = 3) -> bytes:
    """``original`` with one to ``max_edits`` byte-level edits."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(("truncate", "flip", "insert", "delete", "duplicate")))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(ODD_BYTES) | st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


# --- lines and fields -------------------------------------------------------------------


def _split(line: str, sep: str | None) -> list[str]:
    return line.split(sep) if sep is not None else line.split(" ")


@st.composite
def mutated_lines(
    draw: st.DrawFn, original: str, sep: str | None, first_row: int = 1, max_edits: int = 3
) -> str:
    """``original`` (a table, a line a row, fields separated by ``sep``; None: spaces)
    with edits to its rows and fields. Header lines (before ``first_row``) are edited
    less often than rows, so that most mutants get past the header checks."""
    lines = original.split("\n")
    joiner = sep if sep is not None else " "
    for _ in range(draw(st.integers(1, max_edits))):
        if not lines:
            break
        low = first_row if len(lines) > first_row and draw(st.integers(0, 4)) else 0
        i = draw(st.integers(low, len(lines) - 1))
        kind = draw(
            st.sampled_from(
                ("dup_row", "del_row", "swap", "field", "add_field", "drop_field", "rename")
            )
        )
        fields = _split(lines[i], sep)
        k = draw(st.integers(0, max(len(fields) - 1, 0)))
        if kind == "dup_row":
            lines.insert(draw(st.integers(low, len(lines))), lines[i])
        elif kind == "del_row":
            del lines[i]
        elif kind == "swap":
            j = draw(st.integers(low, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "field":
            fields[k] = draw(st.sampled_from(ODD_FIELDS) | st.text(max_size=8))
            lines[i] = joiner.join(fields)
        elif kind == "add_field":
            fields.insert(k, draw(st.sampled_from(ODD_FIELDS)))
            lines[i] = joiner.join(fields)
        elif kind == "drop_field":
            del fields[k]
            lines[i] = joiner.join(fields)
        else:  # a name the proxy never had, in the first two columns (the names)
            fields[min(k, 1)] = draw(st.sampled_from(("ghost", "s9", "x" * 300, "app2")))
            lines[i] = joiner.join(fields)
    return "\n".join(lines)


def text_reply(original: bytes, sep: str | None, first_row: int = 1) -> st.SearchStrategy[bytes]:
    """A text reply as the socket would deliver it: mutated in its rows and fields, in
    its bytes, or both, or (rarely) untouched."""
    text = original.decode()
    rows = mutated_lines(text, sep, first_row).map(str.encode)
    return st.one_of(
        st.just(original),
        rows,
        mutated_bytes(original),
        rows.flatmap(lambda data: mutated_bytes(data)),
    )


# --- JSON documents ---------------------------------------------------------------------


class Pairs(list[tuple[str, Any]]):
    """An object written as its (key, value) pairs, so that a key can appear twice."""


def dumps(value: Any) -> str:
    """JSON as a broken server may write it: NaN and Infinity as bare words, and
    ``Pairs`` with a key given twice (``json.dumps`` can write neither on purpose)."""
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return dumps(Pairs(value.items()))
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*path, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@st.composite
def mutated_document(draw: st.DrawFn, original: Any, max_edits: int = 3) -> Any:
    """A copy of ``original`` (parsed JSON) with edits to its values and structure."""
    document = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, max_edits))):
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        if not path:
            if draw(st.booleans()):
                document = draw(_odd_value())
            continue
        parent, key = _at(document, path[:-1]), path[-1]
        kind = draw(st.sampled_from(("replace", "replace", "delete", "duplicate", "rename")))
        if kind == "replace":
            parent[key] = draw(_odd_value() | st.text(max_size=6))
        elif kind == "delete":
            del parent[key]
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
        elif kind == "duplicate":  # the key twice, the second time with another value
            pairs = Pairs(parent.items())
            pairs.append((key, draw(_odd_value())))
            _replace(document, path[:-1], pairs)
            if not path[:-1]:
                document = pairs
            break  # the document now holds a Pairs: no more edits through paths
        elif isinstance(parent, dict):  # a key the program never wrote
            parent["ghost_" + str(key)] = parent.pop(key)
        elif isinstance(parent[key], str):
            parent[key] = "ghost"
    return document


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> None:
    if path:
        _at(document, path[:-1])[path[-1]] = value


def json_reply(original: Any) -> st.SearchStrategy[bytes]:
    """A JSON answer as the network would deliver it: its values mutated, its bytes
    mutated, or both, or (rarely) untouched."""
    values = mutated_document(original).map(lambda d: dumps(d).encode())
    whole = dumps(original).encode()
    return st.one_of(
        st.just(whole),
        values,
        mutated_bytes(whole),
        values.flatmap(lambda data: mutated_bytes(data)),
    )


def strings_of(value: Any) -> set[str]:
    """Every string of a parsed JSON document, keys included."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict):
            found.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def decoded(data: bytes) -> Any:
    """``data`` as the agent's JSON readers decode it (UTF-8, bad bytes replaced), or
    None when it is not JSON at all."""
    try:
        return json.loads(data.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return None
