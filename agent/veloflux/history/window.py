"""The recent window: the last few intervals' rates, kept in memory between ticks."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from veloflux.history.frames import epoch_seconds, instants, server_keys
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates, rates_between


class RecentWindow:
    """The last ``span_seconds`` of history as per-interval rates, kept in memory.

    Every tick needs the last few intervals (rates, trends, realized error). Deriving
    them afresh from 9,000 samples of a 1,000-server pool each tick redoes the work for
    intervals whose rates had not changed: a rate depends only on a sample and the one
    before it. So the window keeps the rates of the intervals in the span and each
    server's last sample; a new observation costs the derivation of its own rows. It
    is read from the journal once (on first use, or after it emptied), then fed by the
    agent with what it records (``journal_frame`` rows, exactly what the journal would
    give back). The rates it returns are those ``derive_rates`` gives on the span's
    samples, in no particular order.
    """

    def __init__(self, journal: Journal, span_seconds: float) -> None:
        self._journal = journal
        self._span = timedelta(seconds=span_seconds)
        self._last: pd.DataFrame | None = None  # each server's newest sample in the span
        # The span's rates, a frame per derivation, with when each row's interval began.
        self._rates: list[tuple[pd.DataFrame, np.ndarray]] = []
        self._pending: tuple[pd.DataFrame, pd.DataFrame] | None = None

    def rates(self, now: datetime, current: pd.DataFrame) -> tuple[pd.DataFrame, datetime | None]:
        """Rates over ``now - span <= time`` with ``current``'s appended (``current`` is
        not kept until ``add``), and the time of the newest sample before ``current``."""
        since = now - self._span
        if self._last is None or self._last.empty:
            self._load(since, now)
        self._trim(since)
        assert self._last is not None
        newest = None
        if len(self._last):
            newest = pd.Timestamp(self._last["time"].max()).to_pydatetime()
        fresh = self._derive(current)
        self._pending = (current, fresh)
        parts = [p for p in (*(r for r, _ in self._rates), fresh) if len(p)]
        if not parts:
            return fresh, newest
        return (pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]), newest

    def add(self, current: pd.DataFrame) -> None:
        """Keep ``current`` (the rows just recorded); a window never read stays empty,
        since its first read takes everything from the journal."""
        if self._last is None or current.empty:
            return
        pending, self._pending = self._pending, None
        fresh = pending[1] if pending is not None and pending[0] is current else None
        self._keep(self._derive(current) if fresh is None else fresh)
        if self._follows(current):  # the same servers as last time: all replaced
            self._last = current
            return
        replaced = server_keys(self._last).isin(server_keys(current))
        self._last = pd.concat([self._last[~replaced], current], ignore_index=True)

    def _keep(self, rates: pd.DataFrame) -> None:
        step = np.rint(rates["interval_seconds"].to_numpy(dtype=float) * 1e9)
        self._rates.append((rates, instants(rates) - step.astype("timedelta64[ns]")))

    def _load(self, since: datetime, now: datetime) -> None:
        """The span from the journal, up to ``now`` and not beyond: another process
        recording into the same journal (the daemon beside a one-shot ``dry-run``) may
        have written a sample after ``current`` was observed, and a sample newer than
        ``current`` would be derived twice, once from the journal and once from
        ``current``, into two rows for one server at one instant."""
        samples = self._journal.read(since=since, until=now)
        self._rates = []
        if len(samples):
            self._keep(derive_rates(samples))
        newest = samples.sort_values("time", kind="stable").drop_duplicates(
            ["pool", "server"], keep="last"
        )
        self._last = newest.reset_index(drop=True)

    def _trim(self, since: datetime) -> None:
        """Drop what the span no longer holds: samples before ``since``, and rates
        whose first sample is before it (a fresh derivation would not see them)."""
        cutoff = np.datetime64(round(epoch_seconds(since) * 1e6), "us")
        assert self._last is not None
        if len(self._last):
            inside = instants(self._last) >= cutoff
            if not inside.all():
                self._last = self._last[inside].reset_index(drop=True)
        kept = []
        for rates, begins in self._rates:
            inside = begins >= cutoff
            if inside.all():
                kept.append((rates, begins))
            elif inside.any():
                kept.append((rates[inside].reset_index(drop=True), begins[inside]))
        self._rates = kept

    def _follows(self, current: pd.DataFrame) -> bool:
        """True when ``current`` has the last samples' servers, in the same order, each
        later than its last sample: then each row's previous sample is the row at the
        same position (the common case: a proxy lists its servers in a stable order)."""
        last = self._last
        assert last is not None
        return (
            len(last) == len(current)
            and np.array_equal(
                last["server"].to_numpy(dtype=object), current["server"].to_numpy(dtype=object)
            )
            and np.array_equal(
                last["pool"].to_numpy(dtype=object), current["pool"].to_numpy(dtype=object)
            )
            and bool((instants(last) < instants(current)).all())
        )

    def _derive(self, current: pd.DataFrame) -> pd.DataFrame:
        """Rates of ``current``'s samples from each server's last sample."""
        assert self._last is not None
        if self._last.empty:
            return derive_rates(current)
        if self._follows(current):
            positions = np.arange(len(current))
            return rates_between(self._last, positions, current, positions)
        return derive_rates(pd.concat([self._last, current], ignore_index=True))
