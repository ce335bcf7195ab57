"""One sync of a cloud object source into one schema: each collection's pages upsert
by id, and the collection's cursor is saved in the same transaction as the rows it
covers, so a crash between pages resumes with no duplicate and no gap."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import orjson

from loader.rules.naming import snake_case
from loader.rules.normalize import (
    DELETED_COLUMN,
    RESCUED_COLUMN,
    Row,
    TableChunk,
    object_id,
    object_row,
)
from loader.rules.schema import ColumnType
from loader.rules.selective_sync import SyncFilter
from loader.sources.cloud.engine import Connector, ObjectPage
from loader.sync.pipeline import SyncReport, _now, recorded_run
from loader.sync.table_writer import TableWriter
from loader.warehouses.warehouse import Warehouse

OBJECT_FIXED: dict[str, ColumnType] = {
    "id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
    DELETED_COLUMN: ColumnType.TIMESTAMP,
    RESCUED_COLUMN: ColumnType.TEXT,
}
DEFAULT_BATCH_OBJECTS = 5_000


class ObjectLoader:
    def __init__(
        self,
        warehouse: Warehouse,
        sync_filter: SyncFilter | None = None,
        batch_objects: int = DEFAULT_BATCH_OBJECTS,
    ) -> None:
        self.warehouse = warehouse
        self.writer = TableWriter(warehouse)
        self.sync_filter = sync_filter if sync_filter is not None else SyncFilter(None)
        self.batch_objects = batch_objects

    def sync(
        self, connector: Connector, schema: str, collections: list[str] | None = None
    ) -> SyncReport:
        wh = self.warehouse
        with recorded_run(wh, schema, connector.name) as report:
            with wh.lock(schema):
                if not self.sync_filter.source_enabled:
                    decision = self.sync_filter.table_decision("*")
                    report.source_turned_off = f"line {decision.line}: {decision.reason}"
                    return report
                self.writer.refresh(schema)
                begin = getattr(connector, "begin_sync", None)
                if begin is not None:
                    begin()  # the source's sync budget counts from here
                cursors = wh.read_cursors(schema)
                for collection in collections or list(connector.collections):
                    self._collection(connector, schema, collection, cursors, report)
        return report

    def _collection(
        self,
        connector: Connector,
        schema: str,
        collection: str,
        cursors: dict[str, str],
        report: SyncReport,
    ) -> None:
        table = snake_case(collection)
        f = self.sync_filter
        if not f.table_synced(table):
            self._record_turned_off(schema, report)
            return
        keep = f.columns_kept(table) if f.active else None
        saved = cursors.get(collection)
        cursor = orjson.loads(saved) if saved else None
        rows: dict[str, Row] = {}
        deleted: set[str] = set()
        last: dict | None = None
        for page in connector.pages(collection, cursor):
            fetched_at = _now().isoformat()
            self._add(page, table, fetched_at, keep, rows, deleted)
            report.lines_read += len(page.objects)
            last = page.cursor
            if len(rows) >= self.batch_objects:
                self._commit(schema, table, collection, rows, deleted, last, report)
                rows, deleted = {}, set()
        if last is not None:
            self._commit(schema, table, collection, rows, deleted, last, report)

    @staticmethod
    def _add(
        page: ObjectPage,
        table: str,
        fetched_at: str,
        keep: dict[str, bool] | None,
        rows: dict[str, Row],
        deleted: set[str],
    ) -> None:
        """Later versions of an object replace earlier ones, also within a batch."""
        for obj in page.objects:
            oid = object_id(obj)
            rows[oid] = object_row(table, obj, fetched_at, oid in page.deleted, keep)
            deleted.discard(oid)
        deleted.update(i for i in page.deleted if i not in rows)

    def _commit(
        self,
        schema: str,
        table: str,
        collection: str,
        rows: dict[str, Row],
        deleted: set[str],
        cursor: dict,
        report: SyncReport,
    ) -> None:
        wh = self.warehouse
        uuid_ts = _now().isoformat()
        try:
            with wh.transaction():
                batch = list(rows.values())
                columns, out = self.writer.prepare(
                    schema, table, [TableChunk.of_rows(batch)], OBJECT_FIXED, uuid_ts, report
                )
                columns, out = self._without_turned_off(table, columns, out)
                if out:
                    upserted = wh.upsert_rows(schema, table, columns, out)
                    report.rows_loaded[table] = report.rows_loaded.get(table, 0) + upserted
                if deleted:
                    wh.mark_deleted(schema, table, sorted(deleted), uuid_ts)
                report.deleted_objects += len(deleted) + sum(
                    1 for r in batch if r.values.get(DELETED_COLUMN)
                )
                wh.save_cursor(schema, collection, orjson.dumps(cursor).decode())
                self._record_turned_off(schema, report)
        except Exception:
            self.writer.refresh(schema)
            raise

    def _without_turned_off(
        self, table: str, columns: list[str], rows: list[tuple[Any, ...]]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The upsert writes every column it is given, and the writer lays out every
        column the table has; a column turned off in selective sync is absent from the
        batch, so it would be written as NULL over the value loaded before it was turned
        off. Leave it out of the upsert instead: existing data stays untouched."""
        f = self.sync_filter
        if not f.active:
            return columns, rows
        kept = [
            i
            for i, c in enumerate(columns)
            if c in OBJECT_FIXED or c == "uuid_ts" or f.column_synced(table, c)
        ]
        if len(kept) == len(columns):
            return columns, rows
        pick = itemgetter(*kept)  # `kept` holds id and received_at at least: tuples out
        return [columns[i] for i in kept], [pick(r) for r in rows]

    def _record_turned_off(self, schema: str, report: SyncReport) -> None:
        names = self.sync_filter.new_turned_off_names()
        if names:
            self.warehouse.record_turned_off(schema, names)
            report.turned_off.extend(f"{t}.{c}" if c else t for t, c in names)
