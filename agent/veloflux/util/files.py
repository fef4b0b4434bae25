"""Durable file replacement, shared by everything that keeps state on disk.

A crash (or a full disk) halfway through a write must leave either the old file or
the new one, never half of each: write a temp file beside the target, fsync it,
``os.replace`` it over the target, then fsync the directory so the rename itself
survives a power cut.

A process killed between creating the temp file and the rename leaves the temp file
behind (bench/crash.py found one every few kills); ``sweep_temps`` removes those, so
that a daemon restarted after many crashes does not collect them forever.
"""

from __future__ import annotations

import glob
import os
import secrets
import time
from contextlib import suppress
from pathlib import Path

# A temp file this old is no write in progress: a replacement takes milliseconds.
STALE_TEMP_SECONDS = 3600.0


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


def sweep_temps(path: Path, older_than_seconds: float = STALE_TEMP_SECONDS) -> int:
    """Delete the temp files crashed replacements of ``path`` left beside it; return how
    many. Only old ones: a young one may be another process's write in progress, and
    deleting it would fail that write."""
    removed = 0
    now = time.time()
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with suppress(OSError):  # gone meanwhile, or not ours to delete: leave it
            if now - temp.stat().st_mtime > older_than_seconds:
                temp.unlink()
                removed += 1
    return removed


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
