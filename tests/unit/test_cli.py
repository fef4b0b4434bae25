"""The command line's own promises, through click's test runner: a bad option value is a
usage error (exit 2, the valid choices named) and never a traceback; an empty listing
says what to run rather than printing an empty table; the help names both proxies."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from veloflux.cli import main
from veloflux.cli.app import LOG_LEVELS
from veloflux.cli.service import run
from veloflux.model.registry import Registry
from veloflux.util.events import Events

LEVEL_ENV = "VELOFLUX_LOG_LEVEL"


@pytest.fixture(autouse=True)
def no_veloflux_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config loader reads every VELOFLUX_* variable: a developer's shell must not
    change what these tests load."""
    for name in list(os.environ):
        if name.startswith("VELOFLUX_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A config that loads without a proxy running (check-config and model list open
    no connection), its models under ``tmp_path``."""
    path = tmp_path / "veloflux.yaml"
    path.write_text(
        "haproxy:\n"
        "  socket: unix:///nonexistent/haproxy.sock\n"
        "ai:\n"
        f"  model_dir: {tmp_path / 'models'}\n"
        f"  history_path: {tmp_path / 'history.sqlite'}\n",
        encoding="utf-8",
    )
    return path


def invoke(
    args: list[str], env: dict[str, str] | None = None, command: click.Command = main
) -> Result:
    return CliRunner().invoke(command, args, env=env)


def assert_usage_error_for_log_level(result: Result) -> None:
    """Click's usage error: exit 2, the option and every valid level named, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a ValueError from logging
    assert "Traceback" not in result.output
    assert "Invalid value for '--log-level'" in result.output
    assert "'LOUD'" in result.output
    for level in LOG_LEVELS:
        assert level.lower() in result.output.lower()


# --- --log-level -----------------------------------------------------------------------


def test_an_unknown_log_level_flag_is_a_usage_error(config_path: Path) -> None:
    assert_usage_error_for_log_level(
        invoke(["--log-level", "LOUD", "check-config", "-c", str(config_path)])
    )


def test_an_unknown_log_level_in_the_environment_is_a_usage_error(config_path: Path) -> None:
    result = invoke(["check-config", "-c", str(config_path)], env={LEVEL_ENV: "LOUD"})
    assert_usage_error_for_log_level(result)


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_levels_are_taken_in_any_case(config_path: Path, level: str) -> None:
    by_flag = invoke(["--log-level", level, "check-config", "-c", str(config_path)])
    assert by_flag.exit_code == 0, by_flag.output
    by_env = invoke(["check-config", "-c", str(config_path)], env={LEVEL_ENV: level})
    assert by_env.exit_code == 0, by_env.output


def test_the_daemons_unknown_log_level_flag_is_a_usage_error() -> None:
    assert_usage_error_for_log_level(invoke(["run", "--log-level", "LOUD"]))


def test_the_daemons_unknown_log_level_in_the_environment_is_a_usage_error() -> None:
    """``run`` reads the variable itself too (invoked alone, as the group would pass a
    bad one on to it only after failing first)."""
    assert_usage_error_for_log_level(invoke([], env={LEVEL_ENV: "LOUD"}, command=run))


def test_the_daemon_and_the_group_accept_the_same_levels() -> None:
    option = next(p for p in run.params if p.name == "level")
    assert isinstance(option.type, click.Choice)
    assert tuple(option.type.choices) == LOG_LEVELS
    assert option.type.case_sensitive is False


# --- help ------------------------------------------------------------------------------


def test_the_groups_help_names_both_proxies() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    assert "HAProxy" in result.output
    assert "Envoy" in result.output


# --- model list ------------------------------------------------------------------------


def test_model_list_without_a_model_says_what_to_run(config_path: Path) -> None:
    result = invoke(["model", "list", "-c", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "no model yet" in result.output
    assert "veloflux-agent train" in result.output
    assert "veloflux-agent record" in result.output
    assert "version" not in result.output  # no empty table's header


def test_model_list_without_a_model_is_an_empty_json_list(config_path: Path) -> None:
    result = invoke(["model", "list", "-c", str(config_path), "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []


def test_model_list_with_a_model_prints_the_table_and_no_hint(
    config_path: Path, tmp_path: Path
) -> None:
    registry = Registry(
        tmp_path / "models", lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), Events()
    )
    entry = registry.save({"errors": b"booster bytes"}, {"metrics": {}})
    result = invoke(["model", "list", "-c", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "no model yet" not in result.output
    assert entry.version[:8] in result.output
    listed = invoke(["model", "list", "-c", str(config_path), "--output", "json"])
    assert [e["version"] for e in json.loads(listed.output)] == [entry.version]
