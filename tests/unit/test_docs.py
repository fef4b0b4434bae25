"""docs/architecture.md must stay true to the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from veloflux.domain.observation import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def test_every_observation_column_is_documented_with_its_unit() -> None:
    for column in COLUMNS:
        row = f"| `{column.name}` | {column.dtype} | {column.unit} |"
        assert row in ARCHITECTURE, f"docs/architecture.md lacks the row for {column.name}"


def test_every_module_named_in_the_table_exists_and_every_module_is_named() -> None:
    named = set(re.findall(r"^\| \d+ \| `([\w/]+\.py)` \|", ARCHITECTURE, flags=re.MULTILINE))
    package = ROOT / "agent" / "veloflux"
    actual = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert named == actual
