"""The catalog: which tables and columns each (target, schema) has, as of the last sync,
kept in a small file beside sluice.yml.

Dagster builds one asset per table from it when the code location loads, without
touching the warehouse (definitions must load fast and offline); every sync refreshes
it, and `sluice catalog refresh` rebuilds it from the warehouses.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from loader.rules.schema import ColumnType

CATALOG_FILE = Path(".sluice") / "catalog.json"

Tables = dict[str, dict[str, str]]


def catalog_path(project_root: Path) -> Path:
    return project_root / CATALOG_FILE


def read_catalog(project_root: Path) -> dict[str, dict[str, Tables]]:
    """{target: {schema: {table: {column: type}}}}; empty when no sync has run yet."""
    path = catalog_path(project_root)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is rebuilt by the next sync


def tables_of(project_root: Path, target: str, schema: str) -> Tables:
    return read_catalog(project_root).get(target, {}).get(schema, {})


def update_catalog(
    project_root: Path, target: str, schema: str, tables: dict[str, dict[str, ColumnType]]
) -> None:
    """Replace one (target, schema) entry; written atomically so a reader never sees half."""
    data = read_catalog(project_root)
    data.setdefault(target, {})[schema] = {
        table: {column: kind.value for column, kind in columns.items()}
        for table, columns in sorted(tables.items())
    }
    path = catalog_path(project_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".catalog-")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
    os.replace(tmp, path)
