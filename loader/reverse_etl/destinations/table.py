"""Database table destination: upsert by key into a table of a warehouse target
(the model's own by default), delete for `mirror`.

Each batch is one transaction in the destination (delete the batch's keys, insert its
rows), so a batch is all accepted or all failed, and re-sending one changes nothing.
The table is created (key as primary key) if it does not exist; new mapped fields
become new columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from loader.config.errors import ConfigError
from loader.reverse_etl.destinations import (
    Destination,
    DestinationConfig,
    Record,
    SendResult,
)
from loader.warehouses.warehouse import Warehouse


class TableConfig(DestinationConfig):
    type: Literal["table"]
    target: str | None = Field(default=None, description="profiles.yml target; default: same")
    schema_name: str = Field(alias="schema")
    table: str
    batch_size: int = Field(default=1000, ge=1, le=100_000)


class TableDestination(Destination):
    config_class = TableConfig
    delivers_ids = False
    config: TableConfig

    def describe(self) -> str:
        where = f"target {self.config.target}" if self.config.target else "same target"
        return f"table {self.config.schema_name}.{self.config.table} ({where})"

    def open(self) -> None:
        self._own = False
        name = self.config.target
        if name is None or name == self.ctx.warehouse.target_name:
            self.warehouse: Warehouse = self.ctx.warehouse
            return
        if self.ctx.open_target is None:
            raise ConfigError(
                f"model '{self.ctx.model}': destination target '{name}' needs profiles.yml"
            )
        self.warehouse = self.ctx.open_target(name)
        self._own = True

    def send(self, records: Sequence[Record]) -> SendResult:
        names = list(self.ctx.field_types)
        rows = [tuple(r.fields.get(n) for n in names) for r in records if r.op != "delete"]
        try:
            self.warehouse.retl_write_table(
                self.config.schema_name,
                self.config.table,
                self.ctx.key_field,
                self.ctx.field_types,
                rows,
                [r.key for r in records],
            )
        except Exception as exc:  # noqa: BLE001 - the batch failed; report it per record
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return SendResult({r.seq: f"{type(exc).__name__}: {first}" for r in records})
        return SendResult()

    def close(self) -> None:
        if self._own:
            self.warehouse.close()


DESTINATION = TableDestination
