"""Durable file replacement, shared by everything that keeps state on disk.

A crash (or a full disk) halfway through a write must leave either the old file or
the new one, never half of each: write a temp file beside the target, fsync it,
``os.replace`` it over the target, then fsync the directory so the rename itself
survives a power cut.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def replace_atomically(path: Path, data: bytes) -> None:
    """Atomically replace (or create) ``path`` with ``data``; raise ``OSError``."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write_synced(temp, data)
        os.replace(temp, path)
        fsync_dir(path.parent)
    except OSError:
        temp.unlink(missing_ok=True)
        raise


def write_synced(path: Path, data: bytes) -> None:
    """Write a new file and fsync it, so that a rename never publishes unwritten blocks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries: a rename is durable only once its parent is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
