"""The configuration contract: what loads, and every way it refuses, with dotted paths."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from veloflux.config.fields import check_crontab, parse_listen_address
from veloflux.config.load import load_config, resolve_config_path, validate_config
from veloflux.config.schema import Config, HAProxySection
from veloflux.errors import ConfigError, ConfigProblem
from veloflux.haproxy.runtime import parse_socket_address

MINIMUM_CONTRACT = """\
interval: 10s
haproxy:
  socket: unix:///run/haproxy/admin.sock
  timeout: 2s
  backends: [app]
ai:
  enabled: true
  confidence_threshold: 0.7
policy:
  static_weights: {app/s1: 20}
  min_weight: 1
  max_weight: 256
  max_step_ratio: 0.5
  deadband_ratio: 0.05
  min_servers_in_rotation: 1
"""

NO_ENV: dict[str, str] = {}


def haproxy_of(config: Config) -> HAProxySection:
    """The config's HAProxy section, which these configs always have."""
    assert config.haproxy is not None
    return config.haproxy


def write(tmp_path: Path, text: str, name: str = "veloflux.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def base() -> dict[str, Any]:
    """The minimum contract as a mapping, fresh for each test to modify."""
    data = yaml.safe_load(MINIMUM_CONTRACT)
    assert isinstance(data, dict)
    return data


def problems_of(data: dict[str, Any]) -> dict[str, str]:
    """Validate ``data`` expecting failure; the problems as {path: message}."""
    with pytest.raises(ConfigError) as caught:
        validate_config(data)
    return {p.path: p.message for p in caught.value.problems}


# --- what loads ------------------------------------------------------------------------


def test_minimum_contract_loads_with_every_value(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMUM_CONTRACT), environ=NO_ENV)
    assert config.interval_seconds == 10.0
    assert haproxy_of(config).socket == "unix:///run/haproxy/admin.sock"
    assert haproxy_of(config).timeout_seconds == 2.0
    assert haproxy_of(config).backends == ("app",)
    assert config.ai.enabled is True
    assert config.ai.confidence_threshold == 0.7
    assert dict(config.policy.static_weights) == {"app/s1": 20}
    assert config.policy.min_weight == 1
    assert config.policy.max_weight == 256
    assert config.policy.max_step_ratio == 0.5
    assert config.policy.deadband_ratio == 0.05
    assert config.policy.min_servers_in_rotation == 1


def test_only_the_socket_is_required_and_defaults_are_documented_ones(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "haproxy:\n  socket: tcp://127.0.0.1:9999\n"), environ=NO_ENV
    )
    assert config.interval_seconds == 10.0
    assert haproxy_of(config).timeout_seconds == 2.0
    assert haproxy_of(config).backends is None
    assert config.ai.confidence_threshold == 0.7
    assert config.policy.max_step_ratio == 0.5
    assert config.policy.min_weight == 1
    assert config.policy.max_weight == 256


def test_config_is_frozen() -> None:
    config = validate_config(base())
    with pytest.raises(ValueError, match="frozen"):
        config.interval_seconds = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0)]
)
def test_interval_accepts_durations(text: str, seconds: float) -> None:
    data = base() | {"interval": text}
    data["haproxy"]["timeout"] = "500ms"  # a tick must fit its interval (test_config_checks)
    assert validate_config(data).interval_seconds == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "limit"), [("6h", "3600"), ("14d", "3600")])
def test_long_durations_parse_but_exceed_the_interval_range(text: str, limit: str) -> None:
    # 6h and 14d are valid durations; the interval's own range refuses them.
    problems = problems_of(base() | {"interval": text})
    assert problems == {"interval": f"must be <= {limit}"}


@pytest.mark.parametrize("bare", [10, 0.5, "10", True])
def test_bare_numbers_are_refused_as_durations(bare: object) -> None:
    problems = problems_of(base() | {"interval": bare})
    assert list(problems) == ["interval"]
    assert "500ms, 10s, 5m, 6h or 14d" in problems["interval"]


def test_bare_number_timeout_is_refused_with_its_path() -> None:
    data = base()
    data["haproxy"]["timeout"] = 2
    assert list(problems_of(data)) == ["haproxy.timeout"]


# --- every problem, with its path ------------------------------------------------------


def test_three_mistakes_are_all_reported_with_their_paths(tmp_path: Path) -> None:
    text = MINIMUM_CONTRACT.replace("interval: 10s", "interval: fast")
    text = text.replace("backends: [app]", "bakends: [app]")
    text = text.replace("max_step_ratio: 0.5", "max_step_ratio: 0")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    error = caught.value
    paths = sorted(p.path for p in error.problems)
    assert paths == ["haproxy.bakends", "interval", "policy.max_step_ratio"]
    rendered = str(error)
    assert rendered.startswith(f"3 configuration problem(s) in {path}:")
    assert "policy.max_step_ratio: must be > 0" in rendered
    assert "haproxy.bakends: unknown key" in rendered
    assert "interval: 'fast' is not a duration" in rendered
    assert error.source == str(path)


@pytest.mark.parametrize(
    ("section", "path"),
    [
        (None, "colour"),
        ("haproxy", "haproxy.colour"),
        ("ai", "ai.colour"),
        ("policy", "policy.colour"),
    ],
)
def test_unknown_keys_are_errors_at_every_level(section: str | None, path: str) -> None:
    data = base()
    (data if section is None else data[section])["colour"] = "blue"
    assert problems_of(data) == {path: "unknown key (check the spelling)"}


def test_python_field_name_is_accepted_as_well_as_the_yaml_key() -> None:
    data = base()
    data.pop("interval")
    data["interval_seconds"] = "5s"
    assert validate_config(data).interval_seconds == 5.0


def test_empty_file_says_haproxy_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ""), environ=NO_ENV)
    assert caught.value.problems == (
        ConfigProblem("haproxy", "required (or envoy): which proxy should VeloFlux drive?"),
    )
    assert "haproxy: required" in str(caught.value)


ENVOY = {
    "admin": "http://127.0.0.1:9901",
    "eds_dir": "/tmp/eds",
    "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 8081}]}],
}


def test_an_envoy_config_instead_of_haproxy() -> None:
    config = validate_config({"envoy": ENVOY})
    assert config.haproxy is None
    assert config.envoy is not None
    assert config.envoy.confirm_timeout_seconds == 5.0
    (endpoint,) = config.envoy.clusters[0].endpoints
    assert (endpoint.name, endpoint.weight) == ("127.0.0.1:8081", 1)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"admin": "127.0.0.1:9901"}, "envoy.admin"),
        ({"confirm_timeout": "0s"}, "envoy.confirm_timeout"),
        ({"clusters": []}, "envoy.clusters"),
        ({"templates_dir": "/nonexistent/templates"}, "envoy.templates_dir"),
        ({"clusters": [{"name": "a;b", "endpoints": [{"address": "127.0.0.1", "port": 1}]}]},
         "envoy.clusters.0.name"),
        ({"clusters": [{"name": "app", "endpoints": [{"address": "db.local", "port": 1}]}]},
         "envoy.clusters.0.endpoints.0.address"),
        ({"clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 1,
                                                      "weight": 0}]}]},
         "envoy.clusters.0.endpoints.0.weight"),
    ],
)  # fmt: skip
def test_envoy_problems_are_named_with_their_path(change: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"envoy": {**ENVOY, **change}})
    assert [p.path for p in caught.value.problems] == [path]


def test_an_operators_templates_directory_is_taken_when_it_has_the_eds_template(
    tmp_path: Path,
) -> None:
    (tmp_path / "envoy").mkdir()
    (tmp_path / "envoy" / "eds.yaml.j2").write_text("{}", encoding="utf-8")
    config = validate_config({"envoy": {**ENVOY, "templates_dir": str(tmp_path)}})
    assert config.envoy is not None
    assert config.envoy.templates_dir == tmp_path


def test_both_proxies_in_one_config_with_their_pools_listed() -> None:
    config = validate_config(
        {
            "envoy": ENVOY,
            "haproxy": {"socket": "unix:///x", "backends": ["web"]},
            "policy": {"static_weights": {"app/127.0.0.1:8081": 3, "web/w1": 2}},
        }
    )
    assert config.haproxy is not None
    assert config.envoy is not None
    assert config.haproxy.backends == ("web",)


def test_both_proxies_need_haproxys_backends_listed() -> None:
    """Pools share one namespace (overrides, metrics, history): with "every backend",
    a backend could take an Envoy cluster's name at any reload."""
    problems = problems_of({"envoy": ENVOY, "haproxy": {"socket": "unix:///x"}})
    assert list(problems) == ["haproxy.backends"]
    assert "required when envoy is set too" in problems["haproxy.backends"]


def test_a_pool_name_used_by_both_proxies_is_refused() -> None:
    problems = problems_of(
        {"envoy": ENVOY, "haproxy": {"socket": "unix:///x", "backends": ["web", "app"]}}
    )
    assert problems == {
        "envoy.clusters": "'app' is also in haproxy.backends; "
        "a pool name must be unique across the proxies"
    }


def test_with_both_proxies_a_weight_must_name_a_pool_of_either() -> None:
    problems = problems_of(
        {
            "envoy": ENVOY,
            "haproxy": {"socket": "unix:///x", "backends": ["web"]},
            "policy": {"overrides": {"db/d1": 3}},
        }
    )
    assert problems == {
        "policy.overrides.db/d1": "backend 'db' is not in haproxy.backends or envoy.clusters"
    }


def test_missing_socket_is_required() -> None:
    data = base()
    del data["haproxy"]["socket"]
    assert problems_of(data) == {"haproxy.socket": "required"}


@pytest.mark.parametrize(
    "text",
    [
        "interval: 10s\nhaproxy:\n  socket: [unix:///x\n  timeout: 2s\n",  # unclosed [
        "interval: 10s\nhaproxy:\n  socket: unix:///x\n   timeout: 2s\n",  # bad indent
    ],
)
def test_yaml_syntax_error_names_the_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=NO_ENV)
    (problem,) = caught.value.problems
    assert problem.path == ""
    assert problem.message.startswith("YAML syntax error at line 4, column ")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, text), environ=NO_ENV)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ=NO_ENV)


# --- policy ----------------------------------------------------------------------------


def test_min_weight_above_max_weight_is_refused() -> None:
    data = base()
    data["policy"] |= {"min_weight": 50, "max_weight": 10}
    problems = problems_of(data)
    assert list(problems) == ["policy"]
    assert "min_weight (50) is above max_weight (10)" in problems["policy"]


def test_min_weight_equal_to_max_weight_is_allowed() -> None:
    data = base()
    data["policy"] |= {"min_weight": 20, "max_weight": 20}
    assert validate_config(data).policy.max_weight == 20


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_step_ratio", 0, "must be > 0"),
        ("max_step_ratio", -0.5, "must be > 0"),
        ("max_step_ratio", 11, "must be <= 10"),
        ("deadband_ratio", -0.1, "must be >= 0"),
        ("deadband_ratio", 1, "must be < 1"),
        ("min_weight", -1, "must be >= 0"),
        ("min_weight", 257, "must be <= 256"),
        ("max_weight", 0, "must be >= 1"),
        ("max_weight", 257, "must be <= 256"),
        ("min_servers_in_rotation", 0, "must be >= 1"),
    ],
)
def test_policy_numbers_are_range_checked(field: str, value: float, message: str) -> None:
    data = base()
    data["policy"][field] = value
    assert problems_of(data) == {f"policy.{field}": message}


# Every bounded number of the config: a value just past each bound is refused with its
# path and the bound, and the bound itself (or the nearest value inside) is taken. A
# bound dropped or moved in the schema fails one of these; an unchecked ratio would
# let, say, ``reduce_ratio: -1`` raise a failing server's weight.
BOUNDS = [
    ("policy.max_weight_ratio", 0.99, "must be >= 1", 1),
    ("policy.outlier.reduce_ratio", 0, "must be > 0", 0.01),
    ("policy.outlier.reduce_ratio", -1, "must be > 0", 0.5),
    ("policy.outlier.reduce_ratio", 1, "must be < 1", 0.99),
    ("policy.outlier.latency_ratio", 1, "must be > 1", 1.01),
    ("policy.outlier.latency_ratio", 0.5, "must be > 1", 100),
    ("policy.outlier.error_rate", 0, "must be > 0", 0.001),
    ("policy.outlier.error_rate", 1.01, "must be <= 1", 1),
    ("policy.outlier.min_requests", 0, "must be >= 1", 1),
    ("ai.min_gain", -0.1, "must be >= 0", 0),
    ("ai.min_gain", 1, "must be < 1", 0.99),
    ("ai.confidence_threshold", -0.1, "must be >= 0", 0),
    ("ai.confidence_threshold", 1.5, "must be <= 1", 1),
    ("ai.min_training_rows", 19, "must be >= 20", 20),
    ("ai.training_threads", 0, "must be >= 1", 1),
    ("ai.training_threads", 65, "must be <= 64", 64),
    ("ai.keep_models", 0, "must be >= 1", 1),
    ("ai.keep_models", 101, "must be <= 100", 100),
    ("ai.audit_max_bytes", 4095, "must be >= 4096", 4096),
    ("ai.audit_backups", 0, "must be >= 1", 1),
    ("ai.audit_backups", 101, "must be <= 100", 100),
    ("policy.max_step_ratio", 10.01, "must be <= 10", 10),
    ("policy.deadband_ratio", 1, "must be < 1", 0.99),
    ("policy.min_servers_in_rotation", 0, "must be >= 1", 1),
]


def _set(data: dict[str, Any], path: str, value: object) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


@pytest.mark.parametrize(("path", "outside", "message", "inside"), BOUNDS)
def test_every_bounded_number_refuses_a_value_past_its_bound_and_takes_the_bound(
    path: str, outside: float, message: str, inside: float
) -> None:
    refused = base()
    _set(refused, path, outside)
    assert problems_of(refused) == {path: message}
    taken = base()
    _set(taken, path, inside)
    config: Any = validate_config(taken)
    for key in path.split("."):
        config = getattr(config, key)
    assert config == inside


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_confidence_threshold_is_a_probability(value: float) -> None:
    data = base()
    data["ai"]["confidence_threshold"] = value
    assert list(problems_of(data)) == ["ai.confidence_threshold"]


@pytest.mark.parametrize("section", ["static_weights", "overrides"])
@pytest.mark.parametrize(
    "key",
    ["app/s1;disable server app/s2", "app/s 1", "app/s1\nx", "app;x/s1", "app/s1\tx", "app s1"],
)
def test_weight_keys_that_could_inject_a_command_are_refused(section: str, key: str) -> None:
    data = base()
    data["policy"][section] = {key: 10}
    problems = problems_of(data)
    assert list(problems) == [f"policy.{section}.{key}"]


def test_weight_key_with_trailing_newline_is_refused() -> None:
    data = base()
    data["policy"]["static_weights"] = {"app/s1\n": 10}
    assert list(problems_of(data)) == ["policy.static_weights.app/s1\n"]


@pytest.mark.parametrize(("weight", "message"), [(257, "must be <= 256"), (-1, "must be >= 0")])
def test_weights_outside_haproxy_range_are_refused(weight: int, message: str) -> None:
    data = base()
    data["policy"]["static_weights"] = {"app/s1": weight}
    assert problems_of(data) == {"policy.static_weights.app/s1": message}


@pytest.mark.parametrize("weight", [0, 1, 256])
def test_weights_at_the_haproxy_range_limits_are_accepted(weight: int) -> None:
    data = base()
    data["policy"]["static_weights"] = {"app/s1": weight}
    assert validate_config(data).policy.static_weights["app/s1"] == weight


@pytest.mark.parametrize("section", ["static_weights", "overrides"])
def test_weights_for_a_backend_not_managed_are_refused(section: str) -> None:
    data = base()
    data["policy"][section] = {"web/s1": 10}
    problems = problems_of(data)
    assert list(problems) == [f"policy.{section}.web/s1"]
    assert "'web' is not in haproxy.backends" in problems[f"policy.{section}.web/s1"]


def test_weights_for_any_backend_are_allowed_without_an_allow_list() -> None:
    data = base()
    del data["haproxy"]["backends"]
    data["policy"]["static_weights"] = {"web/s1": 10}
    assert validate_config(data).policy.static_weights == {"web/s1": 10}


@pytest.mark.parametrize("backends", [["app", "app"], ["app", "a;b"], ["app b"]])
def test_backend_lists_refuse_duplicates_and_unsafe_names(backends: list[str]) -> None:
    data = base()
    data["haproxy"]["backends"] = backends
    data["policy"]["static_weights"] = {}
    assert list(problems_of(data)) == ["haproxy.backends"]


# --- socket addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("unix:///run/haproxy/admin.sock", ("unix", "/run/haproxy/admin.sock", 0)),
        ("tcp://127.0.0.1:9999", ("tcp", "127.0.0.1", 9999)),
        ("tcp://localhost:1", ("tcp", "localhost", 1)),
        ("tcp://[::1]:65535", ("tcp", "::1", 65535)),
    ],
)
def test_socket_addresses_parse(address: str, parsed: tuple[str, str, int]) -> None:
    assert parse_socket_address(address) == parsed
    data = base()
    data["haproxy"]["socket"] = address
    assert haproxy_of(validate_config(data)).socket == address


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("unix://run/haproxy/admin.sock", "must be absolute"),
        ("unix://", "must be absolute"),
        ("/run/haproxy/admin.sock", "must start with unix:// or tcp://"),
        ("http://127.0.0.1:80", "must start with unix:// or tcp://"),
        ("tcp://127.0.0.1", "tcp://HOST:PORT"),
        ("tcp://:9999", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:0", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:65536", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:http", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:-1", "tcp://HOST:PORT"),
    ],
)
def test_bad_socket_addresses_are_refused(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_socket_address(address)
    data = base()
    data["haproxy"]["socket"] = address
    problems = problems_of(data)
    assert list(problems) == ["haproxy.socket"]
    assert message in problems["haproxy.socket"]


@pytest.mark.parametrize("port", ["٣", "²"])
def test_socket_port_must_be_ascii_digits(port: str) -> None:
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        parse_socket_address(f"tcp://127.0.0.1:{port}")


# --- environment overrides -------------------------------------------------------------


def test_env_overrides_are_applied(tmp_path: Path) -> None:
    environ = {
        "VELOFLUX_POLICY__MAX_STEP_RATIO": "0.3",
        "VELOFLUX_INTERVAL": "5s",
        "VELOFLUX_HAPROXY__TIMEOUT": "500ms",
        "VELOFLUX_AI__ENABLED": "false",
        "UNRELATED": "x",
    }
    config = load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)
    assert config.policy.max_step_ratio == 0.3
    assert config.interval_seconds == 5.0
    assert haproxy_of(config).timeout_seconds == 0.5
    assert config.ai.enabled is False
    # Untouched siblings keep their file values.
    assert config.policy.deadband_ratio == 0.05
    assert haproxy_of(config).socket == "unix:///run/haproxy/admin.sock"


def test_env_override_can_supply_a_value_missing_from_the_file(tmp_path: Path) -> None:
    environ = {"VELOFLUX_HAPROXY__SOCKET": "tcp://127.0.0.1:9999"}
    config = load_config(write(tmp_path, "interval: 10s\n"), environ=environ)
    assert haproxy_of(config).socket == "tcp://127.0.0.1:9999"


def test_bad_env_value_is_reported_with_its_variable(tmp_path: Path) -> None:
    environ = {"VELOFLUX_POLICY__MAX_STEP_RATIO": "0", "VELOFLUX_INTERVAL": "10"}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)
    rendered = str(caught.value)
    assert "policy.max_step_ratio: must be > 0 (from $VELOFLUX_POLICY__MAX_STEP_RATIO)" in rendered
    assert "(from $VELOFLUX_INTERVAL)" in rendered
    assert len(caught.value.problems) == 2


def test_file_errors_do_not_claim_to_come_from_the_environment(tmp_path: Path) -> None:
    text = MINIMUM_CONTRACT.replace("max_step_ratio: 0.5", "max_step_ratio: 0")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={"VELOFLUX_INTERVAL": "5s"})
    assert "from $" not in str(caught.value)


def test_veloflux_config_is_not_an_override(tmp_path: Path) -> None:
    environ = {"VELOFLUX_CONFIG": "/etc/veloflux/other.yaml", "VELOFLUX_LOG_LEVEL": "debug"}
    config = load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)
    assert config == load_config(write(tmp_path, MINIMUM_CONTRACT), environ=NO_ENV)


def test_load_config_reads_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VELOFLUX_INTERVAL", "7s")
    assert load_config(write(tmp_path, MINIMUM_CONTRACT)).interval_seconds == 7.0


def test_conflicting_env_overrides_are_a_config_error(tmp_path: Path) -> None:
    environ = {"VELOFLUX_AI": "off", "VELOFLUX_AI__ENABLED": "true"}
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)


# --- where the file is -----------------------------------------------------------------


def test_explicit_path_wins_over_the_environment() -> None:
    environ = {"VELOFLUX_CONFIG": "/from/env.yaml"}
    assert resolve_config_path("/explicit.yaml", environ) == Path("/explicit.yaml")


def test_env_path_is_used_without_an_explicit_one() -> None:
    assert resolve_config_path(None, {"VELOFLUX_CONFIG": "/from/env.yaml"}) == Path(
        "/from/env.yaml"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("haproxy:\n  socket: unix:///x\nai:\n  enabled: true\nai:\n  history_path: /h\n", 5),
        ("haproxy:\n  socket: unix:///x\n  timeout: 2s\n  timeout: 3s\n", 4),
    ],
)
def test_a_key_given_twice_is_an_error_not_a_silent_overwrite(
    tmp_path: Path, text: str, line: int
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=NO_ENV)
    (problem,) = caught.value.problems
    assert f"line {line}" in problem.message
    assert "appears twice" in problem.message


@pytest.mark.parametrize("environ", [{}, {"VELOFLUX_CONFIG": ""}])
def test_default_path_is_veloflux_yaml_in_the_working_directory(
    environ: dict[str, str],
) -> None:
    assert resolve_config_path(None, environ) == Path("veloflux.yaml")
    assert resolve_config_path("", environ) == Path("veloflux.yaml")


def test_resolved_path_loads(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMUM_CONTRACT, name="custom.yaml")
    resolved = resolve_config_path(None, {"VELOFLUX_CONFIG": str(path)})
    assert isinstance(load_config(resolved, environ=NO_ENV), Config)


# --- prometheus ---------------------------------------------------------------------------

PROMETHEUS_CONTRACT = """\
haproxy:
  socket: unix:///run/haproxy/admin.sock
prometheus:
  url: http://127.0.0.1:9090
  timeout: 5s
  headers: {Authorization: "Bearer abc"}
  features:
    cpu: 'avg by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[1m]))'
    p95_latency: 'histogram_quantile(0.95, sum by (le, proxy, server) (rate(x[1m])))'
  server_labels: {backend: proxy, server: server}
  instance_map: {"10.0.0.5:9100": app/s1}
"""


def test_the_prometheus_contract_loads(tmp_path: Path) -> None:
    prom = load_config(write(tmp_path, PROMETHEUS_CONTRACT), NO_ENV).prometheus
    assert prom is not None
    assert prom.url == "http://127.0.0.1:9090"
    assert prom.timeout_seconds == 5.0
    assert prom.headers == {"Authorization": "Bearer abc"}
    assert list(prom.features) == ["cpu", "p95_latency"]
    assert (prom.server_labels.backend, prom.server_labels.server) == ("proxy", "server")
    assert prom.instance_map == {"10.0.0.5:9100": "app/s1"}
    assert prom.default_features is True


def test_the_url_alone_is_a_prometheus_section() -> None:
    config = validate_config(
        {"haproxy": {"socket": "unix:///x.sock"}, "prometheus": {"url": "http://p:9090/"}}
    )
    assert config.prometheus is not None
    assert config.prometheus.url == "http://p:9090"
    assert config.prometheus.features == {}


def test_every_prometheus_problem_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                "haproxy": {"socket": "unix:///x.sock"},
                "prometheus": {
                    "url": "ftp://p",
                    "timeout": "0s",
                    "headers": {"X-Token": "a\nb"},
                    "features": {
                        "Bad-Name": "up",
                        "unclosed": "rate(x[1m]",
                        "outside": "x{proxy={backend}}",
                    },
                    "server_labels": {"backend": "not a label"},
                    "instance_map": {"10.0.0.5:9100": "app;s1"},
                },
            }
        )
    paths = {p.path: p.message for p in caught.value.problems}
    assert "must be http(s)://" in paths["prometheus.url"]
    assert paths["prometheus.timeout"] == "must be > 0"
    assert "line break" in paths["prometheus.headers"]
    assert "lower-case letters" in paths["prometheus.features.Bad-Name"]
    assert "never closed" in paths["prometheus.features.unclosed"]
    assert "inside a quoted label value" in paths["prometheus.features.outside"]
    assert "not a Prometheus label name" in paths["prometheus.server_labels.backend"]
    assert "BACKEND/SERVER" in paths["prometheus.instance_map.10.0.0.5:9100"]


def test_turning_the_defaults_off_needs_a_feature_of_ones_own() -> None:
    with pytest.raises(ConfigError, match="name at least one feature"):
        validate_config(
            {
                "haproxy": {"socket": "unix:///x.sock"},
                "prometheus": {"url": "http://p:9090", "default_features": False},
            }
        )


# --- the field types' edges (mutants of config/fields.py that survived `make mutation`) -------


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("[::1]:0", ("::1", 0)),
        ("::1:65535", ("::1", 65535)),
        ("X:80", ("X", 80)),
    ],
)
def test_a_listen_address_splits_at_its_last_colon_and_takes_ports_0_to_65535(
    address: str, parsed: tuple[str, int]
) -> None:
    """Kills: ``rpartition`` made ``partition``, the brackets' strip altered, port 0 or
    65535 refused."""
    assert parse_listen_address(address) == parsed


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("localhost", "must be HOST:PORT, e.g. 127.0.0.1:9477"),
        (":9477", "must be HOST:PORT, e.g. 127.0.0.1:9477"),
        ("host:x", "must be HOST:PORT, e.g. 127.0.0.1:9477"),
        ("host:\u0669", "must be HOST:PORT, e.g. 127.0.0.1:9477"),  # an Arabic-Indic nine
        ("host:65536", "port must be in 0..65535 (0: any free port)"),
    ],
)
def test_a_malformed_listen_address_is_refused_saying_how(address: str, problem: str) -> None:
    """Kills: the checks joined with ``and`` instead of ``or``, ``isascii() and
    isdigit()`` made ``or``, port 65536 taken, each message altered."""
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}$"):
        parse_listen_address(address)


def test_retrain_cron_takes_five_fields_that_apscheduler_accepts() -> None:
    """No unit test touched the crontab check before `make mutation` said so. Kills: the
    field count's test inverted or moved, the expression not passed on, each message
    altered."""
    check_crontab("0 */6 * * *")
    with pytest.raises(
        ValueError, match=r"^must have 5 fields: minute hour day month day-of-week$"
    ):
        check_crontab("0 */6 * * * *")
    with pytest.raises(ValueError, match=r"^not a valid crontab: "):
        check_crontab("61 * * * *")


@pytest.mark.parametrize(
    ("environ", "problems"),
    [
        (
            {"VELOFLUX_AI": "x", "VELOFLUX_AI__ENABLED": "true", "VELOFLUX_POLICY__X": "1"},
            [("ai", "$VELOFLUX_AI__ENABLED conflicts with $VELOFLUX_AI")],
        ),
        (
            # Sorted, upper case first: the nested one is set, then the flat one meets it.
            {"VELOFLUX_AI__ENABLED__X": "1", "VELOFLUX_Ai__ENABLED": "true", "VELOFLUX_ai": "x"},
            [
                ("ai.enabled", "$VELOFLUX_Ai__ENABLED conflicts with a nested override"),
                ("ai", "$VELOFLUX_ai conflicts with a nested override"),
            ],
        ),
    ],
)
def test_conflicting_environment_overrides_are_each_named_with_their_variables(
    tmp_path: Path, environ: dict[str, str], problems: list[tuple[str, str]]
) -> None:
    """Kills: a conflict's path or text altered or dropped, the variables after a
    non-override or a conflict skipped (``continue`` made ``break``), the source altered."""
    # Neither is an override; both sort before the ones that are.
    not_overrides = {"OTHER": "x", "VELOFLUX_0": "x"}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ={**not_overrides, **environ})
    assert [(p.path, p.message) for p in caught.value.problems] == problems
    assert caught.value.source == "the environment"
