"""The ``veloflux-agent`` command line: parse, load config, call one function, exit.

Exit codes are a contract: 0 success, 1 configuration error, 2 the proxy could not
be reached or refused a write.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

import click

from veloflux import __version__
from veloflux.config import Config, load_config, resolve_config_path
from veloflux.errors import ConfigError, SinkRejected, SourceUnavailable
from veloflux.events import Events
from veloflux.haproxy_runtime import RuntimeAPI
from veloflux.loop import Agent, TickResult
from veloflux.render import make_console, print_plan
from veloflux.sinks.haproxy import HAProxySink
from veloflux.sources.haproxy import HAProxySource

EXIT_OK, EXIT_CONFIG, EXIT_PROXY = 0, 1, 2

_config_option = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    help="YAML config (default: $VELOFLUX_CONFIG, then ./veloflux.yaml)",
)
_output_option = click.option(
    "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(config_path: str | None) -> Config:
    try:
        return load_config(resolve_config_path(config_path))
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.render())


def build_agent(config: Config, events: Events, strict_pools: bool = True) -> Agent:
    """Wire the real adapters for one configuration."""
    api = RuntimeAPI(config.haproxy.socket, config.haproxy.timeout_seconds)
    source = HAProxySource(
        api,
        clock=lambda: datetime.now(UTC),
        events=events,
        backends=config.haproxy.backends,
        consistent_hash_backends=config.haproxy.consistent_hash_backends,
    )
    return Agent(config, source, HAProxySink(api, events), events, strict_pools=strict_pools)


def _run(config_path: str | None, action: Callable[[Agent], TickResult]) -> TickResult:
    """Load, wire, run one action; map the error taxonomy onto exit codes."""
    config = _load(config_path)
    agent = build_agent(config, Events())
    try:
        return action(agent)
    except (SourceUnavailable, SinkRejected) as exc:
        _fail(EXIT_PROXY, str(exc))
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.render())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="veloflux-agent")
@click.option("--log-level", default="WARNING", show_default=True, envvar="VELOFLUX_LOG_LEVEL")
def main(log_level: str) -> None:
    """VeloFlux: learns and sets HAProxy backend weights, safely."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )


@main.command("check-config")
@_config_option
def check_config(config_path: str | None) -> None:
    """Validate the config without opening any connection."""
    _load(config_path)
    click.echo("OK")


@main.command("dry-run")
@_config_option
@_output_option
def dry_run(config_path: str | None, output: str) -> None:
    """Observe and plan; print what would be written, write nothing."""
    result = _run(config_path, lambda agent: agent.tick(write=False))
    print_plan(make_console(), result.plan, output, "dry-run: planned weights (nothing written)")


@main.command("apply")
@_config_option
@_output_option
def apply(config_path: str | None, output: str) -> None:
    """One observe-plan-act tick with writes, verified by read-back."""
    result = _run(config_path, lambda agent: agent.tick(write=True))
    print_plan(make_console(), result.plan, output, "apply: weights", result.report)
    if result.report is not None and result.report.failures:
        sys.exit(EXIT_PROXY)


@main.command("revert")
@_config_option
@_output_option
def revert(config_path: str | None, output: str) -> None:
    """Set every managed server back to its static weight at once."""
    result = _run(config_path, lambda agent: agent.revert())
    print_plan(make_console(), result.plan, output, "revert: static weights", result.report)
    if result.report is not None and result.report.failures:
        sys.exit(EXIT_PROXY)
