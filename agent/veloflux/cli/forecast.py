"""``forecast``: each pool's load ahead and the servers its peak needs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from veloflux.cli.app import EXIT_CONFIG, config_option, duration_option, fail, load, output_option
from veloflux.cli.render import make_console
from veloflux.util.events import Events


@click.command("forecast")
@config_option
@output_option
@click.option("--pool", "pools", multiple=True, help="only this pool (repeatable)")
@click.option(
    "--horizon",
    "horizons",
    multiple=True,
    help="forecast this far ahead (repeatable, at most 1d) [default: forecast.horizons]",
)
def forecast(
    config_path: str | None, output: str, pools: tuple[str, ...], horizons: tuple[str, ...]
) -> None:
    """Forecast each pool's request rate (with an 80% interval) from the journal, and
    recommend how many servers its peak needs at forecast.target_utilization."""
    from veloflux.agent.forecasting import NoLoadHistory, forecast_pools, outlook_json

    seconds = [s for s in (duration_option(h, "--horizon") for h in horizons) if s is not None]
    if any(s > 86400 for s in seconds):
        raise click.BadParameter("a horizon can be at most 1d", param_hint="--horizon")
    config = load(config_path)
    if seconds and min(seconds) < config.forecast.step_seconds:
        raise click.BadParameter(
            f"shorter than one step ({config.forecast.step_seconds:g}s)", param_hint="--horizon"
        )
    made_at = datetime.now(UTC)
    try:
        outlooks = forecast_pools(config, Events(), pools, seconds)
    except NoLoadHistory as exc:
        fail(EXIT_CONFIG, f"{exc}; run `veloflux-agent record` (or the daemon) first")
    if output == "json":
        click.echo(json.dumps(outlook_json(outlooks, made_at), indent=2))
        return
    console = make_console()
    for o in outlooks:
        if o.forecast is None:
            console.print(f"{o.pool}: no forecast: {o.problem}")
            continue
        for h in o.forecast.horizons:
            console.print(
                f"{o.pool} +{h.horizon_seconds / 60:g}m ({h.at:%H:%M} UTC): "
                f"{h.point:,.1f} req/s [{h.lower:,.1f}-{h.upper:,.1f}] by {h.method}"
            )
        if o.recommendation is not None:
            console.print(o.recommendation.reason)


COMMANDS = (forecast,)
