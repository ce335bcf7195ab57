"""ClickHouse, a driver on SqlWarehouse: embedded (chdb, a folder) or a server
(clickhouse-connect over HTTP).

ClickHouse has no multi-statement transactions and no UPDATE ... FROM, so every write
is an INSERT and exactly-once rests on three things (README: "ClickHouse: what
exactly-once means there"):

- every table is a ReplacingMergeTree on its key (`id`, or a bookkeeping table's key
  columns): a changed row (a replay filling NULLs, an upserted object, a rebuilt profile)
  is a new version of the row, and the last inserted version wins;
- every statement of a Sluice connection runs with `final = 1` (FINAL on every table),
  so it reads one row per key, the latest, whether or not ClickHouse merged them yet;
- inserts are idempotent by themselves (new ids only, anti-joined against the table;
  versions only where something differs), and the file ledger and cursors of a batch are
  written last, once everything before them succeeded: a crash between two statements
  leaves rows the rerun recognises and never repeats.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from loader.config import ClickHouseTarget
from loader.schema import ColumnType
from loader.warehouses import statements as st
from loader.warehouses.base import Capabilities, LockBusy, ProfileSpec, Rows, Warehouse
from loader.warehouses.base import WarehouseError as Error
from loader.warehouses.dialect import SqlDialect
from loader.warehouses.sql_warehouse import B, SqlWarehouse

TS = "DateTime64(6, 'UTC')"
# Bare types: every connection sets data_type_default_nullable, so a column is Nullable
# unless declared NOT NULL (the keys), as in SQL.
CAPABILITIES = Capabilities(
    max_identifier_bytes=63,
    type_names={
        ColumnType.BOOLEAN: "Bool",
        ColumnType.BIGINT: "Int64",
        ColumnType.DOUBLE: "Float64",
        ColumnType.TIMESTAMP: TS,
        ColumnType.TEXT: "String",
    },
    json_type="String",  # JSON text, as written (ClickHouse's JSON type reorders keys)
    key_type="String NOT NULL",
    max_columns=2_000,
)
# FINAL on every read; SQL's NULLs in outer joins and IN; a column's name before a
# same-named alias; bare types Nullable; CREATE TABLE ... AS SELECT (reverse ETL's work
# tables) in memory; ISO 8601 text as timestamps; deletes done when they return.
SETTINGS: dict[str, Any] = {
    "final": 1,
    "join_use_nulls": 1,
    "transform_null_in": 1,
    "prefer_column_name_to_alias": 1,
    "data_type_default_nullable": 1,
    "default_table_engine": "Memory",
    "date_time_input_format": "best_effort",
    "cast_string_to_date_time_mode": "best_effort",
    "mutations_sync": 2,
    "lightweight_deletes_sync": 2,
    "max_query_size": 256 * 1024 * 1024,
}
# A retried INSERT carrying the same deduplication token is dropped if the first landed.
TABLE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 1000, allow_nullable_key = 1"
_ARROW = {"Bool": pa.bool_(), "Int64": pa.int64(), "Float64": pa.float64()}
_PARAM = re.compile(r"%\((\w+)\)s")
_NOT_FILLED = ("id", "uuid_ts", st.RESCUED)


def sql_value(value: Any) -> str:
    """A Python value as a ClickHouse literal: parameters are bound here, the same way
    for chdb and a server. A list is a tuple, for IN."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        text = value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"toDateTime64('{text}', 6, 'UTC')"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(sql_value(v) for v in value) + ")" if value else "(NULL)"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def bind(sql: str, params: Mapping[str, Any] | None) -> str:
    return _PARAM.sub(lambda m: sql_value((params or {})[m.group(1)]), sql)


def short_error(exc: BaseException, secret: str | None = None) -> str:
    """ClickHouse's message without its code, exception class or secret: one clause."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^.*?DB::Exception: ", "", text)
    text = re.sub(r"\s*\(version [^)]*\)|\. \([A-Z_]+\)$", "", text).rstrip(". ")
    return text.replace(secret, "***") if secret else text


def _unwrap(data_type: str) -> str:
    while data_type.startswith(("Nullable(", "LowCardinality(")):
        data_type = data_type.split("(", 1)[1][:-1]
    return data_type


class ClickHouseDialect(SqlDialect):
    sqlglot_name = "clickhouse"
    text_type = "String"
    now = "now64(6)"
    alters_column_type = False

    def __init__(self) -> None:
        c = CAPABILITIES
        super().__init__(c.type_names, c.json_type, c.key_type)

    def literal(self, text: str) -> str:
        return sql_value(text)  # a backslash is an escape in ClickHouse's strings

    def in_list(self, expr: str, name: str) -> str:
        return f"{expr} IN {self.param(name)}"

    def column_type(self, name: str, kind: ColumnType) -> str:
        # Spelled out: ALTER TABLE ... ADD COLUMN ignores data_type_default_nullable.
        sql = super().column_type(name, kind)
        return sql if sql.endswith("NOT NULL") else f"Nullable({sql})"

    def read_type(self, data_type: str) -> ColumnType:
        return super().read_type(_unwrap(data_type))

    def model_type(self, data_type: str) -> ColumnType:
        t = _unwrap(data_type)
        return ColumnType.TIMESTAMP if t.startswith("DateTime") else super().model_type(t)

    def whole_row_hash(self, alias: str) -> str | None:
        return f"lower(hex(MD5(formatRow('JSONEachRow', {alias}.*))))"

    def lease_expiry(self, minutes: int) -> str:
        return f"{self.now} + INTERVAL {int(minutes)} MINUTE"

    def schemas_sql(self) -> str:
        return (
            "SELECT name FROM system.databases WHERE name NOT IN "
            "('system', 'INFORMATION_SCHEMA', 'information_schema', 'default')"
        )


class _Embedded:
    """chdb: the engine in this process, its data in a folder (locked by the engine:
    one process at a time)."""

    def __init__(self, path: str) -> None:
        import chdb

        os.makedirs(path, exist_ok=True)
        self.conn = chdb.connect(path)
        for name, value in SETTINGS.items():
            self.conn.query(f"SET {name} = {sql_value(value)}")

    def run(self, sql: str, rows: bool) -> tuple[list[tuple[Any, ...]], int]:
        result = self.conn.query(sql, "Arrow" if rows else "CSV")
        if not rows:
            return [], int(result.rows_written())
        data = result.bytes()
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all() if data else None
        if table is None:
            return [], 0
        return list(zip(*(c.to_pylist() for c in table.columns), strict=True)), 0

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        d = ClickHouseDialect()
        into = f"INSERT INTO {d.table_ref(database, table)} ({', '.join(map(d.ident, data.column_names))})"
        with self.conn.send_insert(into, "ArrowStream") as ins:
            ins.append(sink.getvalue().to_pybytes())
            ins.finish()

    def close(self) -> None:
        self.conn.close()


class _Server:
    """clickhouse-connect over HTTP(S). A statement that fails on the connection is sent
    once more, an INSERT with the same deduplication token: it cannot land twice."""

    def __init__(self, t: ClickHouseTarget) -> None:
        import clickhouse_connect

        self.client = clickhouse_connect.get_client(
            host=t.host,
            port=t.port or (8443 if t.secure else 8123),
            username=t.user,
            password=t.password.get_secret_value() if t.password else "",
            database=t.database,
            secure=t.secure,
            connect_timeout=t.connect_timeout,
            settings=SETTINGS,
        )

    def run(self, sql: str, rows: bool) -> tuple[list[tuple[Any, ...]], int]:
        from clickhouse_connect.driver.exceptions import OperationalError

        token = {"insert_deduplication_token": uuid.uuid4().hex}
        for attempt in (1, 2):
            try:
                if rows:
                    return [tuple(r) for r in self.client.query(sql).result_rows], 0
                summary = self.client.command(sql, settings=token)
                return [], int(getattr(summary, "written_rows", 0) or 0)
            except OperationalError:
                if attempt == 2:
                    raise
        return [], 0

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        self.client.insert_arrow(table, data, database=database)

    def close(self) -> None:
        self.client.close()


def _folder_in_use(path: str) -> bool:
    """Another process holds the engine's lock on the folder (chdb says only that the
    engine did not start)."""
    try:
        with open(os.path.join(path, "status"), "a") as status:
            fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(status, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class ClickHouseWarehouse(SqlWarehouse):
    capabilities = CAPABILITIES
    dialect = ClickHouseDialect()
    # A rebuild is a mutation per row (ALTER ... UPDATE): not offered (the base says so).
    retype_column = Warehouse.retype_column

    def __init__(self, target_name: str, target: ClickHouseTarget) -> None:
        self.target_name = target_name
        self.target = target
        self.lease_minutes = target.lock_lease_minutes
        self._secret = target.password.get_secret_value() if target.password else None
        self._depth = 0
        self._last: list[Callable[[], None]] = []  # a block's ledger writes, run last
        try:
            self.client = _Embedded(target.path) if target.path else _Server(target)
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - one sentence for the user
            if target.path and _folder_in_use(target.path):
                raise LockBusy(
                    f"the ClickHouse folder {target.path} of target '{target_name}' is open "
                    "in another process; let it finish, then rerun"
                ) from None
            where = f"folder {target.path}" if target.path else f"server {target.host}"
            raise Error(
                f"cannot open ClickHouse target '{target_name}' ({where}): "
                f"{short_error(exc, self._secret)}"
            ) from None

    # --- driver primitives ------------------------------------------------------------
    def _run(self, sql: str, params: Mapping[str, Any] | None, rows: bool) -> Any:
        try:
            return self.client.run(bind(sql, params), rows)
        except Exception as exc:  # noqa: BLE001 - one sentence naming the target
            raise Error(
                f"ClickHouse target '{self.target_name}': {short_error(exc, self._secret)}"
            ) from None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return int(self._run(sql, params, False)[1])

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self._run(sql, params, True)[0])

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """No transactions in ClickHouse: a block whose ledger writes (files, cursors)
        are held back and written once everything in it succeeded."""
        self._depth += 1
        try:
            yield
        except BaseException:
            if self._depth == 1:
                self._last.clear()
            raise
        finally:
            self._depth -= 1
        if self._depth == 0:
            last, self._last = self._last, []
            for write in last:
                write()

    def _at_end(self, write: Callable[[], None]) -> None:
        self._last.append(write) if self._depth else write()

    def _types(self, schema: str, table: str) -> dict[str, str]:
        return {c: _unwrap(t) for _, c, t in self._columns(schema, table)}

    @contextmanager
    def stage(self, schema: str, table: str, columns: Sequence[str], rows: Rows) -> Iterator[str]:
        """Rows into a Memory table in _sluice through Arrow (the bulk path), read back
        typed like the target's columns (timestamps are staged as ISO text)."""
        types = self._types(schema, table)
        name, i = f"_stage_{uuid.uuid4().hex[:12]}", self.dialect.ident
        arrays, ddl, read = [], [], []
        for n, values in zip(columns, zip(*rows, strict=True), strict=True):
            kind = types.get(n, "String")
            if kind.startswith("DateTime"):
                values = tuple(v.isoformat() if isinstance(v, datetime) else v for v in values)
                read.append(f"parseDateTime64BestEffortOrNull({i(n)}, 6, 'UTC') AS {i(n)}")
                kind = "String"
            else:
                read.append(i(n))
            arrays.append(pa.array(values, type=_ARROW.get(kind, pa.string())))
            ddl.append(f"{i(n)} {kind}")
        self.execute(f"CREATE TABLE {self._b(name)} ({', '.join(ddl)}) ENGINE = Memory")
        try:
            try:
                self.client.insert(B, name, pa.Table.from_arrays(arrays, names=list(columns)))
            except Exception as exc:  # noqa: BLE001
                raise Error(f"ClickHouse target '{self.target_name}': {short_error(exc)}") from None
            yield f"(SELECT {', '.join(read)} FROM {self._b(name)})"
        finally:
            self.execute(f"DROP TABLE IF EXISTS {self._b(name)}")

    @contextmanager
    def hold(self, name: str, busy: str) -> Iterator[None]:
        """Embedded: the engine's lock on the folder is the lock. A server has none: a
        claim row with a lease, and the earliest live claim, read back after
        lock_settle_seconds, wins (README: what a race can still do)."""
        if self.target.path:
            yield
            return
        self._ensure_tables(("locks",))
        d, locks, me = self.dialect, self._b("locks"), uuid.uuid4().hex
        p = {"name": name, "me": me}
        self.execute(
            f"INSERT INTO {locks} (name, holder, acquired_at, expires_at) SELECT %(name)s, "
            f"%(me)s, {d.now}, {d.lease_expiry(self.lease_minutes)}",
            p,
        )
        try:
            time.sleep(self.target.lock_settle_seconds)
            first = self.fetchall(
                f"SELECT holder FROM {locks} WHERE name = %(name)s AND expires_at > {d.now} "
                "ORDER BY acquired_at, holder LIMIT 1",
                p,
            )
            if first and first[0][0] != me:
                raise LockBusy(
                    f"{busy} (a crashed run's claim expires after {self.lease_minutes} minutes)"
                )
            yield
        finally:
            self.execute(f"DELETE FROM {locks} WHERE name = %(name)s AND holder = %(me)s", p)

    # --- tables: a database per schema, ReplacingMergeTree on the key ----------------
    def _engine(self, keys: Sequence[str], table: str = "") -> str:
        # Claims of one lock must not replace each other: ordered by holder too.
        keys = (*keys, "holder") if table == "locks" else keys
        order = ", ".join(map(self.dialect.ident, keys)) or "tuple()"
        engine = "MergeTree" if table == "locks" else "ReplacingMergeTree"
        return f" ENGINE = {engine} ORDER BY ({order}) {TABLE_SETTINGS}"

    def _ensure_tables(self, names: Sequence[str]) -> None:
        self.execute(f"CREATE DATABASE IF NOT EXISTS {self.dialect.schema_ref(B)}")
        for name in names:
            table = st.BOOKKEEPING[name]
            sql = st.create_bookkeeping(self.dialect, table)
            self.execute(sql + self._engine(table.keys or table.required, name))

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self.execute(f"CREATE DATABASE IF NOT EXISTS {self.dialect.schema_ref(schema)}")
        self.execute(st.create_table(self.dialect, schema, table, columns) + self._engine(["id"]))

    # --- writes: inserts only -----------------------------------------------------------
    def _versions(
        self, target: str, columns: Sequence[str], select: Sequence[str], tail: str, p: Any = None
    ) -> int:
        """INSERT ... SELECT of rows built by `select` (one per column) `FROM ...` (tail)."""
        cols = ", ".join(map(self.dialect.ident, columns))
        return self.execute(f"INSERT INTO {target} ({cols}) SELECT {', '.join(select)} {tail}", p)

    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        if not rows:
            return 0
        i, t = self.dialect.ident, self.table_ref(schema, table)
        with self.stage(schema, table, columns, rows) as staged:
            filled = 0
            fill = [c for c in columns if c not in _NOT_FILLED]
            if fill_nulls and fill:  # a new version of each row with a NULL to fill
                every = list(self._types(schema, table))
                select = [
                    f"coalesce(t.{i(c)}, s.{i(c)})" if c in fill else f"t.{i(c)}" for c in every
                ]
                gaps = " OR ".join(f"(t.{i(c)} IS NULL AND s.{i(c)} IS NOT NULL)" for c in fill)
                tail = f"FROM {t} AS t INNER JOIN {staged} AS s ON s.id = t.id WHERE {gaps}"
                filled = self._versions(t, every, select, tail)
            tail = f"FROM {staged} AS s WHERE s.id NOT IN (SELECT id FROM {t})"
            return filled + self._versions(t, columns, [f"s.{i(c)}" for c in columns], tail)

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        """New ids, and a new version of rows that differ; a column not given (turned
        off) keeps the current version's value."""
        if not rows:
            return 0
        d, i, t = self.dialect, self.dialect.ident, self.table_ref(schema, table)
        with self.stage(schema, table, columns, rows) as staged:
            every = list(self._types(schema, table))
            select = [f"s.{i(c)}" if c in columns else f"t.{i(c)}" for c in every]
            differs = [
                d.distinct(f"s.{i(c)}", f"t.{i(c)}") for c in columns if c not in ("id", "uuid_ts")
            ]
            where = " OR ".join(["t.id IS NULL", *differs])
            tail = f"FROM {staged} AS s LEFT JOIN {t} AS t ON t.id = s.id WHERE {where}"
            return self._versions(t, every, select, tail)

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        if not ids:
            return 0
        stamp = datetime.fromisoformat(at.replace("Z", "+00:00"))
        columns = ("id", "received_at", "uuid_ts", "_deleted_at")
        self.insert_new_rows(schema, table, columns, [(i, stamp, stamp, stamp) for i in ids])
        t, i = self.table_ref(schema, table), self.dialect.ident
        every = list(self._types(schema, table))
        select = ["%(at)s" if c == "_deleted_at" else i(c) for c in every]
        for chunk in self._chunks(ids):
            tail = f"FROM {t} WHERE _deleted_at IS NULL AND id IN %(ids)s"
            self._versions(t, every, select, tail, {"at": stamp, "ids": chunk})
        return len(ids)

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        self._at_end(lambda: SqlWarehouse.record_files(self, schema, files))

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        """A new version of the (schema, collection) row, written last in its block."""
        self._at_end(
            lambda: self.execute(
                f"INSERT INTO {self._b('cursors')} (schema_name, collection, cursor) "
                "VALUES (%(s)s, %(c)s, %(v)s)",
                {"s": schema, "c": collection, "v": cursor},
            )
        )

    # --- profiles (users, accounts) -----------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """Each trait's newest value by event time (then received_at, then id) with
        argMaxIf, from all the keys' rows; a new version only for profiles that differ, so
        a replay changes nothing. A trait whose newest value was rescued is NULL, the
        value in the profile's _rescued_data; traits not synced keep their values."""
        if not keys:
            return 0
        d, i, lit = self.dialect, self.dialect.ident, self.dialect.literal
        zero = "toDateTime64(0, 6, 'UTC')"
        order = (
            f'(isNotNull("timestamp"), ifNull("timestamp", {zero}), '
            f"isNotNull(received_at), ifNull(received_at, {zero}), id)"
        )
        r = spec.rescued_column
        values, pairs = [], []
        for c in spec.trait_columns:
            q = i(c)
            if r is None:
                values.append(f"argMaxIf({q}, {order}, {q} IS NOT NULL) AS {q}")
                continue
            doc = f"ifNull({i(r)}, '{{}}')"
            has = f"JSONHas({doc}, {lit(c)})"
            kept = f"argMaxIf({q} IS NULL, {order}, {q} IS NOT NULL OR {has})"
            values.append(f"if({kept}, NULL, argMaxIf({q}, {order}, {q} IS NOT NULL)) AS {q}")
            raw = f"argMaxIf(JSONExtractRaw({doc}, {lit(c)}), {order}, {has})"
            pairs.append(f"if({kept}, concat(toJSONString({lit(c)}), ':', {raw}), '')")
        if r is not None:
            body = f"arrayStringConcat(arrayFilter(x -> x != '', [{', '.join(pairs)}]), ',')"
            values.append(
                f"nullIf(concat('{{', {body}, '}}'), '{{}}') AS {i(r)}"
                if pairs
                else f"NULL AS {i(r)}"
            )
        k = i(spec.key_column)
        new = (
            f"(SELECT {k} AS id, {', '.join(values)}, max(received_at) AS received_at "
            f"FROM {self.table_ref(schema, spec.source_table)} WHERE {d.in_list(k, 'keys')} GROUP BY {k})"
        )
        compared = [*spec.trait_columns, "received_at", *([r] if r else [])]
        every = list(self._types(schema, spec.table))
        select = [
            d.now if c == "uuid_ts" else f"n.{i(c)}" if c in (*compared, "id") else f"c.{i(c)}"
            for c in every
        ]
        differs = " OR ".join(d.distinct(f"n.{i(c)}", f"c.{i(c)}") for c in compared)
        target = self.table_ref(schema, spec.table)
        tail = f"FROM {new} AS n LEFT JOIN {target} AS c ON c.id = n.id WHERE c.id IS NULL OR {differs}"
        for chunk in self._chunks(keys):
            self._versions(target, every, select, tail, {"keys": chunk})
        return len(keys)

    # --- reverse ETL: snapshot rows are versions too ---------------------------------
    def _retl_apply(self, model: str, where: str, p: dict[str, Any]) -> None:
        """The change-set rows matching `where`: new versions of their snapshot rows,
        then the removed ones deleted (a crash between leaves a removal to send again)."""
        changes, snaps = self._retl_table("changes", model), self._b("retl_snapshots")
        p = {**p, "model": model}
        self.execute(
            f"INSERT INTO {snaps} (model, key, row_hash, synced_at) SELECT %(model)s, "
            f"_sluice_key, _sluice_hash, {self.dialect.now} FROM {changes} "
            f"WHERE {where} AND _sluice_kind <> 'removed'",
            p,
        )
        self.execute(
            f"DELETE FROM {snaps} WHERE model = %(model)s AND key IN (SELECT _sluice_key FROM "
            f"{changes} WHERE {where} AND _sluice_kind = 'removed')",
            p,
        )

    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        now = datetime.now(timezone.utc)
        names = ("model", "key", "op", "row_hash", "record_id", "run_id", "sent_at")
        rows = [(model, key, op, h, rid, run_id, now) for key, op, h, rid in sent]
        self.insert_plain(B, "retl_sent", names, rows)  # new versions of (model, key)

    def retl_write_table(
        self,
        schema: str,
        table: str,
        key: str,
        columns: dict[str, ColumnType],
        rows: Sequence[Sequence[Any]],
        keys: Sequence[str],
    ) -> None:
        d = self.dialect
        if table not in self.read_schema(schema):
            self.execute(f"CREATE DATABASE IF NOT EXISTS {d.schema_ref(schema)}")
            cols = ", ".join(f"{d.ident(n)} {d.type_names[k]}" for n, k in columns.items())
            self.execute(
                f"CREATE TABLE {self.table_ref(schema, table)} ({cols})" + self._engine([key])
            )
        super().retl_write_table(schema, table, key, columns, rows, keys)
