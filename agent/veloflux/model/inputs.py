"""What the model sees at a tick: recent journal history plus the observation just made.

Rates need two readings, trends need a few more, and the realized-error part of
confidence needs intervals whose outcome is known; so prediction always starts from
the last stretch of the journal with the current observation appended in memory (a
dry-run writes nothing, not even history).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from veloflux.history import derive_rates
from veloflux.model.features import build_features


def recent_features(
    history: pd.DataFrame, current: pd.DataFrame
) -> tuple[pd.DataFrame, datetime | None]:
    """Features over ``history`` + ``current`` (the observation just made, as
    ``journal_frame`` gives it), and when history last saw a sample."""
    last: datetime | None = None
    if len(history):
        last = pd.Timestamp(history["time"].max()).to_pydatetime()
    parts = [p for p in (history, current) if len(p)]
    samples = pd.concat(parts, ignore_index=True) if len(parts) > 1 else current
    return build_features(derive_rates(samples)), last
