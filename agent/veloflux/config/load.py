"""Loading the config: YAML (duplicate keys refused), ``VELOFLUX_A__B`` environment
overrides, and every validation problem reported with its YAML path, all in one run:
the schema's (``config/schema.py``), the cross-field checks' (``config/checks.py``)
and the environment's."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from veloflux.config.checks import WARNINGS, run_checks, unknown_section
from veloflux.config.schema import Config
from veloflux.errors import ConfigError, ConfigProblem

ENV_PREFIX = "VELOFLUX_"

DEFAULT_CONFIG_PATH = "veloflux.yaml"

# pydantic's error types in plain words ("must be a list", not "Input should be a
# valid tuple"); any other type keeps pydantic's message.
_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key (check the spelling)",
    "missing": "required",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "path_type": "must be a path",
    "literal_error": "must be {expected}",
}

# What a list at a key of this name holds, for "must be a list of ...".
_LIST_OF = {
    "backends": "backend names",
    "consistent_hash_backends": "backend names",
    "clusters": "clusters",
    "endpoints": "endpoints",
}

_LOCATED = re.compile(r"^([\w.:/-]+): (.*)$", re.DOTALL)


def _problem_from(error: Mapping[str, Any], env_paths: Mapping[str, str]) -> ConfigProblem:
    path = ".".join(str(part) for part in error["loc"] if part != "[key]")
    template = _MESSAGES.get(error["type"])
    if template is not None:
        ctx = {
            k: f"{v:g}" if isinstance(v, float) else v for k, v in (error.get("ctx") or {}).items()
        }
        message = template.format(**ctx)
        items = _LIST_OF.get(str(error["loc"][-1])) if error["loc"] else None
        if error["type"] in ("tuple_type", "list_type") and items:
            message += f" of {items}"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    located = _LOCATED.match(message)
    if located and (not path or located.group(1).startswith(path + ".")):
        path, message = located.group(1), located.group(2)
    env = env_paths.get(path)
    if env:
        message += f" (from ${env})"
    return ConfigProblem(path, message)


def _env_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, str], list[ConfigProblem]]:
    """Nested overrides from ``VELOFLUX_A__B=value`` variables, where each came from, and
    the variables that look like overrides of a section that does not exist.

    Only variables whose first segment names a top-level key are overrides, so that
    ``VELOFLUX_CONFIG`` (the file path) and CLI flag variables are left alone. One with
    ``__`` whose first segment names nothing (``VELOFLUX_POLCY__MAX_STEP_RATIO``) is a
    misspelt override, a problem: a typo silently ignored is a safety rule silently off.
    Conflicting overrides raise at once, with those: the merged mapping is ambiguous.
    """
    top_level = {field.alias or name for name, field in Config.model_fields.items()}
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    conflicts: list[ConfigProblem] = []
    unknown: list[ConfigProblem] = []
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in top_level:
            if len(parts) > 1:
                unknown.append(unknown_section(var, parts[0]))
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = overrides
        for depth, part in enumerate(parts[:-1], start=1):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[:depth])
                conflicts.append(ConfigProblem(prefix, f"${var} conflicts with ${origins[prefix]}"))
                break
            node = child
        else:
            if isinstance(node.get(parts[-1]), dict):
                conflicts.append(
                    ConfigProblem(".".join(parts), f"${var} conflicts with a nested override")
                )
                continue
            node[parts[-1]] = value
            origins[".".join(parts)] = var
    if conflicts:
        raise ConfigError(conflicts + unknown, "the environment")
    return overrides, origins, unknown


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping.

    Plain YAML keeps the last of two ``ai:`` sections without a word, silently
    dropping every key of the first: the same kind of quiet mistake as a typo.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read {path}: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        problem = f"cannot read {path}: not UTF-8 text (byte {exc.start}); is it the right file?"
        raise ConfigError([ConfigProblem("", problem)], str(path)) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except RecursionError as exc:  # PyYAML's parser recurses once per nesting level
        problem = "YAML syntax error: nested deeper than any config (a run of '[' or '{'?)"
        raise ConfigError([ConfigProblem("", problem)], str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [ConfigProblem("", f"YAML syntax error{where}: {problem}")], str(path)
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", "the top level must be a mapping of keys")], str(path))
    return data


def resolve_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """``-c FILE``, else ``$VELOFLUX_CONFIG``, else ``./veloflux.yaml``."""
    env = os.environ if environ is None else environ
    return Path(explicit or env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge environment overrides, validate; raise ``ConfigError`` with every problem."""
    return load_config_checked(path, environ)[0]


def load_config_checked(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[Config, list[ConfigProblem]]:
    """``load_config``, and the warnings: what works but is probably not meant
    (``config/checks.py`` ``WARNINGS``), for ``check-config`` and the daemon's start."""
    data = _read_yaml(path)
    overrides, origins, unknown = _env_overrides(os.environ if environ is None else environ)
    merged = _merge(data, overrides)
    try:
        config, warnings = _validated(merged, str(path), origins)
    except ConfigError as exc:
        raise ConfigError([*unknown, *exc.problems], exc.source, exc.warnings) from None
    if unknown:
        raise ConfigError(unknown, str(path), warnings)
    return config, warnings


def validate_config(
    data: Mapping[str, Any], source: str = "", env_paths: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed mapping; raise ``ConfigError`` listing every problem:
    the schema's and, on whatever parsed, the cross-field checks', each once."""
    return _validated(data, source, env_paths or {})[0]


def _validated(
    data: Mapping[str, Any], source: str, env: Mapping[str, str]
) -> tuple[Config, list[ConfigProblem]]:
    """The config and its warnings, or ``ConfigError`` with every problem (and the
    warnings found in the same run)."""
    config: Config | None = None
    errors: list[Any] = []
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = list(exc.errors())
    problems = [_problem_from(err, env) for err in errors]
    warnings: list[ConfigProblem] = []
    if isinstance(data, Mapping):
        locs = [err["loc"] for err in errors]
        problems += [_from_env(p, env) for p in run_checks(data, locs)]
        warnings = [_from_env(w, env) for w in run_checks(data, locs, WARNINGS)]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source, warnings)
    assert config is not None  # no problem: the schema took it
    return config, warnings


def _from_env(problem: ConfigProblem, env_paths: Mapping[str, str]) -> ConfigProblem:
    env = env_paths.get(problem.path)
    return ConfigProblem(problem.path, f"{problem.message} (from ${env})") if env else problem
