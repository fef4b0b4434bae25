"""HAProxy's moving averages of time (qtime, ctime, rtime, ttime), undone.

Kept apart from ``rates`` (which works on frames) because it needs numpy only: the
capacity rung inverts one server's average per tick on the path that must not import
pandas (see docs/architecture.md, "The fallback path").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy itself is loaded on first use: the CLI's start-up need not
    import numpy as np
    import numpy.typing as npt

# HAProxy 2.6 averages qtime/ctime/rtime/ttime over the last 512 requests
# (TIME_STATS_SAMPLES in its include/haproxy/defaults.h), a plain running mean until a
# server's 512th request (see interval_mean).
EMA_SAMPLES = 512


def interval_mean(
    avg_old: npt.ArrayLike,
    avg_new: npt.ArrayLike,
    count_before: npt.ArrayLike,
    requests: npt.ArrayLike,
) -> np.ndarray:
    """The mean of the ``requests`` (k) values that moved HAProxy's average from
    ``avg_old`` to ``avg_new``, given the server's request counter before them.

    Past its first N = EMA_SAMPLES requests, HAProxy 2.6 updates the average per
    request as an EMA of weight 1/N, so k requests of mean v give
    ``avg_new = v + (avg_old - v) * a**k`` with ``a = 1 - 1/N``, hence
    ``v = (avg_new - avg_old * a**k) / (1 - a**k)``. Before that (a fresh process,
    e.g. after every reload) it is a plain running mean over the requests so far (a
    reading of HAProxy 2.6.12 is in tests/unit/test_history.py,
    ``test_the_first_512_requests_are_a_running_mean_as_haproxy_measures``); the
    general form below covers both and an interval straddling the switch.
    NaN when k is 0 (the average froze: no information) or unknown; clipped at 0.
    """
    import numpy as np

    avg_old, avg_new = np.asarray(avg_old, dtype=float), np.asarray(avg_new, dtype=float)
    count_before = np.asarray(count_before, dtype=float)
    requests = np.asarray(requests, dtype=float)
    n = float(EMA_SAMPLES)
    with np.errstate(all="ignore"):
        warm = np.clip(n - count_before, 0.0, requests)  # requests before the EMA starts
        ema_steps = requests - warm
        log_a = math.log1p(-1.0 / n)
        decay = np.exp(ema_steps * log_a)
        window = np.minimum(count_before + warm, n)  # divisor of the average at the switch
        old_share = avg_old * (np.minimum(count_before, n) / window) * decay
        value = (avg_new - old_share) / (-np.expm1(ema_steps * log_a) + decay * warm / window)
    return np.where(requests > 0, np.maximum(value, 0.0), np.nan)
