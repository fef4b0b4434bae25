"""The merged config mapping read one value at a time, for the checks that span fields.

pydantic runs a model's own checks only once every field of that model has parsed,
and the whole config's only once everything has: a broken file then shows its
problems over several runs. The cross-field checks (``config/checks.py``) read the
raw mapping through a ``View`` instead, so each runs whenever the few values it needs
are sound, whatever else is wrong. ``View.get`` gives such a value parsed as the
schema parses it (``"10s"`` as 10.0, the default where the key is absent), or raises
``Unknown`` when it cannot: the schema reports a problem on or above that path, or
something on the way is not what the schema wants. A check that meets ``Unknown`` is
skipped, so it never repeats, or guesses past, a problem already reported.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from veloflux.config.schema import Config

Part = str | int
Loc = tuple[Part, ...]


class Unknown(Exception):
    """A value a check needs is not known; its own problem, if any, is reported already."""


class View:
    """The raw merged mapping, with the locations of the problems the schema found."""

    def __init__(self, data: Mapping[str, Any], problem_locs: Iterable[Sequence[Part]]) -> None:
        self._data = data
        self._bad = [tuple(loc) for loc in problem_locs]

    def get(self, path: str, *more: Part) -> Any:
        """The value at ``path`` (dotted YAML keys) then ``more`` (list indexes, mapping
        keys that may hold dots), parsed; ``Unknown`` if it is not sound."""
        parts = _parts(path, more)
        if any(_overlap(loc, parts) for loc in self._bad):
            raise Unknown(".".join(map(str, parts)))
        found, tp, value = self._walk(parts)
        if not found:
            return value
        try:
            return _adapter(tp).validate_python(value)
        except (ValidationError, ValueError):  # a key spelt two ways, a path unnoticed
            raise Unknown(".".join(map(str, parts))) from None

    def present(self, path: str) -> bool:
        """Whether ``path`` holds something other than nothing (its default included)."""
        try:
            return self._walk(_parts(path, ()))[2] is not None
        except Unknown:
            return False

    def size(self, path: str, *more: Part) -> int:
        """How many items the list at ``path`` has, sound or not."""
        value = self._walk(_parts(path, more))[2]
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise Unknown(path)
        return len(value)

    def keys(self, path: str) -> list[str]:
        """The keys of the mapping at ``path``, sound or not."""
        value = self._walk(_parts(path, ()))[2]
        if not isinstance(value, Mapping):
            raise Unknown(path)
        return [key for key in value if isinstance(key, str)]

    def _walk(self, parts: Loc) -> tuple[bool, Any, Any]:
        """(True, type, raw value) where the file says it; (False, None, typed default)
        where a key on the way is absent."""
        tp: Any = Config
        node: Any = self._data
        for depth, part in enumerate(parts):
            kind = _unwrap(tp)
            origin = get_origin(kind)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                name = _field_name(kind, str(part))
                field = kind.model_fields[name]
                if not isinstance(node, Mapping):
                    raise Unknown(".".join(map(str, parts)))
                key = next((k for k in (field.alias, name) if k is not None and k in node), None)
                if key is None:
                    if field.is_required():
                        raise Unknown(".".join(map(str, parts)))
                    default = field.get_default(call_default_factory=True)
                    return False, None, _attributes(default, parts[depth + 1 :])
                tp, node = _field_type(kind, name), node[key]
            elif origin in (tuple, list) and isinstance(part, int):
                if not isinstance(node, list | tuple) or not 0 <= part < len(node):
                    raise Unknown(".".join(map(str, parts)))
                tp, node = get_args(kind)[0], node[part]
            elif origin is dict:
                if not isinstance(node, Mapping) or part not in node:
                    raise Unknown(".".join(map(str, parts)))
                tp, node = get_args(kind)[1], node[part]
            else:
                raise Unknown(".".join(map(str, parts)))
        return True, tp, node


def _parts(path: str, more: Iterable[Part]) -> Loc:
    return (*path.split("."), *more)


def _overlap(loc: Loc, parts: Loc) -> bool:
    """A problem at ``parts``, below it, or above it (a problem at the top is no one's)."""
    if not loc:
        return False
    shorter = min(len(loc), len(parts))
    return loc[:shorter] == parts[:shorter]


def _attributes(value: Any, parts: Loc) -> Any:
    """Follow ``parts`` through a default value, already typed."""
    for part in parts:
        if isinstance(value, BaseModel):
            value = getattr(value, _field_name(type(value), str(part)))
        elif _holds(value, part):
            value = value[part]
        else:
            raise Unknown(".".join(map(str, parts)))
    return value


def _holds(value: Any, part: Part) -> bool:
    """Whether ``value[part]`` is an entry of a mapping or an item of a tuple."""
    if isinstance(value, Mapping):
        return part in value
    return isinstance(value, tuple) and isinstance(part, int) and 0 <= part < len(value)


def _unwrap(tp: Any) -> Any:
    """The type under ``Annotated`` and ``| None``."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            others = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(others) != 1:
                return tp
            tp = others[0]
        else:
            return tp


@functools.cache
def _field_name(model: type[BaseModel], key: str) -> str:
    """The Python name of the field a YAML key (its alias, or its name) means."""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return name
    raise KeyError(f"{model.__name__} has no field {key!r}")  # a check's own mistake


@functools.cache
def _field_type(model: type[BaseModel], name: str) -> Any:
    """The field's type with its validators, one object per field (``_adapter`` keys on it)."""
    field = model.model_fields[name]
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


_ADAPTERS: dict[int, tuple[object, TypeAdapter[Any]]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    """One adapter per type object; the types come from the schema, so they live as long."""
    hit = _ADAPTERS.get(id(tp))
    if hit is None or hit[0] is not tp:
        hit = _ADAPTERS[id(tp)] = (tp, TypeAdapter(tp))
    return hit[1]
