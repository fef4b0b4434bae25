"""The value types the config schema is built from: durations, names, weights,
addresses and crontabs, each validated where it is parsed."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from veloflux.errors import UnsafeName
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT
from veloflux.prometheus import promql
from veloflux.util.durations import parse_duration
from veloflux.util.names import parse_server_key

Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _server_key(value: str) -> str:
    try:
        parse_server_key(value)
    except UnsafeName as exc:
        raise ValueError(str(exc)) from None
    return value


ServerKey = Annotated[str, AfterValidator(_server_key)]


def _feature_name(value: str) -> str:
    if not promql.FEATURE_NAME.match(value):
        raise ValueError(
            f"feature name {value!r}: lower-case letters, digits and '_', starting with a letter"
        )
    return value


def _feature_query(value: str) -> str:
    problems = promql.syntax_problems(value)
    if problems:
        raise ValueError("PromQL: " + "; ".join(problems))
    return value


FeatureName = Annotated[str, AfterValidator(_feature_name)]

FeatureQuery = Annotated[str, AfterValidator(_feature_query)]

Weight = Annotated[int, Field(ge=0, le=HAPROXY_MAX_WEIGHT)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9477`` for IPv6); raise ``ValueError`` if malformed."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9477")
    if not 0 <= int(port_text) < 65536:
        raise ValueError("port must be in 0..65535 (0: any free port)")
    return host, int(port_text)


def check_crontab(expression: str) -> None:
    """Raise ``ValueError`` unless ``expression`` is a 5-field crontab APScheduler accepts.

    APScheduler is imported here, not at the top: only a config that sets the key pays
    for it, and a one-shot dry-run stays quick.
    """
    if len(expression.split()) != 5:
        raise ValueError("must have 5 fields: minute hour day month day-of-week")
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"not a valid crontab: {exc}") from None
