"""The checks of ``ai.dask`` that look past its own fields: certificate files that
must be readable (an error), and plain TCP to another machine (a warning)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from veloflux.config.dask import is_loopback, scheduler_host
from veloflux.config.view import View
from veloflux.errors import ConfigProblem


def dask_problems(view: View) -> Iterable[ConfigProblem]:
    """Certificate files that cannot be read (an error)."""
    if not view.present("ai.dask"):
        return
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path: Path | None = view.get(f"ai.dask.{key}")
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            yield ConfigProblem(f"ai.dask.{key}", f"cannot read {path}: {exc.strerror or exc}")


def dask_warnings(view: View) -> Iterable[ConfigProblem]:
    """Plain TCP to another machine: anyone who can reach that scheduler runs code on
    its workers, and the history crosses the network in the clear."""
    if not view.present("ai.dask"):
        return
    address: str = view.get("ai.dask.scheduler")
    protocol, host, _ = scheduler_host(address)
    if protocol == "tcp" and not is_loopback(host):
        yield ConfigProblem(
            "ai.dask.scheduler",
            f"{address} is plain TCP to another machine: use tls:// with certificates "
            "(anyone who reaches the scheduler can run code on its workers)",
        )
