"""Native mode: the warehouse parses the archive's lines and runs the Segment rules as
SQL; Sluice plans (names, types, which rows the SQL may load) and commits each batch
with its file records, as the reference path does.

A batch:
1. its files' raw lines into the warehouse (the adapter's `native_lines`);
2. SQL checks each line (`statements.messages`) and merges each table's JSON structure;
3. the plan names every path with the reference rules and marks the rows the SQL cannot
   load exactly (collisions, reserved names, shapes it does not read alike); those, with
   every copy of their messageId, are read by the reference path (few, in real archives);
4. each new column's evidence: the SQL's first lines per file, the reference rows', and
   the witness lines normalised by the reference rules; the tables evolve;
5. rows with a value their column would rescue go to the reference path too; the rest
   are inserted by one anti-join INSERT ... SELECT per table, in the batch's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from loader.encode.file_reader import ReadOptions, _unreadable
from loader.native import statements as ns
from loader.native.lines import as_text, lines_of
from loader.native.plan import (
    KIND_TABLE,
    Leaf,
    Section,
    Seen,
    body_section,
    columns_of,
    context_section,
    evidence_in_order,
    merge_structure,
)
from loader.native.reference import LineRows, read_lines, seen_in
from loader.rules.messages import Reject, parse_line, storable_text
from loader.rules.naming import snake_case
from loader.rules.normalize import TableRows, event_table_name, fixed_columns, rows_into
from loader.rules.schema import ColumnType
from loader.sources.archive import ArchiveFile, file_text
from loader.sync.pipeline import (
    PROFILES,
    Loader,
    SyncReport,
    _Batch,
    _check_stop,
    _now,
    _offered_ids,
    _stoppable,
)
from loader.warehouses import statements as st
from loader.warehouses.warehouse import Warehouse


@dataclass
class RawBatch:
    """Whole files' lines (each file's text split at newlines: item n is line n + 1)."""

    urls: list[str] = field(default_factory=list)
    parts: list[pa.Array] = field(default_factory=list)
    to_strip: list[pa.Array] = field(default_factory=list)
    # Lines that are not blank, per file (what `_sluice.loaded_files` records).
    line_counts: list[int] = field(default_factory=list)
    breaks: list[Reject] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unread: set[str] = field(default_factory=set)

    @property
    def lines(self) -> int:
        return sum(self.line_counts)

    def arrow(self) -> pa.Table:
        """file_no, line_no, txt (the line, NULL where it is not UTF-8), raw (only
        those lines' bytes), strip (whether the line has whitespace to strip)."""
        batches = [
            pa.record_batch(
                {
                    "file_no": pa.array(np.full(len(lines), n, dtype=np.int32)),
                    "line_no": pa.array(np.arange(1, len(lines) + 1, dtype=np.int64)),
                    "txt": text,
                    "raw": raw,
                    "strip": strip,
                }
            )
            for n, (lines, strip) in enumerate(zip(self.parts, self.to_strip, strict=True))
            for text, raw in [as_text(lines)]
        ]
        # In chunks (no copy): DuckDB scans an Arrow table's chunks in parallel, and one
        # chunk of the batch's lines would be scanned by one thread.
        whole = pa.Table.from_batches(batches, _LINES_SCHEMA)
        return pa.Table.from_batches(whole.to_batches(max_chunksize=LINES_CHUNK), _LINES_SCHEMA)


LINES_CHUNK = 16_384
NATIVE_BATCH_LINES = 100_000
_LINES_SCHEMA = pa.schema(
    [
        ("file_no", pa.int32()),
        ("line_no", pa.int64()),
        ("txt", pa.large_string()),
        ("raw", pa.large_binary()),
        ("strip", pa.bool_()),
    ]
)


@dataclass
class TablePlan:
    """One table's native rows: which messages (SQL condition) and their columns."""

    table: str
    where: str
    columns: dict[str, list[Leaf]]
    sections: list[Section]
    values: ns.Values | None = None
    # The messages it takes, as `where` says: (call type, event), None for any event.
    calls: set[tuple[str, str | None]] = field(default_factory=set)

    @property
    def vals(self) -> ns.Values:
        assert self.values is not None
        return self.values

    def rows(self, where: str) -> str:
        """FROM the table's plain messages (`m`) with their extracted values (`v`)."""
        return (
            f"FROM {ns.PLAIN} AS m JOIN {self.vals.name} AS v USING (file_no, line_no) "
            f"WHERE {where}"
        )


class NativeLoader(Loader):
    """A Loader whose batches the warehouse reads and normalises itself."""

    # Each batch runs some forty statements whatever its size, and a batch of fewer
    # lines than a DuckDB row group (122,880) is scanned by one thread: 1M events load at
    # 9,400 events/s in batches of 20,000, 16,700 of 100,000, 20,800 of 250,000 (peak
    # RSS 896 MB at 100,000, 1,226 MB at 250,000).
    default_batch_lines = NATIVE_BATCH_LINES

    def __init__(self, warehouse: Warehouse, *args: Any, **kwargs: Any) -> None:
        warehouse.refuse_native_mode()
        super().__init__(warehouse, *args, **kwargs)

    def commit_files(self, schema: str, todo: list[ArchiveFile], report: SyncReport) -> None:
        self._schema = schema
        self._keys.update({f.url: f.ledger_key for f in todo})
        _stoppable[0] += 1
        # The previous batch's messageIds: a re-send of one is dropped from every table,
        # as the reference path drops it (Loader._add_file's `recent`).
        self.warehouse.execute(f"CREATE OR REPLACE TEMP TABLE {ns.RECENT} (mid VARCHAR)")
        try:
            for raw in self._raw_batches(todo):
                _check_stop()
                self._commit_native(schema, raw, report)
        finally:
            _stoppable[0] -= 1

    def _raw_batches(self, todo: list[ArchiveFile]) -> Iterator[RawBatch]:
        batch = RawBatch()
        progress = self._progress
        for file in todo:
            _check_stop()
            try:
                text, broken = file_text(file.url, self.storage_options)
            except OSError as exc:
                failure = {"file": file.url, "line": None, "error": _unreadable(exc)}
                batch.failed.append({**failure, "partial": False})
                batch.unread.add(file.url)
                text, broken = b"", None
            if broken is not None:
                where = {"file": broken.file, "line": broken.line, "error": broken.reason}
                batch.failed.append({**where, "partial": True})
                batch.breaks.append(
                    Reject(broken.file, broken.line, storable_text(broken.raw), broken.reason)
                )
            lines, to_strip, count = lines_of(text)
            batch.urls.append(file.url)
            batch.parts.append(lines)
            batch.to_strip.append(to_strip)
            # Lines that are not blank, as the reference counts a batch's lines.
            batch.line_counts.append(count)
            progress.files_read += 1
            progress.bytes_read += file.size
            self._tell()
            if batch.lines >= self.batch_lines:
                yield batch
                batch = RawBatch()
        if batch.urls:
            yield batch

    # -- one batch ---------------------------------------------------------------------

    def _commit_native(self, schema: str, raw: RawBatch, report: SyncReport) -> None:
        wh = self.warehouse
        options = self.read_options()
        wh.native_lines(ns.LINES, raw.arrow())
        raw.parts, raw.to_strip = [], []  # the warehouse has them now
        wh.execute(ns.messages())
        self._progress.lines_read += raw.lines
        plans = self._plan_tables(options)
        self._hand_back(plans)
        first = self._reference(raw, options)
        uuid_ts = _now().isoformat()
        tables_before, columns_before = len(report.new_tables), len(report.new_columns)
        rows_before = dict(report.rows_loaded)
        batch = _Batch()
        batch.files = [
            (u, n) for u, n in zip(raw.urls, raw.line_counts, strict=True) if u not in raw.unread
        ]
        try:
            with wh.transaction():
                types = self._evolve(schema, raw, plans, first, options, report)
                written = [p for p in plans if p.table in types]
                self._refuse_misfits(written, types)
                second = self._reference(raw, options, after=first)
                for reads in (first, second):
                    part = _Batch(recent=self._recent_of(reads))
                    for lines in reads:
                        self._add_file(lines.read, part)
                    for table, chunks in part.by_table.items():
                        self._load_table(schema, table, chunks, uuid_ts, report)
                    _absorb(batch, part)
                native_rows = self._insert_native(schema, written, types, uuid_ts, report)
                self._profiles(schema, batch, native_rows, options, report)
                if self._record_files:
                    wh.record_files(schema, [(self._key(u), n) for u, n in batch.files])
                batch.rejects.extend(raw.breaks)
                wh.record_rejects(schema, self._keyed_rejects(batch.rejects))
                self.record_turned_off(schema, report)
        except Exception:
            self.writer.refresh(schema)
            raise
        batch.lines = raw.lines
        batch.failed = raw.failed
        batch.duplicates += self._native_duplicates()
        self._remember(first, second)
        for name in [p.vals.name for p in plans] + [ns.MESSAGES, ns.PLAIN]:
            wh.execute(f"DROP TABLE IF EXISTS {name}")
        wh.native_lines_done(ns.LINES)
        self.committed(schema, batch, report, (tables_before, columns_before, rows_before))

    def _plan_tables(self, options: ReadOptions) -> list[TablePlan]:
        """Each table the batch's plain lines write, from their merged structures; the
        rows the SQL cannot load exactly are marked for the reference path."""
        wh = self.warehouse
        f = options.row_filter
        found = wh.fetchall(ns.structures())

        # One merged structure per table (several events can share one, as
        # "Order Completed" and "order_completed" do; tracks takes every track's context).
        structure: dict[str, list[Any]] = {}
        kind_of: dict[str, str] = {}
        where_of: dict[str, list[str]] = defaultdict(list)
        calls_of: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
        event_rows: list[tuple[str, str, str]] = []
        for kind, event, context_json, body_json in found:
            context, body = _root(context_json), _root(body_json)
            if kind == "track":
                table = event_table_name(event)
                event_rows.append((event, snake_case(event), table))
                where_of[table].append(f"(kind = 'track' AND event = {ns.lit(event)})")
                calls_of[table].add(("track", event))
                calls_of["tracks"] = {("track", None)}
                tracks = structure.setdefault("tracks", [None, None])
                tracks[0] = merge_structure(tracks[0], context)
                kind_of["tracks"] = "alias"  # tracks flattens no section but context
                where_of["tracks"] = ["kind = 'track'"]
            else:
                table = KIND_TABLE[kind]
                where_of[table] = [f"kind = {ns.lit(kind)}"]
                calls_of[table] = {(kind, None)}
            kind_of[table] = kind
            merged = structure.setdefault(table, [None, None])
            merged[0] = merge_structure(merged[0], context)
            merged[1] = merge_structure(merged[1], body)
        plans = []
        for table, (context, body) in structure.items():
            sections = [context_section(context)]
            section = body_section(kind_of[table], body)
            if section is not None:
                sections.append(section)
            plans.append(
                TablePlan(table, " OR ".join(where_of[table]), {}, sections, None, calls_of[table])
            )
        wh.execute(
            f"CREATE OR REPLACE TEMP TABLE {ns.EVENTS} (text VARCHAR, slug VARCHAR, tbl VARCHAR)"
        )
        if event_rows:
            values = ", ".join(f"({ns.lit(a)}, {ns.lit(b)}, {ns.lit(c)})" for a, b, c in event_rows)
            wh.execute(f"INSERT INTO {ns.EVENTS} VALUES {values}")
        # Each table's values extracted once; its hard rows handed back.
        for n, plan in enumerate(plans):
            plan.values = ns.Values(f"{ns.VALUES}_{n}", plan.sections)
            wh.execute(plan.values.create(plan.where, plan.sections))
        if plans:
            wh.execute(
                ns.hand_back(
                    ns.MESSAGES,
                    [f"SELECT file_no, line_no FROM {p.vals.name} WHERE hard" for p in plans],
                )
            )
        out = plans
        for plan in out:
            if f is not None and not f.table_synced(plan.table):
                plan.where = "false"
            keep = None if f is None else f.columns_kept(plan.table)
            plan.columns = {
                name: leaves
                for name, leaves in columns_of(plan.sections).items()
                if keep is None or keep[name]
            }
        return [p for p in out if p.where != "false"]

    def _hand_back(self, plans: list[TablePlan]) -> None:
        """Every copy of a messageId with one line the SQL cannot load goes to the
        reference path, so the two paths never share a message."""
        self.warehouse.execute(
            f"UPDATE {ns.MESSAGES} SET plain = false WHERE plain AND mid IN "
            f"(SELECT mid FROM {ns.MESSAGES} WHERE NOT plain AND mid IS NOT NULL)"
        )
        self.warehouse.execute(
            f"CREATE OR REPLACE TEMP TABLE {ns.PLAIN} AS SELECT * EXCLUDE (ctx, body), "
            f"row_number() OVER (PARTITION BY file_no, mid ORDER BY line_no) AS nth_in_file, "
            f"row_number() OVER (PARTITION BY mid ORDER BY file_no, line_no) AS nth_in_batch "
            f"FROM {ns.MESSAGES} WHERE plain"
        )

    def _reference(
        self, raw: RawBatch, options: ReadOptions, after: list[LineRows] | None = None
    ) -> list[LineRows]:
        """The lines handed back (not plain), read by the reference rules per file; with
        `after`, only those handed back since."""
        wh = self.warehouse
        if after is None:
            found = wh.fetchall(
                f"SELECT l.file_no, l.line_no, {ns.RAW} FROM {ns.LINES} AS l JOIN {ns.MESSAGES} "
                f"AS m USING (file_no, line_no) WHERE NOT m.plain ORDER BY 1, 2"
            )
        else:
            found = wh.fetchall(
                f"SELECT l.file_no, l.line_no, {ns.RAW} FROM {ns.LINES} AS l JOIN {ns.PLAIN} "
                f"AS m USING (file_no, line_no) WHERE NOT m.plain ORDER BY 1, 2"
            )
        by_file: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for file_no, line_no, line in found:
            by_file[file_no].append((line_no, bytes(line).strip()))
        return [read_lines(raw.urls[n], by_file[n], options) for n in sorted(by_file)]

    def _evolve(
        self,
        schema: str,
        raw: RawBatch,
        plans: list[TablePlan],
        first: list[LineRows],
        options: ReadOptions,
        report: SyncReport,
    ) -> dict[str, dict[str, ColumnType]]:
        """Every table the batch writes, with its new columns typed by the evidence of
        the SQL's rows and the reference rows together, in archive order."""
        file_of = {url: n for n, url in enumerate(raw.urls)}
        seen: dict[str, dict[int, dict[str, Seen]]] = defaultdict(lambda: defaultdict(dict))
        for lines in first:
            n = file_of[lines.read.url]
            for table, rows in lines.rows.items():
                seen[table][n] = seen_in(rows)
        witnesses: dict[tuple[int, int], list[tuple[str, str, Seen]]] = defaultdict(list)
        native: list[tuple[str, int, str, Seen]] = []
        for plan in plans:
            known = self.writer.known.get(plan.table, {})
            fixed = fixed_columns(plan.table)
            wanted = [c for c in plan.columns if c not in known and c not in fixed]
            for file_no, per_column in self._native_seen(plan, wanted).items():
                for name, s in per_column.items():
                    witnesses[(file_no, s.name_line)].append((plan.table, name, s))
                    if s.value_line is not None:
                        witnesses[(file_no, s.value_line)].append((plan.table, name, s))
                    native.append((plan.table, file_no, name, s))
        self._witness(raw, witnesses, options)
        for table, file_no, name, s in native:
            prior = seen[table][file_no].get(name)
            seen[table][file_no][name] = s if prior is None else prior.merged(s)
        types: dict[str, dict[str, ColumnType]] = {}
        # A table is made by a file's first copies of messages, as the reference makes
        # it (even when each of them repeats an earlier file's): not by a plan alone.
        counts = self._counts(plans)
        tables = {p.table for p in plans if counts[p.table][0]} | set(seen)
        for table in sorted(tables, key=lambda t: (t != "tracks", t)):
            fixed = fixed_columns(table)
            existing = self.writer.known.get(table)
            skip = {**fixed, **(existing or {})}
            evidence = evidence_in_order(
                (seen[table][n] for n in sorted(seen.get(table, {}))), skip
            )
            types[table] = self.writer.ensure_from_evidence(
                schema, table, [evidence], fixed, report
            )
        return types

    def _native_seen(self, plan: TablePlan, wanted: list[str]) -> dict[int, dict[str, Seen]]:
        """Per file: the first line naming each wanted column, the first giving it a
        value, whether any of its values has a fraction (first copies in the file only,
        as the reference reader sees a file)."""
        if not wanted:
            return {}
        selects = []
        for at, name in enumerate(wanted):
            leaves = plan.columns[name]
            value = plan.vals.value_of(leaves)
            present = plan.vals.present(leaves)
            selects.append(
                f"min(line_no) FILTER (WHERE {present}) AS n{at}, "
                f"min(line_no) FILTER (WHERE {value.t} <> 'NULL') AS v{at}, "
                f"coalesce(bool_or({value.t} = 'DOUBLE'), false) AS d{at}"
            )
        rows = self.warehouse.fetchall(
            ns.checked(
                f"SELECT file_no, {', '.join(selects)} {plan.rows('m.nth_in_file = 1')} "
                "GROUP BY file_no"
            )
        )
        out: dict[int, dict[str, Seen]] = {}
        for row in rows:
            per: dict[str, Seen] = {}
            for at, name in enumerate(wanted):
                name_line, value_line, double = row[1 + 3 * at : 4 + 3 * at]
                if name_line is not None:
                    per[name] = Seen(name_line, -1, value_line, None, bool(double))
            out[row[0]] = per
        return out

    def _witness(
        self,
        raw: RawBatch,
        witnesses: dict[tuple[int, int], list[tuple[str, str, Seen]]],
        options: ReadOptions,
    ) -> None:
        """Each witness line normalised by the reference rules: where in its row a
        column is named, and the value that types it."""
        if not witnesses:
            return
        keys = ", ".join(f"({f}, {n})" for f, n in witnesses)
        found = self.warehouse.fetchall(
            f"SELECT l.file_no, l.line_no, {ns.RAW} FROM {ns.LINES} AS l "
            f"WHERE (l.file_no, l.line_no) IN ({keys})"
        )
        for file_no, line_no, line in found:
            body = parse_line(bytes(line).strip(), raw.urls[file_no], line_no)
            tables: TableRows = {}
            rows_into(tables, body, options.row_filter, False)  # type: ignore[arg-type]
            for table, name, s in witnesses[(file_no, line_no)]:
                values = tables[table][0][0]
                if s.name_line == line_no:
                    s.name_at = list(values).index(name)
                if s.value_line == line_no:
                    s.value = values[name]

    def _refuse_misfits(
        self, plans: list[TablePlan], types: dict[str, dict[str, ColumnType]]
    ) -> None:
        """Rows with a value their column would rescue (or a column the table could not
        take) go to the reference path, with every copy of their messageId."""
        wh = self.warehouse
        rows = []
        for plan in plans:
            columns = types[plan.table]
            terms = []
            for name, leaves in plan.columns.items():
                value = plan.vals.value_of(leaves)
                kind = columns.get(name)
                if kind is None:
                    terms.append(f"coalesce({value.t}, 'NULL') <> 'NULL'")
                elif not ns.always_fits(leaves, kind):
                    terms.append(f"NOT {ns.fits(value, kind)}")
            if terms:
                rows.append(
                    f"SELECT file_no, line_no FROM {plan.vals.name} AS v WHERE {' OR '.join(terms)}"
                )
        if rows:
            wh.execute(ns.hand_back(ns.PLAIN, rows))
        wh.execute(
            f"UPDATE {ns.PLAIN} SET plain = false WHERE plain AND mid IN "
            f"(SELECT mid FROM {ns.PLAIN} WHERE NOT plain)"
        )

    def _counts(self, plans: list[TablePlan]) -> dict[str, tuple[int, int]]:
        """Per table: the first copies in their files of its plain messages (what makes
        a table), and the rows it is offered (first copies in the batch, not re-sent
        from the previous batch). One pass over the messages, by call type and event."""
        if not plans:
            return {}
        offered = f"plain AND nth_in_batch = 1 AND mid NOT IN (SELECT mid FROM {ns.RECENT})"
        found = self.warehouse.fetchall(
            f"SELECT kind, CASE WHEN kind = 'track' THEN event END, "
            f"count(*) FILTER (WHERE nth_in_file = 1), count(*) FILTER (WHERE {offered}) "
            f"FROM {ns.PLAIN} GROUP BY ALL"
        )
        out = {plan.table: (0, 0) for plan in plans}
        for kind, event, first, offered_rows in found:
            for plan in plans:
                if (kind, event) in plan.calls or (kind, None) in plan.calls:
                    a, b = out[plan.table]
                    out[plan.table] = (a + int(first), b + int(offered_rows))
        return out

    def _insert_native(
        self,
        schema: str,
        plans: list[TablePlan],
        types: dict[str, dict[str, ColumnType]],
        uuid_ts: str,
        report: SyncReport,
    ) -> dict[str, int]:
        wh = self.warehouse
        d = wh.dialect
        offered: dict[str, int] = {}
        counts = self._counts(plans)
        for plan in plans:
            columns = types[plan.table]
            exprs: dict[str, str] = {}
            for name in fixed_columns(plan.table):
                if name in ns.COMMON and name in columns:
                    exprs[name] = ns.COMMON[name]
            if "uuid_ts" in columns:
                exprs["uuid_ts"] = f"CAST({ns.lit(uuid_ts)} AS TIMESTAMPTZ)"
            for name, leaves in plan.columns.items():
                kind = columns.get(name)
                if kind is not None:
                    exprs[name] = ns.cast(plan.vals.value_of(leaves), kind)
            keep = None if self._row_filter is None else self._row_filter.columns_kept(plan.table)
            if keep is not None:
                exprs = {n: e for n, e in exprs.items() if n in ("id", "uuid_ts") or keep[n]}
            select = ", ".join(f"{e} AS {ns.ident(n)}" for n, e in exprs.items())
            rows = plan.rows(
                f"m.plain AND m.nth_in_batch = 1 AND m.mid NOT IN (SELECT mid FROM {ns.RECENT})"
            )
            stage = f"(SELECT {select} {rows})"
            names = list(exprs)
            count = counts[plan.table][1]
            target = wh.table_ref(schema, plan.table)
            inserted = 0
            if self._replay and st.fillable(names):
                inserted += wh.execute(st.fill_nulls(d, target, stage, names))
            inserted += wh.execute(st.insert_new(d, target, stage, names))
            offered[plan.table] = count
            self._count_loaded(plan.table, count, inserted, report)
        return offered

    def _native_duplicates(self) -> int:
        """Copies of a message after its first in the batch (in its file or another),
        and first copies of a message the previous batch had."""
        found = self.warehouse.fetchall(
            f"SELECT count(*) FROM {ns.PLAIN} WHERE plain AND (nth_in_batch > 1 "
            f"OR mid IN (SELECT mid FROM {ns.RECENT}))"
        )
        return int(found[0][0])

    def _recent_of(self, reads: list[LineRows]) -> set[str]:
        ids = [i for lines in reads for i in lines.read.ids]
        if not ids:
            return set()
        found = self.warehouse.fetchall(
            f"SELECT mid FROM {ns.RECENT} WHERE mid IN (SELECT unnest(%(ids)s))", {"ids": ids}
        )
        return {m for (m,) in found}

    def _remember(self, first: list[LineRows], second: list[LineRows]) -> None:
        wh = self.warehouse
        wh.execute(
            f"CREATE OR REPLACE TEMP TABLE {ns.RECENT} AS "
            f"SELECT DISTINCT mid FROM {ns.PLAIN} WHERE plain"
        )
        ids = [i for lines in (*first, *second) for i in lines.read.ids]
        if ids:
            wh.execute(f"INSERT INTO {ns.RECENT} SELECT unnest(%(ids)s)", {"ids": ids})

    def _profiles(
        self,
        schema: str,
        batch: _Batch,
        native_rows: dict[str, int],
        options: ReadOptions,
        report: SyncReport,
    ) -> None:
        wh = self.warehouse
        on = {"users": options.users_on, "accounts": options.accounts_on}
        for profile, (source, key) in PROFILES.items():
            kind = "identify" if source == "identifies" else "group"
            column = "user_id" if kind == "identify" else "group_id"
            keys = set(batch.profile_keys[profile])
            new_ids = _offered_ids(batch, source)
            if on[profile] and native_rows.get(source) is not None:
                # Keys of every file's first copies, as the reference reader collects
                # them; offered ids of the rows this batch inserts.
                found = wh.fetchall(
                    f"SELECT mid, {column}, "
                    f"nth_in_batch = 1 AND mid NOT IN (SELECT mid FROM {ns.RECENT}) "
                    f"FROM {ns.PLAIN} WHERE plain AND nth_in_file = 1 AND kind = {ns.lit(kind)}"
                )
                new_ids.extend(m for m, _, offered in found if offered)
                keys.update(k for _, k, _ in found if k not in (None, ""))
            if keys and source in self.writer.known:
                upserted = self._rebuild_profile(
                    schema, profile, source, key, keys, new_ids, report
                )
                report.rows_loaded[profile] = report.rows_loaded.get(profile, 0) + upserted


def _root(structure: str | None) -> Any:
    """A section's merged structure; DuckDB merges empty objects into "JSON" (a
    section is an object in every plain row, so that is all it can mean here)."""
    if not structure:
        return None
    found = orjson.loads(structure)
    return {} if found == "JSON" else found


def _absorb(batch: _Batch, part: _Batch) -> None:
    batch.rejects.extend(part.rejects)
    batch.duplicates += part.duplicates
    for profile, keys in part.profile_keys.items():
        batch.profile_keys[profile].update(keys)
    for table, chunks in part.by_table.items():
        batch.by_table[table].extend(chunks)


def loader_class(mode: str) -> type[Loader]:
    """The Loader for a source's `mode:` (sluice.yml)."""
    return NativeLoader if mode == "native" else Loader
