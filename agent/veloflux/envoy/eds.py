"""Envoy EDS files: rendered from a Jinja template, checked, then swapped in atomically.

Envoy gives no answer when it rejects a file: one bad weight and it silently keeps the
last good assignment. So nothing is written that has not been parsed back and checked
(every weight an integer >= 1, the right ``cluster_name``, well-formed addresses and
ports), and the file is replaced the only way Envoy notices: a temp file in the same
directory, fsynced, moved over the old one. Confirming that Envoy took it (its
``update_success`` counter and the weights ``/clusters`` shows) is the sink's job.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
import yaml

from veloflux.errors import VelofluxError
from veloflux.util.files import replace_atomically
from veloflux.util.names import is_safe_name

MAX_ENVOY_WEIGHT = 2**32 - 1
_FastSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present
_ASSIGNMENT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class EdsError(VelofluxError):
    """A rendered EDS document that must not reach Envoy, or a template that failed."""


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as it goes into the file; ``health`` is "" or an EDS health status."""

    address: str
    port: int
    weight: int
    health: str = ""


def eds_path(eds_dir: Path, cluster: str) -> Path:
    """Where cluster ``cluster``'s file always lives, so a bootstrap can point at it."""
    if not is_safe_name(cluster):
        raise EdsError(f"cluster name {cluster!r} is not safe to use as a file name")
    return eds_dir / f"{cluster}.yaml"


def _environment(templates_dir: Path | None) -> jinja2.Environment:
    """Jinja with StrictUndefined: a variable the template names but is not given fails.

    ``templates_dir`` (holding ``envoy/eds.yaml.j2`` and ``envoy/cds.yaml.j2``) lets an
    operator adapt the files; ``None`` is the templates shipped in the package.
    """
    loader: jinja2.BaseLoader = (
        jinja2.FunctionLoader(_template_source)
        if templates_dir is None
        else jinja2.FileSystemLoader(templates_dir)
    )
    environment = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    environment.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _json_default}
    return environment


def _json_default(value: object) -> object:
    """``tojson`` of an undefined variable fails the way StrictUndefined does elsewhere
    (naming the variable), not with json's "StrictUndefined is not JSON serializable"."""
    if isinstance(value, jinja2.StrictUndefined):
        str(value)  # raises UndefinedError
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _template_source(name: str) -> str:
    return files("veloflux.templates").joinpath(name).read_text(encoding="utf-8")


def _render(templates_dir: Path | None, name: str, **values: Any) -> str:
    """Render one template; any way it fails is one ``EdsError`` naming the template."""
    where = name if templates_dir is None else str(templates_dir / name)
    try:
        return _environment(templates_dir).get_template(name).render(**values)
    except jinja2.TemplateSyntaxError as exc:
        raise EdsError(f"template {where}, line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateNotFound:
        raise EdsError(f"template {where}: no such file") from None
    except jinja2.TemplateError as exc:
        raise EdsError(f"template {where}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdsError(f"template {where}: unreadable: {exc}") from None
    except Exception as exc:  # a template is code: e.g. an undefined value through tojson
        raise EdsError(f"template {where}: {type(exc).__name__}: {exc}") from None


def render_eds(
    cluster: str,
    endpoints: Sequence[Endpoint],
    version: str,
    templates_dir: Path | None = None,
) -> str:
    """The EDS document for ``cluster``, checked; raise ``EdsError`` if it is not fit."""
    check_endpoints(cluster, endpoints)
    text = _render(
        templates_dir,
        "envoy/eds.yaml.j2",
        cluster_name=cluster,
        version=version,
        endpoints=endpoints,
    )
    validate_eds(text, cluster, [e.weight for e in endpoints])
    return text


def check_endpoints(cluster: str, endpoints: Sequence[Endpoint]) -> None:
    """What must hold before rendering: weights, addresses, ports, at least one endpoint."""
    if not endpoints:
        raise EdsError(f"cluster {cluster}: no endpoint to write (never drain all of them)")
    for e in endpoints:
        where = f"cluster {cluster}, endpoint {e.address}:{e.port}"
        if isinstance(e.weight, bool) or not isinstance(e.weight, int):
            raise EdsError(f"{where}: weight {e.weight!r} is not an integer")
        if not 1 <= e.weight <= MAX_ENVOY_WEIGHT:
            raise EdsError(f"{where}: weight {e.weight} is outside 1..{MAX_ENVOY_WEIGHT}")
        _check_address(where, e.address)
        if isinstance(e.port, bool) or not isinstance(e.port, int) or not 0 < e.port < 65536:
            raise EdsError(f"{where}: port {e.port!r} is not in 1..65535")
        if e.health not in ("", "HEALTHY", "DRAINING", "DEGRADED", "UNHEALTHY"):
            raise EdsError(f"{where}: health {e.health!r} is not an EDS health status")


def _check_address(where: str, address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not is_safe_name(address) or ":" in address:
            raise EdsError(
                f"{where}: address {address!r} is neither an IP nor a host name"
            ) from None


def validate_eds(text: str, cluster: str, weights: Sequence[int]) -> None:
    """Parse the rendered text back and check it says what was meant."""
    try:
        document = json.loads(text)  # the shipped template writes JSON-style YAML
    except json.JSONDecodeError:
        try:
            document = yaml.load(text, Loader=_FastSafeLoader)
        except yaml.YAMLError as exc:
            raise EdsError(f"cluster {cluster}: the rendered file is not YAML: {exc}") from None
    resources = _get(document, "resources", list, cluster)
    if len(resources) != 1:
        raise EdsError(f"cluster {cluster}: expected one ClusterLoadAssignment")
    assignment = resources[0]
    if _get(assignment, "@type", str, cluster) != _ASSIGNMENT_TYPE:
        raise EdsError(f"cluster {cluster}: the resource is not a ClusterLoadAssignment")
    if _get(assignment, "cluster_name", str, cluster) != cluster:
        raise EdsError(f"cluster {cluster}: cluster_name is {assignment['cluster_name']!r}")
    found = [
        lb.get("load_balancing_weight")
        for group in _get(assignment, "endpoints", list, cluster)
        for lb in _get(group, "lb_endpoints", list, cluster)
    ]
    if found != list(weights):
        raise EdsError(f"cluster {cluster}: the file's weights {found} are not the planned ones")


def _get(value: Any, key: str, kind: type, cluster: str) -> Any:
    found = value.get(key) if isinstance(value, dict) else None
    if not isinstance(found, kind):
        raise EdsError(f"cluster {cluster}: '{key}' is missing or not a {kind.__name__}")
    return found


def write_eds(eds_dir: Path, cluster: str, text: str) -> Path:
    """Swap the file in atomically (the move is what makes Envoy reload it)."""
    path = eds_path(eds_dir, cluster)
    try:
        replace_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        raise EdsError(
            f"cannot write {path.name} in the EDS directory {eds_dir}: {exc.strerror or exc}"
        ) from None
    return path


def render_cds(
    eds_dir: Path,
    clusters: Sequence[str],
    version: str = "1",
    templates_dir: Path | None = None,
) -> str:
    """A CDS file declaring each cluster as EDS from its file in ``eds_dir`` (bootstrap)."""
    for name in clusters:
        eds_path(eds_dir, name)  # refuses an unsafe name
    text = _render(
        templates_dir,
        "envoy/cds.yaml.j2",
        version=version,
        eds_dir=str(eds_dir),
        clusters=[{"name": name} for name in clusters],
        connect_timeout="1s",
        lb_policy="ROUND_ROBIN",
    )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EdsError(f"the rendered CDS file is not YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("resources"), list):
        raise EdsError("the rendered CDS file has no 'resources' list")
    names = [r.get("name") if isinstance(r, dict) else None for r in document["resources"]]
    if names != list(clusters):
        raise EdsError(f"the rendered CDS file names {names}, not {list(clusters)}")
    return text


def write_bootstrap(
    out: Path,
    clusters: Mapping[str, Sequence[Endpoint]],
    eds_dir: Path,
    templates_dir: Path | None = None,
) -> list[Path]:
    """Write each cluster's static-weight EDS file and one CDS file into ``out``, for
    Envoy to start from; the CDS file points the clusters at ``eds_dir``, where the
    agent will keep their files. Returns the paths written, the CDS file last."""
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, endpoints in clusters.items():
            written.append(
                write_eds(out, name, render_eds(name, endpoints, "static", templates_dir))
            )
        cds = out / "cds.yaml"
        cds.write_text(render_cds(eds_dir, list(clusters), templates_dir=templates_dir), "utf-8")
    except OSError as exc:
        raise EdsError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return [*written, cds]
