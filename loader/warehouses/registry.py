"""Target config -> adapter. The only place that maps a `type:` to a class."""

from __future__ import annotations

from typing import Any

from loader.warehouses.base import Warehouse, WarehouseError


def open_warehouse(name: str, target: Any) -> Warehouse:
    if target.type == "duckdb":
        from loader.warehouses.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(name, target.path)
    if target.type == "postgres":
        from loader.warehouses.postgres import PostgresWarehouse

        return PostgresWarehouse(name, target.conninfo())
    raise WarehouseError(f"target '{name}': the {target.type} adapter is not available yet")
