"""BigQuery: a driver on Warehouse. Load jobs stage the rows; the DML is statements.py's.

A schema is the dataset `dataset_prefix + schema`; the bookkeeping dataset
`dataset_prefix + "_sluice"` is hidden (a leading underscore) from the console's explorer.
`_rescued_data` is STRING holding JSON. Event tables are made through the tables API,
partitioned by day on `received_at` and clustered on `id` (what the writes' joins and
analysts' date filters prune on). Bookkeeping tables have no PRIMARY KEY (BigQuery's are
NOT ENFORCED only; the writes anti-join anyway), and their time-of-insert columns are
written by the inserts (tables made through the API by an older version have no
defaults).

Bulk path: NDJSON in a load job (free, unlike streaming inserts) into a fresh staging
table typed like the target's columns, dropped after the DML read it. Parameters become
typed query parameters (bigquery_api.bind), a list an ARRAY (`IN UNNEST(@name)`).

Exactly once without transactions a client can hold across load jobs and DDL: every
statement is atomic and every write of a batch idempotent (anti-joins on `id` and on
bookkeeping keys, fills of NULLs only, updates of rows that differ only), and
`transaction()` defers the batch's bookkeeping writes to the end of the outermost block,
ledger and cursors last; a failure drops them. A crash before the ledger write leaves the
files pending and the rerun inserts only the missing ids; one after it lost nothing.
Reverse ETL notes record ids before a batch is sent, and an advance cut short re-offers
those keys with their record ids.

Locks: Warehouse's lease row; BigQuery refusing a concurrent DML on it is LockBusy too.

Emulator (bqemulator 1.4, the tests'): it rejects several ADD COLUMN clauses in one ALTER
and its table metadata does not see columns added by DDL, so `add_columns` falls back to
one clause a statement on that error and patches the metadata (no-ops on BigQuery).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import date, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from loader.config.targets import BigQueryTarget
from loader.rules.retype import RetypePlan
from loader.rules.schema import ColumnType
from loader.warehouses import statements as st
from loader.warehouses.base import (
    BOOKKEEPING_SCHEMA,
    Capabilities,
    LockBusy,
    Rows,
    WarehouseError,
    type_names,
)
from loader.warehouses.bigquery_api import BigQueryApi, bind
from loader.warehouses.dialect import SqlDialect
from loader.warehouses.warehouse import Warehouse

if TYPE_CHECKING:
    from google.cloud import bigquery

__all__ = ["BigQueryDialect", "BigQueryWarehouse"]

CAPABILITIES = Capabilities(
    # Column names: 300 characters (table names may have 1,024 bytes; columns bind first).
    max_identifier_bytes=300,
    type_names=type_names("BOOL", "INT64", "FLOAT64", "TIMESTAMP", "STRING"),
    json_type="STRING",
    max_text_chars=None,
    # 10,000 columns per table at most: headroom below it.
    max_columns=9_500,
)
B = BOOKKEEPING_SCHEMA
RESCUED = st.RESCUED
# Type names the tables API (legacy) and INFORMATION_SCHEMA give beyond Sluice's own.
_READ_TYPES = {
    "NUMERIC": ColumnType.DOUBLE,
    "BIGNUMERIC": ColumnType.DOUBLE,
    "DATETIME": ColumnType.TIMESTAMP,
    "JSON": ColumnType.TEXT,
}
_EMULATOR_ONE_ALTER = "Only one ALTER command per statement"  # bqemulator's words


def quote(name: str) -> str:
    """A backticked identifier part (column, or a whole `project.dataset.table` path)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _json_value(value: Any) -> Any:
    """NDJSON for load jobs: timestamps as RFC 3339 text, nested values as JSON text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


class BigQueryDialect(SqlDialect):
    sqlglot_name = "bigquery"
    text_type = "STRING"
    now = "CURRENT_TIMESTAMP()"
    # Keys bound in one ARRAY parameter (BigQuery caps a request at 10 MB).
    max_list = 5_000
    alters_column_type = False

    def __init__(self, project: str, dataset_prefix: str) -> None:
        super().__init__(CAPABILITIES.type_names, CAPABILITIES.json_type)
        self.project, self.prefix = project, dataset_prefix

    def ident(self, name: str) -> str:
        return quote(name)

    def dataset_id(self, schema: str) -> str:
        return f"{self.project}.{self.prefix}{schema}"

    def schema_ref(self, schema: str) -> str:
        return quote(self.dataset_id(schema))

    def table_ref(self, schema: str, table: str) -> str:
        return quote(f"{self.dataset_id(schema)}.{table}")

    def literal(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def in_list(self, expr: str, name: str) -> str:
        return f"{expr} IN UNNEST({self.param(name)})"

    def primary_key(self, columns: Sequence[str]) -> str:
        return ""  # NOT ENFORCED keys only (which the emulator refuses): the writes anti-join

    def first_non_null(self, value: str, partition: str, order: str) -> str:
        return (
            f"FIRST_VALUE({value} IGNORE NULLS) OVER (PARTITION BY {partition} ORDER BY "
            f"{order} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        )

    def greatest(self, a: str, b: str) -> str:
        # BigQuery's GREATEST is NULL when either is; PostgreSQL's skips a NULL.
        return f"GREATEST(COALESCE({a}, {b}), COALESCE({b}, {a}))"

    def whole_row_hash(self, alias: str) -> str | None:
        return f"TO_HEX(MD5(TO_JSON_STRING({alias})))"

    def lease_expiry(self, minutes: int) -> str:
        return f"TIMESTAMP_ADD({self.now}, INTERVAL {int(minutes)} MINUTE)"

    def read_type(self, data_type: str) -> ColumnType:
        found = _READ_TYPES.get(data_type.split("(")[0].strip().upper())
        return found if found is not None else super().read_type(data_type)


class BigQueryWarehouse(Warehouse):
    capabilities = CAPABILITIES

    def __init__(
        self, target_name: str, target: BigQueryTarget, client: bigquery.Client | None = None
    ) -> None:
        self.target_name = target_name
        self.target = target
        self.api = BigQueryApi(target_name, target, client)
        self.client = self.api.client
        self.dialect = BigQueryDialect(target.project, target.dataset_prefix)
        self.lease_minutes = target.lock_lease_minutes
        # (schema, table) -> {column: BigQuery type}, for typing staged rows.
        self._types: dict[tuple[str, str], dict[str, str]] = {}
        self._datasets: set[str] = set()
        self._bookkeeping: set[str] = set()

    # --- driver primitives ---------------------------------------------------------------
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return int(self.api.job(*bind(sql, params)).num_dml_affected_rows or 0)

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.api.rows(self.api.job(*bind(sql, params)))

    def close(self) -> None:
        self.client.close()

    def transaction(self) -> AbstractContextManager[None]:
        """Data writes run at once; bookkeeping writes issued inside the block are written
        when the outermost block exits normally, ledger and cursors last (see the module
        docstring for why that is exactly once). A failure drops them."""
        return self._joined(self._deferring)

    def _record(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self._defer(partial(super()._record, table, columns, rows), table == "loaded_files")

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        self._defer(partial(super().save_cursor, schema, collection, cursor), last=True)

    @contextmanager
    def hold(self, name: str, busy: str) -> Iterator[None]:
        with ExitStack() as held:
            try:
                held.enter_context(self._lease(name, busy))
            except WarehouseError as exc:
                # Two takers' DML on the locks table at once: BigQuery refuses one.
                if isinstance(exc, LockBusy) or "concurrent update" not in str(exc).lower():
                    raise
                raise LockBusy(busy) from None
            yield

    # --- datasets and tables, through the API --------------------------------------------
    def _table_id(self, schema: str, table: str) -> str:
        return f"{self.dialect.dataset_id(schema)}.{table}"

    def ensure_schema(self, schema: str) -> None:
        """The dataset, in the target's location (once per process)."""
        from google.cloud import bigquery

        dataset_id = self.dialect.dataset_id(schema)
        if dataset_id not in self._datasets:
            dataset = bigquery.Dataset(dataset_id)
            dataset.location = self.target.location
            self.api.call(
                lambda: self.client.create_dataset(dataset, exists_ok=True, **self.api.kw())
            )
            self._datasets.add(dataset_id)

    def _ensure_tables(self, names: Sequence[str]) -> None:
        """The missing bookkeeping tables (one list call when all are there)."""
        self.ensure_schema(B)
        if not set(names) <= self._bookkeeping:
            dataset = self.dialect.dataset_id(B)
            listed = self.api.call(lambda: list(self.client.list_tables(dataset, **self.api.kw())))
            self._bookkeeping.update(t.table_id for t in listed)
        for name in names:
            if name not in self._bookkeeping:
                self.execute(st.create_bookkeeping(self.dialect, st.BOOKKEEPING[name]))
                self._bookkeeping.add(name)

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        """Through the tables API: a TIMESTAMP `received_at` partitions by its day, a
        STRING `id` clusters."""
        from google.cloud import bigquery

        self.ensure_schema(schema)
        fields = {n: self.dialect.column_type(n, k) for n, k in columns.items()}
        obj = bigquery.Table(
            self._table_id(schema, table),
            schema=[bigquery.SchemaField(n, t) for n, t in fields.items()],
        )
        if fields.get("received_at") == "TIMESTAMP":
            obj.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field="received_at"
            )
        if fields.get("id") == "STRING":
            obj.clustering_fields = ["id"]
        self.api.call(lambda: self.client.create_table(obj, exists_ok=True, **self.api.kw()))
        self._types[(schema, table)] = fields

    def add_columns_sql(self, schema: str, table: str, columns: dict[str, ColumnType]) -> str:
        """One ALTER TABLE adding every column (one metadata update on BigQuery, which
        rate-limits them per table)."""
        d = self.dialect
        adds = ", ".join(
            f"ADD COLUMN IF NOT EXISTS {d.ident(n)} {d.column_type(n, k)}"
            for n, k in columns.items()
        )
        return f"ALTER TABLE {d.table_ref(schema, table)} {adds}"

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        from google.cloud import bigquery

        if not columns:
            return
        try:
            self.execute(self.add_columns_sql(schema, table, columns))
        except WarehouseError as exc:
            if _EMULATOR_ONE_ALTER not in str(exc) or len(columns) == 1:
                raise
            for name, kind in columns.items():  # the emulator: one clause per statement
                self.execute(self.add_columns_sql(schema, table, {name: kind}))
        types = {n: self.dialect.column_type(n, k) for n, k in columns.items()}
        obj = self._get_table(schema, table)
        missing = [n for n in columns if n not in {f.name for f in obj.schema}]
        if missing:  # the emulator's table metadata does not follow DDL: patch it
            obj.schema = [*obj.schema, *(bigquery.SchemaField(n, types[n]) for n in missing)]
            self.api.call(lambda: self.client.update_table(obj, ["schema"], **self.api.kw()))
        self._types.setdefault((schema, table), {}).update(types)

    def _get_table(self, schema: str, table: str) -> Any:
        return self.api.call(
            lambda: self.client.get_table(self._table_id(schema, table), **self.api.kw())
        )

    def columns_sql(self, schema: str, table: str | None = None) -> tuple[str, dict[str, Any]]:
        where = "" if table is None else " WHERE table_name = %(table)s"
        return (
            "SELECT table_name, column_name, data_type FROM "
            f"{self.dialect.schema_ref(schema)}.INFORMATION_SCHEMA.COLUMNS{where} "
            "ORDER BY table_name, ordinal_position",
            {"table": table},
        )

    def _columns(self, schema: str, table: str | None = None) -> list[tuple[str, str, str]]:
        """INFORMATION_SCHEMA of the schema's dataset (none: no such dataset yet); staging
        tables left out. Also what `stage` types rows by."""
        from google.api_core import exceptions as api_exceptions

        try:
            job = self.api.job(*bind(*self.columns_sql(schema, table)), not_found_ok=True)
        except api_exceptions.NotFound:
            return []
        found = [
            (str(t), str(c), str(k))
            for t, c, k in self.api.rows(job)
            if not (schema == B and str(t).startswith("_stage_"))
        ]
        types: dict[tuple[str, str], dict[str, str]] = {}
        for t, c, k in found:
            types.setdefault((schema, t), {})[c] = k.split("(")[0]
        self._types.update(types)
        return found

    def schema_names(self) -> set[str]:
        prefix = self.target.dataset_prefix
        listed = self.api.call(lambda: list(self.client.list_datasets(**self.api.kw())))
        return {d.dataset_id[len(prefix) :] for d in listed if d.dataset_id.startswith(prefix)}

    # --- bulk path: a load job into a staging table ----------------------------------------
    def stage(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows
    ) -> AbstractContextManager[str]:
        types = self._types.get((schema, table), {})
        if any(c not in types for c in columns):  # not seen yet, or altered elsewhere
            obj = self._get_table(schema, table)
            types = self._types[(schema, table)] = {f.name: f.field_type for f in obj.schema}
        return self._loaded([(c, types[c]) for c in columns], rows)

    def stage_typed(
        self, kinds: dict[str, ColumnType], rows: Sequence[Sequence[Any]]
    ) -> AbstractContextManager[str]:
        return self._loaded([(c, self.dialect.column_type(c, k)) for c, k in kinds.items()], rows)

    @contextmanager
    def _loaded(self, fields: Sequence[tuple[str, str]], rows: Rows) -> Iterator[str]:
        """The rows (NDJSON) loaded into a new table in the bookkeeping dataset; dropped
        after the block."""
        from google.cloud import bigquery

        self.ensure_schema(B)
        stage = self._table_id(B, f"_stage_{uuid.uuid4().hex}")
        names = [n for n, _ in fields]
        buf = io.BytesIO()
        for row in rows:
            buf.write(orjson.dumps(dict(zip(names, map(_json_value, row), strict=True))))
            buf.write(b"\n")
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=[bigquery.SchemaField(n, t) for n, t in fields],
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        )
        timeout = float(self.target.job_timeout_seconds)

        def load() -> None:
            buf.seek(0)
            job = self.client.load_table_from_file(
                buf, stage, job_config=config, job_id_prefix="sluice_stage_",
                location=self.target.location, rewind=True, timeout=timeout,
            )  # fmt: skip
            job.result(retry=self.api.policy(), timeout=timeout)

        self.api.call(lambda: self.api.attempts(load))
        try:
            yield quote(stage)
        finally:
            self.api.call(
                lambda: self.client.delete_table(stage, not_found_ok=True, **self.api.kw())
            )

    # --- retype (sluice schema set-type) ---------------------------------------------------
    def retype_apply(
        self, schema: str, table: str, column: str, new_type: ColumnType, plan: RetypePlan
    ) -> None:
        """BigQuery only widens a column's type in place (INT64 to NUMERIC...): the table
        is rewritten by one CREATE OR REPLACE TABLE ... AS SELECT (atomic: readers see the
        old table or the new one), the column's new values joined from a staged table."""
        columns = self.read_schema(schema)[table]
        with self._staged_changes(plan, new_type) as staged:
            self.execute(self.retype_sql(schema, table, column, new_type, columns, staged))
        self._types.pop((schema, table), None)

    def retype_sql(
        self,
        schema: str,
        table: str,
        column: str,
        new_type: ColumnType,
        columns: dict[str, ColumnType],
        staged: str,
    ) -> str:
        """The one statement rewriting the table (its partitioning and clustering kept)."""
        i, target = self.dialect.ident, self.table_ref(schema, table)
        kind, r = CAPABILITIES.type_names[new_type], i(RESCUED)
        replaced = [f"CAST(s.{i('value')} AS {kind}) AS {i(column)}"]
        if RESCUED in columns:
            replaced.append(f"IF(s.{i('changed')}, s.{r}, t.{r}) AS {r}")
        layout = ""
        if columns.get("received_at") is ColumnType.TIMESTAMP:
            layout += f" PARTITION BY DATE({i('received_at')})"
        if columns.get("id") is ColumnType.TEXT:
            layout += f" CLUSTER BY {i('id')}"
        return (
            f"CREATE OR REPLACE TABLE {target}{layout} AS SELECT t.* REPLACE "
            f"({', '.join(replaced)}) FROM {target} AS t LEFT JOIN {staged} AS s "
            f"ON t.{i('id')} = s.{i('id')}"
        )

    # --- reverse ETL ---------------------------------------------------------------------
    def retl_model_columns(self, model: str, sql: str) -> dict[str, ColumnType]:
        """A dry run: BigQuery plans the query and returns its schema without running it
        (free, and no probe table)."""
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        job = self.api.call(
            lambda: self.client.query(
                f"SELECT * FROM (\n{sql}\n) AS m",
                job_config=config,
                location=self.target.location,
                job_retry=None,
                **self.api.kw(),
            )  # fmt: skip
        )
        return {f.name.lower(): self.dialect.read_type(str(f.field_type)) for f in job.schema}
