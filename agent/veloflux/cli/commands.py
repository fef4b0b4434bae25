"""The ``veloflux-agent`` command line: parse, load config, call one function, exit.

Exit codes are a contract: 0 success, 1 configuration error (or, for ``train``, not
enough history; for the operator commands, a request the daemon refused), 2 the proxy
(or, for the operator commands, the daemon's API) could not be reached or refused a
write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click

from veloflux import __version__
from veloflux.agent.build import build_agent, build_sources, open_journal, open_registry
from veloflux.agent.ports import Driver, TickResult
from veloflux.cli.render import (
    make_console,
    models_table,
    print_plan,
    simulation_table,
    training_table,
)
from veloflux.config.load import load_config, resolve_config_path
from veloflux.config.schema import Config
from veloflux.errors import ConfigError, ModelUnavailable, SinkRejected, SourceUnavailable
from veloflux.util.durations import parse_duration
from veloflux.util.events import Events

if TYPE_CHECKING:
    from rich.console import Console

    from veloflux.daemon.api.client import ApiClient
    from veloflux.model.pipeline import TrainingReport
    from veloflux.model.registry import ModelEntry
    from veloflux.model.train import TrainSettings

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


def _run(
    config_path: str | None, write: bool, action: Callable[[Driver], TickResult]
) -> TickResult:
    """Load, wire, run one action; map the error taxonomy onto exit codes."""
    config = _load(config_path)
    agent = build_agent(config, Events(), write=write)
    try:
        return action(agent)
    except (SourceUnavailable, SinkRejected) as exc:
        _fail(EXIT_PROXY, str(exc))
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.render())


def _seen(result: TickResult) -> dict[str, Any]:
    """What the plan's printout says about the observation's Prometheus features."""
    observation = result.observation
    return {"external": observation.external, "servers": len(observation.rows)}


def _exit_if_a_proxy_failed(result: TickResult) -> None:
    """With several proxies, one that could not be driven: the others' plan is printed,
    then each failure, and the exit code says a proxy failed."""
    for failure in result.failures:
        click.echo(f"error: {failure.proxy} ({failure.reason}): {failure.message}", err=True)
    if result.failures:
        sys.exit(EXIT_PROXY)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="veloflux-agent")
@click.option("--log-level", default="WARNING", show_default=True, envvar="VELOFLUX_LOG_LEVEL")
def main(log_level: str) -> None:
    """VeloFlux: learns and sets HAProxy backend weights, safely."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )


@main.command("run")
@_config_option
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level", "level", default="INFO", show_default=True, envvar="VELOFLUX_LOG_LEVEL"
)
def run(config_path: str | None, log_format: Literal["text", "json"], level: str) -> None:
    """The daemon: tick every interval, retrain on schedule, serve the HTTP API."""
    from veloflux.daemon.service import run_daemon
    from veloflux.util.logs import configure_logging

    configure_logging(level, log_format)
    try:
        sys.exit(run_daemon(resolve_config_path(config_path)))
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.render())
    except OSError as exc:  # the API's address is taken or not ours
        _fail(EXIT_CONFIG, f"api.listen: cannot serve the API: {exc.strerror or exc}")


# --- operator commands: they talk to a running daemon through its HTTP API --------------


def _client(config_path: str | None) -> ApiClient:
    from veloflux.daemon.api.client import ApiClient
    from veloflux.daemon.api.fields import read_token

    config = _load(config_path)
    try:
        token = read_token(config.api.token_file)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.render())
    return ApiClient(config.api.host, config.api.port, token)


def _call(action: Callable[[], object]) -> object:
    """Run one API call; map refusals and an unreachable daemon onto exit codes."""
    from veloflux.daemon.api.client import ApiRefused, ApiUnreachable

    try:
        return action()
    except ApiUnreachable as exc:
        _fail(EXIT_PROXY, str(exc))
    except ApiRefused as exc:
        _fail(EXIT_CONFIG, str(exc))


@main.group("override")
def override() -> None:
    """Pin a server's weight in the running daemon, or clear pins."""


@override.command("set")
@_config_option
@click.argument("server", metavar="BACKEND/SERVER")
@click.argument("weight", type=click.IntRange(0, 256))
@click.option("--ttl", default=None, help="expire after this long, e.g. 30m, 1h")
def override_set(config_path: str | None, server: str, weight: int, ttl: str | None) -> None:
    """Pin BACKEND/SERVER at WEIGHT (applied at the next tick, exactly, until cleared)."""
    client = _client(config_path)
    click.echo(json.dumps(_call(lambda: client.set_override(server, weight, ttl)), indent=2))


@override.command("clear")
@_config_option
@click.argument("server", metavar="[BACKEND/SERVER]", required=False)
def override_clear(config_path: str | None, server: str | None) -> None:
    """Clear one pin, or every pin when no server is named."""
    client = _client(config_path)
    cleared = _call(lambda: client.clear_overrides(server))
    click.echo(json.dumps({"cleared": cleared}, indent=2))


@main.command("pause")
@_config_option
@click.option("--reason", default="paused by an operator", show_default=True)
def pause(config_path: str | None, reason: str) -> None:
    """Hold every weight: the daemon keeps observing but writes nothing until resume."""
    client = _client(config_path)
    click.echo(json.dumps(_call(lambda: client.pause(reason)), indent=2))


@main.command("resume")
@_config_option
def resume(config_path: str | None) -> None:
    """Let the daemon write weights again."""
    client = _client(config_path)
    click.echo(json.dumps(_call(client.resume), indent=2))


@main.command("status")
@_config_option
def status(config_path: str | None) -> None:
    """The running daemon's status: plan, model, last training, pins, pause."""
    client = _client(config_path)
    click.echo(json.dumps(_call(client.status), indent=2))


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
    result = _run(config_path, False, lambda agent: agent.tick(write=False))
    print_plan(result.plan, output, "dry-run: planned weights (nothing written)", **_seen(result))
    _exit_if_a_proxy_failed(result)


@main.command("apply")
@_config_option
@_output_option
def apply(config_path: str | None, output: str) -> None:
    """One observe-plan-act tick with writes, verified by read-back."""
    result = _run(config_path, True, lambda agent: agent.tick(write=True))
    print_plan(result.plan, output, "apply: weights", result.report, **_seen(result))
    _exit_if_a_proxy_failed(result)
    if result.report is not None and result.report.failures:
        sys.exit(EXIT_PROXY)


@main.command("revert")
@_config_option
@_output_option
def revert(config_path: str | None, output: str) -> None:
    """Set every managed server back to its static weight at once."""
    result = _run(config_path, True, lambda agent: agent.revert())
    print_plan(result.plan, output, "revert: static weights", result.report)
    _exit_if_a_proxy_failed(result)
    if result.report is not None and result.report.failures:
        sys.exit(EXIT_PROXY)


@main.command("render-envoy")
@_config_option
@click.option("--out", "out_dir", required=True, metavar="DIR", help="where to write the files")
def render_envoy(config_path: str | None, out_dir: str) -> None:
    """Write the static-weight EDS files and a CDS file to bootstrap Envoy with."""
    from veloflux.envoy.eds import EdsError, Endpoint, render_cds, render_eds, write_eds

    config = _load(config_path)
    if config.envoy is None:
        _fail(EXIT_CONFIG, "envoy: this config has no envoy section")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for cluster in config.envoy.clusters:
            endpoints = [Endpoint(e.address, e.port, e.weight) for e in cluster.endpoints]
            text = render_eds(cluster.name, endpoints, "static", config.envoy.templates_dir)
            path = write_eds(out, cluster.name, text)
            names.append(cluster.name)
            click.echo(f"wrote {path}")
        cds = out / "cds.yaml"
        text = render_cds(config.envoy.eds_dir, names, templates_dir=config.envoy.templates_dir)
        cds.write_text(text, encoding="utf-8")
        click.echo(f"wrote {cds} (its clusters read their endpoints from {config.envoy.eds_dir})")
    except (EdsError, OSError) as exc:
        _fail(EXIT_CONFIG, f"--out {out}: {exc}")


@main.command("record")
@_config_option
@click.option("--duration", default="10m", show_default=True, help="e.g. 90s, 10m, 2h")
def record(config_path: str | None, duration: str) -> None:
    """Observe every interval and append to the journal; write no weight."""
    config = _load(config_path)
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        _fail(EXIT_CONFIG, f"--duration: {exc}")
    events = Events()
    journal = open_journal(config, events, create=True)
    if journal is None:
        _fail(EXIT_CONFIG, f"ai.history_path: cannot open {config.ai.history_path} (see the log)")
    sources = build_sources(config, events)
    deadline = time.monotonic() + seconds
    samples = 0
    with journal:
        while True:
            started = time.monotonic()
            for source in sources:
                try:
                    samples += journal.append(source.observe())
                except SourceUnavailable as exc:
                    click.echo(f"skipped one observation: {exc}", err=True)
            if started + config.interval_seconds > deadline:
                break
            time.sleep(max(0.0, started + config.interval_seconds - time.monotonic()))
        click.echo(
            f"recorded {samples} samples into {config.ai.history_path} "
            f"({journal.count()} in the journal)"
        )


def _duration_option(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


@main.command("train")
@_config_option
@_output_option
@click.option(
    "--from-prometheus",
    is_flag=True,
    help="train on Prometheus's history of HAProxy's exporter (and the features)",
)
@click.option("--since", default=None, help="with --from-prometheus: how far back [default: 7d]")
@click.option("--step", default=None, help="with --from-prometheus: sample spacing [default: 15s]")
def train(
    config_path: str | None,
    output: str,
    from_prometheus: bool,
    since: str | None,
    step: str | None,
) -> None:
    """Train a model from the journal (or Prometheus); promote it only if it beats the
    current one."""
    from veloflux.model.train import NotEnoughData, TrainSettings

    since_s, step_s = _duration_option(since, "--since"), _duration_option(step, "--step")
    if not from_prometheus and (since_s or step_s):
        raise click.UsageError("--since and --step go with --from-prometheus")
    config = _load(config_path)
    events = Events()
    settings = TrainSettings(min_rows=config.ai.min_training_rows)
    console = make_console()
    try:
        if from_prometheus:
            result = _train_from_prometheus(
                config, events, settings, console, output, since_s or 7 * 86400.0, step_s or 15.0
            )
        else:
            result = _train_from_journal(config, events, settings, console, output)
    except NotEnoughData as exc:
        _fail(EXIT_CONFIG, str(exc))
    except ModelUnavailable as exc:
        _fail(EXIT_CONFIG, f"ai.model_dir: {exc}")
    if output == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        console.print(training_table(result))


def _train_from_journal(
    config: Config, events: Events, settings: TrainSettings, console: Console, output: str
) -> TrainingReport:
    from veloflux.model.pipeline import train_from_journal

    journal = open_journal(config, events, create=False)
    if journal is None:
        _fail(
            EXIT_CONFIG,
            f"ai.history_path: no journal at {config.ai.history_path}; "
            "run `veloflux-agent record` first",
        )
    with journal, _progress(console, output) as progress:
        return train_from_journal(journal, open_registry(config, events), settings, progress)


def _train_from_prometheus(
    config: Config,
    events: Events,
    settings: TrainSettings,
    console: Console,
    output: str,
    since_seconds: float,
    step_seconds: float,
) -> TrainingReport:
    """Pull HAProxy's exporter history (and the features) from Prometheus, then train
    on it as on the journal."""
    from veloflux.agent.build import feature_queries
    from veloflux.model.pipeline import train_from_samples
    from veloflux.prometheus.api import PrometheusAPI, PrometheusError
    from veloflux.prometheus.history import pull_history

    prom = config.prometheus
    if prom is None:
        _fail(EXIT_CONFIG, "prometheus: required for --from-prometheus (its url at least)")
    if config.haproxy is None:
        _fail(EXIT_CONFIG, "haproxy: --from-prometheus reads HAProxy's exporter series")
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(seconds=since_seconds)
    api = PrometheusAPI(prom.url, max(prom.timeout_seconds, 30.0), prom.headers)
    try:
        with _progress(console, output, "pulling history") as progress:
            samples, pulled = pull_history(
                api,
                config.haproxy.backends,
                feature_queries(config, "haproxy"),
                start,
                end,
                step_seconds,
                events,
                progress,
            )
    except PrometheusError as exc:
        _fail(EXIT_PROXY, str(exc))
    finally:
        api.close()
    click.echo(
        f"pulled {pulled.rows} samples of {pulled.servers} server(s) from {prom.url} in "
        f"{pulled.queries} queries, {pulled.seconds:.1f}s"
        + (f"; left out (ambiguous): {', '.join(pulled.skipped)}" if pulled.skipped else ""),
        err=True,
    )
    with _progress(console, output) as progress:
        return train_from_samples(samples, open_registry(config, events), settings, progress)


@main.command("simulate")
@click.argument("scenario_path", metavar="SCENARIO.yaml", type=click.Path(dir_okay=False))
@click.option(
    "--dispatcher",
    default="roundrobin",
    show_default=True,
    help="roundrobin, leastconn, random(N), least_request, p2c_peak_ewma, jsq",
)
@click.option(
    "--strategy",
    default="veloflux",
    show_default=True,
    help="static-equal, capacity-oracle, heuristic, veloflux",
)
@click.option(
    "--seeds",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="runs, with seeds from the scenario's seed upwards",
)
@_output_option
def simulate(scenario_path: str, dispatcher: str, strategy: str, seeds: int, output: str) -> None:
    """Replay a scenario in the simulator: what a dispatcher and weight strategy give."""
    from veloflux.sim.dispatchers import make_dispatcher
    from veloflux.sim.run import make_strategy, run_cell
    from veloflux.sim.scenario import load_scenario

    try:
        scenario = load_scenario(Path(scenario_path))
        make_dispatcher(dispatcher, [0], __import__("random").Random(0))
        make_strategy(strategy)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.render())
    except ValueError as exc:
        _fail(EXIT_CONFIG, str(exc))
    seed_list = [scenario.seed + k for k in range(seeds)]
    result = run_cell(scenario, dispatcher, strategy, seed_list)
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    make_console().print(simulation_table(result))


@main.group("model")
def model() -> None:
    """Inspect the model registry."""


@model.command("list")
@_config_option
@_output_option
def model_list(config_path: str | None, output: str) -> None:
    """Every kept model version, newest first, with its status and figures."""
    config = _load(config_path)
    entries = open_registry(config, Events()).entries()
    if output == "json":
        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
    else:
        make_console().print(models_table(entries))


@model.command("show")
@_config_option
@click.argument("version", required=False)
def model_show(config_path: str | None, version: str | None) -> None:
    """One version's metadata (default: the current model)."""
    config = _load(config_path)
    registry = open_registry(config, Events())
    try:
        loaded = registry.load(version)
    except ModelUnavailable as exc:
        _fail(EXIT_CONFIG, str(exc))
    meta = {k: v for k, v in loaded.metadata.items() if k != "ood"}
    click.echo(json.dumps(meta, indent=2, default=str))


def _entry_json(entry: ModelEntry) -> dict[str, object]:
    return {
        "version": entry.version,
        "created_at": entry.created_at.isoformat(),
        "status": entry.status,
        "reason": entry.reason,
        "metrics": dict(entry.metadata.get("metrics", {})),
    }


@contextlib.contextmanager
def _progress(
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
