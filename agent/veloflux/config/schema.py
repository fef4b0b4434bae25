"""The configuration schema: YAML validated by pydantic, every problem with its path.

Field names in Python carry their units (``interval_seconds``); the YAML keys are the
public contract (``interval: 10s``) and are kept as aliases. Unknown keys are errors,
because a typo silently ignored is a safety rule silently off.

Each field is checked here on its own; what spans fields or sections (weight bounds in
order, weights naming managed pools, one proxy at least, timings that fit together) is
checked in ``config/checks.py``, so that one run reports it along with every problem of
the fields. Build a ``Config`` through ``config.load.validate_config``, which runs both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from veloflux.config.dask import DaskSection
from veloflux.config.fields import (
    FeatureName,
    FeatureQuery,
    Seconds,
    Section,
    ServerKey,
    Weight,
    check_crontab,
    parse_listen_address,
)
from veloflux.config.forecast import ForecastSection
from veloflux.haproxy.runtime import HAPROXY_MAX_WEIGHT, parse_socket_address
from veloflux.prometheus import promql
from veloflux.util.names import check_name


class HAProxySection(Section):
    """Where the HAProxy runtime API is, and which backends VeloFlux may manage."""

    socket: str = Field(description="unix:///path or tcp://host:port, at level admin")
    timeout_seconds: Seconds = Field(default=2.0, alias="timeout", gt=0, le=60)
    backends: tuple[str, ...] | None = Field(
        default=None,
        description="allow-list; default: every backend whose algorithm honours runtime weights",
    )
    consistent_hash_backends: tuple[str, ...] = Field(
        default=(),
        description="hash-balanced backends configured with 'hash-type consistent'",
    )
    replicas: tuple[str, ...] = Field(
        default=(),
        description=(
            "runtime sockets of further HAProxy instances with the same config, driven "
            "with `socket` as one: observed and merged, planned once, the same weights "
            "written to each"
        ),
    )

    @field_validator("socket")
    @classmethod
    def _socket_address(cls, value: str) -> str:
        parse_socket_address(value)
        return value

    @field_validator("replicas")
    @classmethod
    def _replica_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            parse_socket_address(address)
        if len(set(value)) != len(value):
            raise ValueError("lists a socket twice")
        return value

    @property
    def sockets(self) -> tuple[str, ...]:
        """Every replica's socket, ``socket`` first."""
        return (self.socket, *self.replicas)

    @field_validator("backends", "consistent_hash_backends")
    @classmethod
    def _safe_backend_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            check_name("backend", name)
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a backend twice")
        return value


class AISection(Section):
    """Whether the model may set weights, how sure it must be, and where it keeps state."""

    enabled: bool = True
    confidence_threshold: float = Field(default=0.7, ge=0, le=1)
    min_gain: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="smallest predicted fall in a pool's cost worth moving weights for",
    )
    history_path: Path = Field(
        default=Path("/var/lib/veloflux/history.sqlite"),
        description="the observation journal (SQLite, WAL mode)",
    )
    history_retention_seconds: Seconds = Field(
        default=14 * 86400.0, alias="history_retention", gt=0
    )
    model_dir: Path = Field(default=Path("/var/lib/veloflux/models"))
    keep_models: int = Field(default=5, ge=1, le=100)
    max_model_age_seconds: Seconds = Field(default=7 * 86400.0, alias="max_model_age", gt=0)
    min_training_rows: int = Field(default=200, ge=20)
    error_penalty_seconds: Seconds = Field(
        default=1.0, alias="error_penalty", ge=0, description="what one failed request costs"
    )
    max_tilt: float = Field(default=0.2, ge=0, le=1, description="|log| tilt bound (0: off)")
    # Weight probes on the capacity rung, for the model to learn load from (0: off).
    probe_size: float = Field(default=0.1, ge=0, le=0.3, description="|log| of a probe")
    probe_share: float = Field(default=0.1, gt=0, le=0.5, description="of a pool, at a time")
    probe_ticks: int = Field(default=2, ge=1, le=20, description="ticks each probe lasts")
    retrain_cron: str = Field(
        default="0 */6 * * *", description="when the daemon retrains (crontab, 5 fields, UTC)"
    )
    training_interval_seconds: Seconds | None = Field(
        default=None,
        alias="training_interval",
        ge=60,
        description="retrain every this long instead of on retrain_cron",
    )
    training_threads: int = Field(
        default=1, ge=1, le=64, description="XGBoost threads for the daemon's retraining"
    )
    dask: DaskSection | None = Field(
        default=None, description="retrain on this Dask cluster (unset: in the agent)"
    )
    audit_log: Path = Field(
        default=Path("/var/lib/veloflux/audit.jsonl"),
        description="every applied weight change, one JSON line each",
    )
    audit_max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    audit_backups: int = Field(default=5, ge=1, le=100)

    @field_validator("retrain_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        check_crontab(value)
        return value


class OutlierSection(Section):
    """The outlier guard: runs in every mode, reduces a server far outside its pool."""

    enabled: bool = True
    error_rate: float = Field(default=0.05, gt=0, le=1, description="errors at or above this")
    latency_ratio: float = Field(default=3.0, gt=1, description="x the pool's median latency")
    min_requests: int = Field(default=20, ge=1, description="per interval, to judge at all")
    reduce_ratio: float = Field(
        default=0.5, gt=0, lt=1, description="share of its weight an outlier loses"
    )


class PolicySection(Section):
    """Safety rules applied to every plan, model-driven or not."""

    static_weights: dict[ServerKey, Weight] = Field(default_factory=dict)
    overrides: dict[ServerKey, Weight] = Field(
        default_factory=dict, description="pinned weights, applied at once, until removed"
    )
    min_weight: int = Field(default=1, ge=0, le=HAPROXY_MAX_WEIGHT)
    max_weight: int = Field(default=HAPROXY_MAX_WEIGHT, ge=1, le=HAPROXY_MAX_WEIGHT)
    max_step_ratio: float = Field(default=0.5, gt=0, le=10)
    deadband_ratio: float = Field(default=0.05, ge=0, lt=1)
    min_servers_in_rotation: int = Field(default=1, ge=1)
    max_weight_ratio: float = Field(
        default=10.0, ge=1, description="largest/smallest weight in a model-driven pool"
    )
    stale_after_seconds: Seconds | None = Field(
        default=None, alias="stale_after", gt=0, description="default: 3 intervals"
    )
    outlier: OutlierSection = Field(default_factory=OutlierSection)
    on_exit: Literal["keep", "static"] = Field(
        default="keep", description="what the daemon leaves behind when it stops"
    )
    external_change_hold_seconds: Seconds = Field(
        default=900.0,
        alias="external_change_hold",
        ge=0,
        description="hold a weight set outside VeloFlux this long (0s: step it back at once)",
    )


class CapacitySection(Section):
    """The capacity rung: weights proportional to each server's measured capacity
    (successful completions per busy second), with no model, whenever a utilization
    signal reaches the agent."""

    enabled: bool = True
    utilization_feature: FeatureName | None = Field(
        default=None,
        description="a prometheus.features name: each server's busy share, 0..1",
    )
    gain: float = Field(
        default=0.5, gt=0, le=1, description="share of the way to its target a weight moves"
    )
    deadband_errors: float = Field(
        default=2.0, ge=0, description="hold a weight within this many standard errors"
    )
    error_exponent: float = Field(
        default=6.0, ge=0, description="health = (1 - error ratio) ^ this"
    )
    overload_utilization: float = Field(
        default=0.97, gt=0.1, le=2, description="offered / capacity: hold static weights"
    )


class EnvoyEndpointSection(Section):
    """One endpoint of an Envoy cluster; ``weight`` is its static (fallback) weight."""

    address: str
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=2**32 - 1)

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address (Envoy's EDS endpoints are)") from None
        return value

    @property
    def name(self) -> str:
        """The server's name in VeloFlux: ``ADDRESS:PORT``."""
        return f"{self.address}:{self.port}"


class EnvoyClusterSection(Section):
    """An EDS cluster VeloFlux writes, by its service name, with its endpoints."""

    name: str
    endpoints: tuple[EnvoyEndpointSection, ...]

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        check_name("cluster", value)
        return value


class EnvoySection(Section):
    """Where Envoy's admin API is, where it watches for EDS files, and which clusters."""

    admin: str = Field(description="http://HOST:PORT of Envoy's admin API")
    eds_dir: Path = Field(default=Path("/var/lib/veloflux/eds"))
    timeout_seconds: Seconds = Field(default=2.0, alias="timeout", gt=0, le=60)
    confirm_timeout_seconds: Seconds = Field(default=5.0, alias="confirm_timeout", gt=0, le=300)
    templates_dir: Path | None = Field(
        default=None,
        description=(
            "a directory holding envoy/eds.yaml.j2 and envoy/cds.yaml.j2 to render instead "
            "of the shipped templates (copy templates/ and adapt it)"
        ),
    )
    clusters: tuple[EnvoyClusterSection, ...]
    replicas: tuple[str, ...] = Field(
        default=(),
        description=(
            "admin API URLs of further Envoy instances reading the same eds_dir, driven "
            "with `admin` as one: observed and merged, each write confirmed through each"
        ),
    )

    @field_validator("templates_dir")
    @classmethod
    def _templates_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "envoy" / "eds.yaml.j2").is_file():
            raise ValueError(f"{value}/envoy/eds.yaml.j2 does not exist")
        return value

    @field_validator("admin")
    @classmethod
    def _http_address(cls, value: str) -> str:
        return _admin_url(value)

    @field_validator("replicas")
    @classmethod
    def _replica_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            _admin_url(url)
        if len(set(value)) != len(value):
            raise ValueError("lists an admin URL twice")
        return value

    @property
    def admins(self) -> tuple[str, ...]:
        """Every replica's admin URL, ``admin`` first."""
        return (self.admin, *self.replicas)


def _admin_url(value: str) -> str:
    if not value.startswith("http://"):
        raise ValueError("must be http://HOST:PORT (Envoy's admin API)")
    parse_listen_address(value.removeprefix("http://").rstrip("/"))
    return value


class ServerLabelsSection(Section):
    """Which labels of a feature's series name its pool and its server."""

    backend: str = Field(default="proxy", description="the label holding the pool's name")
    server: str = Field(
        default="server", description="the label holding the server's name; '' for pool-level"
    )

    @field_validator("backend", "server")
    @classmethod
    def _label_name(cls, value: str) -> str:
        if value and not promql.LABEL_NAME.match(value):
            raise ValueError(f"{value!r} is not a Prometheus label name")
        return value


class PrometheusSection(Section):
    """Where Prometheus (or a compatible store) is, and which features to read from it."""

    url: str = Field(description="http(s)://HOST:PORT[/prefix] of the Prometheus HTTP API")
    timeout_seconds: Seconds = Field(default=5.0, alias="timeout", gt=0, le=120)
    headers: dict[str, str] = Field(
        default_factory=dict, description="sent with every query, e.g. Authorization"
    )
    features: dict[FeatureName, FeatureQuery] = Field(
        default_factory=dict,
        description="name -> PromQL; {backend} and {server} inside quoted label values",
    )
    default_features: bool = Field(
        default=True,
        description="also read the built-in feature set of each proxy's exporter",
    )
    server_labels: ServerLabelsSection = Field(default_factory=ServerLabelsSection)
    instance_map: dict[str, ServerKey] = Field(
        default_factory=dict,
        description="series label instance -> BACKEND/SERVER, for node-level series",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https") or not rest.strip("/"):
            raise ValueError("must be http(s)://HOST:PORT of the Prometheus HTTP API")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]+", name):
                raise ValueError(f"header name {name!r}: letters, digits and '-' only")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name}: a value cannot contain a line break")
        return value


class APISection(Section):
    """The daemon's HTTP API: metrics, health, status and the operator controls."""

    listen: str = Field(default="127.0.0.1:9477", description="HOST:PORT")
    token_file: Path | None = Field(
        default=None, description="bearer token for the write endpoints; none: they are off"
    )
    state_path: Path = Field(
        default=Path("/var/lib/veloflux/operator.json"),
        description="operator overrides and pause, kept across restarts",
    )
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    history_window_seconds: Seconds = Field(
        default=3600.0,
        alias="history_window",
        gt=0,
        le=7 * 86400,
        description="how far back the dashboard and /api/v1/history reach",
    )
    history_max_ticks: int = Field(
        default=720, ge=2, le=100_000, description="the most ticks kept in memory for them"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen_address(value)
        return value

    @property
    def host(self) -> str:
        return parse_listen_address(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen_address(self.listen)[1]


class Config(Section):
    """The whole agent configuration."""

    interval_seconds: Seconds = Field(default=10.0, alias="interval", gt=0, le=3600)
    haproxy: HAProxySection | None = None
    envoy: EnvoySection | None = None
    ai: AISection = Field(default_factory=AISection)
    policy: PolicySection = Field(default_factory=PolicySection)
    api: APISection = Field(default_factory=APISection)
    prometheus: PrometheusSection | None = None
    capacity: CapacitySection = Field(default_factory=CapacitySection)
    forecast: ForecastSection = Field(default_factory=ForecastSection)

    @property
    def stale_after_seconds(self) -> float:
        """How old observations may be before the model stops trusting them."""
        explicit = self.policy.stale_after_seconds
        return explicit if explicit is not None else 3 * self.interval_seconds
