"""docs/architecture.md and docs/upgrading.md must stay true to the code they describe."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from veloflux.domain.observation import COLUMNS
from veloflux.history.journal import SCHEMA_VERSION
from veloflux.model.registry import FORMAT

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
PACKAGE = ROOT / "agent" / "veloflux"


def test_every_observation_column_is_documented_with_its_unit() -> None:
    for column in COLUMNS:
        row = f"| `{column.name}` | {column.dtype} | {column.unit} |"
        assert row in ARCHITECTURE, f"docs/architecture.md lacks the row for {column.name}"


def test_every_module_named_in_the_table_exists_and_every_module_is_named() -> None:
    named = set(re.findall(r"^\| `([\w/]+\.py)` \|", ARCHITECTURE, flags=re.MULTILINE))
    actual = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert named == actual


def _documented_layers() -> list[set[str]]:
    """The package table's rows grouped by layer number, highest layer first."""
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", ARCHITECTURE, flags=re.MULTILINE)
    layers: dict[int, set[str]] = {}
    for layer, package in rows:
        layers.setdefault(int(layer), set()).add(package)
    return [layers[n] for n in sorted(layers, reverse=True)]


def _contract_layers() -> list[set[str]]:
    """The import-linter layers contract in pyproject.toml, highest layer first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    return [
        {name.strip().removeprefix("veloflux.") for name in re.split(r"[|:]", layer)}
        for layer in contract["layers"]
    ]


def test_the_package_table_is_the_import_contract_and_the_tree() -> None:
    documented = _documented_layers()
    assert documented == _contract_layers()
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set().union(*documented) == packages | {"errors"}


def test_every_package_says_its_job_in_its_docstring() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        assert init.read_text().startswith('"""'), f"{init.parent.name} has no docstring"


def test_the_upgrade_notes_name_the_journal_schema_and_model_format_this_version_reads() -> None:
    """An operator decides whether to copy the journal from these numbers: a schema bump
    or a registry format change without its line in docs/upgrading.md fails here."""
    upgrading = (ROOT / "docs" / "upgrading.md").read_text()
    assert f"**schema {SCHEMA_VERSION}**" in upgrading
    for version in range(1, SCHEMA_VERSION + 1):
        assert f"\n| {version} | " in upgrading, f"docs/upgrading.md lacks schema {version}'s row"
    assert f'`"format": {FORMAT}`' in upgrading
