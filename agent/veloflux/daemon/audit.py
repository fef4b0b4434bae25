"""The audit log: one JSON line for every weight VeloFlux changed, kept by size.

When traffic shifted at 03:12, an SRE wants to know which weight moved, from what to
what, in which mode, how sure the model was and why, without replaying the agent.
Lines are appended only after the proxy confirmed the write (read-back), so the log
never claims a change that did not happen. The file rotates at ``max_bytes`` into
``audit.jsonl.1`` ... ``.N``; a failed append (a full disk) is counted and logged and
the agent goes on, since losing an audit line is better than holding every weight.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from veloflux.domain.weightplan import ApplyReport, ServerPlan, WeightPlan
from veloflux.util.events import Events


class AuditLog:
    """Append-only JSON lines with size rotation; safe to call from any thread."""

    def __init__(self, path: Path, events: Events, max_bytes: int, backups: int) -> None:
        self._path = path
        self._events = events
        self._max_bytes = max_bytes
        self._backups = backups
        self._lock = threading.Lock()

    def record(self, plan: WeightPlan, report: ApplyReport) -> int:
        """Append a line per confirmed write of ``report``; return how many were written."""
        lines = [json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries(plan, report)]
        if not lines:
            return 0
        data = "".join(lines).encode()
        with self._lock:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                if self._size() + len(data) > self._max_bytes:
                    self._rotate()
                with self._path.open("ab") as handle:
                    handle.write(data)
            except OSError as exc:
                self._events.record("audit_write_failed", f"{self._path}: {exc}")
                return 0
        return len(lines)

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
        )
    return out
