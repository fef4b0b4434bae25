"""What every benchmark shares: describing the machine, and writing its figures into
docs/benchmarks.md between its own markers, so the doc always shows what a command in
this repository measured."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown CPU'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """A markdown table as lines."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def replace_between(begin: str, end: str, section: str, doc: Path = DOC) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in the doc,
    replacing the old one, or append it when the doc has none yet."""
    text = doc.read_text(encoding="utf-8")
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")


def replace_section(section: str, heading: str, begin: str, end: str, doc: Path = DOC) -> None:
    """Replace a benchmark's whole section (its ``heading``, prose and the text between
    ``begin`` and ``end``) with ``section``, or append it when the markers are absent."""
    text = doc.read_text(encoding="utf-8")
    if begin in text and end in text:
        start = text.index(begin)
        heading_at = text.rfind("\n## ", 0, start) + 1
        if heading_at > 0 and text.startswith(heading, heading_at):
            start = heading_at
        else:  # markers without our heading: keep what precedes them
            section = section[section.index(begin) :]
        stop = text.index(end) + len(end)
        text = text[:start] + section + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
