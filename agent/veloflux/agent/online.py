"""``check-config --online``: the config checked against the proxies it names, read-only.

The file alone cannot say whether ``haproxy.backends`` or ``envoy.clusters`` name pools
the proxy has, whether a ``policy.overrides`` key names a real server, or whether the
HAProxy socket is at ``level admin``: only the proxy knows. Without this, an operator
learnt it from ``dry-run`` one mistake at a time, or from the daemon refusing to start
(a typo) or from every write being refused (a ``level user`` socket), after the
rollout. Here each configured proxy is observed once, through the same source the
agent reads (``agent/build.py``), and every finding is one ``ConfigProblem`` with its
YAML path, all of them in one run.

Observe only: a source's ``observe()`` runs read-only commands (``show ...``, GETs),
no sink is built and no journal or audit log is opened, so a check can run beside a
live daemon and leaves no trace. Prometheus is not read: its features never decide
whether a config's names are right, and its absence only degrades a tick.
"""

from __future__ import annotations

from dataclasses import dataclass

from veloflux.agent.build import build_source, proxy_address, proxy_kinds, proxy_view
from veloflux.agent.names import missing_pools, unknown_names
from veloflux.config.schema import Config
from veloflux.domain.observation import Observation
from veloflux.errors import ConfigProblem, SourceUnavailable
from veloflux.util.events import Events, quiet_events

# Where a proxy's address is in the YAML: the place of its access problems.
_ADDRESS = {"haproxy": "haproxy.socket", "envoy": "envoy.admin"}


@dataclass(frozen=True)
class OnlineCheck:
    """What the proxies said of a config: every problem (with its path), whether a
    proxy could not be read at all (the CLI's exit 2 rather than 1), and the proxies
    that answered, as ``kind at address`` for the OK line."""

    problems: tuple[ConfigProblem, ...]
    unreachable: bool
    reached: tuple[str, ...]
    warnings: tuple[ConfigProblem, ...] = ()


def check_online(config: Config, events: Events | None = None) -> OnlineCheck:
    """Observe every proxy of a valid config once and check its names and access."""
    events = events if events is not None else quiet_events()
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    reached: list[str] = []
    kinds = proxy_kinds(config)
    for kind in kinds:
        view = proxy_view(config, kind).model_copy(update={"prometheus": None})
        try:
            observation = build_source(view, events).observe()
        except SourceUnavailable as exc:
            problems.append(ConfigProblem(_ADDRESS[kind], f"cannot be read: {exc}"))
            continue
        reached.append(f"{kind} at {proxy_address(config, kind)}")
        if kind == "haproxy":
            level = observation.proxy.level
            if level in ("user", "operator"):
                problems.append(ConfigProblem(_ADDRESS[kind], _level_message(observation)))
            elif level != "admin":
                warnings.append(ConfigProblem(_ADDRESS[kind], _unknown_level(observation)))
        problems += missing_pools(config, kind, observation)
        # With both proxies, a key of the other's pool is that proxy's to check (as in
        # the tick); the schema has already refused a key of neither proxy's pools.
        problems += unknown_names(config, observation, every_pool_here=len(kinds) == 1)
    return OnlineCheck(tuple(problems), len(reached) < len(kinds), tuple(reached), tuple(warnings))


def _level_message(observation: Observation) -> str:
    level = observation.proxy.level
    return (
        f"the runtime API at {observation.proxy.address} is at level {level}: VeloFlux "
        f"could preview (dry-run) but every write would be refused; setting weights needs "
        "'stats socket ... level admin'"
    )


def _unknown_level(observation: Observation) -> str:
    return (
        f"could not tell the level of the runtime API at {observation.proxy.address} "
        "('show cli level' gave no level): setting weights needs "
        "'stats socket ... level admin'"
    )
