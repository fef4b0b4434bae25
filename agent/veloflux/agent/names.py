"""Config names the proxy does not have: a typo in ``policy.overrides`` or
``policy.static_weights`` is a config error, not a pin that silently never applies.

An operator who writes ``policy.overrides: {app/S1: 5}`` believes s1 is pinned; the
planner only ever looks up the servers the proxy has, so the key would match nothing
and nobody would hear of it. Only the proxy knows its servers, so this is checked
against an observation, by every command that takes one: ``dry-run`` and ``apply``
refuse with exit 1 naming each key, as for an unknown backend (``missing_pools``: a
listed backend or cluster the proxy lacks), and the daemon refuses to start on its
first observation (later, a server removed by a proxy reload is counted and logged:
the other pools still need managing). ``check-config --online`` reports the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from veloflux.config.schema import Config
from veloflux.domain.observation import Observation
from veloflux.errors import ConfigProblem, UnsafeName
from veloflux.util.names import parse_server_key

_KEYED = ("overrides", "static_weights")
_POOLS = {
    "haproxy": ("haproxy.backends", "HAProxy", "backend"),
    "envoy": ("envoy.clusters", "Envoy", "cluster"),
}
_SHOWN = 8  # servers listed in a message: enough to spot the typo, short enough to read


def unknown_names(
    config: Config, observation: Observation, every_pool_here: bool = True
) -> list[ConfigProblem]:
    """One problem per ``BACKEND/SERVER`` key of the policy that this observation's
    proxy does not have.

    ``every_pool_here`` says the observation is the only proxy (not one of a fleet):
    then a key whose backend is absent is unknown too; in a fleet that pool may be
    another proxy's, whose own agent checks it.
    """
    if not (config.policy.overrides or config.policy.static_weights):
        return []  # the common case: nothing to look up, every tick
    servers: dict[str, set[str]] = {p.name: set() for p in observation.pools}
    for row in observation.rows:
        servers.setdefault(row.pool, set()).add(row.server)
    problems = []
    for section in _KEYED:
        keys: Mapping[str, int] = getattr(config.policy, section)
        for key in keys:
            try:
                backend, server = parse_server_key(key)
            except UnsafeName:
                continue  # the schema already refused it
            path = f"policy.{section}.{key}"
            known = servers.get(backend)
            if known is None:
                if every_pool_here and backend not in observation.missing_pools:
                    problems.append(
                        ConfigProblem(path, f"no backend {backend!r} at {_where(observation)}")
                    )
            elif server not in known:
                listed = ", ".join(sorted(known)[:_SHOWN]) + (
                    ", ..." if len(known) > _SHOWN else ""
                )
                problems.append(
                    ConfigProblem(
                        path,
                        f"no server {server!r} in {backend!r} at {_where(observation)} "
                        f"(it has: {listed or 'no servers'})",
                    )
                )
    return problems


def missing_pools(config: Config, kind: str, observation: Observation) -> list[ConfigProblem]:
    """One problem per pool the config lists for the proxy of ``kind`` (``haproxy``:
    ``haproxy.backends``, ``envoy``: ``envoy.clusters``, located by its index) that
    this observation of it does not have."""
    path, proxy, pool = _POOLS[kind]
    listed: Sequence[str]
    if kind == "haproxy":
        listed = (config.haproxy.backends or ()) if config.haproxy else ()
    else:
        listed = [c.name for c in config.envoy.clusters] if config.envoy else []
    missing = set(observation.missing_pools)
    return [
        ConfigProblem(
            f"{path}.{i}", f"{pool} {name!r} does not exist in {proxy} at {_where(observation)}"
        )
        for i, name in enumerate(listed)
        if name in missing
    ]


def _where(observation: Observation) -> str:
    return observation.proxy.address or "the proxy"
