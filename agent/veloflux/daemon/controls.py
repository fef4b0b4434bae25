"""What a human has told the daemon: pinned weights (with optional expiry) and pause.

An operator who pins a server at 3 a.m. must find it still pinned after the daemon
restarts, so the state lives in a small JSON file (``api.state_path``) replaced
atomically on every change. A state file that cannot be read is not silently
dropped: forgetting a pin would let the agent move a server the operator froze. The
daemon then starts paused and says why; resuming (an operator's decision) replaces
the file.

This module knows nothing of HTTP or of the proxy: the daemon checks that a pinned
server exists before calling ``set_override``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from veloflux.errors import ControlRefused, UnsafeName
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT
from veloflux.util.events import Events
from veloflux.util.files import replace_atomically, sweep_temps
from veloflux.util.names import parse_server_key

_FORMAT = 1


@dataclass(frozen=True)
class Override:
    """One pinned weight; ``expires_at`` None means until cleared."""

    server: str  # BACKEND/SERVER
    weight: int
    set_at: datetime
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "weight": self.weight,
            "set_at": self.set_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Override:
        expires = data.get("expires_at")
        return Override(
            server=str(data["server"]),
            weight=int(data["weight"]),
            set_at=datetime.fromisoformat(str(data["set_at"])),
            expires_at=datetime.fromisoformat(str(expires)) if expires else None,
        )


@dataclass(frozen=True)
class OperatorState:
    """A snapshot for one tick: what is pinned, and whether writes are paused."""

    overrides: Mapping[str, Override] = field(default_factory=dict)
    paused: bool = False
    pause_reason: str = ""
    paused_at: datetime | None = None

    @property
    def weights(self) -> dict[str, int]:
        """The pins as the planner takes them: ``BACKEND/SERVER`` -> weight."""
        return {key: o.weight for key, o in self.overrides.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "paused_at": self.paused_at.isoformat() if self.paused_at else None,
            "overrides": [o.to_json() for o in self.overrides.values()],
        }


class OperatorControls:
    """Thread-safe operator state, persisted to ``path`` on every change."""

    def __init__(self, path: Path, clock: Callable[[], datetime], events: Events) -> None:
        self._path = path
        self._clock = clock
        self._events = events
        self._lock = threading.Lock()
        self._state = self._load()

    def snapshot(self) -> OperatorState:
        """The current state, with expired pins dropped (and the drop persisted)."""
        now = self._clock()
        with self._lock:
            expired = [k for k, o in self._state.overrides.items() if o.expired(now)]
            if expired:
                kept = {k: o for k, o in self._state.overrides.items() if k not in expired}
                self._replace(OperatorState(kept, *self._pause_fields()))
                for key in expired:
                    self._events.record("override_expired", f"override of {key} expired")
            return self._state

    def set_override(self, server: str, weight: int, ttl_seconds: float | None) -> Override:
        """Pin ``server`` (``BACKEND/SERVER``) at ``weight``; a ttl makes it expire."""
        try:
            parse_server_key(server)
        except UnsafeName as exc:
            raise ControlRefused(f"server: {exc}") from None
        if isinstance(weight, bool) or not 0 <= weight <= HAPROXY_MAX_WEIGHT:
            raise ControlRefused(f"weight: must be an integer 0..{HAPROXY_MAX_WEIGHT}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ControlRefused("ttl: must be positive")
        now = self._clock()
        expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None
        override = Override(server, weight, now, expires)
        with self._lock:
            pins = {**self._state.overrides, server: override}
            self._replace(OperatorState(pins, *self._pause_fields()))
        return override

    def clear_overrides(self, server: str | None) -> list[str]:
        """Remove one pin (404 if there is none) or, with None, every pin."""
        with self._lock:
            pins = dict(self._state.overrides)
            if server is not None and server not in pins:
                raise ControlRefused(f"no override for {server}", status=404)
            cleared = [server] if server is not None else sorted(pins)
            kept = {k: o for k, o in pins.items() if k not in cleared}
            self._replace(OperatorState(kept, *self._pause_fields()))
        return cleared

    def pause(self, reason: str) -> OperatorState:
        with self._lock:
            self._replace(
                OperatorState(self._state.overrides, True, reason or "paused", self._clock())
            )
            return self._state

    def resume(self) -> OperatorState:
        with self._lock:
            self._replace(OperatorState(self._state.overrides))
            return self._state

    def _pause_fields(self) -> tuple[bool, str, datetime | None]:
        return self._state.paused, self._state.pause_reason, self._state.paused_at

    def _replace(self, state: OperatorState) -> None:
        """Persist first, then adopt: the file never lags behind what the agent acts on."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(self._path, json.dumps(state.to_json(), indent=2).encode())
        except OSError as exc:
            self._events.record("operator_state_write_failed", f"{self._path}: {exc}")
            raise ControlRefused(
                f"cannot save operator state to {self._path}: {exc.strerror}", status=500
            ) from None
        self._state = state

    def _load(self) -> OperatorState:
        sweep_temps(self._path)  # what replacements cut short by a crash left behind
        if not self._path.exists():
            return OperatorState()
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            overrides = [Override.from_json(item) for item in data["overrides"]]
            for o in overrides:
                parse_server_key(o.server)
            paused_at = data.get("paused_at")
            return OperatorState(
                {o.server: o for o in overrides},
                bool(data.get("paused", False)),
                str(data.get("pause_reason", "")),
                datetime.fromisoformat(paused_at) if paused_at else None,
            )
        except (OSError, ValueError, KeyError, TypeError, UnsafeName) as exc:
            reason = (
                f"operator state file {self._path} is unreadable ({exc}); "
                "fix or remove it, then resume"
            )
            self._events.record("operator_state_unreadable", reason)
            return OperatorState(paused=True, pause_reason=reason, paused_at=self._clock())
