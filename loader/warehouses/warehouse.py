"""The Warehouse interface, implemented once over statements.py and a driver's primitives.

A new adapter subclasses Warehouse and implements the driver primitives (execute,
fetchall, transaction, close, stage) plus a SqlDialect: see base.py.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from typing import Any

import orjson

from loader.encode.encoded import EncodedChunk
from loader.rules.messages import Reject
from loader.rules.profiles import extendable_keys, rescued_profile_rows
from loader.rules.retype import RetypePlan, plan_retype
from loader.rules.schema import ColumnType
from loader.warehouses import statements as st
from loader.warehouses.base import (
    Capabilities,
    LockBusy,
    ProfileSpec,
    Rows,
    TableStats,
    WarehouseError,
)
from loader.warehouses.dialect import SqlDialect

B = st.BOOKKEEPING_SCHEMA
Params = Mapping[str, Any]


def _written(table: str) -> tuple[str, ...]:
    """A bookkeeping table's columns a write gives values (not the time-of-insert ones)."""
    return tuple(c for c, k in st.BOOKKEEPING[table].columns if k != "now")


class Warehouse(ABC):
    """The one interface the pipeline, reverse ETL, the CLI and Dagster speak, written
    once over the driver primitives below (see base.py for what a driver implements)."""

    capabilities: Capabilities
    target_name: str
    dialect: SqlDialect
    lease_minutes = 60
    _depth = 0

    @contextmanager
    def _joined(self, begin: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
        """A transaction for warehouses without savepoints: a nested block joins the
        outer one, whose end commits (or rolls back) everything."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with begin():
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0

    @contextmanager
    def _deferring(self) -> Iterator[None]:
        """`_joined`'s block for warehouses without transactions: the writes `_defer`red
        in it run once it ends normally, the ledger's last; a failure drops them."""
        self._deferred: list[tuple[bool, Callable[[], None]]] = []
        try:
            yield
        except BaseException:
            self._deferred = []
            raise
        pending, self._deferred = sorted(self._deferred, key=lambda p: p[0]), []
        for _, write in pending:  # the block has ended: each is written at once
            write()

    def _defer(self, write: Callable[[], None], last: bool = False) -> None:
        if self._depth:
            self._deferred.append((last, write))
        else:
            write()

    # --- driver primitives -----------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Nestable: an inner block joins the outer one (see `_joined`)."""

    @abstractmethod
    def execute(self, sql: str, params: Params | None = None) -> int: ...

    @abstractmethod
    def fetchall(self, sql: str, params: Params | None = None) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def stage(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows
    ) -> AbstractContextManager[str]:
        """Rows (typed like the target's columns) loaded by the bulk path into a relation."""

    # --- names -------------------------------------------------------------------------
    def native_lines(self, name: str, lines: Any) -> None:
        """Native mode: an archive batch's lines (an Arrow table of file_no, line_no, txt
        and raw) as the relation `name` in the warehouse, by its own bulk path."""
        self.refuse_native_mode()

    def native_lines_done(self, name: str) -> None:
        """The batch's raw lines are no longer read (a driver drops what it made)."""
        self.execute(f"DROP TABLE IF EXISTS {name}")

    def refuse_native_mode(self) -> None:
        """Raise unless this adapter loads in native mode (it implements native_lines)."""
        if type(self).native_lines is Warehouse.native_lines:
            raise WarehouseError(
                f"native mode is not available on {self.capabilities_name()} targets yet; "
                "remove `mode: native` from the source in sluice.yml"
            )

    def capabilities_name(self) -> str:
        return type(self).__name__.removesuffix("Warehouse")

    def table_ref(self, schema: str, table: str) -> str:
        """The table as this warehouse's SQL names it (quoted), for read-only queries."""
        return self.dialect.table_ref(schema, table)

    def _b(self, table: str) -> str:
        return self.dialect.table_ref(B, table)

    def _names(self, *columns: str) -> str:
        return ", ".join(map(self.dialect.ident, columns))

    def _count(self, sql: str, params: Params | None = None) -> int:
        return int(self.fetchall(sql, params)[0][0])

    def _chunks(self, values: Sequence[Any]) -> Iterator[list[Any]]:
        step = self.dialect.max_list
        for start in range(0, len(values), step):
            yield list(values[start : start + step])

    # --- locks ---------------------------------------------------------------------------
    def hold(self, name: str, busy: str) -> AbstractContextManager[None]:
        return self._lease(name, busy)

    @contextmanager
    def _lease(self, name: str, busy: str) -> Iterator[None]:
        """A row in _sluice.locks, timed by the warehouse's clock: taken when absent or
        expired, released at the end; a crashed run's lease expires by itself."""
        d = self.dialect
        self._ensure_tables(("locks",))
        holder = uuid.uuid4().hex
        locks = self._b("locks")
        p = {"name": name, "holder": holder}
        expires = d.lease_expiry(int(self.lease_minutes))
        named = d.equals("name")
        with self.transaction():
            serialise = d.lock_table(locks)
            if serialise is not None:
                self.execute(serialise)
            self.execute(
                f"DELETE FROM {locks} WHERE {named} AND {d.ident('expires_at')} < {d.now}", p
            )
            self.execute(
                f"INSERT INTO {locks} ({self._names(*_written('locks'))}) SELECT "
                f"{d.param('name')}, {d.param('holder')}, {d.now}, {expires} WHERE NOT EXISTS "
                f"(SELECT 1 FROM {locks} WHERE {named})",
                p,
            )
        held = self.fetchall(f"SELECT {d.ident('holder')} FROM {locks} WHERE {named}", p)
        release = f"DELETE FROM {locks} WHERE {d.equals('name', 'holder')}"
        if [str(h) for (h,) in held] != [holder]:
            # Without a table lock two takers may both insert: each loser drops its row.
            self.execute(release, p)
            raise LockBusy(
                f"{busy} (a crashed run's lock expires after {self.lease_minutes} minutes, or "
                f"delete its row from _sluice.locks where name = '{name}')"
            )
        try:
            yield
        finally:
            self.execute(release, p)

    def lock(self, schema: str) -> AbstractContextManager[None]:
        """Held for a whole sync; raises LockBusy if another sync holds it."""
        return self.hold(
            f"sync:{schema}",
            f"another sync is loading schema '{schema}' into target '{self.target_name}'; "
            "wait for it to finish",
        )

    def retl_lock(self, model: str) -> AbstractContextManager[None]:
        """Held for a whole plan or run of one model; raises LockBusy if another holds it."""
        return self.hold(
            f"retl:{model}",
            f"another reverse-ETL run of model '{model}' on target '{self.target_name}' holds "
            "the lock; wait for it to finish",
        )

    # --- schema ------------------------------------------------------------------------
    def ensure_schema(self, schema: str) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.schema_ref(schema)}")

    def _ensure_tables(self, names: Sequence[str]) -> None:
        self.ensure_schema(B)
        for name in names:
            self.execute(st.create_bookkeeping(self.dialect, st.BOOKKEEPING[name]))

    def ensure_bookkeeping(self) -> None:
        with self.transaction():
            self._ensure_tables(st.LOAD_TABLES)

    def retl_ensure_bookkeeping(self) -> None:
        """Create _sluice.retl_snapshots, retl_sent and retl_runs if missing."""
        with self.transaction():
            self._ensure_tables(st.RETL_TABLES)

    def columns_sql(self, schema: str, table: str | None = None) -> tuple[str, Params]:
        """(table, column, data_type) of a schema's tables, in column order."""
        d = self.dialect
        where = "" if table is None else f" AND table_name = {d.param('table')}"
        return (
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = {d.param('schema')}{where}{d.catalog_filter} "
            "ORDER BY table_name, ordinal_position",
            {"schema": schema, "table": table},
        )

    def _columns(self, schema: str, table: str | None = None) -> list[tuple[str, str, str]]:
        sql, params = self.columns_sql(schema, table)
        return [(str(t), str(c), str(k)) for t, c, k in self.fetchall(sql, params)]

    def read_schema(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, data_type in self._columns(schema):
            out.setdefault(table, {})[column] = self.dialect.read_type(data_type)
        return out

    def schema_names(self) -> set[str]:
        """The warehouse's schemas, for suggesting a mistyped one."""
        return {str(r[0]) for r in self.fetchall(self.dialect.schemas_sql())}

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self.ensure_schema(schema)
        self.execute(st.create_table(self.dialect, schema, table, columns))

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        for name, kind in columns.items():
            self.execute(st.add_column(self.dialect, schema, table, name, kind))

    # --- rows ----------------------------------------------------------------------------
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

    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        """Bulk-stage rows (unique ids) and insert those whose id is not there yet.

        With fill_nulls (replay), a row whose id is there already gets its NULL columns
        filled from the staged row; nothing non-NULL is ever overwritten. Returns the
        rows inserted or filled."""
        if not rows:
            return 0
        d, target = self.dialect, self.table_ref(schema, table)
        with self.transaction(), self.stage(schema, table, columns, rows) as staged:
            filled = 0
            if fill_nulls and st.fillable(columns):
                filled = self.execute(st.fill_nulls(d, target, staged, columns))
            return filled + self.execute(st.insert_new(d, target, staged, columns))

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        """Bulk-stage rows (unique ids): new ids are inserted, existing rows replaced
        (a later version of an object)."""
        if not rows:
            return 0
        d, target = self.dialect, self.table_ref(schema, table)
        with self.transaction(), self.stage(schema, table, columns, rows) as staged:
            n = (
                self.execute(st.update_changed(d, target, staged, columns))
                if len(columns) > 1
                else 0
            )
            return n + self.execute(st.insert_new(d, target, staged, columns))

    def insert_plain(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        skip_existing: bool = False,
    ) -> None:
        """Bookkeeping rows through the bulk path; skip_existing leaves out the rows whose
        key (statements.BOOKKEEPING) is there already. The time-of-insert columns are
        written, not left to their DEFAULT (a table made by an older version may lack it)."""
        if not rows:
            return
        d, target = self.dialect, self.table_ref(schema, table)
        known = st.BOOKKEEPING.get(table) if schema == B else None
        keys = (known.keys if known and known.keys else tuple(columns)) if skip_existing else ()
        now = [c for c, k in known.columns if k == "now" and c not in columns] if known else []
        with self.transaction(), self.stage(schema, table, columns, rows) as staged:
            if keys:
                self.execute(st.insert_new(d, target, staged, columns, keys, True, now))
            else:
                self.execute(st.insert_all(d, target, staged, columns, now))

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        """Set `_deleted_at` on rows deleted upstream (a row is created if unseen)."""
        if not ids:
            return 0
        columns = ("id", "received_at", "uuid_ts", "_deleted_at")
        stamp = _timestamp(at)
        with self.transaction():
            self.insert_new_rows(schema, table, columns, [(i, stamp, stamp, stamp) for i in ids])
            for chunk in self._chunks(ids):
                sql = st.mark_deleted(self.dialect, self.table_ref(schema, table))
                self.execute(sql, {"at": at, "ids": chunk})
        return len(ids)

    # --- cursors ---------------------------------------------------------------------------
    def read_cursors(self, schema: str) -> dict[str, str]:
        """{collection: cursor JSON} committed for an object source."""
        where, p = self._where_schema(schema)
        rows = self.fetchall(
            f"SELECT {self._names('collection', 'cursor')} FROM {self._b('cursors')}{where}", p
        )
        return {str(c): str(v) for c, v in rows}

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        """Called inside the transaction that commits the rows the cursor covers."""
        row = {"schema_name": schema, "collection": collection, "cursor": cursor}
        with self.transaction():
            self._put("cursors", row, 2, "updated_at")

    def _put(self, table: str, row: dict[str, Any], keys: int, stamped: str) -> None:
        """The bookkeeping row whose first `keys` values match replaced by `row`, its
        `stamped` column taking the time of the write."""
        d, names = self.dialect, list(row)
        self.execute(f"DELETE FROM {self._b(table)} WHERE {d.equals(*names[:keys])}", row)
        cols = self._names(*names, stamped)
        values = ", ".join([*(d.param(c) for c in names), d.now])
        self.execute(f"INSERT INTO {self._b(table)} ({cols}) VALUES ({values})", row)

    # --- profiles (users, accounts) ------------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """Latest value per trait by event time, for `keys`.

        A key whose new rows (spec.new_ids) all come after the newest event time it had
        (its mark in _sluice.profile_marks), with nothing rescued in them or in the
        profile, is updated from those rows alone: a new value wins, a missing one keeps
        the profile's (re-reading every key's whole history on every batch made a batch's
        cost grow with the table). Every other key is recomputed from all its rows, and
        the keys whose history holds a rescued value are rebuilt in Python
        (rules.profiles.rescued_profile_rows), which follows a trait's newest value into the
        profile's `_rescued_data`. A profile equal to its rebuilt row is left as it is,
        uuid_ts included."""
        if not keys:
            return 0
        with self.transaction():
            done = self._extend_profiles(schema, spec, keys) if spec.new_ids else set()
            rest = [k for k in keys if k not in done]
            rescued = self._keys_with_rescued(schema, spec, rest)
            plain = [k for k in rest if k not in rescued]
            d = self.dialect
            target = self.table_ref(schema, spec.table)
            source = self.table_ref(schema, spec.source_table)
            for chunk in self._chunks(plain):
                rows = st.profile_rows(
                    d, source, spec.key_column, spec.trait_columns,
                    d.in_list(d.ident(spec.key_column), "keys"),
                )  # fmt: skip
                for sql in (
                    st.profile_update(d, target, rows, spec.trait_columns),
                    st.profile_insert(d, target, rows, spec.trait_columns),
                ):
                    self.execute(sql, {"keys": chunk})
            if rescued:
                self._rescued_profiles(schema, spec, sorted(rescued))
            self._mark_profiles(schema, spec, rest)
        return len(keys)

    def _extend_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> set[str]:
        """Update the keys whose new rows alone may update their profile
        (rules.profiles.extendable_keys, from statements.profile_evidence); returns them."""
        d = self.dialect
        source = self.table_ref(schema, spec.source_table)
        target = self.table_ref(schema, spec.table)
        rescued = spec.rescued_column
        done: set[str] = set()
        for chunk in self._chunks(keys):
            p = {"ids": list(spec.new_ids), "keys": chunk, "schema": schema, "profile": spec.table}
            sql = st.profile_evidence(
                d, source, self._b("profile_marks"), target, spec.key_column, rescued
            )
            evidence, marks, present = [], {}, {}
            for part, k, t1, t2, n1, n2 in self.fetchall(sql, p):
                if part == "n":
                    evidence.append((str(k), t1, t2, n1, n2))
                elif part == "m":
                    marks[str(k)] = t1
                else:
                    present[str(k)] = bool(n1)
            found = extendable_keys(evidence, marks, present)
            if not found:
                continue
            where = (
                f"{d.in_list(d.ident('id'), 'ids')} AND "
                f"{d.in_list(d.ident(spec.key_column), 'keys')}"
            )
            rows = st.profile_rows(d, source, spec.key_column, spec.trait_columns, where)
            self.execute(
                st.profile_extend(d, target, rows, spec.trait_columns),
                {"ids": list(spec.new_ids), "keys": found},
            )
            self._mark_profiles(schema, spec, found, new_rows_only=True)
            done.update(found)
        return done

    def _mark_profiles(
        self, schema: str, spec: ProfileSpec, keys: Sequence[str], new_rows_only: bool = False
    ) -> None:
        """Each key's newest event time, for the next batch's _extend_profiles. An
        extended key's new rows all follow its mark: their newest is the new mark, read
        without its history (`new_rows_only`)."""
        d, marks = self.dialect, self._b("profile_marks")
        source = self.table_ref(schema, spec.source_table)
        i = d.ident
        where = d.in_list(i(spec.key_column), "keys")
        ids: dict[str, Any] = {}
        if new_rows_only:
            where += f" AND {d.in_list(i('id'), 'ids')}"
            ids["ids"] = list(spec.new_ids)
        for chunk in self._chunks(keys):
            p = {"schema": schema, "profile": spec.table, "keys": chunk, **ids}
            new = st.key_marks(d, source, spec.key_column, where)
            self.execute(
                f"DELETE FROM {marks} WHERE {i('schema_name')} = {d.param('schema')} AND "
                f"{i('profile')} = {d.param('profile')} AND {d.in_list(i('key'), 'keys')}",
                p,
            )
            self.execute(
                f"INSERT INTO {marks} ({i('schema_name')}, {i('profile')}, {i('key')}, "
                f"{i('mark_ts')}) SELECT {d.param('schema')}, {d.param('profile')}, "
                f"_sluice_k.{i('key')}, _sluice_k.{i('mark_ts')} FROM {new} AS _sluice_k",
                p,
            )

    def _keys_with_rescued(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> set[str]:
        if spec.rescued_column is None or not keys:
            return set()
        d = self.dialect
        k = d.ident(spec.key_column)
        found: set[str] = set()
        for chunk in self._chunks(keys):
            found.update(
                str(key)
                for (key,) in self.fetchall(
                    f"SELECT DISTINCT {k} FROM {self.table_ref(schema, spec.source_table)} "
                    f"WHERE {d.in_list(k, 'keys')} AND {d.ident(spec.rescued_column)} IS NOT NULL",
                    {"keys": chunk},
                )
            )
        return found

    def _rescued_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> None:
        assert spec.rescued_column is not None
        d = self.dialect
        i = d.ident
        traits = "".join(f", {i(c)}" for c in spec.trait_columns)
        r, k = i(spec.rescued_column), i(spec.key_column)
        history: list[tuple[Any, ...]] = []
        current: list[tuple[Any, ...]] = []
        for chunk in self._chunks(keys):
            history += self.fetchall(
                f"SELECT {k}, {i('timestamp')}, {i('received_at')}{traits}, {r} "
                f"FROM {self.table_ref(schema, spec.source_table)} WHERE {d.in_list(k, 'keys')}",
                {"keys": chunk},
            )
            current += self.fetchall(
                f"SELECT {i('id')}{traits}, {i('received_at')}, {r} FROM "
                f"{self.table_ref(schema, spec.table)} WHERE {d.in_list(i('id'), 'keys')}",
                {"keys": chunk},
            )
        now = datetime.now(timezone.utc)
        rows = rescued_profile_rows(history, current, spec.trait_columns, now.isoformat())
        if rows:
            names = ["id", *spec.trait_columns, "received_at", "uuid_ts", spec.rescued_column]
            self.upsert_rows(schema, spec.table, names, [(*r[:-2], now, r[-1]) for r in rows])

    # --- bookkeeping -----------------------------------------------------------------------
    def _where_schema(self, schema: str | None) -> tuple[str, Params]:
        if schema is None:
            return "", {}
        return f" WHERE {self.dialect.equals('schema_name')}", {"schema_name": schema}

    def loaded_files(self, schema: str) -> set[str]:
        where, p = self._where_schema(schema)
        sql = f"SELECT {self.dialect.ident('file')} FROM {self._b('loaded_files')}{where}"
        return {str(r[0]) for r in self.fetchall(sql, p)}

    def _record(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.insert_plain(B, table, columns, rows, skip_existing=True)

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        # A replay records files that may be in the ledger already.
        self._record("loaded_files", ("schema_name", "file", "lines"),
                     [(schema, f, n) for f, n in files])  # fmt: skip

    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None:
        clip = self.dialect.clip_text
        self._record(
            "rejected_events",
            ("schema_name", "file", "line", "raw", "reason"),
            [(schema, clip(r.file), r.line, clip(r.raw), clip(r.reason)) for r in rejects],
        )

    def record_violations(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Tracking-plan violations, rows of the violations table's columns (schema_name
        included), one per file, event, property and kind: a row already there (a
        replayed file) is left as it is."""
        self._record("violations", _written("violations"), rows)

    def record_blocked(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Events a tracking plan blocked: (file, line, event, raw, violations JSON),
        known by file and line (a replay never records one twice)."""
        self._record("blocked_events", _written("blocked_events"), [(schema, *r) for r in rows])

    def record_turned_off(self, schema: str, names: Sequence[tuple[str, str]]) -> None:
        """Remember (table, column) names selective sync kept out; column '' = table."""
        self._record("turned_off_names", ("schema_name", "table_name", "column_name"),
                     [(schema, t, c) for t, c in names])  # fmt: skip

    def turned_off_names(self, schema: str) -> dict[str, set[str]]:
        """What record_turned_off remembered: {table: {column, ...}} ('' = the table)."""
        d = self.dialect
        where, p = self._where_schema(schema)
        rows = self.fetchall(
            f"SELECT {d.ident('table_name')}, {d.ident('column_name')} FROM "
            f"{self._b('turned_off_names')}{where}",
            p,
        )
        out: dict[str, set[str]] = {}
        for table, column in rows:
            out.setdefault(str(table), set()).add(str(column))
        return out

    def violation_summary(self, schema: str | None) -> list[dict[str, Any]]:
        """_sluice.violations summed over files: schema, event, property, kind,
        example, count, first_seen, last_seen (`sluice plan report`, Dagster)."""
        if "violations" not in self.read_schema(B):
            return []
        where, p = self._where_schema(schema)
        cols = "schema_name, event, property, kind"
        rows = self.fetchall(
            f"SELECT {cols}, MIN(example), SUM(occurrences), MIN(first_seen), MAX(last_seen) "
            f"FROM {self._b('violations')}{where} GROUP BY {cols} ORDER BY {cols}",
            p,
        )
        keys = ("schema", "event", "property", "kind", "example", "count", "first_seen")
        return [
            {**dict(zip(keys, r[:-1], strict=True)), "count": int(r[5] or 0), "last_seen": r[-1]}
            for r in rows
        ]

    def _run_row(self, table: str, first: str, key: str, report: dict[str, Any]) -> None:
        d = self.dialect
        names = ("run_id", first, "target", "status", "started_at", "finished_at", "report")
        values = (
            report["run_id"], key, self.target_name, report["status"],
            _timestamp(report["started_at"]), _timestamp(report["finished_at"]),
            orjson.dumps(report).decode(),
        )  # fmt: skip
        marks = [d.param(f"p{n}") for n in range(len(names) - 1)]
        marks.append(d.json_text(d.param(f"p{len(names) - 1}")))
        with self.transaction():
            self.execute(
                f"INSERT INTO {self._b(table)} ({', '.join(d.ident(n) for n in names)}) "
                f"VALUES ({', '.join(marks)})",
                {f"p{n}": v for n, v in enumerate(values)},
            )

    def record_run(self, schema: str, report: dict[str, Any]) -> None:
        self._run_row("sync_runs", "schema_name", schema, report)

    def _reports(self, table: str, where: str, p: Params, limit: int) -> list[dict[str, Any]]:
        d = self.dialect
        rows = self.fetchall(
            f"SELECT {d.ident('report')} FROM {self._b(table)}{where} "
            f"ORDER BY {d.ident('started_at')} DESC{d.limit(limit)}",
            p,
        )
        return [r[0] if isinstance(r[0], dict) else orjson.loads(r[0]) for r in rows]

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        if "sync_runs" not in self.read_schema(B):
            return []
        return self._reports("sync_runs", "", {}, limit)

    def recent_rejects(self, schema: str | None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest rows of _sluice.rejected_events (of one schema, or all), as dicts
        with schema, file, line, reason, raw and rejected_at (`sluice rejects`)."""
        d = self.dialect
        where, p = self._where_schema(schema)
        cols = ("schema_name", "file", "line", "reason", "raw", "rejected_at")
        rows = self.fetchall(
            f"SELECT {', '.join(d.ident(c) for c in cols)} FROM {self._b('rejected_events')}"
            f"{where} ORDER BY {d.ident('rejected_at')} DESC, {d.ident('file')}, "
            f"{d.ident('line')}{d.limit(limit)}",
            p,
        )
        keys = ("schema", "file", "line", "reason", "raw", "rejected_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # --- retype (sluice schema set-type) ---------------------------------------------------
    def retype_column(
        self, schema: str, table: str, column: str, new_type: ColumnType, apply: bool
    ) -> RetypePlan:
        """`sluice schema set-type`: the plan of moving the column to `new_type` (values
        into it from `_rescued_data`, misfits out to it); with `apply`, done in one
        transaction under the caller's lock and recorded in `_sluice.column_types`."""
        i = self.dialect.ident
        columns = self.read_schema(schema).get(table, {})
        if column not in columns:
            raise WarehouseError(f"no column '{column}' in {schema}.{table}")
        has_rescued = st.RESCUED in columns
        rescued = i(st.RESCUED) if has_rescued else "NULL"
        rows = self.fetchall(
            f"SELECT {i('id')}, {i(column)}, {rescued} FROM "
            f"{self.table_ref(schema, table)} WHERE {i(column)} IS NOT NULL"
            + (f" OR {rescued} IS NOT NULL" if has_rescued else "")
        )
        plan = RetypePlan(schema, table, column, columns[column], new_type)
        plan_retype(plan, rows, self.capabilities.max_text_chars)
        if not apply:
            return plan
        with self.transaction():
            if plan.needs_rescued_column and not has_rescued:
                self.add_columns(schema, table, {st.RESCUED: ColumnType.TEXT})
            self.retype_apply(schema, table, column, new_type, plan)
            self._record_column_type(schema, table, column, new_type)
        plan.applied = True
        return plan

    def retype_apply(
        self, schema: str, table: str, column: str, new_type: ColumnType, plan: RetypePlan
    ) -> None:
        """The column rebuilt: a new column of the new type filled from a staged (id,
        value, rescued) table, the old one dropped, the new one renamed."""
        d, i = self.dialect, self.dialect.ident
        target = self.table_ref(schema, table)
        kind = d.type_names[new_type]
        if d.alters_column_type:
            work = column
            self.execute(
                f"ALTER TABLE {target} ALTER COLUMN {i(column)} TYPE {kind} "
                f"USING CAST(NULL AS {kind})"
            )
        else:
            existing = set(self.read_schema(schema).get(table, {}))
            work = f"{column[:100]}__retype"
            while work in existing:
                work += "_"
            self.add_columns(schema, table, {work: new_type})
        if plan.changes:
            head, t = d.update_target(target, "_sluice_t")
            with self._staged_changes(plan, new_type) as staged:
                r = i(st.RESCUED)
                self.execute(
                    f"UPDATE {head} SET {i(work)} = _sluice_s.{i('value')}, "
                    f"{r} = CASE WHEN _sluice_s.{i('changed')} THEN "
                    f"{d.json_text(f'_sluice_s.{r}')} ELSE {t}.{r} END FROM {staged} AS "
                    f"_sluice_s WHERE {t}.{i('id')} = _sluice_s.{i('id')}"
                )
        if work != column:
            self.execute(f"ALTER TABLE {target} DROP COLUMN {i(column)}")
            self.execute(f"ALTER TABLE {target} RENAME COLUMN {i(work)} TO {i(column)}")

    def _staged_changes(
        self, plan: RetypePlan, new_type: ColumnType
    ) -> AbstractContextManager[str]:
        """A retype plan's changes as staged (id, value, changed, _rescued_data) rows."""
        kinds = {"id": ColumnType.TEXT, "value": new_type, "changed": ColumnType.BOOLEAN,
                 st.RESCUED: ColumnType.TEXT}  # fmt: skip
        rows = [(ch.id, ch.value, ch.rescued_changed, ch.rescued) for ch in plan.changes]
        return self.stage_typed(kinds, rows)

    def stage_typed(
        self, kinds: dict[str, ColumnType], rows: Sequence[Sequence[Any]]
    ) -> AbstractContextManager[str]:
        """Rows of the given column types staged apart from any target table (a work
        table in _sluice, created for them)."""
        return self._work_table(kinds, rows)

    @contextmanager
    def _work_table(
        self, kinds: dict[str, ColumnType], rows: Sequence[Sequence[Any]]
    ) -> Iterator[str]:
        d = self.dialect
        name = f"retype_stage_{uuid.uuid4().hex[:12]}"
        cols = ", ".join(
            f"{d.ident(c)} {d.text_type if k is ColumnType.TEXT else d.type_names[k]}"
            for c, k in kinds.items()
        )
        self.execute(f"CREATE TABLE {self._b(name)} ({cols})")
        try:
            with self.stage(B, name, list(kinds), rows) as staged:
                yield staged
        finally:
            self.execute(f"DROP TABLE IF EXISTS {self._b(name)}")

    def _record_column_type(self, schema: str, table: str, column: str, kind: ColumnType) -> None:
        self._ensure_tables(("column_types",))
        row = {"schema_name": schema, "table_name": table, "column_name": column}
        self._put("column_types", {**row, "column_type": kind.value}, 3, "decided_at")

    def decided_types(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        """{table: {column: type}} a user set (`_sluice.column_types`): a new column of
        that name is created with that type, whatever its first value."""
        if "column_types" not in self.read_schema(B):
            return {}
        where, p = self._where_schema(schema)
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, kind in self.fetchall(
            f"SELECT {self._names('table_name', 'column_name', 'column_type')} FROM "
            f"{self._b('column_types')}{where}",
            p,
        ):
            out.setdefault(str(table), {})[str(column)] = ColumnType(str(kind))
        return out

    # --- reads ---------------------------------------------------------------------------
    def table_stats(self, schema: str, table: str) -> TableStats:
        """Row count, ids present more than once, and the newest received_at."""
        i = self.dialect.ident
        rows, duplicates, newest = self.fetchall(
            f"SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT {i('id')}), MAX({i('received_at')}) "
            f"FROM {self.table_ref(schema, table)}"
        )[0]
        return TableStats(int(rows), int(duplicates), newest)

    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """Run a read-only statement (tests, analyses, `schema show`)."""
        return iter(self.fetchall(sql))

    # --- reverse ETL ---------------------------------------------------------------------
    # Staging and change-set tables are real tables in _sluice (every warehouse has those,
    # and a crashed run's leftovers are replaced by the next run).
    def _retl_table(self, kind: str, model: str) -> str:
        return self._b(f"retl_{kind}__{model}")

    def _replace(self, table: str, create: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {table}")
        self.execute(create)

    def retl_model_columns(self, model: str, sql: str) -> dict[str, ColumnType]:
        """The columns (in order) the model's SELECT returns, without running it in full."""
        probe = self._retl_table("probe", model)
        with self.transaction():
            self._replace(probe, f"CREATE TABLE {probe} AS SELECT * FROM (\n{sql}\n) AS m LIMIT 0")
            columns = self._model_columns(f"retl_probe__{model}")
            self.execute(f"DROP TABLE {probe}")
        return columns

    def _model_columns(self, table: str) -> dict[str, ColumnType]:
        return {c: self.dialect.model_type(k) for _, c, k in self._columns(B, table)}

    def retl_stage(self, model: str, sql: str, key: str, columns: Sequence[str]) -> int:
        """Materialise these columns of the model with its key as text and a hash of the
        row computed in SQL (only what is sent counts as a change); returns rows staged."""
        d = self.dialect
        stage = self._retl_table("stage", model)
        with self.transaction():
            self._replace(stage, st.retl_stage(d, stage, sql, key, columns))
            if d.whole_row_hash("_sluice_row") is None:
                kinds = self._model_columns(f"retl_stage__{model}")
                hashed = d.row_hash([(c, kinds[c]) for c in columns])
                self.execute(f"UPDATE {stage} SET {d.ident('_sluice_hash')} = {hashed}")
        return self._count(f"SELECT COUNT(*) FROM {stage}")

    def retl_key_problems(self, model: str) -> tuple[int, int]:
        """(staged rows whose key is NULL, keys present more than once)."""
        k = self.dialect.ident("_sluice_key")
        nulls, dupes = self.fetchall(
            f"SELECT COUNT(*) - COUNT({k}), COUNT({k}) - COUNT(DISTINCT {k}) FROM "
            f"{self._retl_table('stage', model)}"
        )[0]
        return int(nulls), int(dupes)

    def retl_diff(self, model: str, columns: Sequence[str]) -> dict[str, int]:
        """Join the staged model against its snapshot into a change set (added, changed,
        removed rows, numbered in order); returns those counts and `unchanged`."""
        d = self.dialect
        stage, changes = self._retl_table("stage", model), self._retl_table("changes", model)
        with self.transaction():
            self._replace(
                changes,
                st.retl_diff(d, changes, stage, self._b("retl_snapshots"), model, columns),
            )
        counts = {"added": 0, "changed": 0, "removed": 0}
        kind = d.ident("_sluice_kind")
        for k, n in self.fetchall(f"SELECT {kind}, COUNT(*) FROM {changes} GROUP BY {kind}"):
            counts[str(k)] = int(n)
        staged = self._count(f"SELECT COUNT(*) FROM {stage}")
        counts["unchanged"] = staged - counts["added"] - counts["changed"]
        return counts

    def retl_changes(
        self, model: str, kinds: Sequence[str], columns: Sequence[str], after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """One page of the change set: (seq, kind, key, row hash, *columns) rows with
        seq > after, in seq order. Removed rows have NULL columns and their last hash."""
        if not kinds:
            return []
        d, i = self.dialect, self.dialect.ident
        head = ", ".join(
            i(c) for c in ("_sluice_seq", "_sluice_kind", "_sluice_key", "_sluice_hash")
        )
        cols = "".join(f", {i(c)}" for c in columns)
        return self.fetchall(
            f"SELECT {head}{cols} FROM {self._retl_table('changes', model)} WHERE "
            f"{d.in_list(i('_sluice_kind'), 'kinds')} AND {i('_sluice_seq')} > {d.param('after')} "
            f"ORDER BY {i('_sluice_seq')}{d.limit(limit)}",
            {"kinds": list(kinds), "after": int(after)},
        )

    def _retl_apply(self, model: str, where: str, p: dict[str, Any]) -> None:
        """Replace the snapshot rows of the change-set rows matching `where`."""
        d, i = self.dialect, self.dialect.ident
        changes, snapshots = self._retl_table("changes", model), self._b("retl_snapshots")
        p = {**p, "model": model}
        with self.transaction():
            self.execute(
                f"DELETE FROM {snapshots} WHERE {i('model')} = {d.param('model')} AND {i('key')} "
                f"IN (SELECT {i('_sluice_key')} FROM {changes} WHERE {where})",
                p,
            )
            self.execute(
                f"INSERT INTO {snapshots} ({i('model')}, {i('key')}, {i('row_hash')}, "
                f"{i('synced_at')}) SELECT {d.cast(d.param('model'), d.text_type)}, "
                f"{i('_sluice_key')}, {i('_sluice_hash')}, {d.now} FROM {changes} WHERE "
                f"{where} AND {i('_sluice_kind')} <> 'removed'",
                p,
            )

    def retl_advance(self, model: str, seqs: Sequence[int]) -> None:
        """Make the snapshot match these change-set rows, atomically: the destination
        accepted them."""
        for chunk in self._chunks([int(s) for s in seqs]):
            where = self.dialect.in_list(self.dialect.ident("_sluice_seq"), "seqs")
            self._retl_apply(model, where, {"seqs": chunk})

    def retl_baseline(self, model: str, kinds: Sequence[str]) -> int:
        """Record every change-set row of these kinds in the snapshot without sending."""
        if not kinds:
            return 0
        d = self.dialect
        where = d.in_list(d.ident("_sluice_kind"), "kinds")
        p = {"kinds": list(kinds)}
        n = self._count(
            f"SELECT COUNT(*) FROM {self._retl_table('changes', model)} WHERE {where}", p
        )
        if n:
            self._retl_apply(model, where, p)
        return n

    def retl_sent_ids(self, model: str, keys: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """key -> (op, row hash, record id) of the last change sent for each of these keys
        that has one (_sluice.retl_sent); see loader/reverse_etl/ids.py."""
        d, i = self.dialect, self.dialect.ident
        out: dict[str, tuple[str, str, str]] = {}
        for chunk in self._chunks(keys):
            for key, op, row_hash, record_id in self.fetchall(
                f"SELECT {i('key')}, {i('op')}, {i('row_hash')}, {i('record_id')} FROM "
                f"{self._b('retl_sent')} WHERE {i('model')} = {d.param('model')} AND "
                f"{d.in_list(i('key'), 'keys')}",
                {"model": model, "keys": chunk},
            ):
                out[str(key)] = (str(op), str(row_hash), str(record_id))
        return out

    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        """Record (key, op, row hash, record id) as the last change sent for each key,
        replacing the previous one, committed before the batch goes out."""
        if not sent:
            return
        d, i = self.dialect, self.dialect.ident
        now = datetime.now(timezone.utc)
        with self.transaction():
            for chunk in self._chunks([s[0] for s in sent]):
                self.execute(
                    f"DELETE FROM {self._b('retl_sent')} WHERE {i('model')} = {d.param('model')} "
                    f"AND {d.in_list(i('key'), 'keys')}",
                    {"model": model, "keys": chunk},
                )
            names = ("model", "key", "op", "row_hash", "record_id", "run_id", "sent_at")
            rows = [(model, key, op, h, rid, run_id, now) for key, op, h, rid in sent]
            self.insert_plain(B, "retl_sent", names, rows)

    def retl_drop_stage(self, model: str) -> None:
        """Drop the model's staging and change-set tables."""
        for kind in ("changes", "stage", "probe"):
            self.execute(f"DROP TABLE IF EXISTS {self._retl_table(kind, model)}")

    def retl_snapshot_count(self, model: str) -> int:
        where = self.dialect.equals("model")
        return self._count(
            f"SELECT COUNT(*) FROM {self._b('retl_snapshots')} WHERE {where}", {"model": model}
        )

    def retl_record_run(self, report: dict[str, Any]) -> None:
        self._run_row("retl_runs", "model", report["model"], report)

    def retl_recent_runs(self, model: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first."""
        where, p = ("", {}) if model is None else (
            f" WHERE {self.dialect.equals('model')}", {"model": model}
        )  # fmt: skip
        return self._reports("retl_runs", where, p, limit)

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
        d = self.dialect
        existing = self.read_schema(schema).get(table)
        target = self.table_ref(schema, table)
        if existing is None:
            self.ensure_schema(schema)
            cols = ", ".join(f"{d.ident(n)} {d.type_names[k]}" for n, k in columns.items())
            self.execute(f"CREATE TABLE {target} ({cols}{d.primary_key([key])})")
        else:
            missing = {n: k for n, k in columns.items() if n not in existing}
            if missing:
                self.add_columns(schema, table, missing)
        with self.transaction():
            for chunk in self._chunks(keys):
                self.execute(
                    f"DELETE FROM {target} WHERE "
                    f"{d.in_list(d.cast(d.ident(key), d.text_type), 'keys')}",
                    {"keys": chunk},
                )
            if rows:
                self.insert_plain(schema, table, list(columns), rows)


def _timestamp(value: Any) -> Any:
    """ISO text (as reports and deletion marks carry it) as an aware datetime."""
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return value
