"""The tick's one log line: what an operator greps for, and what a log pipeline
queries (``--log-format json`` carries the same figures as fields).

One line per tick, whatever the tick did: the pools by mode, the servers, what was
written or only planned (a dry-run, a paused daemon), the lowest confidence among the
driven pools, the model, and how long it took.
"""

from __future__ import annotations

import logging
from collections import Counter

from veloflux.agent.ports import TickResult
from veloflux.domain.weightplan import DRIVEN_MODES
from veloflux.util.logs import FIELDS

_log = logging.getLogger("veloflux.tick")  # the name the tick line has always had


def summary_fields(result: TickResult, paused: bool = False) -> dict[str, object]:
    """The tick's figures, as fields of its log line (``--log-format json``)."""
    report = result.report
    driven = [p.confidence for p in result.plan.pools if p.mode in DRIVEN_MODES]
    external = result.observation.external
    return {
        "event": "tick",
        "pools": dict(sorted(Counter(p.mode for p in result.plan.pools).items())),
        "servers": sum(len(p.servers) for p in result.plan.pools),
        "written": len(report.applied) if report is not None else None,
        "failed": len(report.failures) if report is not None else None,
        "planned_changes": len(result.plan.changes()),
        "paused": paused,
        "dry_run": report is None and not paused,
        "lowest_confidence": round(min(driven), 4) if driven else None,
        "model": result.plan.model_version,
        "proxy_reloaded": result.proxy_reloaded,
        "proxies_failed": [f"{f.proxy}({f.reason})" for f in result.failures],
        "features": None if external is None else ("down" if external.error else "up"),
        "external_changes": len(result.external_changes),
        "duration_ms": round(result.duration_seconds * 1000, 1),
    }


def summary_line(result: TickResult, paused: bool = False) -> str:
    """The one log line per tick: modes, changes, lowest confidence, duration."""
    return _line(result, paused, summary_fields(result, paused))


def _line(result: TickResult, paused: bool, f: dict[str, object]) -> str:
    modes = f["pools"]
    assert isinstance(modes, dict)
    mode_text = " ".join(f"{mode}={n}" for mode, n in modes.items()) or "no pools"
    if result.report is None:
        acted = f"planned_changes={f['planned_changes']} ({'paused' if paused else 'dry-run'})"
    else:
        acted = f"written={f['written']} failed={f['failed']}"
    lowest = "-" if f["lowest_confidence"] is None else f"{f['lowest_confidence']:.2f}"
    reload_text = " proxy_reloaded" if result.proxy_reloaded else ""
    failed = f["proxies_failed"]
    assert isinstance(failed, list)
    failed_text = f" proxies_failed={','.join(failed)}" if failed else ""
    external = result.observation.external
    features_text = ""  # Prometheus features: read, or down (degraded mode)
    if external is not None:
        features_text = f" {external.source}={f['features']}"
    held = f" external_changes={f['external_changes']}" if f["external_changes"] else ""
    return (
        f"tick pools[{mode_text}] servers={f['servers']} {acted} lowest_confidence={lowest} "
        f"model={result.plan.model_version or '-'}{reload_text}{failed_text}{features_text}"
        f"{held} duration_ms={result.duration_seconds * 1000:.1f}"
    )


def log_summary(result: TickResult, paused: bool = False) -> None:
    """The tick's one line: text, with its figures as fields for ``--log-format json``."""
    fields = summary_fields(result, paused)
    _log.info(_line(result, paused, fields), extra={FIELDS: fields})
