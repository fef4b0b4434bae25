"""The daemon, and the operator commands that talk to a running one through its HTTP
API: pins, pause and resume, status."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import click

from veloflux.cli.app import (
    EXIT_CONFIG,
    EXIT_PROXY,
    config_option,
    duration_option,
    fail,
    load,
)
from veloflux.config.load import resolve_config_path
from veloflux.errors import ConfigError
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT

if TYPE_CHECKING:
    from veloflux.daemon.api.client import ApiClient


@click.command("run")
@config_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="default: the command group's (--log-format before `run`, or $VELOFLUX_LOG_FORMAT)",
)
@click.option(
    "--log-level",
    "level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="VELOFLUX_LOG_LEVEL",
)
def run(config_path: str | None, log_format: Literal["text", "json"] | None, level: str) -> None:
    """The daemon: tick every interval, retrain on schedule, serve the HTTP API."""
    from veloflux.daemon.service import run_daemon
    from veloflux.util.logs import configure_logging

    inherited = click.get_current_context().find_root().params.get("log_format", "text")
    configure_logging(level, log_format or inherited)
    try:
        sys.exit(run_daemon(resolve_config_path(config_path)))
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.render())
    except OSError as exc:  # the API's address is taken or not ours
        fail(EXIT_CONFIG, f"api.listen: cannot serve the API: {exc.strerror or exc}")


def _client(config_path: str | None) -> ApiClient:
    from veloflux.daemon.api.client import ApiClient
    from veloflux.daemon.api.fields import read_token
    from veloflux.daemon.audit import cli_actor

    config = load(config_path)
    try:
        token = read_token(config.api.token_file)
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.render())
    return ApiClient(config.api.host, config.api.port, token, actor=cli_actor().name)


def _call(action: Callable[[], object]) -> object:
    """Run one API call; map refusals and an unreachable daemon onto exit codes."""
    from veloflux.daemon.api.client import ApiRefused, ApiUnreachable

    try:
        return action()
    except ApiUnreachable as exc:
        fail(EXIT_PROXY, str(exc))
    except ApiRefused as exc:
        fail(EXIT_CONFIG, str(exc))


@click.group("override")
def override() -> None:
    """Pin a server's weight in the running daemon, or clear pins."""


@override.command("set", context_settings={"ignore_unknown_options": True})
@config_option
@click.argument("server", metavar="BACKEND/SERVER")
@click.argument("weight", metavar=f"WEIGHT (0..{HAPROXY_MAX_WEIGHT})")
@click.option("--ttl", default=None, help="expire after this long, e.g. 30m, 1h")
def override_set(config_path: str | None, server: str, weight: str, ttl: str | None) -> None:
    """Pin BACKEND/SERVER at WEIGHT (applied at the next tick, exactly, until cleared).

    A weight out of range is refused with exit 1, as the daemon refuses one (a bad
    request), not with click's usage error."""
    if not (weight.isascii() and weight.isdigit()) or int(weight) > HAPROXY_MAX_WEIGHT:
        fail(EXIT_CONFIG, f"WEIGHT: {weight!r} is not a whole number in 0..{HAPROXY_MAX_WEIGHT}")
    duration_option(ttl, "--ttl")  # checked here, not first by the daemon
    client = _client(config_path)
    pinned = _call(lambda: client.set_override(server, int(weight), ttl))
    click.echo(json.dumps(pinned, indent=2))


@override.command("clear")
@config_option
@click.argument("server", metavar="[BACKEND/SERVER]", required=False)
def override_clear(config_path: str | None, server: str | None) -> None:
    """Clear one pin, or every pin when no server is named."""
    client = _client(config_path)
    cleared = _call(lambda: client.clear_overrides(server))
    click.echo(json.dumps({"cleared": cleared}, indent=2))


@click.command("pause")
@config_option
@click.option("--reason", default="paused by an operator", show_default=True)
def pause(config_path: str | None, reason: str) -> None:
    """Hold every weight: the daemon keeps observing but writes nothing until resume."""
    client = _client(config_path)
    click.echo(json.dumps(_call(lambda: client.pause(reason)), indent=2))


@click.command("resume")
@config_option
def resume(config_path: str | None) -> None:
    """Let the daemon write weights again."""
    client = _client(config_path)
    click.echo(json.dumps(_call(client.resume), indent=2))


@click.command("status")
@config_option
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default=None,
    help="default: table at a terminal, JSON when piped (what scripts read)",
)
def status(config_path: str | None, output: str | None) -> None:
    """The running daemon's status: state, sources, model, pins, holds and the plan."""
    from veloflux.cli.render import make_console

    client = _client(config_path)
    answer = _call(client.status)
    console = make_console()
    if (output or ("table" if console.is_terminal else "json")) == "json":
        click.echo(json.dumps(answer, indent=2))
        return
    from veloflux.cli.status_view import status_view

    assert isinstance(answer, dict)
    console.print(status_view(answer))


COMMANDS = (run, override, pause, resume, status)
