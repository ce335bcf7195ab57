"""Target config -> adapter. The only place that maps a `type:` to a class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loader.warehouses.base import Warehouse, WarehouseError


def open_warehouse(name: str, target: Any, read_only: bool = False) -> Warehouse:
    """`read_only`: the command only reads (an embedded database then takes no write
    lock; server warehouses ignore it)."""
    if target.type == "duckdb":
        from loader.warehouses.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(
            name, target.path, target.memory_limit, target.threads, read_only=read_only
        )
    if target.type == "postgres":
        from loader.warehouses.postgres import PostgresWarehouse

        return PostgresWarehouse(name, target.conninfo())
    if target.type == "snowflake":
        from loader.warehouses.snowflake import SnowflakeTarget, SnowflakeWarehouse

        return SnowflakeWarehouse(name, SnowflakeTarget.from_target(name, target))
    if target.type == "redshift":
        from loader.warehouses.redshift import RedshiftTarget, RedshiftWarehouse

        return RedshiftWarehouse(name, RedshiftTarget.from_target(name, target))
    if target.type == "bigquery":
        from loader.warehouses.bigquery import BigQueryTarget, BigQueryWarehouse

        return BigQueryWarehouse(name, BigQueryTarget.from_target(name, target))
    raise WarehouseError(f"target '{name}': the {target.type} adapter is not available yet")


def holds_nothing_yet(target: Any) -> bool:
    """True when opening the target would create its database (a DuckDB file not yet
    written): a command that only reads can answer "nothing loaded" without creating it."""
    if target.type == "duckdb":
        return target.path != ":memory:" and not Path(target.path).exists()
    return False
