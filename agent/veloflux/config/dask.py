"""``ai.dask``: where the daemon's retraining runs when the history outgrows a box.

A Dask scheduler runs whatever task a client sends it, so reaching one is being able
to run code on every worker. The section therefore names the scheduler explicitly,
with TLS (``tls://``, with a CA and a client certificate) for anything that crosses a
network; plain ``tcp://`` is for a scheduler on the agent's own machine, and
``check-config`` warns when it points anywhere else (``config/dask_checks.py``;
docs/operations.md, "Training on a Dask cluster").
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from veloflux.config.fields import Seconds, Section

_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
LOCAL_NAMES = ("localhost",)


def scheduler_host(address: str) -> tuple[str, str, int]:
    """(protocol, host, port) of ``tcp://host:port`` or ``tls://host:port``."""
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(
            f"{address!r} is not a Dask scheduler address: tcp://HOST:PORT or tls://HOST:PORT"
        )
    return match.group(1), match.group(2).strip("[]"), int(match.group(3))


def is_loopback(host: str) -> bool:
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DaskSection(Section):
    """A Dask scheduler to train on (``train --dask`` names one for a single run)."""

    scheduler: str = Field(description="tcp://HOST:PORT (same machine) or tls://HOST:PORT")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = Field(default=None, description="the client's certificate")
    tls_key_file: Path | None = Field(default=None, description="its private key")
    partition_rows: int = Field(
        default=500_000, ge=1000, description="samples a worker featurizes at once"
    )
    connect_timeout_seconds: Seconds = Field(default=30.0, alias="connect_timeout", gt=0)

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str) -> str:
        scheduler_host(value)
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> DaskSection:
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        tls = self.scheduler.startswith("tls://")
        if tls and not all(files):
            raise ValueError("a tls:// scheduler needs tls_ca_file, tls_cert_file and tls_key_file")
        if not tls and any(files):
            raise ValueError("tls_* files are set but the scheduler is not tls://")
        return self
