"""Recording without acting: observe every proxy each interval into the journal.

What ``veloflux-agent record`` runs, to gather a first history before a model is
trained or before VeloFlux is trusted to write. It never plans and never writes a
weight. A source that cannot be read skips that one observation, named to
``skipped``; the recording goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from veloflux.agent.build import build_sources, open_journal
from veloflux.agent.learn import NoHistory
from veloflux.config.schema import Config
from veloflux.errors import SourceUnavailable
from veloflux.util.events import Events


@dataclass(frozen=True)
class RecordReport:
    """What a recording added, and how large the journal now is. ``with_traffic``
    counts the samples whose server served requests since the sample before it: what
    ``train`` can learn from (an idle proxy records samples that teach nothing)."""

    samples: int
    journal_rows: int
    with_traffic: int = 0


def record(
    config: Config,
    events: Events,
    seconds: float,
    skipped: Callable[[SourceUnavailable], None] = lambda _exc: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RecordReport:
    """Observe every ``interval`` for ``seconds`` (at least once) and append each
    observation to the journal, creating it if needed (``NoHistory`` if it cannot be
    opened)."""
    journal = open_journal(config, events, create=True)
    if journal is None:
        raise NoHistory(f"ai.history_path: cannot open {config.ai.history_path} (see the log)")
    sources = build_sources(config, events)
    deadline = clock() + seconds
    samples = with_traffic = 0
    requests: dict[tuple[str, str], float] = {}  # each server's counter at its last sample
    with journal:
        while True:
            started = clock()
            for source in sources:
                try:
                    observation = source.observe()
                    samples += journal.append(observation)
                except SourceUnavailable as exc:
                    skipped(exc)
                    continue
                for row in observation.rows:
                    key = (row.pool, row.server)
                    before = requests.get(key)
                    if before is not None and row.requests_total > before:
                        with_traffic += 1
                    requests[key] = row.requests_total
            if started + config.interval_seconds > deadline:
                break
            sleep(max(0.0, started + config.interval_seconds - clock()))
        return RecordReport(samples, journal.count(), with_traffic)
