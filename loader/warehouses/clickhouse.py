"""ClickHouse: embedded (chdb, a folder) or a server (clickhouse-connect over HTTP).

ClickHouse has no multi-statement transactions and no UPDATE ... FROM, so every write
is an INSERT and exactly-once rests on three things (README: "ClickHouse: what
exactly-once means there"):

- every table is a ReplacingMergeTree on its key (`id`, or a bookkeeping table's key
  columns): a changed row (a replay filling NULLs, an upserted object, a rebuilt profile)
  is a new version of the row, and the last inserted version wins;
- every read through Sluice runs with `final = 1` (FINAL on every table), so it sees one
  row per key, the latest, whether or not ClickHouse has merged the versions yet;
- inserts are idempotent by themselves (new ids only, anti-joined against the table;
  versions only where something differs), and the file ledger and cursors of a batch are
  written last, when everything before them succeeded: a crash between two statements
  leaves rows that the rerun recognises and never repeats.

A database per Sluice schema; `_sluice` holds the bookkeeping.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from loader.config import ClickHouseTarget
from loader.normalize import RESCUED_COLUMN
from loader.schema import ColumnType
from loader.warehouses.base import (
    BOOKKEEPING_SCHEMA,
    Capabilities,
    LockBusy,
    ProfileSpec,
    Rows,
    Warehouse,
    WarehouseError,
)
from loader.warehouses.sql_family import SqlFamilyWarehouse, literal, quote

TS = "DateTime64(6, 'UTC')"
CAPABILITIES = Capabilities(
    max_identifier_bytes=63,
    type_names={
        ColumnType.BOOLEAN: "Nullable(Bool)",
        ColumnType.BIGINT: "Nullable(Int64)",
        ColumnType.DOUBLE: "Nullable(Float64)",
        ColumnType.TIMESTAMP: f"Nullable({TS})",
        ColumnType.TEXT: "Nullable(String)",
    },
    json_type="Nullable(String)",  # JSON text: ClickHouse's JSON type reorders keys
    key_type="String",
    max_columns=2_000,
)
# Every statement of a Sluice connection runs with these: FINAL on every read, SQL's
# NULL semantics in joins and IN, a column's name before an alias of it, ISO timestamps as text, deletes done when they return.
SETTINGS: dict[str, Any] = {
    "final": 1,
    "join_use_nulls": 1,
    "prefer_column_name_to_alias": 1,
    "transform_null_in": 1,
    "date_time_input_format": "best_effort",
    "cast_string_to_date_time_mode": "best_effort",
    "mutations_sync": 2,
    "lightweight_deletes_sync": 2,
    "max_query_size": 256 * 1024 * 1024,
}
# A retried INSERT carrying the same token is dropped by the table if the first landed.
TABLE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 1000, allow_nullable_key = 1"
_ARROW = {"Bool": pa.bool_(), "Int64": pa.int64(), "Float64": pa.float64()}
_PARAM = re.compile(r"%\((\w+)\)s|%s")
_BOOKKEEPING = {  # table -> (columns, key)
    "loaded_files": ("schema_name text, file text, lines bigint, loaded_at ts", 2),
    "rejected_events": ("schema_name text, file text, line bigint, raw text, reason text, rejected_at ts", 3),
    "sync_runs": ("run_id text, schema_name text, target text, status text, started_at ts, finished_at ts, report text", 1),
    "cursors": ("schema_name text, collection text, cursor text, updated_at ts", 2),
    "turned_off_names": ("schema_name text, table_name text, column_name text, first_seen ts", 3),
    "violations": ("schema_name text, file text, event text, property text, kind text, example text, occurrences bigint, first_seen text, last_seen text, recorded_at ts", 5),
    "blocked_events": ("schema_name text, file text, line bigint, event text, raw text, violations text, blocked_at ts", 3),
    "locks": ("name text, holder text, claimed_at ts, expires_at ts", 3),
    "retl_snapshots": ("model text, key text, row_hash text, synced_at ts", 2),
    "retl_sent": ("model text, key text, op text, row_hash text, record_id text, run_id text, sent_at ts", 2),
    "retl_runs": ("run_id text, model text, target text, status text, started_at ts, finished_at ts, report text", 1),
}  # fmt: skip
_SQL_TYPES = {"text": "Nullable(String)", "bigint": "Nullable(Int64)", "ts": f"Nullable({TS})"}


def sql_value(value: Any) -> str:
    """A Python value as a ClickHouse literal (parameters are bound client-side, the same
    way for chdb and a server); a list is a tuple for IN."""
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
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def bind(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> str:
    """`%s` (in order) or `%(name)s` markers replaced by literals."""
    if not params:
        return sql
    if isinstance(params, Mapping):
        return _PARAM.sub(lambda m: sql_value(params[m.group(1)]), sql)
    values = iter(params)
    return _PARAM.sub(lambda m: sql_value(next(values)), sql)


def short_error(exc: BaseException, secret: str | None = None) -> str:
    """ClickHouse's message without its code prefix, stack or secret: one clause."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^.*?DB::Exception: ", "", text)
    text = re.sub(r"\s*\(version [^)]*\)|\. \([A-Z_]+\)$", "", text).rstrip(". ")
    return text.replace(secret, "***") if secret else text


class _Embedded:
    """chdb: the ClickHouse engine in this process, its data in a folder (one process at
    a time: the engine locks the folder)."""

    def __init__(self, path: str) -> None:
        import chdb

        os.makedirs(path, exist_ok=True)
        self.conn = chdb.connect(path)
        for name, value in SETTINGS.items():
            self.conn.query(f"SET {name} = {sql_value(value)}")

    def run(self, sql: str, want_rows: bool) -> tuple[list[tuple[Any, ...]], int]:
        result = self.conn.query(sql, "Arrow" if want_rows else "CSV")
        if not want_rows:
            return [], int(result.rows_written())
        data = result.bytes()
        if not data:
            return [], 0
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        return list(zip(*(c.to_pylist() for c in table.columns), strict=True)), 0

    def insert(self, target: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        cols = ", ".join(quote(c) for c in table.column_names)
        with self.conn.send_insert(f"INSERT INTO {target} ({cols})", "ArrowStream") as ins:
            ins.append(sink.getvalue().to_pybytes())
            ins.finish()

    def close(self) -> None:
        self.conn.close()


class _Server:
    """clickhouse-connect over HTTP(S); a statement that fails on the connection is sent
    once more (an INSERT with the same deduplication token, so it cannot land twice)."""

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

    def run(self, sql: str, want_rows: bool) -> tuple[list[tuple[Any, ...]], int]:
        from clickhouse_connect.driver.exceptions import OperationalError

        settings = {"insert_deduplication_token": uuid.uuid4().hex}
        for attempt in (1, 2):
            try:
                if want_rows:
                    return [tuple(r) for r in self.client.query(sql).result_rows], 0
                summary = self.client.command(sql, settings=settings)
                written = getattr(summary, "written_rows", 0)
                return [], int(written or 0)
            except OperationalError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def insert(self, target: str, table: pa.Table) -> None:
        database, name = (part.strip('"').replace('""', '"') for part in target.split('"."'))
        self.client.insert_arrow(name, table, database=database)

    def close(self) -> None:
        self.client.close()


class ClickHouseWarehouse(SqlFamilyWarehouse):
    capabilities = CAPABILITIES
    placeholder = "%s"
    retype_column = Warehouse.retype_column  # ALTER ... UPDATE per row: not offered

    def __init__(self, target_name: str, target: ClickHouseTarget) -> None:
        self.target_name = target_name
        self.target = target
        self._secret = target.password.get_secret_value() if target.password else None
        self._depth = 0
        self._last: list[Callable[[], None]] = []  # a batch's ledger writes, run last
        self._holder = uuid.uuid4().hex
        try:
            self.client: _Embedded | _Server = (
                _Embedded(target.path) if target.path else _Server(target)
            )
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - one sentence for the user
            where = f"folder {target.path}" if target.path else f"server {target.host}"
            if target.path and _folder_in_use(target.path):
                raise LockBusy(
                    f"the ClickHouse folder {target.path} of target '{target_name}' is open "
                    "in another process; let it finish, then rerun"
                ) from None
            raise WarehouseError(
                f"cannot open ClickHouse target '{target_name}' ({where}): "
                f"{short_error(exc, self._secret)}"
            ) from None

    # --- driver primitives ------------------------------------------------------------
    def _run(self, sql: str, params: Any, want_rows: bool) -> tuple[list[tuple[Any, ...]], int]:
        try:
            return self.client.run(bind(sql, params), want_rows)
        except Exception as exc:  # noqa: BLE001 - one sentence naming the target
            raise WarehouseError(
                f"ClickHouse target '{self.target_name}': {short_error(exc, self._secret)}"
            ) from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params, False)

    def _written(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params, False)[1]

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(sql, params, True)[0]

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self._execute(sql, row)

    def _in_list(self) -> str:
        return "IN %s"

    def _type_aliases(self) -> dict[str, ColumnType]:
        return {"string": ColumnType.TEXT}

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """No transactions in ClickHouse: a block whose ledger writes (files, cursors)
        are held back and written when everything in it succeeded."""
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
        if self._depth:
            self._last.append(write)
        else:
            write()

    # --- tables -----------------------------------------------------------------------
    def ensure_bookkeeping(self) -> None:
        self._execute(f"CREATE DATABASE IF NOT EXISTS {quote(BOOKKEEPING_SCHEMA)}")
        for table, (columns, keys) in _BOOKKEEPING.items():
            cols = [c.split(" ") for c in columns.split(", ")]
            ddl = ", ".join(
                f"{n} {_SQL_TYPES[k]}" + (" DEFAULT now64(6)" if k == "ts" else "") for n, k in cols
            )
            order = ", ".join(n for n, _ in cols[:keys])
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self._t(BOOKKEEPING_SCHEMA, table)} ({ddl}) "
                f"ENGINE = ReplacingMergeTree ORDER BY ({order}) {TABLE_SETTINGS}"
            )

    _KEYS = {
        **SqlFamilyWarehouse._KEYS,
        **{t: tuple(c.split(" ")[0] for c in cols.split(", ")[:k]) for t, (cols, k) in _BOOKKEEPING.items()},
    }  # fmt: skip

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._execute(f"CREATE DATABASE IF NOT EXISTS {quote(schema)}")
        cols = ", ".join(self._column_sql(n, k) for n, k in columns.items())
        self._execute(
            f"CREATE TABLE {self._t(schema, table)} ({cols}) "
            f"ENGINE = ReplacingMergeTree ORDER BY id {TABLE_SETTINGS}"
        )

    def _types(self, schema: str, table: str) -> dict[str, str]:
        rows = self._fetchall(
            "SELECT name, type FROM system.columns WHERE database = %s AND table = %s "
            "ORDER BY position",
            (schema, table),
        )
        return {str(n): str(t) for n, t in rows}

    @contextmanager
    def _stage(
        self, types: Mapping[str, str], columns: Sequence[str], rows: Rows
    ) -> Iterator[tuple[str, dict[str, str]]]:
        """Rows into a Memory table through Arrow (the bulk path); yields its name and,
        per column, the SQL reading it typed like the target (timestamps are staged as
        ISO text and parsed here)."""
        stage = self._t(BOOKKEEPING_SCHEMA, f"_stage_{uuid.uuid4().hex[:12]}")
        arrays, ddl, read = [], [], {}
        for i, name in enumerate(columns):
            base = types.get(name, "String").removeprefix("Nullable(").removesuffix(")")
            values = [r[i] for r in rows]
            q = quote(name)
            if base.startswith("DateTime64"):
                values = [v.isoformat() if isinstance(v, datetime) else v for v in values]
                read[name] = f"parseDateTime64BestEffortOrNull(s.{q}, 6, 'UTC')"
                base = "String"
            else:
                read[name] = f"s.{q}"
            arrays.append(pa.array(values, type=_ARROW.get(base, pa.string())))
            ddl.append(f"{q} Nullable({base})")
        self._execute(f"CREATE TABLE {stage} ({', '.join(ddl)}) ENGINE = Memory")
        try:
            try:
                self.client.insert(stage, pa.Table.from_arrays(arrays, names=list(columns)))
            except Exception as exc:  # noqa: BLE001
                raise WarehouseError(
                    f"ClickHouse target '{self.target_name}': {short_error(exc, self._secret)}"
                ) from None
            yield stage, read
        finally:
            self._execute(f"DROP TABLE IF EXISTS {stage}")

    # --- writes: inserts only ---------------------------------------------------------
    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        if not rows:
            return 0
        t = self._t(schema, table)
        types = self._types(schema, table)
        with self._stage(types, columns, rows) as (stage, read):
            n = self._fill_nulls(t, types, stage, read) if fill_nulls else 0
            cols = ", ".join(quote(c) for c in columns)
            return n + self._written(
                f"INSERT INTO {t} ({cols}) SELECT {', '.join(read[c] for c in columns)} "
                f"FROM {stage} AS s WHERE s.id NOT IN (SELECT id FROM {t})"
            )

    def _fill_nulls(self, t: str, types: Mapping[str, str], stage: str, read: dict[str, str]) -> int:
        """A new version of each row that has a NULL the staged row fills."""
        fill = [c for c in read if c not in ("id", "uuid_ts", RESCUED_COLUMN)]
        if not fill:
            return 0
        select = [
            f"coalesce(t.{quote(c)}, {read[c]})" if c in fill else f"t.{quote(c)}" for c in types
        ]
        gaps = " OR ".join(f"(t.{quote(c)} IS NULL AND {read[c]} IS NOT NULL)" for c in fill)
        return self._written(
            f"INSERT INTO {t} ({', '.join(quote(c) for c in types)}) SELECT {', '.join(select)} "
            f"FROM {t} AS t INNER JOIN {stage} AS s ON s.id = t.id WHERE {gaps}"
        )

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        """New ids and rows that differ from the current version; columns not given (a
        property turned off) keep the current version's values."""
        if not rows:
            return 0
        t = self._t(schema, table)
        types = self._types(schema, table)
        with self._stage(types, columns, rows) as (stage, read):
            select = [read.get(c, f"t.{quote(c)}") for c in types]
            differs = " OR ".join(
                f"{read[c]} IS DISTINCT FROM t.{quote(c)}" for c in columns if c not in ("id", "uuid_ts")
            )
            return self._written(
                f"INSERT INTO {t} ({', '.join(quote(c) for c in types)}) SELECT {', '.join(select)} "
                f"FROM {stage} AS s LEFT JOIN {t} AS t ON t.id = s.id "
                f"WHERE t.id IS NULL" + (f" OR {differs}" if differs else "")
            )

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        if not ids:
            return 0
        self.insert_new_rows(
            schema, table, ("id", "received_at", "uuid_ts", "_deleted_at"), [(i, at, at, at) for i in ids]
        )
        types = self._types(schema, table)
        select = [
            f"parseDateTime64BestEffort({sql_value(at)}, 6, 'UTC')" if c == "_deleted_at" else quote(c)
            for c in types
        ]
        self._execute(
            f"INSERT INTO {self._t(schema, table)} ({', '.join(quote(c) for c in types)}) "
            f"SELECT {', '.join(select)} FROM {self._t(schema, table)} "
            "WHERE _deleted_at IS NULL AND id IN %s",
            (list(ids),),
        )
        return len(ids)

    def insert_plain(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        skip_existing: bool = False,
    ) -> None:
        """Bookkeeping rows through the bulk path; skip_existing leaves out the rows whose
        key is there already (NULL matches NULL: transform_null_in)."""
        if not rows:
            return
        t = self._t(schema, table)
        with self._stage(self._types(schema, table), columns, rows) as (stage, read):
            where = ""
            if skip_existing:
                keys = self._KEYS.get(table, tuple(columns))
                mine = ", ".join(read[k] for k in keys)
                where = f" WHERE ({mine}) NOT IN (SELECT {', '.join(quote(k) for k in keys)} FROM {t})"
            self._execute(
                f"INSERT INTO {t} ({', '.join(quote(c) for c in columns)}) "
                f"SELECT {', '.join(read[c] for c in columns)} FROM {stage} AS s{where}"
            )

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        self._at_end(lambda: SqlFamilyWarehouse.record_files(self, schema, files))

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        """A new version of the (schema, collection) row, written last in its block."""
        self._at_end(
            lambda: self._execute(
                f"INSERT INTO {self._t(BOOKKEEPING_SCHEMA, 'cursors')} "
                "(schema_name, collection, cursor) VALUES (%s, %s, %s)",
                (schema, collection, cursor),
            )
        )

    # --- profiles (users, accounts) -----------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """Latest value per trait by event time (ties: the larger id), for `keys`, from
        all their rows; a new version only for profiles whose values differ, so a replay
        changes nothing. A trait whose newest value was rescued is NULL, the value in the
        profile's _rescued_data; traits not synced keep the current version's values."""
        if not keys:
            return 0
        target, source = self._t(schema, spec.table), self._t(schema, spec.source_table)
        zero = f"toDateTime64(0, 6, {literal('UTC')})"
        order = (
            f'(isNotNull("timestamp"), ifNull("timestamp", {zero}), '
            f"isNotNull(received_at), ifNull(received_at, {zero}), id)"
        )
        r = spec.rescued_column
        values, pairs = [], []
        for c in spec.trait_columns:
            q = quote(c)
            if r is None:
                values.append(f"argMaxIf({q}, {order}, {q} IS NOT NULL) AS {q}")
                continue
            has = f"JSONHas(ifNull({quote(r)}, '{{}}'), {literal(c)})"
            kept = f"argMaxIf({q} IS NULL, {order}, {q} IS NOT NULL OR {has})"
            values.append(f"if({kept}, NULL, argMaxIf({q}, {order}, {q} IS NOT NULL)) AS {q}")
            raw = f"argMaxIf(JSONExtractRaw(ifNull({quote(r)}, '{{}}'), {literal(c)}), {order}, {has})"
            pairs.append(f"if({kept}, concat({literal(_json_key(c))}, {raw}), '')")
        if r is not None:
            body = f"arrayStringConcat(arrayFilter(x -> x != '', [{', '.join(pairs)}]), ',')"
            values.append(f"nullIf(concat('{{', {body}, '}}'), '{{}}') AS {quote(r)}" if pairs else f"NULL AS {quote(r)}")
        new = (
            f"SELECT {quote(spec.key_column)} AS id, {', '.join([*values, 'max(received_at) AS received_at'])} "
            f"FROM {source} WHERE {quote(spec.key_column)} IN %s GROUP BY {quote(spec.key_column)}"
        )
        compared = [*spec.trait_columns, "received_at", *([r] if r else [])]
        types = self._types(schema, spec.table)
        select = [
            "now64(6)" if c == "uuid_ts" else f"n.{quote(c)}" if c in compared or c == "id" else f"c.{quote(c)}"
            for c in types
        ]
        differs = " OR ".join(f"n.{quote(c)} IS DISTINCT FROM c.{quote(c)}" for c in compared)
        self._execute(
            f"INSERT INTO {target} ({', '.join(quote(c) for c in types)}) SELECT {', '.join(select)} "
            f"FROM ({new}) AS n LEFT JOIN {target} AS c ON c.id = n.id "
            f"WHERE c.id IS NULL OR {differs}",
            (list(keys),),
        )
        return len(keys)

    # --- locks ------------------------------------------------------------------------
    def lock(self, schema: str) -> Any:
        return self._lease(f"sync:{schema}", f"another sync is loading schema '{schema}'")

    def retl_lock(self, model: str) -> Any:
        return self._lease(f"retl:{model}", f"another reverse-ETL run of model '{model}' holds the lock")

    def _lease(self, name: str, busy: str) -> Any:
        """Embedded: the engine's lock on the folder is the lock (one process). A server
        has no lock primitive: a claim row with a lease; the earliest live claim wins,
        read back after a pause (README says what a race can still do)."""
        if self.target.path:
            return nullcontext()
        return self._claim(name, busy)

    @contextmanager
    def _claim(self, name: str, busy: str) -> Iterator[None]:
        self.ensure_bookkeeping()
        locks = self._t(BOOKKEEPING_SCHEMA, "locks")
        self._execute(
            f"INSERT INTO {locks} (name, holder, claimed_at, expires_at) SELECT %s, %s, now64(6), "
            f"now64(6) + INTERVAL {int(self.target.lock_lease_minutes)} MINUTE",
            (name, self._holder),
        )
        try:
            time.sleep(self.target.lock_settle_seconds)
            first = self._fetchall(
                f"SELECT holder FROM {locks} WHERE name = %s AND expires_at > now64(6) "
                "ORDER BY claimed_at, holder LIMIT 1",
                (name,),
            )
            if first and first[0][0] != self._holder:
                raise LockBusy(f"{busy} on target '{self.target_name}'; wait for it to finish")
            yield
        finally:
            self._execute(f"DELETE FROM {locks} WHERE name = %s AND holder = %s", (name, self._holder))

    # --- reverse ETL ------------------------------------------------------------------
    def _retl_row_hash(self, alias: str) -> str:
        return f"lower(hex(MD5(formatRow('JSONEachRow', {alias}.*))))"


def _json_key(name: str) -> str:
    """`"name":` as JSON writes it (the names are Sluice's own column names)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '":'


def _folder_in_use(path: str) -> bool:
    """True when another process holds the engine's lock on the folder (its status file;
    chdb reports only that the engine did not start)."""
    import fcntl

    try:
        with open(os.path.join(path, "status"), "a") as status:
            fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(status, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
