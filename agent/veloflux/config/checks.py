"""The checks that span fields or sections, as plain functions over the raw config.

Written as pydantic ``model_validator``s they would run only once every field of
their model had parsed, so a broken file showed its problems over several runs:
wrong types first, then the cross-field checks, then the names. Here each check
reads just the values it needs through a ``View`` (``config/view.py``) and runs
whenever those are sound, whatever else is wrong, so ``check-config`` lists every
problem in one run; ``validate_config`` (``config/load.py``) joins their problems to
the schema's. A check returns its problems with their YAML paths and raises nothing
but ``Unknown``, which skips it: a value it needs has its own problem reported.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from veloflux.config.dask_checks import dask_problems, dask_warnings
from veloflux.config.schema import Config
from veloflux.config.view import Part, Unknown, View
from veloflux.errors import ConfigProblem
from veloflux.prometheus import promql
from veloflux.util.durations import format_duration

Check = Callable[[View], Iterable[ConfigProblem]]

# How far ahead a crontab's gaps are measured: a week and a day, so that a weekly
# schedule shows its longest gap wherever the week starts.
CRON_HORIZON = timedelta(days=8)
# A crontab firing more often than this over the horizon is measured on its first so many.
CRON_MAX_FIRES = 2000


def _sections() -> tuple[str, ...]:
    """The top-level keys that hold a section: what ``VELOFLUX_SECTION__KEY`` may name."""
    return tuple(
        sorted(
            field.alias or name
            for name, field in Config.model_fields.items()
            if any(
                isinstance(t, type) and issubclass(t, BaseModel)
                for t in (field.annotation, *get_args(field.annotation))
            )
        )
    )


SECTIONS = _sections()


def run_checks(
    data: Mapping[str, Any],
    problem_locs: Iterable[Sequence[Part]],
    checks: Sequence[Check] | None = None,
) -> list[ConfigProblem]:
    """Every problem the cross-field checks find in ``data``; ``problem_locs`` are where
    the schema found its own, so that no check reads a value that did not parse."""
    view = View(data, problem_locs)
    problems: list[ConfigProblem] = []
    for check in CHECKS if checks is None else checks:
        try:
            for problem in check(view):
                problems.append(problem)
        except Unknown:
            continue
    return problems


def _known(view: View, path: str, *more: Part) -> Any:
    """The value, or None where it is not known."""
    try:
        return view.get(path, *more)
    except Unknown:
        return None


# --- the proxies and their pools ---------------------------------------------------------


def _a_proxy(view: View) -> Iterable[ConfigProblem]:
    if not view.present("haproxy") and not view.present("envoy"):
        yield ConfigProblem("haproxy", "required (or envoy): which proxy should VeloFlux drive?")


def _cluster_names(view: View) -> list[str]:
    """Every cluster's name; ``Unknown`` unless each is sound."""
    return [view.get("envoy.clusters", i, "name") for i in range(view.size("envoy.clusters"))]


def _one_namespace_of_pools(view: View) -> Iterable[ConfigProblem]:
    """With both proxies, pools share one namespace (overrides, metrics, history name a
    pool by its name alone), and "every backend" could take a cluster's name at a reload."""
    if not (view.present("haproxy") and view.present("envoy")):
        return
    backends = view.get("haproxy.backends")
    if backends is None:
        yield ConfigProblem(
            "haproxy.backends",
            "required when envoy is set too: list the HAProxy backends to manage, so that "
            "no pool name is claimed by both proxies",
        )
        return
    count = view.size("envoy.clusters")
    clusters = {_known(view, "envoy.clusters", i, "name") for i in range(count)}
    shared = [name for name in backends if name in clusters]
    if shared:
        yield ConfigProblem(
            "envoy.clusters",
            f"{', '.join(map(repr, shared))} is also in haproxy.backends; "
            "a pool name must be unique across the proxies",
        )


def _weights_name_managed_pools(view: View) -> Iterable[ConfigProblem]:
    pools: list[str] = []
    where: list[str] = []
    if view.present("haproxy"):
        backends = view.get("haproxy.backends")
        if backends is None:  # every backend of HAProxy's: any name may be one
            return
        pools += backends
        where.append("haproxy.backends")
    if view.present("envoy"):
        pools += _cluster_names(view)
        where.append("envoy.clusters")
    if not where:
        return
    for section in ("static_weights", "overrides"):
        for key in _keys(view, f"policy.{section}"):
            if _known(view, f"policy.{section}", key) is None:
                continue  # the key or its weight has a problem of its own
            backend = key.partition("/")[0]
            if backend not in pools:
                yield ConfigProblem(
                    f"policy.{section}.{key}",
                    f"backend {backend!r} is not in {' or '.join(where)}",
                )


def _keys(view: View, path: str) -> list[str]:
    try:
        return view.keys(path)
    except Unknown:
        return []


def _consistent_hash_backends_are_managed(view: View) -> Iterable[ConfigProblem]:
    backends = view.get("haproxy.backends")
    if backends is None:
        return
    hashed = view.get("haproxy.consistent_hash_backends")
    strays = [name for name in hashed if name not in backends]
    if strays:
        yield ConfigProblem(
            "haproxy.consistent_hash_backends",
            f"{', '.join(map(repr, strays))} {'is' if len(strays) == 1 else 'are'} not in "
            "haproxy.backends "
            f"({', '.join(backends) or 'empty'}); list only backends VeloFlux manages",
        )


def _replicas_apart_from_the_first(view: View) -> Iterable[ConfigProblem]:
    """A replica listed as the first one too would be read twice and counted double."""
    for section, first in (("haproxy", "socket"), ("envoy", "admin")):
        if not view.present(section):
            continue
        main, replicas = _known(view, section, first), _known(view, section, "replicas")
        if main is not None and replicas and main in replicas:
            yield ConfigProblem(
                f"{section}.replicas", f"lists {main} again, which {section}.{first} names"
            )


def _distinct_clusters(view: View) -> Iterable[ConfigProblem]:
    if not view.present("envoy"):
        return
    count = view.size("envoy.clusters")
    if count == 0:
        yield ConfigProblem("envoy.clusters", "name at least one cluster")
    names = [_known(view, "envoy.clusters", i, "name") for i in range(count)]
    twice = sorted({n for n in names if n is not None and names.count(n) > 1})
    if twice:
        yield ConfigProblem("envoy.clusters", f"lists the cluster {twice[0]!r} twice")
    for i, name in enumerate(names):
        cluster = f"cluster {name}" if name is not None else "this cluster"
        size = _size(view, "envoy.clusters", i, "endpoints", default=-1)
        if size == 0:
            yield ConfigProblem(f"envoy.clusters.{i}", f"{cluster}: no endpoint listed")
        endpoints = [_known(view, "envoy.clusters", i, "endpoints", j) for j in range(size)]
        seen = [e.name for e in endpoints if e is not None]
        if len(set(seen)) != len(seen):
            yield ConfigProblem(f"envoy.clusters.{i}", f"{cluster} lists an endpoint twice")


def _size(view: View, path: str, *more: Part, default: int = 0) -> int:
    try:
        return view.size(path, *more)
    except Unknown:
        return default


# --- the policy --------------------------------------------------------------------------


def _weight_bounds_ordered(view: View) -> Iterable[ConfigProblem]:
    low, high = view.get("policy.min_weight"), view.get("policy.max_weight")
    if low > high:
        yield ConfigProblem("policy", f"min_weight ({low}) is above max_weight ({high})")


def _against_interval(view: View, path: str, relation: str, consequence: str) -> ConfigProblem:
    """``path``'s value set against ``interval``'s, and what follows from it."""
    value, interval = view.get(path), view.get("interval")
    return ConfigProblem(
        path,
        f"{format_duration(value)} is {relation} interval ({format_duration(interval)}): "
        + consequence,
    )


def _stale_after_covers_an_interval(view: View) -> Iterable[ConfigProblem]:
    stale = view.get("policy.stale_after")
    if stale is not None and stale < view.get("interval"):
        yield _against_interval(
            view,
            "policy.stale_after",
            "shorter than",
            "the newest observation would always be stale and the model would stand down "
            "every tick",
        )


# --- timing ------------------------------------------------------------------------------


def _haproxy_timeout_fits_an_interval(view: View) -> Iterable[ConfigProblem]:
    """A warning, not an error: a slow socket then makes a tick overrun its interval,
    and the next one is skipped (counted), which a short interval may accept."""
    if view.get("haproxy.timeout") > view.get("interval"):
        yield _against_interval(
            view,
            "haproxy.timeout",
            "longer than",
            "a tick waiting on HAProxy that long overruns its interval, and the next tick is "
            "skipped",
        )


def _retrain_cron_fires(view: View) -> Iterable[ConfigProblem]:
    if not view.get("ai.enabled") or view.get("ai.training_interval") is not None:
        return
    cron = view.get("ai.retrain_cron")
    if cron_period(cron) is None:
        yield ConfigProblem("ai.retrain_cron", f"{cron!r} never fires: nothing would retrain")


def _history_outlasts_retraining(view: View) -> Iterable[ConfigProblem]:
    """Retraining should come before the journal forgets what it would learn from, and
    before the current model is too old to use (a warning: the agent still works, with
    less history, or without its model for part of each period)."""
    if not view.get("ai.enabled"):
        return
    every = view.get("ai.training_interval")
    if every is not None:
        period, source = every, "ai.training_interval"
    else:
        cron = view.get("ai.retrain_cron")
        gap = cron_period(cron)
        if gap is None:  # its own problem (_retrain_cron_fires)
            return
        period, source = gap, f"the longest gap of ai.retrain_cron {cron!r}"
    consequences = {
        "ai.history_retention": "the journal would drop observations before a retraining "
        "could learn from them",
        "ai.max_model_age": "the model would be too old to use before the next retraining "
        "replaced it, and the pools would do without it until then",
    }
    for path, consequence in consequences.items():
        value = _known(view, path)
        if value is not None and value < period:
            yield ConfigProblem(
                path,
                f"{format_duration(value)} is shorter than the time between retrainings "
                f"({format_duration(period)}, {source}): {consequence}",
            )


def cron_period(expression: str, start: datetime | None = None) -> float | None:
    """The longest gap, in seconds, between two fire times of a 5-field crontab (UTC)
    over the ``CRON_HORIZON`` from ``start`` (now), counting the first fire past it;
    None if it fires fewer than twice (``0 0 31 2 *``)."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(expression, timezone="UTC")
    start = start or datetime.now(UTC)
    horizon = start + CRON_HORIZON
    fires: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and len(fires) < CRON_MAX_FIRES:
        fires.append(fire)
        if fire > horizon and len(fires) >= 2:
            break
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    if len(fires) < 2:
        return None
    return max((b - a).total_seconds() for a, b in itertools.pairwise(fires))


# --- features ----------------------------------------------------------------------------


def _some_feature(view: View) -> Iterable[ConfigProblem]:
    if not view.present("prometheus"):
        return
    if not view.get("prometheus.features") and not view.get("prometheus.default_features"):
        yield ConfigProblem(
            "prometheus.features", "name at least one feature, or keep default_features on"
        )


def _utilization_is_a_feature(view: View) -> Iterable[ConfigProblem]:
    """The capacity rung reads its utilization signal as a Prometheus feature."""
    name = view.get("capacity.utilization_feature")
    if name is None:
        return
    path = "capacity.utilization_feature"
    if not view.present("prometheus"):
        yield ConfigProblem(
            path,
            f"{name!r} is read from Prometheus; configure prometheus.features with it",
        )
        return
    known = set(view.get("prometheus.features"))
    if view.get("prometheus.default_features"):  # the built-ins of the proxies configured
        kinds = [kind for kind in ("haproxy", "envoy") if view.present(kind)]
        known |= {f.name for kind in kinds for f in promql.DEFAULTS[kind]}
    if name not in known:
        listed = f" ({', '.join(sorted(known))})" if known else ""
        yield ConfigProblem(path, f"{name!r} is not in prometheus.features{listed}")


# --- files -------------------------------------------------------------------------------


def _token_file_readable(view: View) -> Iterable[ConfigProblem]:
    """What ``run`` and the API commands need of it (``daemon/api/fields.py``'s
    ``read_token``, which exits 1 on it), said before they start."""
    path: Path | None = view.get("api.token_file")
    if path is None:
        return
    problem = token_file_problem(path)
    if problem is not None:
        yield ConfigProblem("api.token_file", problem)


def token_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot hold the API's bearer token, or None if it can."""
    return read_token_file(path)[1] or None


def read_token_file(path: Path) -> tuple[str, str]:
    """The bearer token in ``path`` and "", or "" and why it holds none: the one rule,
    for ``check-config`` here and for the daemon's API (``daemon/api/fields.py``).

    A file every user of the host may read (or write) is refused: its token is no
    secret. Its owner and group may read it (docs/security.md: root:veloflux 0640)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode & 0o777  # a Kubernetes Secret's symlink: its target
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return "", f"cannot read {path}: {reason}"
    if not token:
        return "", f"{path} is empty"
    if not (token.isascii() and token.isprintable()) or " " in token:
        return "", f"{path}: the token must be one word of printable ASCII"
    if mode & _OTHERS_READ_WRITE:
        return "", (
            f"{path} is mode {mode:04o}: other users of this host can read or change the "
            f"token; allow its owner and group only (chmod o-rwx {path})"
        )
    return token, ""


# The permission bits of "other" users that make a token file no secret.
_OTHERS_READ_WRITE = 0o006


# --- the environment ---------------------------------------------------------------------


def unknown_section(variable: str, section: str) -> ConfigProblem:
    """An override ``VELOFLUX_SECTION__KEY`` whose section does not exist."""
    close = difflib.get_close_matches(section, SECTIONS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigProblem(
        variable,
        f"{section!r} is not a config section, so this override would be ignored{hint}; "
        f"the sections are {', '.join(SECTIONS)}",
    )


CHECKS: tuple[Check, ...] = (
    _a_proxy,
    _one_namespace_of_pools,
    _consistent_hash_backends_are_managed,
    _distinct_clusters,
    _replicas_apart_from_the_first,
    _retrain_cron_fires,
    _weight_bounds_ordered,
    _stale_after_covers_an_interval,
    _weights_name_managed_pools,
    _some_feature,
    _utilization_is_a_feature,
    _token_file_readable,
    dask_problems,
)

# What works but probably not as meant: ``check-config`` prints these and exits 0, the
# daemon logs them when it starts.
WARNINGS: tuple[Check, ...] = (
    _haproxy_timeout_fits_an_interval,
    _history_outlasts_retraining,
    dask_warnings,
)
