"""The command group and what every command shares: options, config loading, and the
exit-code contract.

Exit codes: 0 success, 1 configuration error (or, for ``train``, not enough history;
for the operator commands, a request the daemon refused; for ``check-config --online``,
a name the proxies lack or a socket below level admin), 2 the proxy (or, for the
operator commands, the daemon's API) could not be reached or refused a write (for
``record``, when no observation could be taken at all). A flag or value the command
line itself cannot take (an unknown flag, ``--output xml``, ``--since 0s``) is click's
usage error, exit 2, naming the flag. No bad input from a user ends in a traceback:
``tests/integration/test_cli_bad_input.py`` drives every command with it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import click

from veloflux import __version__
from veloflux.agent.build import build_agent
from veloflux.agent.ports import Driver, TickResult
from veloflux.config.load import load_config, resolve_config_path
from veloflux.config.schema import Config
from veloflux.errors import ConfigError, SinkRejected, SourceUnavailable
from veloflux.util.durations import parse_duration
from veloflux.util.events import Events
from veloflux.util.logs import LOG_FORMATS, LogFormat, configure_logging

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_CONFIG, EXIT_PROXY = 0, 1, 2

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    help="YAML config (default: $VELOFLUX_CONFIG, then ./veloflux.yaml)",
)
output_option = click.option(
    "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
# The levels ``logging`` knows by name. A click choice (any case) turns a typo such as
# ``--log-level LOUD`` into a usage error naming the valid ones, where logging's own
# check raised a ValueError that surfaced as a traceback.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="veloflux-agent")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="WARNING",
    show_default=True,
    envvar="VELOFLUX_LOG_LEVEL",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="VELOFLUX_LOG_FORMAT",
    help="json: one JSON object per line, for every command",
)
def main(log_level: str, log_format: LogFormat) -> None:
    """VeloFlux: learns and sets HAProxy and Envoy backend weights, safely."""
    configure_logging(log_level, log_format)


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load(config_path: str | None) -> Config:
    try:
        return load_config(resolve_config_path(config_path))
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.render())


def run_once(
    config_path: str | None, write: bool, action: Callable[[Driver], TickResult]
) -> TickResult:
    """Load, wire, run one action; map the error taxonomy onto exit codes."""
    return run_loaded(load(config_path), write, action)


def run_loaded(config: Config, write: bool, action: Callable[[Driver], TickResult]) -> TickResult:
    """``run_once`` for a config already loaded."""
    agent = build_agent(config, Events(), write=write)
    try:
        return action(agent)
    except (SourceUnavailable, SinkRejected) as exc:
        fail(EXIT_PROXY, str(exc))
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.render())


def seen(result: TickResult) -> dict[str, Any]:
    """What the plan's printout says about the observation's Prometheus features."""
    observation = result.observation
    return {
        "external": observation.external,
        "servers": len(observation.rows),
        "replicas": observation.replicas,
    }


def exit_if_a_proxy_failed(result: TickResult) -> None:
    """With several proxies, one that could not be driven: the others' plan is printed,
    then each failure, and the exit code says a proxy failed."""
    for failure in result.failures:
        click.echo(f"error: {failure.proxy} ({failure.reason}): {failure.message}", err=True)
    if result.failures:
        sys.exit(EXIT_PROXY)


def duration_option(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} must be longer than zero", param_hint=flag)
    return seconds


@contextlib.contextmanager
def progress_bar(
    console: Console, output: str, title: str = "training"
) -> Iterator[Callable[[str, float], None]]:
    """A progress bar on a terminal; silence when piped or when JSON is asked for."""
    if not (console.is_terminal and output == "table"):
        yield lambda _stage, _fraction: None
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(title, total=1.0)
        yield lambda stage, fraction: bar.update(task, completed=fraction, description=stage)
