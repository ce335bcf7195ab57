"""What a new warehouse adapter implements, and the types every adapter shares.

Every operation (bookkeeping, new-row anti-joins, replay fills, profile rebuilds,
deletion marks, reverse-ETL stage/diff/advance) is written once: statements.py over a
SqlDialect, run by warehouse.Warehouse, the one interface the rest of Sluice speaks. An
adapter is a driver: a module in this folder with

- a SqlDialect subclass (dialect.py): only what the warehouse writes differently from
  PostgreSQL (identifier quoting and case, table references, parameter style, list
  parameters, a few functions), and its `Capabilities` (types, identifier and column
  limits);
- a Warehouse subclass implementing five driver primitives: `execute(sql, params)`
  (rows changed), `fetchall(sql, params)`, `transaction()` (nestable), `close()`, and
  `stage(schema, table, columns, rows)`: the rows loaded by the warehouse's own bulk path
  (COPY, Arrow scan, PUT + COPY INTO, a load job, S3 COPY...) into a relation the shared
  DML reads;
- optionally: `hold(name, busy)` (a lock; the default is a lease row in _sluice.locks),
  `create_table`/`add_columns` (DDL with the warehouse's own clauses), `insert_encoded`
  (rows the reader processes encoded in the warehouse's bulk format), `columns_sql`;
- its target's fields in loader/config/targets.py, an entry in registry.py (its `type:`
  and pip extra) and in the contract suite (tests/contract.py), which every warehouse
  passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import orjson

from loader.encode.encoded import RowEncoder
from loader.rules.schema import ColumnType

T = TypeVar("T")
BOOKKEEPING_SCHEMA = "_sluice"
# Row tuples for a bulk path, in the order of the accompanying column names.
Rows = Sequence[Sequence[Any]]


class WarehouseError(Exception):
    """A failure a user can act on; its message is one sentence naming the target."""


class LockBusy(WarehouseError):
    """Another load of the same schema into the same target is running."""


def type_names(*sql: str) -> dict[ColumnType, str]:
    """Capabilities.type_names from one SQL type per ColumnType, in its order (boolean,
    bigint, double, timestamp, text)."""
    return dict(zip(ColumnType, sql, strict=True))


@dataclass(frozen=True)
class Capabilities:
    """What differs between warehouses, declared in one place."""

    max_identifier_bytes: int
    type_names: dict[ColumnType, str]
    json_type: str
    max_text_chars: int | None = None
    # Set when the adapter takes rows that reader processes encoded (insert_encoded).
    row_encoder: RowEncoder | None = None
    # The `id` (primary key) column's type, when not the text type: the key is compared
    # on every insert, and an opaque id needs no linguistic ordering.
    key_type: str | None = None
    # Columns a table may have (the warehouse's own limit less headroom, or where it
    # fails long before its limit): a table's columns past it are not created, their
    # values go to `_rescued_data` and the sync report warns.
    max_columns: int | None = None
    # Bytes one stored row may take (PostgreSQL's 8 kB heap page): a row estimated wider
    # has its last data columns' values rescued (loader.encode.row_layout).
    max_row_bytes: int | None = None
    # UTF-8 bytes `_rescued_data` holds (Redshift's varchar(65535)): wider rescued
    # values are cut with a marker keeping their length and hash (row_layout.fit_rescued).
    max_rescued_bytes: int | None = None


@dataclass(frozen=True)
class TableStats:
    """What monitoring asks of a loaded table (Dagster metadata and checks)."""

    rows: int
    duplicate_ids: int
    max_received_at: datetime | None


@dataclass
class ProfileSpec:
    """Latest-per-trait table rebuilt from an event table (users, accounts)."""

    table: str
    source_table: str
    key_column: str
    trait_columns: Sequence[str]
    # Ids of the source rows this batch offered: an adapter may update a profile from
    # these alone when they are all later than what the profile has seen.
    new_ids: Sequence[str] = ()
    # The JSON column (in both tables) holding values that did not fit their column:
    # a trait whose newest value was rescued is NULL in the profile and kept there.
    rescued_column: str | None = None


def staged_text(value: Any) -> str | None:
    """A row value as text, for bulk paths that stage every column as text and cast in
    SQL (booleans as true/false, times as ISO 8601, JSON values as JSON)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def retried(
    fn: Callable[[], T],
    attempts: int,
    transient: Callable[[BaseException], bool],
    first_wait: float = 0.5,
) -> T:
    """`fn`, called again while it fails with an error `transient` accepts, `attempts`
    times at most in all: the pause doubles from `first_wait` up to 8 s, plus jitter so
    clients failing together do not retry together. The last error is raised as it was.
    Only for work that is safe to repeat (a statement outside a transaction, a load job
    into a table it truncates)."""
    from tenacity import (
        Retrying,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential,
        wait_random,
    )

    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=first_wait, max=8) + wait_random(0, first_wait),
        retry=retry_if_exception(transient),
        reraise=True,
    )
    return retrying(fn)


def first_line(text: str, scrub: Callable[[str], str] | None = None) -> str:
    """An error's first non-blank line, its final period dropped and its secrets masked
    (a driver's message goes into one sentence of Sluice's); "" when it has none."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[0].rstrip(".") if lines else ""
    return scrub(line) if scrub is not None else line
