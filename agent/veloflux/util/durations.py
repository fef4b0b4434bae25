"""Durations written the same way everywhere: ``500ms``, ``10s``, ``5m``, ``6h``, ``14d``.

One parser for config files, environment overrides and CLI flags, so an operator
never has to remember which place wants seconds and which wants a suffix.
"""

from __future__ import annotations

import math
import re

_UNITS_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(text: str | int | float) -> float:
    """Return the duration in seconds; raise ``ValueError`` with the accepted forms.

    A bare number is refused on purpose: ``interval: 10`` is ambiguous (seconds or
    milliseconds?) and an ambiguous interval is how outages start.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(
            f"{text!r} has no unit; write a duration such as 500ms, 10s, 5m, 6h or 14d"
        )
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 10s, 5m, 6h or 14d")
    seconds = float(match.group(1)) * _UNITS_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is too large")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest exact unit, for messages and docs."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_SECONDS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") + "ms"
