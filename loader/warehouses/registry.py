"""Target config -> adapter. The only place that maps a `type:` to a class, and to the
optional dependency (the pip extra) holding its driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loader.config.targets import BigQueryTarget, RedshiftTarget, SnowflakeTarget
from loader.warehouses.base import WarehouseError
from loader.warehouses.warehouse import Warehouse

# type -> (the extra to install, top-level modules of its driver). DuckDB is built in.
DRIVER_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "postgres": ("postgres", ("psycopg", "psycopg_binary")),
    "redshift": ("redshift", ("psycopg", "psycopg_binary")),
    "snowflake": ("snowflake", ("snowflake",)),
    "bigquery": ("bigquery", ("google",)),
    "clickhouse": ("clickhouse", ("chdb", "clickhouse_connect")),
}


class MissingDriver(WarehouseError):
    """The target's driver is not installed: the user runs one pip command (exit 2)."""

    def __init__(self, target_name: str, kind: str, extra: str) -> None:
        super().__init__(
            f"target '{target_name}' is a {kind} target, and the {kind} driver is not "
            f"installed: run pip install 'sluice[{extra}]'"
        )
        self.extra = extra


def open_warehouse(name: str, target: Any, read_only: bool = False) -> Warehouse:
    """`read_only`: the command only reads (an embedded database then takes no write
    lock; server warehouses ignore it). A missing driver is one sentence naming the
    extra to install."""
    try:
        return _open(name, target, read_only)
    except ImportError as exc:
        extra, modules = DRIVER_EXTRAS.get(target.type, ("", ()))
        missing = (exc.name or "").split(".")[0]
        if extra and missing in modules:
            raise MissingDriver(name, target.type, extra) from None
        raise


def _open(name: str, target: Any, read_only: bool) -> Warehouse:
    if target.type == "duckdb":
        from loader.warehouses.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(
            name, target.path, target.memory_limit, target.threads, read_only=read_only
        )
    if target.type == "postgres":
        from loader.warehouses.postgres import PostgresWarehouse

        return PostgresWarehouse(name, target.conninfo())
    if target.type == "snowflake":
        from loader.warehouses.snowflake import SnowflakeWarehouse

        return SnowflakeWarehouse(name, SnowflakeTarget.from_target(name, target))
    if target.type == "redshift":
        from loader.warehouses.redshift import RedshiftWarehouse

        return RedshiftWarehouse(name, RedshiftTarget.from_target(name, target))
    if target.type == "bigquery":
        from loader.warehouses.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(name, BigQueryTarget.from_target(name, target))
    if target.type == "clickhouse":
        from loader.warehouses.clickhouse import ClickHouseWarehouse

        return ClickHouseWarehouse(name, target)
    raise WarehouseError(f"target '{name}': the {target.type} adapter is not available yet")


def holds_nothing_yet(target: Any) -> bool:
    """True when opening the target would create its database (a DuckDB file not yet
    written): a command that only reads can answer "nothing loaded" without creating it."""
    if target.type == "duckdb":
        return target.path != ":memory:" and not Path(target.path).exists()
    if target.type == "clickhouse":
        return target.path is not None and not Path(target.path).exists()
    return False


def check_target(name: str, target: Any) -> str:
    """Connect and run one trivial statement, loading nothing; a few words on what was
    found. Raises WarehouseError (or MissingDriver) with the one-sentence problem.

    A DuckDB file that does not exist yet is not created here (the first sync does)."""
    if target.type == "duckdb":
        from loader.warehouses.duckdb import probe

        return probe(name, target.path)
    if holds_nothing_yet(target):
        return f"{target.path} does not exist yet (the first sync creates it)"
    warehouse = open_warehouse(name, target)
    try:
        list(warehouse.query("SELECT 1"))
    except WarehouseError:
        raise
    except Exception as exc:  # noqa: BLE001 - one sentence for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WarehouseError(f"target '{name}' connected but cannot run a query: {first}") from None
    finally:
        warehouse.close()
    return f"connected ({target.type})"
