"""ClickHouse, a driver on Warehouse: embedded (chdb, a folder) or a server
(clickhouse-connect over HTTP); its SQL is in clickhouse_sql.py.

No transactions and no UPDATE ... FROM: every write is an INSERT (a changed row is a new
version in a ReplacingMergeTree on the key), every read runs with FINAL, inserts are
idempotent anti-joins, and a block's ledger writes (files, cursors) run last, once the
rest succeeded. What that guarantees: README, "ClickHouse: what exactly-once means there".
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from loader.config.targets import ClickHouseTarget
from loader.rules.schema import ColumnType
from loader.warehouses import clickhouse_sql as ch
from loader.warehouses import statements as st
from loader.warehouses.base import LockBusy, ProfileSpec, Rows
from loader.warehouses.base import WarehouseError as Error
from loader.warehouses.warehouse import B, Warehouse

_ARROW = {"Bool": pa.bool_(), "Int64": pa.int64(), "Float64": pa.float64()}
Result = tuple[list[tuple[Any, ...]], int]  # (rows, rows written)


def short_error(exc: BaseException, secret: str | None = None) -> str:
    """ClickHouse's message without its code, exception class or secret: one clause."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    refused = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)  # the socket's own words
    text = refused.group(1) if refused else re.sub(r"^.*?DB::Exception: ", "", text)
    text = re.sub(r"\s*\(version [^)]*\)|\. \([A-Z_]+\)$", "", text).rstrip(". ")
    return text.replace(secret, "***") if secret else text


class _Embedded:
    """chdb: the engine in this process, its data in a folder the engine locks (one
    process at a time; one folder per process)."""

    def __init__(self, path: str) -> None:
        import chdb

        os.makedirs(path, exist_ok=True)
        self.conn = chdb.connect(path)
        for name, value in ch.SETTINGS.items():
            self.conn.query(f"SET {name} = {ch.sql_value(value)}")

    def run(self, sql: str, rows: bool) -> Result:
        result = self.conn.query(sql, "Arrow" if rows else "CSV")
        if not rows:
            return [], int(result.rows_written())
        data = result.bytes()
        if not data:
            return [], 0
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        return list(zip(*(c.to_pylist() for c in table.columns), strict=True)), 0

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        d = ClickHouseWarehouse.dialect
        cols = ", ".join(map(d.ident, data.column_names))
        into = f"INSERT INTO {d.table_ref(database, table)} ({cols})"
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

        # The driver also logs a failed connection; the one sentence raised says it.
        logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
        self.client = clickhouse_connect.get_client(
            host=t.host,
            port=t.port or (8443 if t.secure else 8123),
            username=t.user,
            password=t.password.get_secret_value() if t.password else "",
            database=t.database,
            secure=t.secure,
            connect_timeout=t.connect_timeout,
            settings=ch.SETTINGS,
        )

    def run(self, sql: str, rows: bool) -> Result:
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


class ClickHouseWarehouse(Warehouse):
    capabilities = ch.CAPABILITIES
    dialect = ch.ClickHouseDialect()

    def __init__(self, target_name: str, target: ClickHouseTarget) -> None:
        self.target_name = target_name
        self.target = target
        self.lease_minutes = target.lock_lease_minutes
        self._secret = target.password.get_secret_value() if target.password else None
        self._known: dict[tuple[str, str], dict[str, str]] = {}
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
            hint = "" if target.path else "; check host, port, user and password in profiles.yml"
            raise Error(
                f"cannot open ClickHouse target '{target_name}' ({where}): "
                f"{short_error(exc, self._secret)}{hint}"
            ) from None

    # --- driver primitives ------------------------------------------------------------
    def _run(self, sql: str, params: Mapping[str, Any] | None, rows: bool) -> Result:
        try:
            return self.client.run(ch.bind(sql, params), rows)
        except Exception as exc:  # noqa: BLE001 - one sentence naming the target
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> Error:
        return Error(f"ClickHouse target '{self.target_name}': {short_error(exc, self._secret)}")

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self._run(sql, params, False)[1]

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._run(sql, params, True)[0]

    def close(self) -> None:
        self.client.close()

    def transaction(self) -> AbstractContextManager[None]:
        """No transactions in ClickHouse: the ledger writes (files, cursors) of a block
        are held back and written once everything in it succeeded."""
        return self._joined(self._deferring)

    def columns_sql(self, schema: str, table: str | None = None) -> tuple[str, Any]:
        # system.columns directly: information_schema's view over it reads every table.
        where = "" if table is None else " AND table = %(table)s"
        return (
            "SELECT table, name, type FROM system.columns WHERE database = %(schema)s"
            f"{where} ORDER BY table, position",
            {"schema": schema, "table": table},
        )

    def _every(self, schema: str, table: str) -> dict[str, str]:
        """The table's columns in order, with their types (Nullable unwrapped); kept
        until Sluice changes the table."""
        if (schema, table) not in self._known:
            found = {c: ch.unwrap(t) for _, c, t in self._columns(schema, table)}
            if not found:
                return found
            self._known[(schema, table)] = found
        return self._known[(schema, table)]

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._known.pop((schema, table), None)
        super().add_columns(schema, table, columns)

    @contextmanager
    def stage(self, schema: str, table: str, columns: Sequence[str], rows: Rows) -> Iterator[str]:
        """Rows into a Memory table in _sluice through Arrow (the bulk path), read back
        typed like the target's columns (timestamps are staged as ISO text)."""
        types, i = self._every(schema, table), self.dialect.ident
        work = f"_stage_{uuid.uuid4().hex[:12]}"
        name = self._b(work)
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
            ddl.append(f"{i(n)} Nullable({kind})")
        self.execute(f"CREATE TABLE {name} ({', '.join(ddl)}) ENGINE = Memory")
        try:
            try:
                self.client.insert(B, work, pa.Table.from_arrays(arrays, names=list(columns)))
            except Exception as exc:  # noqa: BLE001
                raise self._error(exc) from None
            yield f"(SELECT {', '.join(read)} FROM {name})"
        finally:
            self.execute(f"DROP TABLE IF EXISTS {name}")

    @contextmanager
    def hold(self, name: str, busy: str) -> Iterator[None]:
        """Embedded: the engine's lock on the folder is the lock. A server has none: a
        claim row with a lease, and the earliest live claim, read back after
        lock_settle_seconds, wins (README: what a race can still do)."""
        if self.target.path:
            yield
            return
        self._ensure_tables(("locks",))
        locks, p = self._b("locks"), {"name": name, "me": uuid.uuid4().hex}
        self.execute(ch.claim(self.dialect, locks, self.lease_minutes), p)
        try:
            time.sleep(self.target.lock_settle_seconds)
            first = self.fetchall(ch.first_claim(self.dialect, locks), p)
            if first and first[0][0] != p["me"]:
                raise LockBusy(
                    f"{busy} (a crashed run's claim expires after {self.lease_minutes} minutes)"
                )
            yield
        finally:
            self.execute(f"DELETE FROM {locks} WHERE name = %(name)s AND holder = %(me)s", p)

    # --- tables: a database per schema, ReplacingMergeTree on the key ----------------
    def ensure_schema(self, schema: str) -> None:
        self.execute(f"CREATE DATABASE IF NOT EXISTS {self.dialect.schema_ref(schema)}")

    def _ensure_tables(self, names: Sequence[str]) -> None:
        if self.target.path:  # one process: a stage still there is a crashed run's
            for (left,) in self.fetchall(ch.LEFT_STAGES):
                self.execute(f"DROP TABLE IF EXISTS {self._b(str(left))}")
        super()._ensure_tables(names)

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._known.pop((schema, table), None)
        super().create_table(schema, table, columns)

    # --- writes: inserts only -----------------------------------------------------------
    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        if not rows:
            return 0
        d, t = self.dialect, self.table_ref(schema, table)
        with self.stage(schema, table, columns, rows) as staged:
            filled = 0
            if fill_nulls and st.fillable(columns):
                every = list(self._every(schema, table))
                filled = self.execute(ch.fill_versions(d, t, staged, every, columns))
            return filled + self.execute(ch.insert_new(d, t, staged, columns))

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        if not rows:
            return 0
        d, t = self.dialect, self.table_ref(schema, table)
        with self.stage(schema, table, columns, rows) as staged:
            every = list(self._every(schema, table))
            return self.execute(ch.upsert_versions(d, t, staged, every, columns))

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        if not ids:
            return 0
        stamp = datetime.fromisoformat(at.replace("Z", "+00:00"))
        columns = ("id", "received_at", "uuid_ts", "_deleted_at")
        self.insert_new_rows(schema, table, columns, [(i, stamp, stamp, stamp) for i in ids])
        t, every = self.table_ref(schema, table), list(self._every(schema, table))
        for chunk in self._chunks(ids):
            self.execute(ch.deleted_versions(self.dialect, t, every), {"at": stamp, "ids": chunk})
        return len(ids)

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        self._defer(lambda: Warehouse.record_files(self, schema, files), last=True)

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        """A new version of the (schema, collection) row, written last in its block."""
        self._defer(
            lambda: self.execute(
                f"INSERT INTO {self._b('cursors')} (schema_name, collection, cursor) "
                "VALUES (%(s)s, %(c)s, %(v)s)",
                {"s": schema, "c": collection, "v": cursor},
            ),
            last=True,
        )

    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        source = self.table_ref(schema, spec.source_table)
        target = self.table_ref(schema, spec.table)
        every = list(self._every(schema, spec.table))
        sql = ch.profile_versions(self.dialect, source, target, spec, every)
        for chunk in self._chunks(keys):
            self.execute(sql, {"keys": chunk})
        return len(keys)

    # --- reverse ETL: snapshot and sent rows are versions too -------------------------
    def _retl_apply(self, model: str, where: str, p: dict[str, Any]) -> None:
        """New versions of the snapshot rows, then the removed ones deleted (a crash
        between leaves a removal to send again)."""
        changes, snaps = self._retl_table("changes", model), self._b("retl_snapshots")
        p = {**p, "model": model}
        self.execute(ch.snapshot_versions(self.dialect, snaps, changes, where), p)
        self.execute(ch.snapshot_removals(snaps, changes, where), p)

    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        now = datetime.now(timezone.utc)
        names = ("model", "key", "op", "row_hash", "record_id", "run_id", "sent_at")
        rows = [(model, key, op, h, rid, run_id, now) for key, op, h, rid in sent]
        self.insert_plain(B, "retl_sent", names, rows)

    def retl_write_table(
        self, schema: str, table: str, key: str, columns: dict[str, Any], rows: Any, keys: Any
    ) -> None:
        d = self.dialect
        if table not in self.read_schema(schema):
            self.ensure_schema(schema)
            cols = ", ".join(f"{d.ident(n)} {d.column_type(n, k)}" for n, k in columns.items())
            target, options = self.table_ref(schema, table), d.table_options([key])
            self.execute(f"CREATE TABLE {target} ({cols}){options}")
        super().retl_write_table(schema, table, key, columns, rows, keys)
