"""Commands that work on the proxy next to them, once, without a daemon: check the
config, preview a plan, apply or revert one tick, record history."""

from __future__ import annotations

import math
import sys
import time

import click

from veloflux.agent.online import check_online
from veloflux.agent.ports import Driver, TickResult
from veloflux.cli.app import (
    EXIT_CONFIG,
    EXIT_PROXY,
    config_option,
    duration_option,
    exit_if_a_proxy_failed,
    fail,
    load,
    output_option,
    run_loaded,
    seen,
)
from veloflux.cli.daemon_guard import pause_for_revert, refuse_to_fight
from veloflux.cli.render import print_plan
from veloflux.config.load import load_config_checked, resolve_config_path
from veloflux.config.schema import Config
from veloflux.daemon.audit import Actor, cli_actor, last_written, open_audit
from veloflux.errors import ConfigError
from veloflux.util.durations import format_duration
from veloflux.util.events import Events, quiet_events


@click.command("check-config")
@config_option
@click.option(
    "--online",
    is_flag=True,
    help="also read every configured proxy (read-only): its backends, clusters and "
    "policy names exist, HAProxy's socket is at level admin (exit 2: a proxy unreachable)",
)
def check_config(config_path: str | None, online: bool) -> None:
    """Validate the config without opening any connection: every problem (exit 1) and
    every warning (printed; exit 0 when they are all there is) in one run.

    With --online, a valid file is then checked against the proxies it names, read-only:
    every problem with its path (exit 1; exit 2 when a proxy could not be read at all).
    Nothing is written, to a proxy, the journal or the audit log.
    """
    path = resolve_config_path(config_path)
    try:
        config, warnings = load_config_checked(path)
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.render())
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    verdict = f"OK, with {len(warnings)} warning(s)" if warnings else "OK"
    if online:
        found = check_online(config)
        for warning in found.warnings:
            click.echo(f"warning: {warning}", err=True)
        if found.problems:
            code = EXIT_PROXY if found.unreachable else EXIT_CONFIG
            fail(code, ConfigError(found.problems, f"{path}, read online").render())
        verdict += f" (online: {', '.join(found.reached)})"
    click.echo(verdict)


@click.command("dry-run")
@config_option
@output_option
def dry_run(config_path: str | None, output: str) -> None:
    """Observe and plan; print what would be written, write nothing."""
    config = load(config_path)
    result = run_loaded(config, False, lambda agent: _seeded(agent, config).tick(write=False))
    print_plan(result.plan, output, "dry-run: planned weights (nothing written)", **seen(result))
    exit_if_a_proxy_failed(result)


force_option = click.option(
    "--force",
    is_flag=True,
    help="write even beside a running daemon that cannot be paused "
    "(it puts its own weights back at its next tick)",
)


@click.command("apply")
@config_option
@output_option
@force_option
def apply(config_path: str | None, output: str, force: bool) -> None:
    """One observe-plan-act tick with writes, verified by read-back.

    Refuses (exit 2) while a daemon on api.listen is running and not paused: it would
    undo the write at its next tick.
    """
    config = load(config_path)
    actor = cli_actor()
    refuse_to_fight(config, actor, force)
    result = run_loaded(config, True, lambda agent: _seeded(agent, config).tick(write=True))
    _audit(config, result, "apply", actor, "")
    print_plan(result.plan, output, "apply: weights", result.report, **seen(result))
    exit_if_a_proxy_failed(result)
    if result.report is not None and result.report.failures:
        sys.exit(EXIT_PROXY)


@click.command("revert")
@config_option
@output_option
@force_option
@click.option("--reason", default="reverted from the command line", show_default=True)
def revert(config_path: str | None, output: str, force: bool, reason: str) -> None:
    """Set every managed server back to its static weight at once.

    A daemon running on api.listen is paused first (with api.token_file), so that the
    static weights stay; `veloflux-agent resume` hands the weights back to it.
    """
    config = load(config_path)
    actor = cli_actor()
    pause_for_revert(config, actor, f"revert: {reason}", force)
    result = run_loaded(config, True, lambda agent: agent.revert())
    _audit(config, result, "revert", actor, reason)
    print_plan(result.plan, output, "revert: static weights", result.report)
    exit_if_a_proxy_failed(result)
    if result.report is not None and result.report.failures:
        sys.exit(EXIT_PROXY)


def _seeded(agent: Driver, config: Config) -> Driver:
    """The agent told what VeloFlux last wrote (the audit log), so that its one tick
    holds a weight set outside VeloFlux as the daemon would; and, when the journal is
    too old for the model (right after ``record`` then ``train``), given a fresh
    interval of its own: two observations one ``interval`` apart, announced."""
    agent.seed_written(last_written(config.ai.audit_log))
    age = agent.stale_history()
    if age is not None:
        old = "is empty" if math.isinf(age) else f"is {format_duration(age)} old"
        click.echo(
            f"the journal's newest sample {old} (policy.stale_after is "
            f"{format_duration(config.stale_after_seconds)}): observing twice, "
            f"{format_duration(config.interval_seconds)} apart, so the model has a fresh "
            "interval to judge",
            err=True,
        )
        agent.sample()
        time.sleep(config.interval_seconds)
    return agent


def _audit(config: Config, result: TickResult, action: str, actor: Actor, reason: str) -> None:
    """The weights this command wrote, in the same audit log as the daemon's."""
    if result.report is None or not result.report.applied:
        return
    log = open_audit(config.ai, Events())
    written = log.record(
        result.plan, result.report, action=action, actor=actor, operator_reason=reason
    )
    if not written:
        click.echo(f"warning: could not append to the audit log {log.path}", err=True)


@click.command("record")
@config_option
@click.option("--duration", default="10m", show_default=True, help="e.g. 90s, 10m, 2h")
def record(config_path: str | None, duration: str) -> None:
    """Observe every interval and append to the journal; write no weight."""
    from veloflux.agent.learn import NoHistory
    from veloflux.agent.record import record as record_for

    seconds = duration_option(duration, "--duration")
    assert seconds is not None
    config = load(config_path)
    skips: list[str] = []

    def skipped(exc: Exception) -> None:
        skips.append(str(exc))
        click.echo(f"skipped one observation: {exc}", err=True)

    try:
        report = record_for(config, quiet_events(), seconds, skipped=skipped)
    except NoHistory as exc:
        fail(EXIT_CONFIG, str(exc))
    if not report.samples and skips:  # the proxy never answered: nothing was recorded
        fail(EXIT_PROXY, f"nothing recorded: {skips[-1]}")
    click.echo(
        f"recorded {report.samples} samples into {config.ai.history_path}, "
        f"{report.with_traffic} of them with traffic ({report.journal_rows} in the journal)"
    )
    if report.samples and not report.with_traffic:
        click.echo(
            "warning: no request reached the servers while recording: `train` learns only "
            "from intervals with traffic; record again while the proxy serves requests",
            err=True,
        )


COMMANDS = (check_config, dry_run, apply, revert, record)
