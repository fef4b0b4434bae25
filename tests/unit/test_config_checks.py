"""check-config finds everything in one run (issue #18): the schema's problems, the
cross-field checks' and the names', each with its YAML path, in one ``ConfigError``;
and the checks added with it, each on its own.

Only the public entry points (``load_config``, ``validate_config``) are used here, so
that every test runs, and fails, on a tree without ``config/checks.py`` too; the
pieces behind them are tested in ``test_config_view.py``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_config import MINIMUM_CONTRACT, NO_ENV, base, problems_of, write
from veloflux.config.load import load_config, load_config_checked, validate_config
from veloflux.daemon.api.fields import read_token
from veloflux.errors import ConfigError

SECTIONS = "the sections are ai, api, capacity, envoy, forecast, haproxy, policy, prometheus"

BROKEN = """\
interval: 10s
haproxy:
  socket: unix:///run/haproxy/admin.sock
  timeout: 30s
  backends: [app, web]
  consistent_hash_backends: [app, sticky]
  colour: blue
ai:
  confidence_threshold: 2
  keep_models: many
  retrain_cron: "0 3 * * *"
  history_retention: 1h
  max_model_age: 2h
policy:
  static_weights: {app/s1: 20, db/d1: 5}
  overrides: {cache/c1: 3}
  min_weight: 50
  max_weight: 10
  max_step_ratio: 0
  stale_after: 5s
  on_exit: maybe
api:
  token_file: {token}
"""


def test_a_broken_file_shows_every_problem_of_every_kind_in_one_run(tmp_path: Path) -> None:
    """Before: the schema's problems alone (the cross-field and name checks were
    pydantic ``model_validator``s, run only once every field had parsed), the misspelt
    section of an override silently ignored, and no check of timings or the token."""
    path = write(tmp_path, BROKEN.replace("{token}", str(tmp_path / "missing-token")))
    environ = {"VELOFLUX_POLCY__MAX_STEP_RATIO": "0.3", "VELOFLUX_LOG_LEVEL": "debug"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    problems = {p.path: p.message for p in caught.value.problems}
    expected = {
        # the schema: unknown keys, wrong types, out of range
        "haproxy.colour": "unknown key (check the spelling)",
        "ai.confidence_threshold": "must be <= 1",
        "ai.keep_models": "must be a whole number",
        "policy.max_step_ratio": "must be > 0",
        "policy.on_exit": "must be 'keep' or 'static'",
        # across fields
        "policy": "min_weight (50) is above max_weight (10)",
        "policy.stale_after": "5s is shorter than interval (10s)",
        "api.token_file": f"cannot read {tmp_path / 'missing-token'}: No such file",
        # names
        "haproxy.consistent_hash_backends": "'sticky' is not in haproxy.backends (app, web)",
        "policy.static_weights.db/d1": "backend 'db' is not in haproxy.backends",
        "policy.overrides.cache/c1": "backend 'cache' is not in haproxy.backends",
        "VELOFLUX_POLCY__MAX_STEP_RATIO": "'polcy' is not a config section",
    }
    assert sorted(problems) == sorted(expected)
    for where, message in expected.items():
        assert problems[where].startswith(message), (where, problems[where])
    assert len(caught.value.problems) == len(expected)  # each once
    # What works but is probably not meant comes in the same run, as warnings.
    warnings = {w.path: w.message for w in caught.value.warnings}
    warned = {
        "haproxy.timeout": "30s is longer than interval (10s)",
        "ai.history_retention": "1h is shorter than the time between retrainings (1d",
        "ai.max_model_age": "2h is shorter than the time between retrainings (1d",
    }
    assert sorted(warnings) == sorted(warned)
    for where, message in warned.items():
        assert warnings[where].startswith(message), (where, warnings[where])
    rendered = str(caught.value)
    assert rendered.startswith(f"{len(expected)} configuration problem(s) in {path}:")
    assert "and 3 warning(s):" in rendered
    assert "Input should" not in rendered


def test_the_cross_field_checks_run_even_when_their_own_section_fails_to_parse() -> None:
    """Before: ``min_weight > max_weight`` waited for ``max_step_ratio`` to be fixed, and
    a weight naming an unmanaged backend for every other section to parse."""
    data = base()
    data["policy"] |= {"min_weight": 50, "max_weight": 10, "max_step_ratio": "lots"}
    data["policy"]["overrides"] = {"web/w1": 3}
    data["ai"]["keep_models"] = 0
    assert problems_of(data) == {
        "policy.max_step_ratio": "must be a number",
        "ai.keep_models": "must be >= 1",
        "policy": "min_weight (50) is above max_weight (10)",
        "policy.overrides.web/w1": "backend 'web' is not in haproxy.backends",
    }


def test_a_check_is_skipped_when_a_value_it_needs_has_its_own_problem() -> None:
    """No guess past a broken value: with ``backends`` broken, no weight or hash
    backend is said to be outside it; with ``interval`` broken, no timing is judged."""
    data = base() | {"interval": "soon"}
    data["haproxy"] |= {"backends": "app", "consistent_hash_backends": ["x"], "timeout": "1m"}
    data["policy"] |= {"overrides": {"web/w1": 3}, "stale_after": "1s"}
    assert problems_of(data) == {
        "interval": "'soon' is not a duration; write e.g. 500ms, 10s, 5m, 6h or 14d",
        "haproxy.backends": "must be a list of backend names",
    }


def test_envoy_name_checks_run_beside_a_broken_endpoint() -> None:
    """Before: the cluster list's own checks ran only once each endpoint parsed."""
    endpoint = {"address": "127.0.0.1", "port": 8081}
    clusters = [
        {"name": "app", "endpoints": [endpoint, endpoint]},
        {"name": "app", "endpoints": [{"address": "db.local", "port": 1}]},
        {"name": "web", "endpoints": []},
    ]
    problems = problems_of({"envoy": {"admin": "http://127.0.0.1:9901", "clusters": clusters}})
    assert problems == {
        "envoy.clusters.1.endpoints.0.address": "must be an IP address (Envoy's EDS endpoints are)",
        "envoy.clusters": "lists the cluster 'app' twice",
        "envoy.clusters.0": "cluster app lists an endpoint twice",
        "envoy.clusters.2": "cluster web: no endpoint listed",
    }


# --- api.token_file ----------------------------------------------------------------------


def _token_problems(tmp_path: Path, content: str | bytes | None) -> dict[str, str]:
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    data = base()
    data["api"] = {"token_file": str(path)}
    return problems_of(data)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("", "{path} is empty"),
        (" \n", "{path} is empty"),
        (b"\xfftoken", "cannot read {path}: 'utf-8' codec can't decode byte 0xff"),
        ("two words", "{path}: the token must be one word of printable ASCII"),
    ],
)
def test_a_token_file_run_could_not_read_is_a_config_problem(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    """Before: check-config said OK and ``run`` exited 1 on it."""
    problems = _token_problems(tmp_path, content)
    assert list(problems) == ["api.token_file"]
    assert problems["api.token_file"].startswith(problem.format(path=tmp_path / "token"))


def test_a_token_file_that_is_a_directory_cannot_be_read(tmp_path: Path) -> None:
    data = base()
    data["api"] = {"token_file": str(tmp_path)}
    assert problems_of(data) == {"api.token_file": f"cannot read {tmp_path}: Is a directory"}


@pytest.mark.parametrize("content", [None, "", b"\xff", "two words", "t\u00f6ken"])
def test_check_config_says_what_run_would_say_of_the_token_file(
    tmp_path: Path, content: str | bytes | None
) -> None:
    """The config's check and the daemon's ``read_token`` refuse the same files, alike."""
    problems = _token_problems(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        read_token(tmp_path / "token")
    assert [(p.path, p.message) for p in caught.value.problems] == list(problems.items())


def test_a_readable_token_file_or_none_at_all_is_fine(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("let-me-in\n", encoding="utf-8")
    (tmp_path / "token").chmod(0o640)  # a token other users can read is refused
    data = base()
    data["api"] = {"token_file": str(tmp_path / "token")}
    assert validate_config(data).api.token_file == tmp_path / "token"
    assert validate_config(base()).api.token_file is None


# --- timings -----------------------------------------------------------------------------


def test_stale_after_shorter_than_the_interval_is_refused() -> None:
    data = base() | {"interval": "30s"}
    data["policy"]["stale_after"] = "20s"
    assert problems_of(data) == {
        "policy.stale_after": "20s is shorter than interval (30s): the newest observation "
        "would always be stale and the model would stand down every tick"
    }


@pytest.mark.parametrize("stale_after", ["30s", "1m", None])
def test_stale_after_of_an_interval_or_more_or_the_default_is_fine(
    stale_after: str | None,
) -> None:
    data = base() | {"interval": "30s"}
    if stale_after is not None:
        data["policy"]["stale_after"] = stale_after
    assert validate_config(data).stale_after_seconds >= 30


def test_a_timing_problem_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    environ = {"VELOFLUX_POLICY__STALE_AFTER": "5s"}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)
    (problem,) = caught.value.problems
    assert problem.path == "policy.stale_after"
    assert problem.message.endswith("(from $VELOFLUX_POLICY__STALE_AFTER)")


def warnings_of(tmp_path: Path, data: dict[str, Any]) -> dict[str, str]:
    """Load ``data`` (valid) from a file; its warnings as {path: message}."""
    _, warnings = load_config_checked(write(tmp_path, yaml.safe_dump(data)), environ=NO_ENV)
    return {w.path: w.message for w in warnings}


def test_a_haproxy_timeout_longer_than_the_interval_is_a_warning(tmp_path: Path) -> None:
    """A slow socket then overruns ticks (counted, the next skipped): it works, so it
    warns rather than refusing a config that ran before."""
    data = base() | {"interval": "1s"}  # the timeout is 2s
    assert validate_config(data).interval_seconds == 1.0
    assert warnings_of(tmp_path, data) == {
        "haproxy.timeout": "2s is longer than interval (1s): a tick waiting on HAProxy that "
        "long overruns its interval, and the next tick is skipped"
    }


@pytest.mark.parametrize("timeout", ["1s", "500ms"])
def test_a_haproxy_timeout_up_to_the_interval_is_fine(timeout: str, tmp_path: Path) -> None:
    data = base() | {"interval": "1s"}
    data["haproxy"]["timeout"] = timeout
    assert warnings_of(tmp_path, data) == {}


# --- names -------------------------------------------------------------------------------


def test_consistent_hash_backends_outside_the_managed_ones_are_refused() -> None:
    data = base()
    data["haproxy"] |= {"backends": ["app", "web"], "consistent_hash_backends": ["a", "web", "b"]}
    assert problems_of(data) == {
        "haproxy.consistent_hash_backends": "'a', 'b' are not in haproxy.backends (app, web); "
        "list only backends VeloFlux manages"
    }


def test_consistent_hash_backends_are_free_without_an_allow_list() -> None:
    data = base()
    del data["haproxy"]["backends"]
    data["haproxy"]["consistent_hash_backends"] = ["sticky"]
    config = validate_config(data)
    assert config.haproxy is not None
    assert config.haproxy.consistent_hash_backends == ("sticky",)


# --- retraining --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ai", "problems"),
    [
        (
            {"retrain_cron": "0 3 * * 1", "max_model_age": "6d"},  # weekly, model 7d by default
            {
                "ai.max_model_age": "6d is shorter than the time between retrainings (7d, the "
                "longest gap of ai.retrain_cron '0 3 * * 1'): the model would be too old to "
                "use before the next retraining replaced it, and the pools would do without "
                "it until then"
            },
        ),
        (
            {"retrain_cron": "0 */6 * * *", "history_retention": "5h"},
            {
                "ai.history_retention": "5h is shorter than the time between retrainings (6h, "
                "the longest gap of ai.retrain_cron '0 */6 * * *'): the journal would drop "
                "observations before a retraining could learn from them"
            },
        ),
        (
            # training_interval wins over the crontab
            {"retrain_cron": "0 0 * * *", "training_interval": "2d", "max_model_age": "1d"},
            {"ai.max_model_age": "1d is shorter than the time between retrainings (2d, "},
        ),
        (
            {"retrain_cron": "0 0 31 2 *"},
            {"ai.retrain_cron": "'0 0 31 2 *' never fires: nothing would retrain"},
        ),
    ],
)
def test_history_and_models_must_outlast_the_retraining_period(
    ai: dict[str, Any], problems: dict[str, str], tmp_path: Path
) -> None:
    """A cron that never fires is refused; a retention or model age shorter than the
    period is a warning (the agent works, with less history or, for part of each
    period, without its model)."""
    data = base()
    data["ai"] |= ai
    found = problems_of(data) if "ai.retrain_cron" in problems else warnings_of(tmp_path, data)
    assert sorted(found) == sorted(problems)
    for where, message in problems.items():
        assert found[where].startswith(message)


@pytest.mark.parametrize(
    "ai",
    [
        {"retrain_cron": "0 3 * * 1"},  # weekly: retention 14d, model 7d (equal is fine)
        {"training_interval": "1h", "history_retention": "1h", "max_model_age": "1h"},
        {"enabled": False, "retrain_cron": "0 0 1 * *", "max_model_age": "1h"},
    ],
)
def test_a_period_no_longer_than_history_and_model_age_or_ai_off_is_fine(
    ai: dict[str, Any], tmp_path: Path
) -> None:
    data = base()
    data["ai"] |= ai
    assert warnings_of(tmp_path, data) == {}


# --- the environment ---------------------------------------------------------------------


def test_an_override_of_a_misspelt_section_is_reported_not_ignored(tmp_path: Path) -> None:
    environ = {"VELOFLUX_POLCY__MAX_STEP_RATIO": "0.3"}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (
            "VELOFLUX_POLCY__MAX_STEP_RATIO",
            "'polcy' is not a config section, so this override would be ignored "
            f"(did you mean 'policy'?); {SECTIONS}",
        )
    ]
    assert caught.value.source == str(tmp_path / "veloflux.yaml")


def test_an_override_of_no_section_at_all_lists_the_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ={"VELOFLUX_ZZZ__A": "1"})
    assert [p.message for p in caught.value.problems] == [
        f"'zzz' is not a config section, so this override would be ignored; {SECTIONS}"
    ]


def test_variables_without_a_double_underscore_are_still_not_overrides(tmp_path: Path) -> None:
    """``VELOFLUX_CONFIG`` and the flags' variables name no section and need none."""
    environ = {
        "VELOFLUX_CONFIG": "/etc/veloflux/other.yaml",
        "VELOFLUX_LOG_LEVEL": "debug",
        "VELOFLUX_LOG_FORMAT": "json",
    }
    assert load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ) == load_config(
        write(tmp_path, MINIMUM_CONTRACT), environ=NO_ENV
    )


def test_a_misspelt_section_is_reported_with_conflicting_overrides(tmp_path: Path) -> None:
    environ = {"VELOFLUX_AI": "x", "VELOFLUX_AI__ENABLED": "true", "VELOFLUX_APPI__LISTEN": "x"}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMUM_CONTRACT), environ=environ)
    assert [p.path for p in caught.value.problems] == ["ai", "VELOFLUX_APPI__LISTEN"]
    assert caught.value.source == "the environment"


# --- pydantic's wording, in plain words ----------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("haproxy", "backends", "app", "must be a list of backend names"),
        ("haproxy", "consistent_hash_backends", "app", "must be a list of backend names"),
        ("haproxy", "backends", [1], "must be a string"),
        ("policy", "max_step_ratio", "half", "must be a number"),
        ("policy", "max_step_ratio", [0.5], "must be a number"),
        ("policy", "min_weight", "one", "must be a whole number"),
        ("policy", "min_servers_in_rotation", 1.5, "must be a whole number"),
        ("ai", "enabled", "maybe", "must be true or false"),
        ("ai", "enabled", [True], "must be true or false"),
        ("api", "listen", 9477, "must be a string"),
        ("policy", "static_weights", ["app/s1"], "must be a mapping of keys to values"),
        ("policy", "outlier", "off", "must be a mapping of keys to values"),
        ("ai", "history_path", 5, "must be a path"),
        ("policy", "on_exit", "revert", "must be 'keep' or 'static'"),
    ],
)
def test_type_problems_are_said_in_plain_words(
    section: str, key: str, value: object, message: str
) -> None:
    """Before: pydantic's ``Input should be a valid tuple`` and the like."""
    data = base()
    data.setdefault(section, {})[key] = value
    problems = problems_of(data)
    assert len(problems) == 1
    ((path, said),) = problems.items()
    assert path.startswith(f"{section}.{key}")
    assert said == message


def test_a_section_that_is_not_a_mapping_says_so() -> None:
    assert problems_of(base() | {"policy": 5}) == {"policy": "must be a mapping of keys to values"}


def test_envoy_lists_say_what_they_hold() -> None:
    problems = problems_of({"envoy": {"admin": "http://127.0.0.1:9901", "clusters": "app"}})
    assert problems == {"envoy.clusters": "must be a list of clusters"}
    endpoints = {"clusters": [{"name": "app", "endpoints": "127.0.0.1:80"}]}
    problems = problems_of({"envoy": {"admin": "http://127.0.0.1:9901", **endpoints}})
    assert problems == {"envoy.clusters.0.endpoints": "must be a list of endpoints"}


def test_a_config_file_for_the_docs_loads_clean(tmp_path: Path) -> None:
    """Every check quiet on a config that sets each timing near its edge."""
    text = textwrap.dedent(
        """\
        interval: 2s
        haproxy: {socket: "unix:///x", timeout: 2s, backends: [a], consistent_hash_backends: [a]}
        ai: {retrain_cron: "0 */6 * * *", history_retention: 6h, max_model_age: 6h}
        policy: {stale_after: 2s, static_weights: {a/s1: 5}, overrides: {a/s2: 1}}
        """
    )
    config = load_config(write(tmp_path, text), environ=NO_ENV)
    assert config.stale_after_seconds == 2.0


# --- ai.dask ----------------------------------------------------------------------------


def _with_dask(**section: Any) -> dict[str, Any]:
    data = base()
    data.setdefault("ai", {})["dask"] = section
    return data


def test_a_dask_scheduler_on_this_machine_loads_with_its_defaults(tmp_path: Path) -> None:
    data = _with_dask(scheduler="tcp://127.0.0.1:8786")
    config = validate_config(data)
    assert config.ai.dask is not None
    assert config.ai.dask.partition_rows == 500_000
    assert config.ai.dask.connect_timeout_seconds == 30.0
    assert warnings_of(tmp_path, data) == {}


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ({"scheduler": "dask.internal:8786"}, "ai.dask.scheduler", "is not a Dask scheduler"),
        ({"scheduler": "tcp://h:99999"}, "ai.dask.scheduler", "is not a Dask scheduler"),
        ({"scheduler": "tls://h:8786"}, "ai.dask", "needs tls_ca_file, tls_cert_file"),
        (
            {"scheduler": "tcp://h:8786", "tls_ca_file": "/etc/ca.pem"},
            "ai.dask",
            "tls_* files are set but the scheduler is not tls://",
        ),
        ({"scheduler": "tcp://h:8786", "partition_rows": 10}, "ai.dask.partition_rows", ""),
        ({"tls_ca_file": "/etc/ca.pem"}, "ai.dask.scheduler", ""),
    ],
)
def test_a_dask_section_that_cannot_work_is_refused_with_its_path(
    section: dict[str, Any], path: str, message: str
) -> None:
    problems = problems_of(_with_dask(**section))
    assert path in problems, problems
    assert message in problems[path]


def test_unreadable_dask_certificates_are_named(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    data = _with_dask(
        scheduler="tls://dask.internal:8786",
        tls_ca_file=str(ca),
        tls_cert_file=str(tmp_path / "missing.pem"),
        tls_key_file=str(tmp_path),  # a directory
    )
    problems = problems_of(data)
    assert set(problems) == {"ai.dask.tls_cert_file", "ai.dask.tls_key_file"}
    assert "missing.pem" in problems["ai.dask.tls_cert_file"]


def test_plain_tcp_to_another_machine_is_a_warning(tmp_path: Path) -> None:
    warned = warnings_of(tmp_path, _with_dask(scheduler="tcp://10.1.2.3:8786"))
    assert "tls://" in warned["ai.dask.scheduler"]
    for local in ("tcp://localhost:8786", "tcp://[::1]:8786", "tcp://127.0.0.2:8786"):
        assert warnings_of(tmp_path, _with_dask(scheduler=local)) == {}
