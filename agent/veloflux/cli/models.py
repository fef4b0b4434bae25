"""Commands about models: train one (from the journal or Prometheus), list and show
the kept versions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from veloflux.agent.build import open_registry
from veloflux.cli.app import (
    EXIT_CONFIG,
    EXIT_PROXY,
    config_option,
    duration_option,
    fail,
    load,
    output_option,
    progress_bar,
)
from veloflux.cli.render import make_console, models_table, training_table
from veloflux.config.dask import scheduler_host
from veloflux.config.schema import Config
from veloflux.daemon.audit import cli_actor, open_audit
from veloflux.errors import ModelUnavailable
from veloflux.model.registry import CURRENT, ModelEntry, Registry
from veloflux.util.events import Events, quiet_events

# What ``model list`` prints when no version is kept: training needs a journal first.
NO_MODEL_HINT = (
    "no model yet in {model_dir}: run `veloflux-agent train` "
    "(needs history: `veloflux-agent record`)"
)


@click.command("train")
@config_option
@output_option
@click.option(
    "--from-prometheus",
    is_flag=True,
    help="train on Prometheus's history of HAProxy's exporter (and the features); "
    "Envoy clusters train from the journal only",
)
@click.option("--since", default=None, help="with --from-prometheus: how far back [default: 7d]")
@click.option("--step", default=None, help="with --from-prometheus: sample spacing [default: 15s]")
@click.option(
    "--dask",
    "scheduler",
    metavar="ADDRESS",
    default=None,
    help="train on the Dask cluster at ADDRESS (tcp://HOST:PORT or tls://HOST:PORT; "
    "TLS files from ai.dask); its workers read the journal, or --parquet",
)
@click.option(
    "--parquet",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="read the history from a `history export --format parquet` directory",
)
def train(
    config_path: str | None,
    output: str,
    from_prometheus: bool,
    since: str | None,
    step: str | None,
    scheduler: str | None,
    parquet: Path | None,
) -> None:
    """Train a model from the journal (or Prometheus); promote it only if it beats the
    current one."""
    from veloflux.agent import learn
    from veloflux.history.journal import HistoryError
    from veloflux.model.train import NotEnoughData
    from veloflux.prometheus.api import PrometheusError
    from veloflux.prometheus.history import PullReport

    since_s, step_s = duration_option(since, "--since"), duration_option(step, "--step")
    if not from_prometheus and (since is not None or step is not None):
        raise click.UsageError("--since and --step go with --from-prometheus")
    if from_prometheus and (scheduler is not None or parquet is not None):
        raise click.UsageError("--dask and --parquet read the journal's history, not Prometheus's")
    if scheduler is not None:
        try:
            scheduler_host(scheduler)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--dask") from None
    if parquet is not None and not parquet.is_dir():
        raise click.BadParameter(f"{parquet} is not a directory", param_hint="--parquet")
    config = load(config_path)
    events = Events()
    settings = learn.training_settings(config, threads=learn.FOREGROUND_THREADS)
    console = make_console()

    def pulled(report: PullReport) -> None:
        skipped = f"; left out (ambiguous): {', '.join(report.skipped)}" if report.skipped else ""
        click.echo(
            f"pulled {report.rows} samples of {report.servers} server(s) from "
            f"{config.prometheus.url if config.prometheus else '?'} in {report.queries} "
            f"queries, {report.seconds:.1f}s{skipped}",
            err=True,
        )

    try:
        with progress_bar(console, output) as progress:
            if from_prometheus:
                result = learn.train_on_prometheus(
                    config,
                    events,
                    settings,
                    learn.PROMETHEUS_SINCE_SECONDS if since_s is None else since_s,
                    learn.PROMETHEUS_STEP_SECONDS if step_s is None else step_s,
                    progress,
                    pulled,
                )
            elif scheduler is not None:
                result = learn.train_on_dask(config, events, settings, scheduler, parquet, progress)
            elif parquet is not None:
                result = learn.train_on_parquet(config, events, settings, parquet, progress)
            else:
                result = learn.train_on_journal(config, events, settings, progress)
    except learn.DaskUnavailable as exc:
        fail(EXIT_PROXY, str(exc))
    except HistoryError as exc:
        fail(EXIT_CONFIG, str(exc))
    except learn.NoHistory as exc:
        hint = "" if from_prometheus else "; run `veloflux-agent record` first"
        fail(EXIT_CONFIG, f"{exc}{hint}")
    except NotEnoughData as exc:
        fail(EXIT_CONFIG, str(exc))
    except ModelUnavailable as exc:
        fail(EXIT_CONFIG, f"ai.model_dir: {exc}")
    except PrometheusError as exc:
        fail(EXIT_PROXY, str(exc))
    if result.promoted:
        open_audit(config.ai, events).action(
            "model_promote", cli_actor(), result.reason, model_version=result.entry.version
        )
    if output == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        console.print(training_table(result))


@click.group("model")
def model() -> None:
    """Inspect the model registry; promote a version or roll back to the previous one."""


@model.command("list")
@config_option
@output_option
def model_list(config_path: str | None, output: str) -> None:
    """Every kept model version, newest first, with its status and figures."""
    config = load(config_path)
    if config.ai.model_dir.exists() and not config.ai.model_dir.is_dir():
        fail(EXIT_CONFIG, f"ai.model_dir: {config.ai.model_dir} is a file, not a directory")
    entries = open_registry(config, Events()).entries()
    if output == "json":
        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
    elif not entries:  # JSON stays [], which a script reads as "none" as it is
        click.echo(NO_MODEL_HINT.format(model_dir=config.ai.model_dir))
    else:
        make_console().print(models_table(entries))


@model.command("show")
@config_option
@click.argument("version", required=False)
def model_show(config_path: str | None, version: str | None) -> None:
    """One version's metadata (default: the current model)."""
    config = load(config_path)
    registry = open_registry(config, quiet_events())  # the error below says it once
    try:
        loaded = registry.load(version)
    except ModelUnavailable as exc:
        fail(EXIT_CONFIG, str(exc))
    meta = {k: v for k, v in loaded.metadata.items() if k != "ood"}
    click.echo(json.dumps(meta, indent=2, default=str))


@model.command("promote")
@config_option
@click.argument("version")
@click.option("--force", is_flag=True, help="promote even if the gate refuses it")
@click.option("--reason", default="promoted by hand", show_default=True)
def model_promote(config_path: str | None, version: str, force: bool, reason: str) -> None:
    """Make VERSION the current model, through the gate on the figures it recorded
    (against the naive baseline and the weight probes); a running daemon uses it from
    its next tick. Exit 1 when the gate refuses (--force promotes anyway)."""
    from veloflux.model.pipeline import stored_gate

    config = load(config_path)
    registry = open_registry(config, Events())
    entry = next((e for e in registry.entries() if e.version == version), None)
    if entry is None:
        known = ", ".join(e.version for e in registry.entries()[:5]) or "none"
        fail(EXIT_CONFIG, f"no model {version} in {config.ai.model_dir} (newest: {known})")
    if entry.status == CURRENT:
        click.echo(f"{version} is already the current model")
        return
    passed, verdict = stored_gate(entry.metadata)
    if not passed and not force:
        fail(EXIT_CONFIG, f"the gate refuses {version}: {verdict} (--force promotes anyway)")
    forced = "" if passed else f" (forced past the gate: {verdict})"
    _switch(config, registry, version, "model_promote", f"{reason}{forced}")


@model.command("rollback")
@config_option
@click.option("--reason", default="rolled back by hand", show_default=True)
def model_rollback(config_path: str | None, reason: str) -> None:
    """Make the model that was current before the last promotion current again (no
    gate: it was trusted before); a running daemon uses it from its next tick."""
    config = load(config_path)
    registry = open_registry(config, Events())
    previous = registry.previous_version()
    if previous is None:
        fail(EXIT_CONFIG, f"no earlier current model to roll back to in {config.ai.model_dir}")
    if all(e.version != previous for e in registry.entries()):
        fail(EXIT_CONFIG, f"the previous current model {previous} is no longer kept (pruned)")
    _switch(config, registry, previous, "model_rollback", reason)


def _switch(config: Config, registry: Registry, version: str, action: str, reason: str) -> None:
    """Promote ``version``, audited with who did it, and say so."""
    old = registry.current_version()
    try:
        registry.promote(version, f"{reason} ({cli_actor().name})")
    except ModelUnavailable as exc:
        fail(EXIT_CONFIG, f"cannot make {version} current: {exc}")
    open_audit(config.ai, Events()).action(
        action, cli_actor(), reason, old=old, new=version, model_version=version
    )
    click.echo(f"current model: {version} (was {old or 'none'})")


def _entry_json(entry: ModelEntry) -> dict[str, object]:
    return {
        "version": entry.version,
        "created_at": entry.created_at.isoformat(),
        "status": entry.status,
        "reason": entry.reason,
        "metrics": dict(entry.metadata.get("metrics", {})),
    }


COMMANDS = (train, model)
