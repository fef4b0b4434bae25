"""Backend and server names, checked before they ever reach a runtime command.

HAProxy's CLI reads ``;`` as a command separator and a newline as the end of a
command, so a name taken from anywhere (config, API, stats output) is refused
unless it uses the characters HAProxy itself allows in names.
"""

from __future__ import annotations

import re

from veloflux.errors import UnsafeName

# HAProxy accepts letters, digits, '-', '_', '.' and ':' in proxy and server names.
_SAFE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def is_safe_name(name: object) -> bool:
    """True when ``name`` can be written into a runtime API command as is."""
    return isinstance(name, str) and _SAFE.fullmatch(name) is not None


def check_name(kind: str, name: object) -> str:
    """Return ``name`` unchanged, or raise ``UnsafeName`` saying what is wrong with it."""
    if is_safe_name(name):
        assert isinstance(name, str)
        return name
    raise UnsafeName(
        f"refusing {kind} name {name!r}: only letters, digits and '-_.:' are allowed "
        "(a ';', space, newline or control character could inject a runtime command)"
    )


def server_key(backend: str, server: str) -> str:
    """The ``backend/server`` form operators use in config files and commands."""
    return f"{backend}/{server}"


def parse_server_key(key: str) -> tuple[str, str]:
    """Split ``backend/server`` into its parts, both checked; raise ``UnsafeName``."""
    backend, sep, server = key.partition("/")
    if not sep:
        raise UnsafeName(f"{key!r} is not of the form BACKEND/SERVER")
    return check_name("backend", backend), check_name("server", server)
