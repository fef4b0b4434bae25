"""Log set-up for every command: plain text for people, JSON lines for log pipelines.

A daemon's log is read by machines (Loki, Elasticsearch) as often as by people, so
``--log-format json`` gives one self-contained JSON object per line, with UTC times.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


FIELDS = "fields"  # ``extra={FIELDS: {...}}``: figures a log pipeline can query


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the record's fields
    (the tick's figures: ``pools``, ``written``, ``duration_ms``...), and any exception.
    Fields never replace the four keys every line has."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry |= {k: v for k, v in fields.items() if k not in entry}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: LogFormat = "text", stream: IO[str] | None = None) -> None:
    """Replace the root handlers with one that writes ``fmt`` to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # APScheduler logs every job run at INFO; the tick's own summary line says more.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
