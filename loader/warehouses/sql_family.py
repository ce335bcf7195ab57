"""SQL shared by warehouses that speak PostgreSQL's dialect (PostgreSQL, DuckDB, Redshift).

Adapters subclass SqlFamilyWarehouse and supply the connection, placeholders and their
writes; PostgreSQL and DuckDB take theirs from UpsertSqlWarehouse (INSERT ... ON
CONFLICT), Redshift writes its own. Everything here quotes identifiers and passes values
as parameters.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from loader.messages import Reject
from loader.normalize import RESCUED_COLUMN
from loader.retype import RetypePlan, RowChange, plan_retype
from loader.schema import ColumnType
from loader.warehouses.base import (
    BLOCKED_COLUMNS,
    BLOCKED_KEYS,
    BOOKKEEPING_SCHEMA,
    VIOLATION_COLUMNS,
    VIOLATION_KEYS,
    VIOLATION_SUMMARY,
    ProfileSpec,
    Rows,
    TableStats,
    Warehouse,
    WarehouseError,
    reject_rows,
    violation_rows,
)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


def literal(text: str) -> str:
    """A SQL string literal (for names Sluice chose, e.g. a JSON key that is a column)."""
    return "'" + text.replace("'", "''") + "'"


_STAGE_COLUMNS = ("id", "value", "changed", "_rescued_data")


class SqlFamilyWarehouse(Warehouse):
    placeholder = "%s"

    # --- hooks --------------------------------------------------------------------
    def _t(self, schema: str, table: str) -> str:
        """A table as this dialect names it in SQL (DuckDB prefixes its catalog)."""
        return qualified(schema, table)

    def _s(self, schema: str) -> str:
        """A schema as this dialect names it in SQL (DuckDB prefixes its catalog)."""
        return quote(schema)

    # Narrows information_schema reads to this database (DuckDB lists every attached one).
    _catalog_filter = ""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement, discarding any result."""

    @abstractmethod
    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row (small bookkeeping writes only)."""

    def _in_list(self) -> str:
        """SQL fragment matching a column against one list-valued parameter."""
        return f"= ANY({self.placeholder})"

    # --- schema -------------------------------------------------------------------
    def ensure_bookkeeping(self) -> None:
        b = self._s(BOOKKEEPING_SCHEMA)
        j = self.capabilities.json_type
        ts = self.capabilities.type_names[ColumnType.TIMESTAMP]
        with self.transaction():
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.loaded_files (schema_name text NOT NULL, "
                f"file text NOT NULL, lines bigint, loaded_at {ts} DEFAULT current_timestamp, "
                "PRIMARY KEY (schema_name, file))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.rejected_events (schema_name text NOT NULL, "
                "file text NOT NULL, line bigint, raw text, reason text NOT NULL, "
                f"rejected_at {ts} DEFAULT current_timestamp)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.sync_runs (run_id text PRIMARY KEY, "
                f"schema_name text, target text, status text, started_at {ts}, "
                f"finished_at {ts}, report {j})"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.cursors (schema_name text NOT NULL, "
                "collection text NOT NULL, cursor text NOT NULL, "
                f"updated_at {ts} DEFAULT current_timestamp, "
                "PRIMARY KEY (schema_name, collection))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.profile_marks (schema_name text NOT NULL, "
                f"profile text NOT NULL, key text NOT NULL, mark_ts {ts}, "
                "PRIMARY KEY (schema_name, profile, key))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.turned_off_names (schema_name text NOT NULL, "
                "table_name text NOT NULL, column_name text NOT NULL, "
                f"first_seen {ts} DEFAULT current_timestamp, "
                "PRIMARY KEY (schema_name, table_name, column_name))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.violations (schema_name text NOT NULL, "
                "file text NOT NULL, event text NOT NULL, property text NOT NULL, "
                "kind text NOT NULL, example text, occurrences bigint, first_seen text, "
                f"last_seen text, recorded_at {ts} DEFAULT current_timestamp)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.blocked_events (schema_name text NOT NULL, "
                "file text NOT NULL, line bigint, event text, raw text, violations text, "
                f"blocked_at {ts} DEFAULT current_timestamp)"
            )

    def read_schema(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        reverse = {v.lower(): k for k, v in self.capabilities.type_names.items()}
        reverse.update(self._type_aliases())
        out: dict[str, dict[str, ColumnType]] = {}
        rows = self._fetchall(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = {self.placeholder}{self._catalog_filter} "
            "ORDER BY table_name, ordinal_position",
            (schema,),
        )
        for table, column, data_type in rows:
            kind = reverse.get(str(data_type).lower(), ColumnType.TEXT)
            out.setdefault(table, {})[column] = kind
        return out

    def _type_aliases(self) -> dict[str, ColumnType]:
        return {}

    def _column_sql(self, name: str, kind: ColumnType) -> str:
        if name == "_rescued_data":
            return f"{quote(name)} {self.capabilities.json_type}"
        if name == "id" and self.capabilities.key_type is not None:
            return f"{quote(name)} {self.capabilities.key_type}"
        return f"{quote(name)} {self.capabilities.type_names[kind]}"

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {self._s(schema)}")
        cols = ", ".join(self._column_sql(n, k) for n, k in columns.items())
        self._execute(f"CREATE TABLE {self._t(schema, table)} ({cols}, PRIMARY KEY (id))")
        self._after_create(schema, table, columns)

    def _after_create(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        """Indexes a warehouse wants (e.g. received_at); none by default."""

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        for name, kind in columns.items():
            self._execute(
                f"ALTER TABLE {self._t(schema, table)} ADD COLUMN {self._column_sql(name, kind)}"
            )

    # --- retype (sluice schema set-type) ---------------------------------------------
    _RETYPE_STAGE = "retype_stage"
    # The staged ids' and rescued JSON's type (a dialect whose text is short widens it),
    # and the function giving the database's time.
    _retype_text = "text"
    _now_sql = "current_timestamp"

    def retype_column(
        self, schema: str, table: str, column: str, new_type: ColumnType, apply: bool
    ) -> RetypePlan:
        columns = self.read_schema(schema).get(table, {})
        if column not in columns:
            raise WarehouseError(f"no column '{column}' in {schema}.{table}")
        has_rescued = RESCUED_COLUMN in columns
        rescued_sql = quote(RESCUED_COLUMN) if has_rescued else "NULL"
        c = quote(column)
        rows = self._fetchall(
            f"SELECT id, {c}, {rescued_sql} FROM {self._t(schema, table)} "
            f"WHERE {c} IS NOT NULL" + (f" OR {rescued_sql} IS NOT NULL" if has_rescued else "")
        )
        plan = RetypePlan(schema, table, column, columns[column], new_type)
        plan_retype(plan, rows, self.capabilities.max_text_chars)
        if not apply:
            return plan
        with self.transaction():
            if plan.needs_rescued_column and not has_rescued:
                self.add_columns(schema, table, {RESCUED_COLUMN: ColumnType.TEXT})
            target = self._retype_begin(schema, table, column, new_type)
            self._retype_fill(schema, table, target, new_type, plan.changes)
            self._retype_finish(schema, table, column, target)
            self._record_column_type(schema, table, column, new_type)
        plan.applied = True
        return plan

    def _retype_begin(self, schema: str, table: str, column: str, new_type: ColumnType) -> str:
        """Make the column (emptied) of the new type; returns the column to fill. Here
        an ALTER in place, which keeps the column's position."""
        kind = self.capabilities.type_names[new_type]
        self._execute(
            f"ALTER TABLE {self._t(schema, table)} ALTER COLUMN {quote(column)} "
            f"TYPE {kind} USING CAST(NULL AS {kind})"
        )
        return column

    def _retype_finish(self, schema: str, table: str, column: str, filled: str) -> None:
        """After the fill: a rebuild drops the old column and renames the new one."""
        if filled != column:
            t = self._t(schema, table)
            self._execute(f"ALTER TABLE {t} DROP COLUMN {quote(column)}")
            self._execute(f"ALTER TABLE {t} RENAME COLUMN {quote(filled)} TO {quote(column)}")

    def _retype_fill(
        self,
        schema: str,
        table: str,
        column: str,
        new_type: ColumnType,
        changes: Sequence[RowChange],
    ) -> None:
        """The rows' new values and rescued JSON, staged in `_sluice`, then one UPDATE."""
        b = BOOKKEEPING_SCHEMA
        stage = self._t(b, self._RETYPE_STAGE)
        kind = self.capabilities.type_names[new_type]
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {self._s(b)}")
        self._execute(f"DROP TABLE IF EXISTS {stage}")
        self._execute(
            f"CREATE TABLE {stage} (id {self.capabilities.key_type or self._retype_text}, "
            f"value {kind}, changed boolean, _rescued_data {self._retype_text})"
        )
        self._retype_stage_rows(
            stage, [(ch.id, ch.value, ch.rescued_changed, ch.rescued) for ch in changes]
        )
        r = quote(RESCUED_COLUMN)
        j = self.capabilities.json_type
        t = self._t(schema, table)
        self._execute(
            f"UPDATE {t} SET {quote(column)} = s.value, "
            f"{r} = CASE WHEN s.changed THEN CAST(s.{r} AS {j}) ELSE {t}.{r} END "
            f"FROM {stage} AS s WHERE {t}.id = s.id"
        )
        self._execute(f"DROP TABLE {stage}")

    def _retype_stage_rows(self, stage: str, rows: Sequence[Sequence[Any]]) -> None:
        """(id, value, changed, rescued) rows into the retype's staging table."""
        self.insert_plain(BOOKKEEPING_SCHEMA, self._RETYPE_STAGE, _STAGE_COLUMNS, rows)

    def _ensure_column_types(self) -> None:
        ts = self.capabilities.type_names[ColumnType.TIMESTAMP]
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {self._s(BOOKKEEPING_SCHEMA)}")
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self._s(BOOKKEEPING_SCHEMA)}.column_types "
            "(schema_name text NOT NULL, table_name text NOT NULL, column_name text NOT NULL, "
            f"column_type {self._retype_text} NOT NULL, decided_at {ts}, "
            "PRIMARY KEY (schema_name, table_name, column_name))"
        )

    def _record_column_type(
        self, schema: str, table: str, column: str, new_type: ColumnType
    ) -> None:
        self._ensure_column_types()
        p = self.placeholder
        t = f"{self._s(BOOKKEEPING_SCHEMA)}.column_types"
        key = (schema, table, column)
        self._execute(
            f"DELETE FROM {t} WHERE schema_name = {p} AND table_name = {p} AND column_name = {p}",
            key,
        )
        self._execute(
            f"INSERT INTO {t} VALUES ({p}, {p}, {p}, {p}, {self._now_sql})",
            (*key, new_type.value),
        )

    def schema_names(self) -> set[str]:
        rows = self._fetchall(
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            f"WHERE table_schema IS NOT NULL{self._catalog_filter}"
        )
        return {str(r[0]) for r in rows}

    def decided_types(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        if "column_types" not in self.read_schema(BOOKKEEPING_SCHEMA):
            return {}
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, kind in self._fetchall(
            "SELECT table_name, column_name, column_type FROM "
            f"{self._s(BOOKKEEPING_SCHEMA)}.column_types WHERE schema_name = {self.placeholder}",
            (schema,),
        ):
            out.setdefault(table, {})[column] = ColumnType(kind)
        return out

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        if not ids:
            return 0
        stub = [(i, at, at, at) for i in ids]
        columns = ("id", "received_at", "uuid_ts", "_deleted_at")
        self.insert_new_rows(schema, table, columns, stub)
        p = self.placeholder
        self._execute(
            f"UPDATE {self._t(schema, table)} SET _deleted_at = CAST({p} AS "
            f"{self.capabilities.type_names[ColumnType.TIMESTAMP]}) "
            f"WHERE _deleted_at IS NULL AND id {self._in_list()}",
            (at, list(ids)),
        )
        return len(ids)

    def read_cursors(self, schema: str) -> dict[str, str]:
        rows = self._fetchall(
            f"SELECT collection, cursor FROM {self._s(BOOKKEEPING_SCHEMA)}.cursors "
            f"WHERE schema_name = {self.placeholder}",
            (schema,),
        )
        return dict(rows)

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        b, p = self._s(BOOKKEEPING_SCHEMA), self.placeholder
        self._execute(
            f"DELETE FROM {b}.cursors WHERE schema_name = {p} AND collection = {p}",
            (schema, collection),
        )
        self._execute(
            f"INSERT INTO {b}.cursors (schema_name, collection, cursor) VALUES ({p}, {p}, {p})",
            (schema, collection, cursor),
        )

    # --- profiles (users, accounts) ------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """Latest value per trait by event time, for `keys`.

        A trait's latest value is that of the newest row that has it, in its column or,
        when it did not fit the column, in the row's `_rescued_data`: the profile then
        holds NULL in the column and the value in its own `_rescued_data`, never an older
        value that happened to fit. A profile row whose rebuilt values equal the ones it
        has is left as it is (its uuid_ts too), so a replay changes nothing.

        A key whose new rows (spec.new_ids) all come after the newest event time it had
        (its mark in _sluice.profile_marks), with nothing rescued in them or in the
        profile, is updated from those rows alone: a new value wins, a missing one keeps
        the profile's. Every other key (a late arrival, an event without a timestamp, no
        mark yet, a replay, a rescued value) is recomputed from all its rows. Re-reading
        every key's whole history on every batch made the cost of a batch grow with the
        table."""
        if not keys:
            return 0
        incremental = self._profiles_from_new_rows(schema, spec, keys) if spec.new_ids else []
        done = set(incremental)
        rest = [k for k in keys if k not in done]
        if rest:
            self._profiles_from_all_rows(schema, spec, rest)
        return len(keys)

    _PROFILE_ORDER = 'ORDER BY "timestamp" DESC NULLS LAST, received_at DESC NULLS LAST'

    def _latest(self, column: str) -> str:
        return (
            f"(array_agg({quote(column)} {self._PROFILE_ORDER}) "
            f"FILTER (WHERE {quote(column)} IS NOT NULL))[1]"
        )

    def _json_get(self, document: str, key: str) -> str:
        """The JSON value under `key` of the JSON column `document` (NULL if absent)."""
        return f"({document} -> {literal(key)})"

    def _json_object(self, pairs: Sequence[tuple[str, str]]) -> str:
        """A JSON object of the pairs whose value is not NULL; NULL when none is."""
        parts = [
            "jsonb_build_object("
            + ", ".join(f"{literal(k)}, {v}" for k, v in pairs[i : i + 50])
            + ")"
            for i in range(0, len(pairs), 50)  # a function takes at most 100 arguments
        ]
        return f"NULLIF(jsonb_strip_nulls({' || '.join(parts)}), '{{}}'::jsonb)"

    def _differs(self, old: str, new: str) -> str:
        return f"{old} IS DISTINCT FROM {new}"

    def _profile_changed(self, columns: Sequence[str]) -> str:
        """ON CONFLICT's WHERE: the existing row (aliased _sluice_t) differs somewhere."""
        return " OR ".join(
            self._differs(f"_sluice_t.{quote(c)}", f"excluded.{quote(c)}") for c in columns
        )

    def _profiles_from_all_rows(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> None:
        target = self._t(schema, spec.table)
        source = self._t(schema, spec.source_table)
        rescued = spec.rescued_column
        values: list[str] = []
        pairs: list[tuple[str, str]] = []
        for c in spec.trait_columns:
            if rescued is None:
                values.append(self._latest(c))
                continue
            # The newest row that has the trait, fitting its column or rescued.
            kept = self._json_get(quote(rescued), c)
            has = f"FILTER (WHERE {quote(c)} IS NOT NULL OR {kept} IS NOT NULL))[1]"
            values.append(f"(array_agg({quote(c)} {self._PROFILE_ORDER}) {has}")
            pairs.append((c, f"(array_agg({kept} {self._PROFILE_ORDER}) {has}"))
        cols = ["id", *spec.trait_columns, "received_at", "uuid_ts"]
        select = [quote(spec.key_column), *values, "max(received_at)", "current_timestamp"]
        if rescued is not None:
            cols.append(rescued)
            select.append(self._json_object(pairs) if pairs else "NULL")
        key = quote(spec.key_column)
        # Only the synced traits are written: a trait turned off keeps the value it has.
        written = [c for c in cols if c != "id"]
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in written)
        changed = self._profile_changed([c for c in written if c != "uuid_ts"])
        self._execute(
            f"INSERT INTO {target} AS _sluice_t ({', '.join(quote(c) for c in cols)}) "
            f"SELECT {', '.join(select)} "
            f"FROM {source} WHERE {key} {self._in_list()} GROUP BY {key} "
            f"ON CONFLICT (id) DO UPDATE SET {sets} WHERE {changed}",
            (list(keys),),
        )
        self._execute(
            f"INSERT INTO {self._s(BOOKKEEPING_SCHEMA)}.profile_marks AS _sluice_m "
            f"(schema_name, profile, key, mark_ts) SELECT {self.placeholder}, "
            f'{self.placeholder}, {key}, max("timestamp") FROM {source} '
            f"WHERE {key} {self._in_list()} GROUP BY {key} "
            "ON CONFLICT (schema_name, profile, key) DO UPDATE SET mark_ts = excluded.mark_ts "
            f"WHERE {self._differs('_sluice_m.mark_ts', 'excluded.mark_ts')}",
            (schema, spec.table, list(keys)),
        )

    def _profiles_from_new_rows(
        self, schema: str, spec: ProfileSpec, keys: Sequence[str]
    ) -> list[str]:
        """Update the keys whose new rows all follow their mark; returns those keys."""
        p = self.placeholder
        target = self._t(schema, spec.table)
        source = self._t(schema, spec.source_table)
        marks = f"{self._s(BOOKKEEPING_SCHEMA)}.profile_marks"
        stage = quote(f"_profile_{spec.table}")
        key = quote(spec.key_column)
        traits = [quote(c) for c in spec.trait_columns]
        latest = "".join(f"{self._latest(c)} AS {quote(c)}, " for c in spec.trait_columns)
        rescued = spec.rescued_column
        count_rescued = f"count({quote(rescued)})" if rescued is not None else "0"
        self._execute(f"DROP TABLE IF EXISTS {stage}")
        self._execute(
            f"CREATE TEMP TABLE {stage} AS SELECT {key} AS id, {latest}"
            'min("timestamp") AS first_ts, max("timestamp") AS last_ts, '
            'count(*) - count("timestamp") AS untimed, max(received_at) AS received_at, '
            f"{count_rescued} AS rescued "
            f"FROM {source} WHERE id {self._in_list()} AND {key} {self._in_list()} "
            f"GROUP BY {key}",
            (list(spec.new_ids), list(keys)),
        )
        # A rescued value (new, or held by the profile) takes the full recompute, which
        # knows which of a trait's column and rescued value is the newer.
        held = (
            f" OR EXISTS (SELECT 1 FROM {target} t WHERE t.id = {stage}.id "
            f"AND t.{quote(rescued)} IS NOT NULL)"
            if rescued is not None
            else ""
        )
        self._execute(
            f"DELETE FROM {stage} WHERE untimed > 0 OR rescued > 0 OR NOT EXISTS "
            f"(SELECT 1 FROM {marks} m "
            f"WHERE m.schema_name = {p} AND m.profile = {p} AND m.key = {stage}.id "
            f"AND m.mark_ts < {stage}.first_ts) "
            f"OR NOT EXISTS (SELECT 1 FROM {target} t WHERE t.id = {stage}.id) "
            f"{held}",
            (schema, spec.table),
        )
        done = [row_id for (row_id,) in self._fetchall(f"SELECT id FROM {stage}")]
        if done:
            cols = ["id", *traits, "received_at", "uuid_ts"]
            values = [
                "s.id",
                *(f"coalesce(s.{q}, t.{q})" for q in traits),
                "coalesce(greatest(s.received_at, t.received_at), s.received_at)",
                "current_timestamp",
            ]
            sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
            changed = self._profile_changed([*spec.trait_columns, "received_at"])
            self._execute(
                f"INSERT INTO {target} AS _sluice_t ({', '.join(cols)}) "
                f"SELECT {', '.join(values)} "
                f"FROM {stage} s JOIN {target} t ON t.id = s.id "
                f"ON CONFLICT (id) DO UPDATE SET {sets} WHERE {changed}"
            )
            self._execute(
                f"UPDATE {marks} SET mark_ts = s.last_ts FROM {stage} s WHERE "
                f"{marks}.schema_name = {p} AND {marks}.profile = {p} AND {marks}.key = s.id",
                (schema, spec.table),
            )
        self._execute(f"DROP TABLE {stage}")
        return done

    # --- bookkeeping ----------------------------------------------------------------
    def loaded_files(self, schema: str) -> set[str]:
        rows = self._fetchall(
            f"SELECT file FROM {self._s(BOOKKEEPING_SCHEMA)}.loaded_files "
            f"WHERE schema_name = {self.placeholder}",
            (schema,),
        )
        return {r[0] for r in rows}

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        if files:
            # A replay records files that may be in the ledger already.
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "loaded_files",
                ("schema_name", "file", "lines"),
                [(schema, file, lines) for file, lines in files],
                skip_existing=True,
            )

    def record_turned_off(self, schema: str, names: Sequence[tuple[str, str]]) -> None:
        if names:
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "turned_off_names",
                ("schema_name", "table_name", "column_name"),
                [(schema, table, column) for table, column in names],
                skip_existing=True,
            )

    def turned_off_names(self, schema: str) -> dict[str, set[str]]:
        rows = self._fetchall(
            f"SELECT table_name, column_name FROM {self._s(BOOKKEEPING_SCHEMA)}.turned_off_names "
            f"WHERE schema_name = {self.placeholder}",
            (schema,),
        )
        out: dict[str, set[str]] = {}
        for table, column in rows:
            out.setdefault(table, set()).add(column)
        return out

    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        # A reject is known by its file and line: re-reading a file (a replay, a file
        # that failed and is read again) never records it twice.
        self.insert_plain(
            BOOKKEEPING_SCHEMA,
            "rejected_events",
            ("schema_name", "file", "line", "raw", "reason"),
            [(schema, r.file, r.line, r.raw, r.reason) for r in rejects],
            skip_existing=True,
        )

    def record_violations(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.insert_plain(
            BOOKKEEPING_SCHEMA, "violations", VIOLATION_COLUMNS, rows, skip_existing=True
        )

    def record_blocked(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.insert_plain(
            BOOKKEEPING_SCHEMA,
            "blocked_events",
            BLOCKED_COLUMNS,
            [(schema, *row) for row in rows],
            skip_existing=True,
        )

    def violation_summary(self, schema: str | None) -> list[dict[str, Any]]:
        where, params = (
            ("", ()) if schema is None else (f" WHERE schema_name = {self.placeholder}", (schema,))
        )
        table = f"{self._s(BOOKKEEPING_SCHEMA)}.violations"
        if "violations" not in self.read_schema(BOOKKEEPING_SCHEMA):
            return []
        sql = VIOLATION_SUMMARY.format(table=table, where=where)
        return violation_rows(self._fetchall(sql, params))

    # The columns a bookkeeping row is known by (skip_existing); others: every column.
    _KEYS: dict[str, tuple[str, ...]] = {
        "violations": VIOLATION_KEYS,
        "blocked_events": BLOCKED_KEYS,
        "loaded_files": ("schema_name", "file"),
        "rejected_events": ("schema_name", "file", "line"),
        "turned_off_names": ("schema_name", "table_name", "column_name"),
    }

    def insert_plain(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        skip_existing: bool = False,
    ) -> None:
        """Small writes, a statement per row; skip_existing leaves out the rows whose key
        (_KEYS) is there already (rows of one call have distinct keys)."""
        if not rows:
            return
        p = ", ".join([self.placeholder] * len(columns))
        cols = ", ".join(quote(c) for c in columns)
        target = self._t(schema, table)
        if not skip_existing:
            self._executemany(f"INSERT INTO {target} ({cols}) VALUES ({p})", rows)
            return
        keys = self._KEYS.get(table, tuple(columns))
        where = " AND ".join(f"{quote(k)} IS NOT DISTINCT FROM {self.placeholder}" for k in keys)
        at = [list(columns).index(k) for k in keys]
        self._executemany(
            f"INSERT INTO {target} ({cols}) SELECT {p} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} WHERE {where})",
            [(*row, *(row[i] for i in at)) for row in rows],
        )

    def record_run(self, schema: str, report: dict[str, Any]) -> None:
        p = self.placeholder
        with self.transaction():
            self._execute(
                f"INSERT INTO {self._s(BOOKKEEPING_SCHEMA)}.sync_runs (run_id, schema_name, "
                "target, status, started_at, finished_at, report) "
                f"VALUES ({', '.join([p] * 7)})",
                (
                    report["run_id"],
                    schema,
                    self.target_name,
                    report["status"],
                    report["started_at"],
                    report["finished_at"],
                    orjson.dumps(report).decode(),
                ),
            )

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._fetchall(
            f"SELECT report FROM {self._s(BOOKKEEPING_SCHEMA)}.sync_runs "
            f"ORDER BY started_at DESC LIMIT {int(limit)}"
        )
        return [r[0] if isinstance(r[0], dict) else orjson.loads(r[0]) for r in rows]

    def recent_rejects(self, schema: str | None, limit: int = 20) -> list[dict[str, Any]]:
        where, params = (
            ("", ()) if schema is None else (f" WHERE schema_name = {self.placeholder}", (schema,))
        )
        rows = self._fetchall(
            "SELECT schema_name, file, line, reason, raw, rejected_at "
            f"FROM {quote(BOOKKEEPING_SCHEMA)}.rejected_events{where} "
            f"ORDER BY rejected_at DESC, file, line LIMIT {int(limit)}",
            params,
        )
        return reject_rows(rows)

    def table_ref(self, schema: str, table: str) -> str:
        return self._t(schema, table)

    def table_stats(self, schema: str, table: str) -> TableStats:
        rows, duplicates, newest = self._fetchall(
            "SELECT count(*), count(*) - count(DISTINCT id), max(received_at) "
            f"FROM {self._t(schema, table)}"
        )[0]
        return TableStats(int(rows), int(duplicates), newest)

    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        return iter(self._fetchall(sql))

    # --- reverse ETL ---
    # Staging and change-set tables live in _sluice (real tables, not TEMP ones: every
    # warehouse has those, and a crashed run's leftovers are replaced by the next run).

    # The SQL type staged keys are cast to (text, unless a dialect's text is short).
    _retl_key_type = "text"

    @abstractmethod
    def _retl_row_hash(self, alias: str) -> str:
        """SQL hashing every column of the row aliased `alias` (dialect-specific). A
        dialect that cannot hash a whole row gives a typed NULL here and fills the hashes
        in with _retl_hash_staged."""

    def _retl_hash_staged(self, stage: str, model: str, columns: Sequence[str]) -> None:
        """Hash the staged rows after staging, in the same transaction; nothing to do
        where _retl_row_hash hashed them already."""

    def _retl_table(self, kind: str, model: str) -> str:
        return self._t(BOOKKEEPING_SCHEMA, f"retl_{kind}__{model}")

    def _retl_kind(self, data_type: str) -> ColumnType:
        """Coarse type of a model column (for creating a destination table)."""
        t = data_type.lower()
        if t.startswith(("bigint", "integer", "smallint", "hugeint", "tinyint", "int", "uint")):
            if not t.startswith("interval"):
                return ColumnType.BIGINT
        if t.startswith(("numeric", "decimal", "double", "real", "float")):
            return ColumnType.DOUBLE
        if t.startswith("bool"):
            return ColumnType.BOOLEAN
        if t.startswith("timestamp"):
            return ColumnType.TIMESTAMP
        return ColumnType.TEXT

    def _retl_columns_of(self, table: str) -> dict[str, ColumnType]:
        rows = self._fetchall(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = {self.placeholder} AND table_name = {self.placeholder}"
            f"{self._catalog_filter} ORDER BY ordinal_position",
            (BOOKKEEPING_SCHEMA, table),
        )
        return {str(c): self._retl_kind(str(t)) for c, t in rows}

    def retl_ensure_bookkeeping(self) -> None:
        b = self._s(BOOKKEEPING_SCHEMA)
        ts = self.capabilities.type_names[ColumnType.TIMESTAMP]
        with self.transaction():
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.retl_snapshots (model text NOT NULL, "
                f"key text NOT NULL, row_hash text NOT NULL, synced_at {ts}, "
                "PRIMARY KEY (model, key))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.retl_sent (model text NOT NULL, "
                "key text NOT NULL, op text NOT NULL, row_hash text NOT NULL, "
                f"record_id text NOT NULL, run_id text NOT NULL, sent_at {ts}, "
                "PRIMARY KEY (model, key))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.retl_runs (run_id text PRIMARY KEY, "
                f"model text, target text, status text, started_at {ts}, finished_at {ts}, "
                f"report {self.capabilities.json_type})"
            )

    def retl_model_columns(self, model: str, sql: str) -> dict[str, ColumnType]:
        probe = self._retl_table("probe", model)
        with self.transaction():
            self._execute(f"DROP TABLE IF EXISTS {probe}")
            self._execute(f"CREATE TABLE {probe} AS SELECT * FROM (\n{sql}\n) AS m LIMIT 0")
            columns = self._retl_columns_of(f"retl_probe__{model}")
            self._execute(f"DROP TABLE {probe}")
        return columns

    def retl_stage(self, model: str, sql: str, key: str, columns: Sequence[str]) -> int:
        stage = self._retl_table("stage", model)
        inner = f"SELECT {', '.join(quote(c) for c in columns)} FROM (\n{sql}\n) AS m0"
        with self.transaction():
            self._execute(f"DROP TABLE IF EXISTS {stage}")
            # The alias is reserved (model columns may not start with _sluice_), so the
            # hash sees the whole row, never a column that happens to share its name.
            self._execute(
                f"CREATE TABLE {stage} AS SELECT CAST(_sluice_row.{quote(key)} AS "
                f"{self._retl_key_type}) AS _sluice_key, {self._retl_row_hash('_sluice_row')} "
                f"AS _sluice_hash, _sluice_row.* FROM ({inner}) AS _sluice_row"
            )
            self._retl_hash_staged(stage, model, columns)
        return int(self._fetchall(f"SELECT count(*) FROM {stage}")[0][0])

    def retl_key_problems(self, model: str) -> tuple[int, int]:
        stage = self._retl_table("stage", model)
        nulls, dupes = self._fetchall(
            "SELECT count(*) - count(_sluice_key), count(_sluice_key) - count(DISTINCT "
            f"_sluice_key) FROM {stage}"
        )[0]
        return int(nulls), int(dupes)

    def retl_diff(self, model: str, columns: Sequence[str]) -> dict[str, int]:
        stage = self._retl_table("stage", model)
        changes = self._retl_table("changes", model)
        p = self.placeholder
        cols = ", ".join(quote(c) for c in columns)
        s_cols = ", ".join(f"s.{quote(c)}" for c in columns)
        with self.transaction():
            self._execute(f"DROP TABLE IF EXISTS {changes}")
            # Typed like the stage, filled with one parameterised INSERT (CREATE TABLE AS
            # takes no parameters on PostgreSQL).
            self._execute(
                f"CREATE TABLE {changes} AS SELECT CAST(0 AS bigint) AS _sluice_seq, "
                f"CAST('' AS text) AS _sluice_kind, s.* FROM {stage} AS s WHERE 1 = 0"
            )
            self._execute(
                f"INSERT INTO {changes} (_sluice_seq, _sluice_kind, _sluice_key, _sluice_hash, "
                f"{cols}) SELECT row_number() OVER (ORDER BY d._sluice_kind, d._sluice_key), "
                f"d._sluice_kind, d._sluice_key, d._sluice_hash, {cols} FROM ("
                "SELECT CASE WHEN p.key IS NULL THEN 'added' WHEN s._sluice_key IS NULL "
                "THEN 'removed' ELSE 'changed' END AS _sluice_kind, "
                "COALESCE(s._sluice_key, p.key) AS _sluice_key, "
                "COALESCE(s._sluice_hash, p.row_hash) AS _sluice_hash, "
                f"{s_cols} FROM {stage} AS s FULL OUTER JOIN (SELECT key, row_hash FROM "
                f"{self._s(BOOKKEEPING_SCHEMA)}.retl_snapshots WHERE model = {p}) AS p "
                "ON p.key = s._sluice_key "
                "WHERE p.key IS NULL OR s._sluice_key IS NULL OR p.row_hash <> s._sluice_hash"
                ") AS d",
                (model,),
            )
            self._execute(
                f"CREATE INDEX {quote(f'retl_changes__{model}_seq')} ON {changes} (_sluice_seq)"
            )
        counts = {"added": 0, "changed": 0, "removed": 0}
        for kind, n in self._fetchall(
            f"SELECT _sluice_kind, count(*) FROM {changes} GROUP BY _sluice_kind"
        ):
            counts[str(kind)] = int(n)
        staged = int(self._fetchall(f"SELECT count(*) FROM {stage}")[0][0])
        counts["unchanged"] = staged - counts["added"] - counts["changed"]
        return counts

    def retl_changes(
        self, model: str, kinds: Sequence[str], columns: Sequence[str], after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        if not kinds:
            return []
        changes = self._retl_table("changes", model)
        cols = "".join(f", {quote(c)}" for c in columns)
        return self._fetchall(
            f"SELECT _sluice_seq, _sluice_kind, _sluice_key, _sluice_hash{cols} FROM {changes} "
            f"WHERE _sluice_kind {self._in_list()} AND _sluice_seq > {self.placeholder} "
            f"ORDER BY _sluice_seq LIMIT {int(limit)}",
            (list(kinds), int(after)),
        )

    def _retl_apply(self, model: str, where: str, param: list[Any]) -> None:
        """Replace the snapshot rows of the change-set rows matching `where`."""
        changes = self._retl_table("changes", model)
        snapshots = f"{self._s(BOOKKEEPING_SCHEMA)}.retl_snapshots"
        p = self.placeholder
        with self.transaction():
            self._execute(
                f"DELETE FROM {snapshots} WHERE model = {p} AND key IN "
                f"(SELECT _sluice_key FROM {changes} WHERE {where})",
                (model, param),
            )
            self._execute(
                f"INSERT INTO {snapshots} (model, key, row_hash, synced_at) "
                f"SELECT CAST({p} AS text), _sluice_key, _sluice_hash, current_timestamp "
                f"FROM {changes} "
                f"WHERE {where} AND _sluice_kind <> 'removed'",
                (model, param),
            )

    def retl_advance(self, model: str, seqs: Sequence[int]) -> None:
        if seqs:
            self._retl_apply(model, f"_sluice_seq {self._in_list()}", [int(s) for s in seqs])

    _RETL_KEYS_PER_STATEMENT = 1000

    def retl_sent_ids(self, model: str, keys: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        out: dict[str, tuple[str, str, str]] = {}
        step = self._RETL_KEYS_PER_STATEMENT
        for start in range(0, len(keys), step):
            for key, op, row_hash, record_id in self._fetchall(
                f"SELECT key, op, row_hash, record_id FROM {quote(BOOKKEEPING_SCHEMA)}.retl_sent "
                f"WHERE model = {self.placeholder} AND key {self._in_list()}",
                (model, list(keys[start : start + step])),
            ):
                out[str(key)] = (str(op), str(row_hash), str(record_id))
        return out

    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        if not sent:
            return
        table = f"{quote(BOOKKEEPING_SCHEMA)}.retl_sent"
        p = self.placeholder
        step = self._RETL_KEYS_PER_STATEMENT
        with self.transaction():
            for start in range(0, len(sent), step):
                keys = [s[0] for s in sent[start : start + step]]
                self._execute(
                    f"DELETE FROM {table} WHERE model = {p} AND key {self._in_list()}",
                    (model, keys),
                )
            self._executemany(
                f"INSERT INTO {table} (model, key, op, row_hash, record_id, run_id, sent_at) "
                f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, current_timestamp)",
                [(model, key, op, h, rid, run_id) for key, op, h, rid in sent],
            )

    def retl_baseline(self, model: str, kinds: Sequence[str]) -> int:
        if not kinds:
            return 0
        changes = self._retl_table("changes", model)
        n = self._fetchall(
            f"SELECT count(*) FROM {changes} WHERE _sluice_kind {self._in_list()}", (list(kinds),)
        )[0][0]
        if n:
            self._retl_apply(model, f"_sluice_kind {self._in_list()}", list(kinds))
        return int(n)

    def retl_drop_stage(self, model: str) -> None:
        for kind in ("changes", "stage", "probe"):
            self._execute(f"DROP TABLE IF EXISTS {self._retl_table(kind, model)}")

    def retl_snapshot_count(self, model: str) -> int:
        return int(
            self._fetchall(
                f"SELECT count(*) FROM {self._s(BOOKKEEPING_SCHEMA)}.retl_snapshots "
                f"WHERE model = {self.placeholder}",
                (model,),
            )[0][0]
        )

    def retl_record_run(self, report: dict[str, Any]) -> None:
        p = self.placeholder
        with self.transaction():
            self._execute(
                f"INSERT INTO {self._s(BOOKKEEPING_SCHEMA)}.retl_runs (run_id, model, target, "
                f"status, started_at, finished_at, report) VALUES ({', '.join([p] * 7)})",
                (
                    report["run_id"],
                    report["model"],
                    self.target_name,
                    report["status"],
                    report["started_at"],
                    report["finished_at"],
                    orjson.dumps(report).decode(),
                ),
            )

    def retl_recent_runs(self, model: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        where, params = (
            ("", ()) if model is None else (f"WHERE model = {self.placeholder}", (model,))
        )
        rows = self._fetchall(
            f"SELECT report FROM {self._s(BOOKKEEPING_SCHEMA)}.retl_runs {where} "
            f"ORDER BY started_at DESC LIMIT {int(limit)}",
            params,
        )
        return [r[0] if isinstance(r[0], dict) else orjson.loads(r[0]) for r in rows]

    def retl_write_table(
        self,
        schema: str,
        table: str,
        key: str,
        columns: dict[str, ColumnType],
        rows: Sequence[Sequence[Any]],
        keys: Sequence[str],
    ) -> None:
        existing = self.read_schema(schema).get(table)
        target = self._t(schema, table)
        with self.transaction():
            if existing is None:
                self._execute(f"CREATE SCHEMA IF NOT EXISTS {self._s(schema)}")
                cols = ", ".join(
                    f"{quote(n)} {self.capabilities.type_names[k]}" for n, k in columns.items()
                )
                self._execute(f"CREATE TABLE {target} ({cols}, PRIMARY KEY ({quote(key)}))")
            else:
                missing = {n: k for n, k in columns.items() if n not in existing}
                if missing:
                    self.add_columns(schema, table, missing)
            if keys:
                self._execute(
                    f"DELETE FROM {target} WHERE CAST({quote(key)} AS text) {self._in_list()}",
                    (list(keys),),
                )
            if rows:
                self.insert_plain(schema, table, list(columns), rows)


class UpsertSqlWarehouse(SqlFamilyWarehouse):
    """The writes of the dialects with INSERT ... ON CONFLICT (PostgreSQL, DuckDB).
    Redshift has none and writes with anti-joins and MERGE (its adapter subclasses
    SqlFamilyWarehouse directly)."""

    # --- bulk writes: staged rows, then one set-based statement --------------------
    @abstractmethod
    def _stage_insert(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, conflict: str
    ) -> int:
        """Bulk-stage rows through the adapter's fast path, then one INSERT ... SELECT
        with `conflict` (ON CONFLICT ...); returns the rows inserted or updated."""

    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        return self._stage_insert(
            schema, table, columns, rows, self._conflict_clause(quote(table), columns, fill_nulls)
        )

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c != "id")
        return self._stage_insert(
            schema, table, columns, rows, f"ON CONFLICT (id) DO UPDATE SET {sets}"
        )

    def _conflict_clause(self, target: str, columns: Sequence[str], fill_nulls: bool) -> str:
        """What to do with a staged row whose id is there already."""
        fillable = [c for c in columns if c not in ("id", "uuid_ts", "_rescued_data")]
        if not fill_nulls or not fillable:
            return "ON CONFLICT (id) DO NOTHING"
        sets = ", ".join(
            f"{quote(c)} = COALESCE({target}.{quote(c)}, excluded.{quote(c)})" for c in fillable
        )
        changed = " OR ".join(
            f"({target}.{quote(c)} IS NULL AND excluded.{quote(c)} IS NOT NULL)" for c in fillable
        )
        return f"ON CONFLICT (id) DO UPDATE SET {sets} WHERE {changed}"
