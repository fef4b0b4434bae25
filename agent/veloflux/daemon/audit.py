"""The audit log: one JSON line for every weight VeloFlux changed and every operator
action, with who did it, kept by size.

When traffic shifted at 03:12, an SRE wants to know which weight moved, from what to
what, who or what moved it (the daemon, ``apply`` or ``revert`` from a shell, an
operator through the API), in which mode, how sure the model was and why, without
replaying the agent. Weight lines are appended only after the proxy confirmed the
write (read-back), so the log never claims a change that did not happen; operator
actions (pause, resume, pins, model promotion) are appended once they took effect.

Several processes append to one file (the daemon, and a ``revert`` run from a shell
during an incident), so each append holds an advisory lock (on its directory) across
the size check, the rotation and the write: lines are never interleaved and a file is
never rotated under another writer. The file rotates at ``max_bytes`` into
``audit.jsonl.1`` ... ``.N``. A failed append (a full disk) is counted and logged and
the agent goes on, since losing an audit line is better than holding every weight; the
part of it the disk took is cut back, so the lines after it stay whole.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veloflux.config.schema import AISection
from veloflux.domain.weightplan import ApplyReport, ServerPlan, WeightPlan
from veloflux.util.events import Events


@dataclass(frozen=True)
class Actor:
    """Who acted: ``veloflux`` (the daemon), ``cli:<unix user>`` (a command run from a
    shell), or whoever an API client says it is, with the fingerprint of the token that
    let it in. The token is the authentication; the name is what the client claims."""

    name: str
    token: str = ""  # "sha256:" and the first 8 hex digits of the token's hash

    def fields(self) -> dict[str, str]:
        return {"actor": self.name} | ({"token": self.token} if self.token else {})


DAEMON = Actor("veloflux")
EXTERNAL = Actor("external")  # a weight changed by someone, or something, outside VeloFlux


def cli_actor() -> Actor:
    """The unix user who ran this command (the uid when it has no name)."""
    try:
        return Actor(f"cli:{getpass.getuser()}")
    except (KeyError, OSError):
        return Actor(f"cli:uid {os.getuid()}")


class AuditLog:
    """Append-only JSON lines with size rotation; safe from any thread or process."""

    def __init__(
        self,
        path: Path,
        events: Events,
        max_bytes: int,
        backups: int,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._path = path
        self._events = events
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def record(
        self,
        plan: WeightPlan,
        report: ApplyReport,
        *,
        action: str = "tick",
        actor: Actor = DAEMON,
        operator_reason: str = "",
    ) -> int:
        """Append a line per confirmed write of ``report``; return how many were written.

        ``action`` says which path wrote (``tick``, ``apply``, ``revert``, ``on_exit``);
        ``operator_reason`` is the operator's, kept beside the plan's own per server.
        """
        lines = [
            {**entry, "action": action, **actor.fields()}
            | ({"operator_reason": operator_reason} if operator_reason else {})
            for entry in entries(plan, report)
        ]
        return self._append(lines)

    def action(self, action: str, actor: Actor, reason: str = "", **fields: Any) -> int:
        """Append one operator action (``pause``, ``override_set``, ``model_promote``...):
        its time, who, why, and what it changed (``fields``: server, old, new...)."""
        entry: dict[str, Any] = {
            "time": self._clock().isoformat(),
            "action": action,
            **actor.fields(),
            "reason": reason,
            **fields,
        }
        return self._append([entry])

    def _append(self, entries_: Sequence[Mapping[str, Any]]) -> int:
        if not entries_:
            return 0
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries_).encode()
        with self._lock:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with self._locked():
                    if self._size() + len(data) > self._max_bytes:
                        self._rotate()
                    fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
                    try:
                        _append_whole(fd, data)
                    finally:
                        os.close(fd)
            except OSError as exc:
                self._events.record("audit_write_failed", f"{self._path}: {exc}")
                return 0
        return len(entries_)

    def tail(self, limit: int, max_bytes: int = 256 * 1024) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first, for the dashboard: read from the
        end of the file (and of ``.1`` just after a rotation), at most ``max_bytes`` of
        each, so a large log costs a request no more than that. A line that is not a JSON
        object is skipped; an unreadable file gives what the others gave."""
        found: list[dict[str, Any]] = []
        for path in (self._path, self._path.with_name(f"{self._path.name}.1")):
            found.extend(_tail_entries(path, limit - len(found), max_bytes))
            if len(found) >= limit:
                break
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An advisory lock on the log's directory (not on the file, which rotation
        renames under a writer that holds it), so no extra file sits beside the log."""
        fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _size(self) -> int:
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ... ; the oldest beyond ``backups`` is dropped."""
        for n in range(self._backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{n}")
            if older.exists():
                os.replace(older, self._path.with_name(f"{self._path.name}.{n + 1}"))
        if self._path.exists():
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))


def _append_whole(fd: int, data: bytes) -> None:
    """Append ``data`` so that the file ends on whole lines, whatever happens.

    A full disk takes part of a write and refuses the rest; without care the fragment
    stays, and the next line appended after the disk is freed is glued to it, so two
    lines are lost, not one. So a failed write is cut back to where it began. A file
    that already ends mid-line (cut by a crash, or by an older version) gets a newline
    first, so the fragment stays a line of its own and ours is whole. The caller holds
    the lock that every appender takes, so nobody appends between the checks."""
    start = os.fstat(fd).st_size
    if start and os.pread(fd, 1, start - 1) != b"\n":
        data = b"\n" + data
    written = 0
    try:
        while written < len(data):
            done = os.write(fd, data[written:])
            if done <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += done
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def _tail_entries(path: Path, limit: int, max_bytes: int) -> list[dict[str, Any]]:
    """Up to ``limit`` JSON-object lines from the end of ``path``, newest first."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - max_bytes))
            data = file.read(max_bytes)
    except OSError:
        return []
    lines = data.split(b"\n")
    if len(data) == max_bytes and size > max_bytes:
        lines = lines[1:]  # the first line was cut by the seek
    found: list[dict[str, Any]] = []
    for line in reversed(lines):
        if len(found) >= limit:
            break
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.append(entry)
    return found


def open_audit(ai: AISection, events: Events) -> AuditLog:
    """The audit log the config names (``ai.audit_log`` and its rotation)."""
    return AuditLog(ai.audit_log, events, ai.audit_max_bytes, ai.audit_backups)


WEIGHT_ACTIONS = frozenset({"tick", "apply", "revert", "on_exit"})


def last_written(path: Path) -> dict[str, int]:
    """The weight VeloFlux last wrote to each ``BACKEND/SERVER``, from the audit log
    (the current file): what a one-shot command compares the proxy with to find
    weights set outside VeloFlux. An unreadable log, or a line that is not one of
    VeloFlux's weight writes, adds nothing."""
    written: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return written
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("action", "tick") not in WEIGHT_ACTIONS:
            continue
        backend, server, new = entry.get("backend"), entry.get("server"), entry.get("new")
        if isinstance(backend, str) and isinstance(server, str) and type(new) is int:
            written[f"{backend}/{server}"] = new
    return written


def entries(plan: WeightPlan, report: ApplyReport) -> list[dict[str, Any]]:
    """One audit entry per confirmed write, with the plan's mode, confidence and reason."""
    planned: dict[tuple[str, str], tuple[str, ServerPlan]] = {
        (s.backend, s.server): (pool.mode, s) for pool in plan.pools for s in pool.servers
    }
    out = []
    for write in report.applied:
        mode, server = planned.get((write.backend, write.server), ("unknown", None))
        out.append(
            {
                "time": plan.generated_at.isoformat(),
                "backend": write.backend,
                "server": write.server,
                "old": write.old_weight,
                "new": write.confirmed_weight
                if write.confirmed_weight is not None
                else write.new_weight,
                "mode": mode,
                "confidence": round(server.confidence, 4) if server else None,
                "model_version": plan.model_version,
                "reason": server.reason if server else "",
            }
            | ({"replica": write.replica} if write.replica else {})
        )
    return out
