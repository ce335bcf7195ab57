"""The one interface the pipeline speaks (Warehouse), and what a new adapter implements.

Every operation (bookkeeping, new-row anti-joins, replay fills, profile rebuilds,
deletion marks, reverse-ETL stage/diff/advance) is written once: statements.py over a
SqlDialect, run by sql_warehouse.SqlWarehouse. An adapter is a driver on SqlWarehouse.
To add a warehouse, write a module in this folder with:

- a SqlDialect subclass (dialect.py): only what the warehouse writes differently from
  PostgreSQL (identifier quoting and case, table references, parameter style, list
  parameters, a few functions), and its `Capabilities` (types, identifier and column
  limits);
- a SqlWarehouse subclass implementing the driver primitives: `execute(sql, params)`
  (rows changed), `fetchall(sql, params)`, `transaction()` (nestable), `close()`, and
  `stage(schema, table, columns, rows)`: the rows loaded by the warehouse's own bulk path
  (COPY, Arrow scan, PUT + COPY INTO, a load job, S3 COPY...) into a relation the shared
  DML reads;
- optionally: `hold(name, busy)` (a lock; the default is a lease row in _sluice.locks),
  `create_table`/`add_columns` (DDL with the warehouse's own clauses), `insert_encoded`
  (rows the reader processes encoded in the warehouse's bulk format), `columns_sql`;
- an entry in registry.py (its `type:` and pip extra) and in the contract suite
  (tests/contract.py), which every warehouse passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from loader.encoded import EncodedChunk, RowEncoder
from loader.messages import Reject
from loader.retype import RetypePlan
from loader.schema import ColumnType

BOOKKEEPING_SCHEMA = "_sluice"
# Row tuples for a bulk path, in the order of the accompanying column names.
Rows = Sequence[Sequence[Any]]


class WarehouseError(Exception):
    """A failure a user can act on; its message is one sentence naming the target."""


class LockBusy(WarehouseError):
    """Another load of the same schema into the same target is running."""


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
    # has its last data columns' values rescued (loader.row_layout).
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


def _newest_first(row: Sequence[Any]) -> tuple[Any, ...]:
    ts, received = row[1], row[2]
    return (ts is not None, ts if ts is not None else 0, received is not None, received or 0)


def _as_object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    parsed = orjson.loads(value) if isinstance(value, (str, bytes)) else value
    return parsed if isinstance(parsed, dict) else {}


def rescued_profile_rows(
    history: Sequence[Sequence[Any]],
    current: Sequence[Sequence[Any]],
    traits: Sequence[str],
    uuid_ts: str,
) -> list[tuple[Any, ...]]:
    """Profile rows rebuilt in Python, for the keys whose history holds rescued values
    (rare; the adapters whose SQL has no JSON lookup to share take this path).

    `history`: (key, timestamp, received_at, *traits, rescued JSON) per source row;
    `current`: (id, *traits, received_at, rescued JSON) per profile row. A trait takes
    its value from the newest row that has it, in its column or rescued: rescued, the
    column is NULL and the value goes to the profile's rescued JSON. Returns rows
    (id, *traits, received_at, uuid_ts, rescued JSON text) only for profiles that are
    new or differ from `current`, so an unchanged profile keeps its uuid_ts."""
    by_key: dict[Any, list[Sequence[Any]]] = {}
    for row in history:
        by_key.setdefault(row[0], []).append(row)
    have = {row[0]: row for row in current}
    out: list[tuple[Any, ...]] = []
    n = len(traits)
    for key, rows in by_key.items():
        rows = sorted(rows, key=_newest_first, reverse=True)
        values: list[Any] = []
        rescued: dict[str, Any] = {}
        for i, trait in enumerate(traits):
            for row in rows:
                kept = _as_object(row[3 + n])
                if row[3 + i] is not None or trait in kept:
                    values.append(row[3 + i])
                    if row[3 + i] is None:
                        rescued[trait] = kept[trait]
                    break
            else:
                values.append(None)
        received = max((r[2] for r in rows if r[2] is not None), default=None)
        old = have.get(key)
        if (
            old is not None
            and list(old[1 : 1 + n]) == values
            and old[1 + n] == received
            and _as_object(old[2 + n]) == rescued
        ):
            continue
        text = orjson.dumps(rescued).decode() if rescued else None
        out.append((key, *values, received, uuid_ts, text))
    return out


class Warehouse(ABC):
    capabilities: Capabilities
    target_name: str

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def lock(self, schema: str) -> AbstractContextManager[None]:
        """Held for a whole sync; raises LockBusy if another sync holds it."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def ensure_bookkeeping(self) -> None: ...

    @abstractmethod
    def read_schema(self, schema: str) -> dict[str, dict[str, ColumnType]]: ...

    @abstractmethod
    def loaded_files(self, schema: str) -> set[str]: ...

    @abstractmethod
    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None: ...

    @abstractmethod
    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None: ...

    @abstractmethod
    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        """Bulk-stage rows (unique ids) and insert those whose id is not there yet.

        With fill_nulls (replay), a row whose id is there already gets its NULL columns
        filled from the staged row; nothing non-NULL is ever overwritten. Returns the
        rows inserted or filled."""

    def tables_taking_tuples(self, schema: str) -> set[str]:
        """Tables of `schema` (as last read) whose rows must not be encoded by
        `capabilities.row_encoder`, e.g. a column someone changed to a type the encoder
        does not write; their rows take insert_new_rows."""
        return set()

    def insert_encoded(
        self, schema: str, table: str, chunks: Sequence[EncodedChunk], fill_nulls: bool = False
    ) -> int:
        """insert_new_rows for rows already encoded by `capabilities.row_encoder` (ids
        unique across the chunks). Only adapters that declare a row_encoder are asked."""
        raise TypeError(f"{type(self).__name__} declares no row_encoder")

    @abstractmethod
    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        """Bulk-stage rows (unique ids): new ids are inserted, existing rows replaced
        (a later version of an object)."""

    @abstractmethod
    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        """Set `_deleted_at` on rows deleted upstream (a row is created if unseen)."""

    @abstractmethod
    def read_cursors(self, schema: str) -> dict[str, str]:
        """{collection: cursor JSON} committed for an object source."""

    @abstractmethod
    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        """Called inside the transaction that commits the rows the cursor covers."""

    @abstractmethod
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """Recompute latest-per-trait rows for `keys` from the source table."""

    @abstractmethod
    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None: ...

    @abstractmethod
    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None: ...

    @abstractmethod
    def record_violations(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Tracking-plan violations, rows of VIOLATION_COLUMNS (without schema_name's
        value changed), one per file, event, property and kind: a row already there
        (a replayed file) is left as it is."""

    @abstractmethod
    def record_blocked(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Events a tracking plan blocked: (file, line, event, raw, violations JSON),
        known by file and line (a replay never records one twice)."""

    @abstractmethod
    def violation_summary(self, schema: str | None) -> list[dict[str, Any]]:
        """_sluice.violations summed over files: schema, event, property, kind,
        example, count, first_seen, last_seen (`sluice plan report`, Dagster)."""

    @abstractmethod
    def record_turned_off(self, schema: str, names: Sequence[tuple[str, str]]) -> None:
        """Remember (table, column) names selective sync kept out; column '' = table."""

    @abstractmethod
    def turned_off_names(self, schema: str) -> dict[str, set[str]]:
        """What record_turned_off remembered: {table: {column, ...}} ('' = the table)."""

    @abstractmethod
    def record_run(self, schema: str, report: dict[str, Any]) -> None: ...

    @abstractmethod
    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]: ...

    @abstractmethod
    def recent_rejects(self, schema: str | None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest rows of _sluice.rejected_events (of one schema, or all), as dicts
        with schema, file, line, reason, raw and rejected_at (`sluice rejects`)."""

    def retype_column(
        self, schema: str, table: str, column: str, new_type: ColumnType, apply: bool
    ) -> RetypePlan:
        """`sluice schema set-type`: the plan of moving the column to `new_type` (values
        into it from `_rescued_data`, misfits out to it); with `apply`, done in one
        transaction under the caller's lock and recorded in `_sluice.column_types`."""
        raise WarehouseError(
            f"target '{self.target_name}': changing a column's type is not supported on "
            f"{type(self).__name__.removesuffix('Warehouse')}"
        )

    def schema_names(self) -> set[str]:
        """The warehouse's schemas, for suggesting a mistyped one."""
        return set()

    def decided_types(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        """{table: {column: type}} a user set (`_sluice.column_types`): a new column of
        that name is created with that type, whatever its first value."""
        return {}

    @abstractmethod
    def table_ref(self, schema: str, table: str) -> str:
        """The table as this warehouse's SQL names it (quoted), for read-only queries."""

    @abstractmethod
    def table_stats(self, schema: str, table: str) -> TableStats:
        """Row count, ids present more than once, and the newest received_at."""

    @abstractmethod
    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """Run a read-only statement (tests, analyses, `schema show`)."""

    # --- reverse ETL ---
    # A model's rows are materialised and diffed against its last synced snapshot inside
    # the warehouse (set-based); only the change set is paged out to Python.

    @abstractmethod
    def retl_ensure_bookkeeping(self) -> None:
        """Create _sluice.retl_snapshots, retl_sent and retl_runs if missing."""

    @abstractmethod
    def retl_lock(self, model: str) -> AbstractContextManager[None]:
        """Held for a whole plan or run of one model; raises LockBusy if another holds it."""

    @abstractmethod
    def retl_model_columns(self, model: str, sql: str) -> dict[str, ColumnType]:
        """The columns (in order) the model's SELECT returns, without running it in full."""

    @abstractmethod
    def retl_stage(self, model: str, sql: str, key: str, columns: Sequence[str]) -> int:
        """Materialise these columns of the model with its key as text and a hash of the
        row computed in SQL (only what is sent counts as a change); returns rows staged."""

    @abstractmethod
    def retl_key_problems(self, model: str) -> tuple[int, int]:
        """(staged rows whose key is NULL, keys present more than once)."""

    @abstractmethod
    def retl_diff(self, model: str, columns: Sequence[str]) -> dict[str, int]:
        """Join the staged model against its snapshot into a change set (added, changed,
        removed rows, numbered in order); returns those counts and `unchanged`."""

    @abstractmethod
    def retl_changes(
        self, model: str, kinds: Sequence[str], columns: Sequence[str], after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """One page of the change set: (seq, kind, key, row hash, *columns) rows with
        seq > after, in seq order. Removed rows have NULL columns and their last hash."""

    @abstractmethod
    def retl_advance(self, model: str, seqs: Sequence[int]) -> None:
        """Make the snapshot match these change-set rows, atomically: the destination
        accepted them."""

    @abstractmethod
    def retl_sent_ids(self, model: str, keys: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """key -> (op, row hash, record id) of the last change sent for each of these keys
        that has one (_sluice.retl_sent); see loader/reverse_etl/ids.py."""

    @abstractmethod
    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        """Record (key, op, row hash, record id) as the last change sent for each key,
        replacing the previous one, committed before the batch goes out."""

    @abstractmethod
    def retl_baseline(self, model: str, kinds: Sequence[str]) -> int:
        """Record every change-set row of these kinds in the snapshot without sending."""

    @abstractmethod
    def retl_drop_stage(self, model: str) -> None:
        """Drop the model's staging and change-set tables."""

    @abstractmethod
    def retl_snapshot_count(self, model: str) -> int: ...

    @abstractmethod
    def retl_record_run(self, report: dict[str, Any]) -> None: ...

    @abstractmethod
    def retl_recent_runs(self, model: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first."""

    @abstractmethod
    def retl_write_table(
        self,
        schema: str,
        table: str,
        key: str,
        columns: dict[str, ColumnType],
        rows: Sequence[Sequence[Any]],
        keys: Sequence[str],
    ) -> None:
        """The table destination: create the table (or its missing columns) if needed, then
        in one transaction delete the rows whose key (compared as text) is in `keys` and
        insert `rows`. Delete-then-insert needs no unique constraint and is idempotent."""


VIOLATION_COLUMNS = (
    "schema_name",
    "file",
    "event",
    "property",
    "kind",
    "example",
    "occurrences",
    "first_seen",
    "last_seen",
)
VIOLATION_KEYS = ("schema_name", "file", "event", "property", "kind")
BLOCKED_COLUMNS = ("schema_name", "file", "line", "event", "raw", "violations")
BLOCKED_KEYS = ("schema_name", "file", "line")
# violation_summary's query, on every warehouse (plain SQL; the adapter names the table).
VIOLATION_SUMMARY = (
    "SELECT schema_name, event, property, kind, MIN(example), SUM(occurrences), "
    "MIN(first_seen), MAX(last_seen) FROM {table}{where} "
    "GROUP BY schema_name, event, property, kind "
    "ORDER BY schema_name, event, property, kind"
)


def violation_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    keys = ("schema", "event", "property", "kind", "example", "count", "first_seen", "last_seen")
    out = [dict(zip(keys, row, strict=True)) for row in rows]
    for row in out:
        row["count"] = int(row["count"] or 0)
    return out


def reject_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows of (schema_name, file, line, reason, raw, rejected_at) as recent_rejects gives them."""
    keys = ("schema", "file", "line", "reason", "raw", "rejected_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]
