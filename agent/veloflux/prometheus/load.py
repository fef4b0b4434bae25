"""Each pool's request rate from Prometheus, on a regular grid: what forecasting reads
when ``forecast.source`` is ``prometheus`` (weeks of history the journal may not keep).

The rate is HAProxy's exporter's responses counted per backend, as Prometheus's
``rate()`` over two steps (one step holds a single sample at a scrape interval of a
step; two make a rate), summed over the backend's servers and instances.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from veloflux.prometheus.api import PrometheusAPI
from veloflux.prometheus.history import chunks
from veloflux.prometheus.promql import any_of

QUERY = "sum by (proxy) (rate(haproxy_server_http_responses_total{{proxy=~{pools}}}[{window}s]))"


def pool_rates(
    api: PrometheusAPI,
    pools: Sequence[str] | None,
    start: datetime,
    end: datetime,
    step: float,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per pool (``pools``, or every backend the exporter shows): (times, requests/s)
    every ``step`` seconds from ``start`` to ``end``, pulled in as many range queries
    as Prometheus's point limit needs."""
    selector = any_of(pools) if pools else '".+"'
    query = QUERY.format(pools=selector, window=f"{2 * step:g}")
    times: dict[str, list[np.ndarray]] = defaultdict(list)
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for lo, hi in chunks(start, end, step):
        for series in api.range(query, lo, hi, step):
            pool = series.labels.get("proxy", "")
            times[pool].append(series.times)
            values[pool].append(series.values)
    return {p: (np.concatenate(times[p]), np.concatenate(values[p])) for p in times}
