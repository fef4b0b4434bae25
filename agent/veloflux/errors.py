"""The error taxonomy that drives control flow.

Each class tells the caller what to do next, not just what went wrong:
a ``ConfigError`` stops start-up, a ``SourceUnavailable`` skips one source for one
tick, a ``SinkRejected`` means the proxy refused a write and its state must be
re-read, a ``ModelUnavailable`` means fall back to static weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class VelofluxError(Exception):
    """Base of every error VeloFlux raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration, located by its dotted YAML path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(VelofluxError):
    """The configuration is invalid; carries every problem, not just the first."""

    def __init__(
        self,
        problems: Sequence[ConfigProblem],
        source: str = "",
        warnings: Sequence[ConfigProblem] = (),
    ) -> None:
        self.problems = tuple(problems)
        self.source = source
        self.warnings = tuple(warnings)  # found in the same run, shown after the problems
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        lines = [f"{len(self.problems)} configuration problem(s){where}:"]
        lines += [f"  {p}" for p in self.problems]
        if self.warnings:
            lines.append(f"and {len(self.warnings)} warning(s):")
            lines += [f"  {w}" for w in self.warnings]
        return "\n".join(lines)


class SourceUnavailable(VelofluxError):
    """A source could not be read this tick: keep weights, report the source down."""


class SinkRejected(VelofluxError):
    """The proxy refused a write, or did not take it: log, count, re-read state."""


class UnsafeName(VelofluxError, ValueError):
    """A backend or server name that could smuggle text into a runtime command."""


class ModelUnavailable(VelofluxError):
    """No usable model: the planner falls back to static weights."""


class ControlRefused(VelofluxError):
    """An operator request the agent will not carry out (unknown server, bad weight).

    ``status`` is the HTTP status the API answers with; the message says why.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
