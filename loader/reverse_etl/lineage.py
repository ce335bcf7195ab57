"""Which warehouse tables a model's SQL reads: its lineage in Dagster's graph.

sqlglot parses the rendered SQL; CTE names are not tables, and a table without a
schema qualifier is taken to be in the model's schema.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp


def tables_read(sql: str, default_schema: str) -> list[tuple[str, str]]:
    """Sorted (schema, table) pairs the statement reads; [] if it cannot be parsed."""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.ParseError:
        return []
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    found = set()
    for table in tree.find_all(exp.Table):
        if not table.db and table.name in ctes:
            continue
        found.add((table.db or default_schema, table.name))
    return sorted(found)
