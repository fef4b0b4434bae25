"""Config names the proxy lacks (``agent/names.py``): a typo in ``policy.overrides``
or ``policy.static_weights`` stops ``dry-run``/``apply`` and the daemon's first tick
with the key's path, instead of pinning nothing in silence."""

from __future__ import annotations

import pytest

from tests.unit.factories import Pool, Server, observation
from tests.unit.test_tick import AT_20, make_agent
from veloflux.agent.names import unknown_names
from veloflux.config.load import validate_config
from veloflux.config.schema import Config
from veloflux.errors import ConfigError


def typo_config(**policy: object) -> Config:
    return validate_config(
        {
            "haproxy": {"socket": "unix:///haproxy.sock"},
            "ai": {"enabled": False},
            "policy": policy,
        }
    )


TYPOS = typo_config(overrides={"web/W1": 5}, static_weights={"web/w2": 4, "web/w9": 10})


def test_each_key_the_proxy_lacks_is_named_with_its_path_and_the_servers_it_has() -> None:
    """Kills: a key matched case-insensitively, a known key reported, a section skipped."""
    problems = unknown_names(TYPOS, AT_20)
    assert [p.path for p in problems] == [
        "policy.overrides.web/W1",
        "policy.static_weights.web/w9",
    ]
    assert "no server 'W1' in 'web'" in problems[0].message
    assert "it has: w1, w2" in problems[0].message


def test_a_backend_the_proxy_lacks_is_unknown_only_when_no_other_proxy_could_have_it() -> None:
    config = typo_config(overrides={"api/a1": 5})
    assert [p.path for p in unknown_names(config, AT_20)] == ["policy.overrides.api/a1"]
    assert unknown_names(config, AT_20, every_pool_here=False) == []
    both = observation([Pool("web", [Server("w1")]), Pool("api", [Server("a1")])])
    assert unknown_names(config, both) == []


def test_dry_run_refuses_a_typo_before_planning() -> None:
    """Kills: the one-shot agent (strict) planning past a typo'd pin."""
    agent, sink = make_agent(AT_20, config=TYPOS, strict_pools=True)
    with pytest.raises(ConfigError) as refused:
        agent.tick(write=True)
    assert {p.path for p in refused.value.problems} == {
        "policy.overrides.web/W1",
        "policy.static_weights.web/w9",
    }
    assert sink.plans == []


def test_the_daemons_agent_refuses_its_first_observation_then_counts_and_goes_on() -> None:
    """The daemon stops on a typo at start-up (its first tick's ConfigError); a server
    a later proxy reload removed must not stop every pool, so later ticks plan, carry
    the problems and count each one once."""
    agent, sink = make_agent(AT_20, config=TYPOS)
    with pytest.raises(ConfigError):
        agent.tick(write=True)
    assert sink.plans == []
    first = agent.tick(write=True)
    agent.tick(write=True)
    assert [p.path for p in first.config_problems] == [
        "policy.overrides.web/W1",
        "policy.static_weights.web/w9",
    ]
    assert agent.events.count("config_name_unknown") == 2
    assert len(sink.plans) == 2
