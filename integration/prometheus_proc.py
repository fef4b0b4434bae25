"""A real Prometheus (Debian's ``prometheus``) on loopback, and backfilling history into it.

The agent reads operator-defined features from Prometheus, so the end-to-end tests and the
benchmarks need one that scrapes the stack they start, and one that already holds days of
history without waiting days for it. ``PrometheusProcess`` starts the server with a
generated config on a port it keeps across restarts (a test stops Prometheus mid-run and
brings it back at the same URL, as an operator's would come back); readiness is polled
with a deadline. ``backfill`` writes samples as OpenMetrics text and turns them into TSDB
blocks with ``promtool``, which a Prometheus started on the same data dir then serves.

Only the standard library speaks HTTP here, so these helpers add no dependency.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from integration.haproxy_proc import StackError, free_port, stop_process

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
METRIC_TYPES = ("gauge", "counter", "unknown")

# One series as ``backfill`` takes it: metric name, labels, and (timestamp s, value) pairs
# as a sequence of tuples or an (n, 2) array (the fast form for millions of samples).
Series = tuple[str, Mapping[str, str], npt.ArrayLike]


def _binary(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        raise StackError(f"{name} is not installed (make deps installs Debian's prometheus)")
    return found


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_config``: ``host:port`` targets and the path scraped on each.

    A job is more than a target list because Envoy serves Prometheus text at
    ``/stats/prometheus``, not ``/metrics``.
    """

    targets: tuple[str, ...]
    path: str = "/metrics"


def _as_job(job: ScrapeJob | Sequence[str]) -> ScrapeJob:
    if isinstance(job, ScrapeJob):
        return job
    return ScrapeJob((job,) if isinstance(job, str) else tuple(job))  # one target, not its chars


def render_config(jobs: Mapping[str, ScrapeJob], scrape_interval: str) -> str:
    """prometheus.yml: one static job per entry, rules evaluated as often as targets scraped."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": name,
                "metrics_path": job.path,
                "static_configs": [{"targets": list(job.targets)}],
            }
            for name, job in jobs.items()
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


class PrometheusProcess:
    """One Prometheus child process on ``127.0.0.1:<port>`` with its TSDB in ``workdir/data``.

    ``targets`` maps a job name to a ``ScrapeJob`` or to plain ``host:port`` targets
    (scraped at ``/metrics``). The port is chosen once, so ``stop()`` then ``start()``
    (or ``kill()`` then ``start()``) serves the same data at the same ``url``. Blocks
    older than ``retention`` are deleted by Prometheus, backfilled ones included.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, ScrapeJob | Sequence[str]],
        scrape_interval: str = "1s",
        retention: str = "30d",
    ) -> None:
        self.workdir = Path(workdir)
        self.jobs = {name: _as_job(job) for name, job in targets.items()}
        self.scrape_interval = scrape_interval
        self.retention = retention
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 20.0) -> PrometheusProcess:
        """Spawn and wait for ``/-/ready``, which answers only once the TSDB (blocks and
        WAL replay) is open, so the first query after ``start()`` sees stored data."""
        if self.running:
            raise StackError(f"prometheus is already running at {self.url}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.jobs, self.scrape_interval), "utf-8")
        log = open(self._log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            self._proc = subprocess.Popen(
                [
                    _binary("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--storage.tsdb.retention.time={self.retention}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_ready(self._proc, timeout_s)
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                raise StackError(f"prometheus exited with {proc.returncode}:\n{self.log_text()}")
            if self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise StackError(f"prometheus not ready within {timeout_s:g}s:\n{self.log_text()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:  # refused while starting; 503 (HTTPError) while the TSDB opens
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Prometheus closes the TSDB cleanly (WAL kept for the next start)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the next ``start()`` replays the WAL."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10.0)

    def restart(self, timeout_s: float = 20.0) -> PrometheusProcess:
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def query(self, query: str, at: float | None = None) -> list[dict[str, Any]]:
        """``/api/v1/query``: the instant vector's items (``metric``, ``value``)."""
        params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
        return self._api("query", params)

    def query_range(
        self, query: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """``/api/v1/query_range``: one item (``metric``, ``values``) per series."""
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return self._api("query_range", params)

    def wait_for_series(self, query: str, timeout_s: float) -> None:
        """Poll until ``query`` returns something: scrapes land a scrape interval apart, so
        a test waits for the data instead of sleeping for a guessed time."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                if self.query(query):
                    return
            except StackError as exc:
                if not self.running:
                    raise
                last = f" (last error: {exc})"
            time.sleep(0.2)
        raise StackError(f"no series for {query!r} within {timeout_s:g}s{last}")

    def _api(self, endpoint: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # 400/422: the query itself is wrong
            detail = exc.read().decode(errors="replace")
            raise StackError(f"prometheus refused {params['query']!r}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise StackError(f"prometheus at {self.url} did not answer: {exc}") from exc
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


# --- backfill -------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenMetricsSummary:
    """What a written file holds; the time span picks promtool's block duration."""

    series: int
    samples: int
    min_time: float
    max_time: float


def escape_label_value(value: str) -> str:
    """Backslash, double quote and newline are the three escapes the exposition format has."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, metric_type: str) -> str:
    """OpenMetrics names a counter family without the ``_total`` its samples carry."""
    if metric_type == "counter":
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: OpenMetrics counter samples end in _total")
        return name.removesuffix("_total")
    return name


def _series_prefix(name: str, labels: Mapping[str, str]) -> str:
    if not METRIC_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid metric name")
    bad = [key for key in labels if not LABEL_NAME.match(key) or key.startswith("__")]
    if bad:
        raise ValueError(f"{name}: invalid label names {bad}")
    pairs = ",".join(f'{key}="{escape_label_value(labels[key])}"' for key in sorted(labels))
    return f"{name}{{{pairs}}} " if pairs else f"{name} "


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def series_text(
    name: str, labels: Mapping[str, str], points: npt.ArrayLike
) -> tuple[str, int, float, float]:
    """One series' sample lines in time order, with its sample count and time span.

    promtool drops out-of-order and same-millisecond samples without a word, so they are
    sorted here and duplicates refused. Lines come from one ``str.format`` mapped over
    plain lists, the fastest pure-Python path for tens of millions of samples.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return "", 0, math.inf, -math.inf
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name}: points must be (timestamp, value) pairs")
    stamps, values = array[:, 0], array[:, 1]
    millis = np.round(stamps * 1000.0).astype(np.int64)
    steps = np.diff(millis)
    if (steps <= 0).any():
        order = np.argsort(millis, kind="stable")
        stamps, values, millis = stamps[order], values[order], millis[order]
        if (np.diff(millis) == 0).any():
            raise ValueError(f"{name}{dict(labels)}: two samples in the same millisecond")
    template = _series_prefix(name, labels).replace("{", "{{").replace("}", "}}")
    value_list: list[float] | list[str] = values.tolist()
    if not np.isfinite(values).all():
        value_list = [_format_value(v) for v in values.tolist()]
    if (millis % 1000 == 0).all():
        text = "".join(map((template + "{} {:d}\n").format, value_list, (millis // 1000).tolist()))
    else:
        text = "".join(map((template + "{} {:.3f}\n").format, value_list, (millis / 1000).tolist()))
    return text, len(millis), float(millis[0]) / 1000, float(millis[-1]) / 1000


def write_openmetrics(
    path: Path,
    series: Iterable[Series],
    metric_types: Mapping[str, str] | None = None,
) -> OpenMetricsSummary:
    """Write ``series`` as one OpenMetrics file that ends in ``# EOF``.

    OpenMetrics wants every sample of a family together, but callers naturally produce
    series server by server (all of one server's metrics, then the next). So each series
    is formatted as it arrives and appended to a spool file per family beside ``path``;
    the families are joined at the end. Memory stays at one series however big the input.
    ``metric_types`` maps a metric name to ``gauge`` (the default), ``counter`` (the name
    must end in ``_total``) or ``unknown``.
    """
    types = dict(metric_types or {})
    unknown = {kind for kind in types.values() if kind not in METRIC_TYPES}
    if unknown:
        raise ValueError(f"metric types must be one of {METRIC_TYPES}, not {sorted(unknown)}")
    spool = path.with_name(f".{path.name}.spool")
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(parents=True)
    families: dict[str, tuple[str, Path]] = {}  # metric name -> (TYPE line, spool file)
    count = samples = 0
    low, high = math.inf, -math.inf
    try:
        for name, labels, points in series:
            text, n, first, last = series_text(name, labels, points)
            if not n:
                continue
            if name not in families:
                kind = types.get(name, "gauge")
                head = f"# TYPE {_family(name, kind)} {kind}\n"
                families[name] = (head, spool / f"{len(families)}.txt")
            with open(families[name][1], "a", encoding="utf-8") as out:
                out.write(text)
            count, samples = count + 1, samples + n
            low, high = min(low, first), max(high, last)
        with open(path, "wb") as out:
            for head, part in families.values():
                out.write(head.encode())
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out, 16 << 20)
            out.write(b"# EOF\n")
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return OpenMetricsSummary(count, samples, low, high)


def block_duration_hours(span_s: float) -> int:
    """The smallest block range promtool can use (2h times a power of 3) covering ``span_s``.

    promtool re-reads the whole input once per block window, so 7 days in its default 2h
    blocks would be ~85 passes over gigabytes; one window spanning the data is at most two.
    """
    hours = 2
    while hours * 3600 < span_s:
        hours *= 3
    return hours


def backfill(
    data_dir: Path,
    series: Iterable[Series],
    workdir: Path,
    metric_types: Mapping[str, str] | None = None,
) -> OpenMetricsSummary:
    """Turn ``series`` (name, labels, (timestamp s, value) pairs) into TSDB blocks in
    ``data_dir``, for a Prometheus started on it later (``PrometheusProcess.data_dir``).

    Runs ``promtool tsdb create-blocks-from openmetrics --max-block-duration=<N>h FILE
    DATA_DIR``; the OpenMetrics file lives in ``workdir`` and is removed once promtool has
    made the blocks, since text is far larger than the blocks it becomes.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    source = workdir / "backfill.om.txt"
    summary = write_openmetrics(source, series, metric_types)
    if summary.samples == 0:
        source.unlink()
        return summary
    hours = block_duration_hours(summary.max_time - summary.min_time)
    command = [
        _binary("promtool"),
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        "--quiet",
        f"--max-block-duration={hours}h",
        str(source),
        str(data_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise StackError(f"promtool could not backfill {source} (kept):\n{output}")
    source.unlink()
    return summary
