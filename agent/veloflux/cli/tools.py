"""Tools beside the agent: replay a scenario in the simulator, and write the files an
Envoy starts from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click

from veloflux.cli.app import EXIT_CONFIG, config_option, fail, load, output_option
from veloflux.cli.render import make_console, simulation_table
from veloflux.errors import ConfigError


@click.command("simulate")
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
    help="static-equal, capacity-oracle, heuristic, veloflux, veloflux-proxy-only, static-maxconn",
)
@click.option(
    "--seeds",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="runs, with seeds from the scenario's seed upwards",
)
@output_option
def simulate(scenario_path: str, dispatcher: str, strategy: str, seeds: int, output: str) -> None:
    """Replay a scenario in the simulator: what a dispatcher and weight strategy give."""
    from veloflux.sim.dispatchers import make_dispatcher
    from veloflux.sim.run import make_strategy, run_cell
    from veloflux.sim.scenario import load_scenario

    for flag, check in (
        ("--dispatcher", lambda: make_dispatcher(dispatcher, [0], random.Random(0))),
        ("--strategy", lambda: make_strategy(strategy)),
    ):
        try:
            check()  # refuses an unknown name, before the file is read
        except ValueError as exc:
            fail(EXIT_CONFIG, f"{flag}: {exc}")  # exit 1, as simulate has always said
    try:
        scenario = load_scenario(Path(scenario_path))
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.render())
    except ValueError as exc:
        fail(EXIT_CONFIG, str(exc))
    seed_list = [scenario.seed + k for k in range(seeds)]
    result = run_cell(scenario, dispatcher, strategy, seed_list)
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    make_console().print(simulation_table(result))


@click.command("render-envoy")
@config_option
@click.option("--out", "out_dir", required=True, metavar="DIR", help="where to write the files")
def render_envoy(config_path: str | None, out_dir: str) -> None:
    """Write the static-weight EDS files and a CDS file to bootstrap Envoy with."""
    from veloflux.envoy.eds import EdsError, Endpoint, write_bootstrap

    config = load(config_path)
    envoy = config.envoy
    if envoy is None:
        fail(EXIT_CONFIG, "envoy: this config has no envoy section")
    clusters = {
        c.name: [Endpoint(e.address, e.port, e.weight) for e in c.endpoints] for c in envoy.clusters
    }
    out = Path(out_dir)
    try:
        *eds_files, cds = write_bootstrap(out, clusters, envoy.eds_dir, envoy.templates_dir)
    except EdsError as exc:
        fail(EXIT_CONFIG, f"--out {out}: {exc}")
    for path in eds_files:
        click.echo(f"wrote {path}")
    click.echo(f"wrote {cds} (its clusters read their endpoints from {envoy.eds_dir})")


COMMANDS = (simulate, render_envoy)
