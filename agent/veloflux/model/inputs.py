"""What the model sees at a tick: recent history plus the observation just made.

Rates need two readings, trends need a few more, and the realized-error part of
confidence needs intervals whose outcome is known; so prediction always starts from
the last stretch of history with the current observation appended in memory (a
dry-run writes nothing, not even history).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from veloflux.history.rates import derive_rates
from veloflux.history.window import RecentWindow
from veloflux.model.features import build_features


def recent_features(
    window: RecentWindow | None, now: datetime, current: pd.DataFrame
) -> tuple[pd.DataFrame, datetime | None]:
    """Features over the window's span + ``current`` (the observation just made, as
    ``journal_frame`` gives it), and when history last saw a sample. Without a window
    there is nothing to derive rates from: the features are empty."""
    if window is None:
        return build_features(derive_rates(current)), None
    rates, last = window.rates(now, current)
    return build_features(rates), last
