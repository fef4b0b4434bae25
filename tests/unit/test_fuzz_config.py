"""The config loader under fuzzing: broken copies of the shipped configs, random YAML
documents, random environment overrides.

An operator's typo, a half-saved file, an editor that wrote Latin-1, a value of the
wrong type three levels down: ``load_config`` must either give a Config or raise one
``ConfigError`` listing every problem, each with the dotted path of the key it is about
(only a file that is not YAML, or not a mapping, has a problem with no path, and that
one says where it broke). Never a pydantic, YAML, type or Unicode traceback: the daemon
turns ``ConfigError`` into a clean exit at start and a kept config on SIGHUP, and
anything else into a crash.

The starting points are the configs the project ships (``haproxy/veloflux.yaml``,
``envoy/veloflux.yaml`` and the compose stack's, which has Prometheus features,
capacity and forecasts); mutations come from ``mutations.py``.
"""

from __future__ import annotations

import copy
import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.unit.mutations import (
    ODD_VALUES,
    Pairs,
    fuzz,
    mutated_bytes,
    mutated_document,
    mutated_lines,
)
from veloflux.config.load import load_config, validate_config
from veloflux.config.schema import Config
from veloflux.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ROOT / "haproxy" / "veloflux.yaml",
    ROOT / "envoy" / "veloflux.yaml",
    ROOT / "integration" / "compose" / "veloflux.yaml",
]
TEXTS = [path.read_bytes() for path in EXAMPLES]
DOCUMENTS = [yaml.safe_load(text) for text in TEXTS]
FUZZ = fuzz(120)
# A problem without a path is about the file as a whole: these are the only ones.
WHOLE_FILE = ("YAML syntax error", "the top level must be a mapping", "cannot read")


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Every key the schema knows, at any depth, so random documents reach deep."""
    seen.add(model)
    names = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        stack: list[Any] = [field.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel) and kind not in seen:
                names |= _field_names(kind, seen)
            stack.extend(typing.get_args(kind))
    return names


KEYS = sorted(_field_names(Config, set()))


def yaml_text(value: Any) -> str:
    """``value`` as YAML flow text: NaN and the infinities as YAML spells them, and an
    object given as ``Pairs`` with its key twice."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, Pairs | dict):
        pairs = value if isinstance(value, Pairs) else value.items()
        return "{" + ", ".join(f"{yaml_text(k)}: {yaml_text(v)}" for k, v in pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, float):  # YAML 1.1 reads 1e+308 as a string: 1.0e+308 is a float
        return yaml.safe_dump(value).removesuffix("\n...\n")
    return json.dumps(value)  # a JSON string is a YAML double-quoted one


def outcome(path: Path, environ: dict[str, str] | None = None) -> ConfigError | Config:
    """The config, or the ConfigError, checked: every problem has a message, and a path
    unless it is about the file as a whole."""
    try:
        return load_config(path, environ={} if environ is None else environ)
    except ConfigError as exc:
        error = exc
    assert error.problems
    for problem in error.problems:
        assert problem.message
        assert problem.path or problem.message.startswith(WHOLE_FILE), problem
    return error


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config") / "veloflux.yaml"


yaml_files = st.sampled_from(TEXTS).flatmap(
    lambda text: st.one_of(
        mutated_lines(text.decode(), None, first_row=0).map(str.encode),
        mutated_bytes(text),
        mutated_lines(text.decode(), None, first_row=0).map(str.encode).flatmap(mutated_bytes),
    )
)


@FUZZ
@given(yaml_files)
@example(b"\xff\xfe")
@example(b"interval: 10s\ninterval: 20s\n")
@example(b"- a\n- b\n")
@example(b"haproxy: &a [*a]\n")
@example(b"[" * 5000)
@example(b"interval: !!python/object:os.system ls\n")
def test_a_broken_config_file_loads_or_names_its_problems(config_file: Path, data: bytes) -> None:
    config_file.write_bytes(data)
    outcome(config_file)


@FUZZ
@given(st.sampled_from(DOCUMENTS).flatmap(mutated_document))
def test_a_config_with_wrong_values_loads_or_names_each_problem_by_path(
    config_file: Path, document: Any
) -> None:
    config_file.write_text(yaml_text(document), encoding="utf-8")
    result = outcome(config_file)
    if isinstance(result, ConfigError) and isinstance(document, dict) and not _twice(document):
        # A mapping that YAML read: every problem is about a key, so each has a path.
        assert all(problem.path for problem in result.problems), result


def _twice(document: Any) -> bool:
    """Whether a key is given twice somewhere (a YAML error, about the file, not a key)."""
    if isinstance(document, Pairs):
        return True
    children = document.values() if isinstance(document, dict) else document
    return isinstance(document, dict | list) and any(_twice(child) for child in children)


def _keys_of(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _keys_of(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _keys_of(child, (*path, index))
    return found


@st.composite
def one_value_replaced(draw: st.DrawFn) -> tuple[Any, str]:
    """A shipped config with one value (a leaf or a whole section) replaced, and the
    dotted path of what was replaced."""
    document = copy.deepcopy(draw(st.sampled_from(DOCUMENTS)))
    path = draw(st.sampled_from(_keys_of(document)))
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES) | st.text(max_size=6)))
    return document, ".".join(str(part) for part in path)


def _related(problem: str, broken: str) -> bool:
    return broken.startswith(problem + ".") or problem == broken or problem.startswith(broken + ".")


@FUZZ
@given(one_value_replaced())
def test_a_wrong_value_is_named_by_its_path(config_file: Path, case: tuple[Any, str]) -> None:
    """The problems name the key that was broken: by its path, a parent's or a child's,
    or, for a problem it causes elsewhere (a backend a weight names is gone), in words."""
    document, broken = case
    config_file.write_text(yaml_text(document), encoding="utf-8")
    result = outcome(config_file)
    if isinstance(result, Config):
        return
    parts = broken.split(".")
    named = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    assert any(
        _related(problem.path, broken) or any(name in problem.message for name in named)
        for problem in result.problems
    ), (broken, [str(p) for p in result.problems])


values = st.recursive(
    st.sampled_from(ODD_VALUES[:16])
    | st.text(max_size=10)
    | st.sampled_from(["10s", "1h", "unix:///tmp/x.sock", "http://127.0.0.1:9", "app/s1"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


@FUZZ
@given(documents)
def test_random_documents_validate_or_name_each_problem_by_path(document: Any) -> None:
    try:
        validate_config(document, "fuzz")
        return
    except ConfigError as exc:
        error = exc
    assert error.problems
    assert all(problem.path and problem.message for problem in error.problems), error


override_names = st.builds(
    lambda parts: "VELOFLUX_" + "__".join(p.upper() for p in parts),
    st.lists(
        st.sampled_from(KEYS) | st.text("abcxyz_", min_size=1, max_size=6), min_size=1, max_size=3
    ),
)
override_values = st.sampled_from(
    ["", "10s", "-1", "nan", ".nan", "1e999", "[1, 2]", "{a: 1}", "true", "~", "[", "app/s1"]
) | st.text(max_size=12)


@FUZZ
@given(st.sampled_from(EXAMPLES), st.dictionaries(override_names, override_values, max_size=5))
def test_environment_overrides_load_or_name_each_problem(
    path: Path, environ: dict[str, str]
) -> None:
    outcome(path, environ)


def test_the_random_documents_reach_every_section() -> None:
    """The key vocabulary is the schema's own, nested sections included."""
    assert {"haproxy", "socket", "policy", "outlier", "features", "horizons"} <= set(KEYS)
