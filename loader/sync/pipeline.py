"""One sync of one archive into one schema of one target, as a sequence of batches.

Each batch (whole files) is committed atomically together with the record of the files
it consumed, so a crash leaves the warehouse as before that batch and a rerun finishes
the job with no duplicate and no gap.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import orjson

from loader.encode import file_reader
from loader.encode.encoded import EncodedChunk
from loader.encode.file_reader import (
    EncodeContext,
    FileRead,
    ReadOptions,
    default_readers,
    read_files,
)
from loader.rules.messages import Reject
from loader.rules.normalize import (
    COMMON_COLUMNS,
    PROFILE_FIXED,
    RESCUED_COLUMN,
    TABLE_COLUMNS,
    TableChunk,
    fixed_columns,
)
from loader.rules.schema import ColumnType
from loader.rules.selective_sync import SyncFilter
from loader.rules.tracking_plan import TrackingPlan, plan_table
from loader.sources.archive import ArchiveFile, list_files, received_day
from loader.sync.table_writer import TableWriter, count_rescued
from loader.warehouses.base import BOOKKEEPING_SCHEMA, ProfileSpec
from loader.warehouses.warehouse import Warehouse

DEFAULT_BATCH_LINES = 20_000
# Batch commits, new tables and columns, rejects: one line each, for whoever listens
# (Dagster's run log; the CLI keeps its own report and progress display).
log = logging.getLogger("sluice.loader")
# A library's habit: silent unless the application configures logging (no lastResort
# printing of warnings on the CLI's stderr).
logging.getLogger("sluice").addHandler(logging.NullHandler())
# Rejected lines logged one by one per batch; the rest are counted (all are in _sluice).
LOGGED_REJECTS = 5
# Tables named in a batch line (the largest); the run's report has them all.
LOGGED_TABLES = 6

# Profile table -> (event table it is built from, key column there).
PROFILES: dict[str, tuple[str, str]] = {
    "users": ("identifies", "user_id"),
    "accounts": ("groups", "group_id"),
}


def profile_traits(source_columns: Iterable[str], source_table: str) -> list[str]:
    """Trait columns of identifies/groups: everything but common, layout and context columns."""
    skip = set(COMMON_COLUMNS) | {RESCUED_COLUMN} | set(TABLE_COLUMNS[source_table])
    return [c for c in source_columns if c not in skip and not c.startswith("context_")]


@dataclass
class SyncReport:
    run_id: str
    schema: str
    target: str
    source_url: str
    started_at: str
    status: str = "running"
    finished_at: str | None = None
    duration_s: float = 0.0
    files_seen: int = 0
    files_loaded: int = 0
    files_skipped: int = 0
    files_failed: list[dict[str, Any]] = field(default_factory=list)
    lines_read: int = 0
    rows_loaded: dict[str, int] = field(default_factory=dict)
    rescued_by_table: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    new_tables: list[str] = field(default_factory=list)
    new_columns: list[str] = field(default_factory=list)
    rescued_values: int = 0
    # Of the rescued values, those cut to fit the warehouse's _rescued_data width.
    rescued_cut: int = 0
    rejects: int = 0
    deleted_objects: int = 0
    replay: dict[str, Any] | None = None
    # A staged load's partitions, workers, stage seconds (summed) and lock-held seconds.
    staged: dict[str, Any] | None = None
    files_undated: int = 0
    turned_off: list[str] = field(default_factory=list)
    source_turned_off: str | None = None
    error: str | None = None
    # What a user should know that is not an error (a table at its column limit).
    warnings: list[str] = field(default_factory=list)
    # Tracking plan, per table: violations found, events checked and events with a
    # violation; and the events blocked (kept in _sluice.blocked_events instead).
    violations: dict[str, int] = field(default_factory=dict)
    plan_checked: dict[str, int] = field(default_factory=dict)
    plan_violating: dict[str, int] = field(default_factory=dict)
    blocked_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadProgress:
    """Where a load is, for a progress display: the pending files and bytes found at the
    start, what the readers have read so far, and what is committed."""

    files_total: int
    bytes_total: int
    files_read: int = 0
    bytes_read: int = 0
    lines_read: int = 0
    files_committed: int = 0
    lines_committed: int = 0


@dataclass
class _Batch:
    """Whole files, normalised and deduped within the batch, ready to commit."""

    by_table: dict[str, list[TableChunk]] = field(default_factory=lambda: defaultdict(list))
    encoded: dict[str, list[EncodedChunk]] = field(default_factory=lambda: defaultdict(list))
    profile_keys: dict[str, set[str]] = field(
        default_factory=lambda: {"users": set(), "accounts": set()}
    )
    seen: set[str] = field(default_factory=set)
    # The previous batch's ids: committed by now, so a re-send of one (duplicates sit
    # close together in an archive) is dropped here instead of refused by the warehouse.
    recent: set[str] = field(default_factory=set)
    rejects: list[Reject] = field(default_factory=list)
    files: list[tuple[str, int]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    duplicates: int = 0
    # Tracking plan: (event, property, kind) per file -> [example, count, first, last].
    violations: dict[tuple[str, str, str, str], list[Any]] = field(default_factory=dict)
    blocked: list[tuple[str, int, str, str, list[dict[str, Any]]]] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    violating: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Messages and rows form no cycles and are freed by reference counting; the cyclic
    collector would otherwise rescan every live batch object over and over (measured:
    it more than doubles parse and normalise time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def pending_files(
    warehouse: Warehouse, archive_url: str, schema: str, files: Sequence[ArchiveFile]
) -> list[ArchiveFile]:
    """The files of `files` (listed under `archive_url`) that the warehouse's ledger has
    not recorded as loaded into `schema`: what a sync would load. The one place archive
    files are matched to ledger entries (a sync, Dagster's sensors), so all agree.
    Readers that may run before the first sync check `ledger_exists` first."""
    done = warehouse.loaded_files(schema)
    # Ledgers written before keys were relative hold absolute paths: both count.
    return [f for f in files if f.ledger_key not in done and f.url not in done]


def loaded_files_of(
    warehouse: Warehouse, archive_url: str, schema: str, files: Sequence[ArchiveFile]
) -> list[ArchiveFile]:
    """The files of `files` the ledger records as loaded into `schema`."""
    pending = set(pending_files(warehouse, archive_url, schema, files))
    return [f for f in files if f not in pending]


def ledger_exists(warehouse: Warehouse) -> bool:
    """Whether the file ledger exists yet; readers must not create it (a sync does)."""
    return any(t.lower() == "loaded_files" for t in warehouse.read_schema(BOOKKEEPING_SCHEMA))


def _now() -> datetime:
    return datetime.now(timezone.utc)


_stop = threading.Event()
# Loads now in their batch loop, which stop cleanly at the next file or batch boundary.
_stoppable = [0]


def request_stop() -> bool:
    """Ask a running load to stop (a SIGINT handler calls this). True when a load will
    stop by itself at its next file or batch boundary, with its connection clean and
    its run recorded as "interrupted"; False when nothing will (the caller then
    interrupts at once). Also lets a driver interrupted mid-statement (DuckDB reports
    its own error) be told from a failure."""
    _stop.set()
    return _stoppable[0] > 0


def stop_requested() -> bool:
    return _stop.is_set()


def _check_stop() -> None:
    if _stop.is_set():
        raise KeyboardInterrupt


@contextmanager
def recorded_run(wh: Warehouse, schema: str, source: str) -> Iterator[SyncReport]:
    """A sync's report: timed, marked success, partial (some file broke part way or could
    not be read: `files_failed`) or failed, and stored in `_sluice` either way (except
    when the lock refused the run: that run never started)."""
    started = time.perf_counter()
    report = SyncReport(
        run_id=uuid.uuid4().hex,
        schema=schema,
        target=wh.target_name,
        source_url=source,
        started_at=_now().isoformat(),
    )
    wh.ensure_bookkeeping()
    try:
        yield report
        # Files that broke part way, or could not be read, leave the load incomplete.
        report.status = "partial" if report.files_failed else "success"
    except KeyboardInterrupt:
        # Ctrl-C: the batches committed before it stand; a rerun finishes the job.
        report.status = "interrupted"
        raise
    except Exception as exc:
        if _stop.is_set():
            report.status = "interrupted"
            raise KeyboardInterrupt from exc
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.finished_at = _now().isoformat()
        report.duration_s = round(time.perf_counter() - started, 3)
        if report.error is None or "LockBusy" not in report.error:
            try:
                wh.record_run(schema, report.to_dict())
            except Exception:  # noqa: BLE001 - the report is secondary to the error
                pass


class Loader:
    """Runs syncs of archives into one warehouse; the warehouse is owned by the caller."""

    # Lines per committed batch when the user sets none (sluice.yml's batch_lines,
    # `--batch-lines`).
    default_batch_lines = DEFAULT_BATCH_LINES

    def __init__(
        self,
        warehouse: Warehouse,
        batch_lines: int | None = None,
        storage_options: dict | None = None,
        on_batch: Callable[[SyncReport], None] | None = None,
        sync_filter: SyncFilter | None = None,
        readers: int | None = None,
        on_progress: Callable[[LoadProgress], None] | None = None,
        tracking_plan: TrackingPlan | None = None,
    ) -> None:
        """`readers`: processes that parse files while this one loads (None: one per
        spare core; 0: read in this process). `on_progress` is called when the pending
        files are known, after each file read and after each commit."""
        self.warehouse = warehouse
        self.readers = default_readers() if readers is None else readers
        self.writer = TableWriter(warehouse)
        self.batch_lines = batch_lines or self.default_batch_lines
        self.storage_options = storage_options
        self.on_batch = on_batch
        self.on_progress = on_progress
        self._progress = LoadProgress(0, 0)
        self.sync_filter = sync_filter if sync_filter is not None else SyncFilter(None)
        self.tracking_plan = tracking_plan
        # Normalisation skips the filter entirely when nothing is turned off.
        self._row_filter = self.sync_filter if self.sync_filter.active else None
        self._replay = False
        self._record_files = True
        self._schema = ""
        # Archive file URL -> the key `_sluice` records it by (ArchiveFile.ledger_key).
        self._keys: dict[str, str] = {}

    def replay(
        self,
        url: str,
        schema: str,
        first_day: date,
        last_day: date,
        record_files: bool = True,
    ) -> SyncReport:
        """Reload the files received on [first_day, last_day] (inclusive), ignoring the
        ledger: rows whose id is missing are inserted, NULL columns of existing rows are
        filled (a re-enabled property), and nothing already there is changed.

        record_files=False is for runs that load only some tables (a Dagster subset):
        the files must stay pending for the tables that were not selected."""
        return self.load(
            url, schema, days=(first_day, last_day), replay=True, record_files=record_files
        )

    def load(
        self,
        url: str,
        schema: str,
        days: tuple[date, date] | None = None,
        replay: bool = False,
        record_files: bool = True,
    ) -> SyncReport:
        """Load the archive's pending files (those received on `days`, if given; files
        whose path names no day are pending on every day) into `schema`."""
        wh = self.warehouse
        with recorded_run(wh, schema, url) as report:
            with wh.lock(schema), _cyclic_gc_paused():
                self._load_locked(url, schema, report, days, replay, record_files)
        return report

    def _load_locked(
        self,
        url: str,
        schema: str,
        report: SyncReport,
        days: tuple[date, date] | None,
        replay: bool,
        record_files: bool,
    ) -> None:
        wh = self.warehouse
        files = self.files_of_days(url, days, replay, report)
        self._schema = schema
        self._replay = replay
        self._record_files = record_files
        if replay:
            assert days is not None, "a replay is of a range of received days"
            report.replay = {"from": days[0].isoformat(), "to": days[1].isoformat()}
            todo = files
        else:
            todo = pending_files(wh, url, schema, files)
        report.files_seen = len(files)
        report.files_skipped = len(files) - len(todo)
        if self.turned_off_source(schema, todo, report):
            return
        self.writer.refresh(schema)
        self._keys = {}
        self._progress = LoadProgress(len(todo), sum(f.size for f in todo))
        self._tell()
        self.commit_files(schema, todo, report)

    def commit_files(self, schema: str, todo: list[ArchiveFile], report: SyncReport) -> None:
        """`todo` read and committed batch by batch, under the caller's lock: by this
        loader's readers here, by the warehouse in native mode (loader.native)."""
        self.commit_reads(
            schema,
            todo,
            read_files(todo, self.read_options(), self.readers, self._encode_context),
            report,
        )

    def files_of_days(
        self, url: str, days: tuple[date, date] | None, replay: bool, report: SyncReport
    ) -> list[ArchiveFile]:
        """The archive's files received on `days` (all when None); a pending-files run
        also takes files whose path names no day, whenever it runs."""
        files = list_files(url, self.storage_options)
        if days is None:
            return files
        first, last = days
        dated = [(f, received_day(f.url)) for f in files]
        report.files_undated = sum(1 for _, d in dated if d is None)
        return [
            f
            for f, d in dated
            if (d is None and not replay) or (d is not None and first <= d <= last)
        ]

    def turned_off_source(self, schema: str, todo: list[ArchiveFile], report: SyncReport) -> bool:
        """A source turned off by selective sync loads nothing: its pending files are
        recorded (turning it back on loads new files; replay backfills), and True."""
        if self.sync_filter.source_enabled:
            return False
        decision = self.sync_filter.table_decision("*")
        report.source_turned_off = f"line {decision.line}: {decision.reason}"
        if not self._replay and self._record_files and todo:
            with self.warehouse.transaction():
                self.warehouse.record_files(schema, [(f.ledger_key, 0) for f in todo])
        return True

    def commit_reads(
        self,
        schema: str,
        todo: list[ArchiveFile],
        reads: Iterable[FileRead],
        report: SyncReport,
        batch_lines: int | None = None,
    ) -> None:
        """The FileReads of `todo` (in its order), committed batch by batch, under the
        caller's lock: a load's own readers, or a staged partition (loader.sync.staging).
        `batch_lines`: lines per transaction, if not this loader's `batch_lines`."""
        self._schema = schema
        self._keys.update({f.url: f.ledger_key for f in todo})
        _stoppable[0] += 1
        try:
            for batch in self._batches(todo, reads, batch_lines or self.batch_lines):
                _check_stop()
                self._commit(schema, batch, report)
        finally:
            _stoppable[0] -= 1

    def read_options(self) -> ReadOptions:
        """What a reader needs to read this loader's files (picklable, for processes)."""
        f = self.sync_filter
        capabilities = self.warehouse.capabilities
        return ReadOptions(
            storage_options=self.storage_options,
            row_filter=self._row_filter,
            users_on=f.table_synced("identifies") and f.table_synced("users"),
            accounts_on=f.table_synced("groups") and f.table_synced("accounts"),
            encoder=capabilities.row_encoder,
            text_width=capabilities.max_text_chars,
            row_bytes=capabilities.max_row_bytes,
            rescued_bytes=capabilities.max_rescued_bytes,
            plan=self.tracking_plan,
            # This process's, so that readers in processes part files alike.
            part_lines=file_reader.PART_LINES,
        )

    def _batches(
        self, todo: list[ArchiveFile], reads: Iterable[FileRead], batch_lines: int
    ) -> Iterator[_Batch]:
        batch = _Batch()
        sizes = {f.url: f.size for f in todo}
        progress = self._progress
        # A file gone since the listing is a failure of that file alone (read_files).
        for read in reads:
            _check_stop()
            # The readers' copies of the filter decided names; this one reports them.
            self.sync_filter.learn(read.decided)
            self._add_file(read, batch)
            progress.files_read += 1
            progress.bytes_read += sizes.get(read.url, 0)
            progress.lines_read += read.lines
            self._tell()
            if batch.lines >= batch_lines:
                yield batch
                batch = _Batch(recent=batch.seen)
        if batch.files or batch.rejects or batch.failed:
            yield batch

    def track(self, progress: LoadProgress) -> None:
        """Report progress against `progress` (a staged load's files) from now on."""
        self._progress = progress
        self._tell()

    def _tell(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self._progress)

    def encode_context(self) -> EncodeContext:
        """What readers encode against now: the tables as this loader knows them."""
        return self._encode_context()

    def _encode_context(self) -> EncodeContext:
        known = {table: dict(columns) for table, columns in self.writer.known.items()}
        plain = frozenset(self.warehouse.tables_taking_tuples(self._schema))
        return EncodeContext(known, _now().isoformat(), plain)

    @staticmethod
    def _add_file(read: FileRead, batch: _Batch) -> None:
        """A file's rows into the batch; a messageId already in the batch (from an
        earlier file) is a duplicate, and the first copy wins."""
        batch.rejects.extend(read.rejects)
        batch.blocked.extend(read.blocked)
        for (event, prop, kind), entry in read.violations.items():
            batch.violations[(read.url, event, prop, kind)] = entry
        for label, n in read.checked.items():
            batch.checked[label] += n
        for label, n in read.violating.items():
            batch.violating[label] += n
        if read.failure is not None:
            batch.failed.append(read.failure)
            if not read.failure.get("partial"):
                return  # unread: not recorded, so the next run reads it again
            # Broken part way: what was read before the break loads, and the file is
            # recorded (its break is a reject), so a rerun neither re-reads nor repeats it.
        repeated = batch.seen.intersection(read.ids)
        repeated.update(batch.recent.intersection(read.ids))
        batch.seen.update(read.ids)
        for table, chunk in read.tables.items():
            batch.by_table[table].append(chunk.without_ids(repeated) if repeated else chunk)
        for table, parts in read.encoded.items():
            into = batch.encoded[table]
            if repeated:
                into.extend(part.without_ids(repeated) for part in parts)
            else:
                into.extend(parts)
        batch.profile_keys["users"].update(read.users)
        batch.profile_keys["accounts"].update(read.accounts)
        batch.files.append((read.url, read.lines))
        batch.lines += read.lines
        batch.duplicates += read.duplicates + len(repeated)

    def _commit(self, schema: str, batch: _Batch, report: SyncReport) -> None:
        wh = self.warehouse
        by_table = batch.by_table
        profile_keys = batch.profile_keys
        uuid_ts = _now().isoformat()
        tables_before, columns_before = len(report.new_tables), len(report.new_columns)
        rows_before = dict(report.rows_loaded)
        try:
            with wh.transaction():
                for table, rows in by_table.items():
                    self._load_table(schema, table, rows, uuid_ts, report)
                for table, chunks in batch.encoded.items():
                    self._load_encoded(schema, table, chunks, uuid_ts, report)
                for profile, (source, key) in PROFILES.items():
                    if profile_keys[profile] and source in self.writer.known:
                        upserted = self._rebuild_profile(
                            schema,
                            profile,
                            source,
                            key,
                            profile_keys[profile],
                            _offered_ids(batch, source),
                            report,
                        )
                        report.rows_loaded[profile] = report.rows_loaded.get(profile, 0) + upserted
                if self._record_files:
                    wh.record_files(schema, [(self._key(u), n) for u, n in batch.files])
                wh.record_rejects(schema, self._keyed_rejects(batch.rejects))
                if batch.checked:
                    self._record_plan(schema, batch, report)
                self.record_turned_off(schema, report)
        except Exception:
            self.writer.refresh(schema)
            raise
        self.committed(schema, batch, report, (tables_before, columns_before, rows_before))

    def record_turned_off(self, schema: str, report: SyncReport) -> None:
        """Names selective sync turned off for the first time in this batch."""
        turned_off = self.sync_filter.new_turned_off_names()
        if turned_off:
            self.warehouse.record_turned_off(schema, turned_off)
            report.turned_off.extend(f"{t}.{c}" if c else t for t, c in turned_off)

    def committed(
        self,
        schema: str,
        batch: _Batch,
        report: SyncReport,
        before: tuple[int, int, dict[str, int]],
    ) -> None:
        """A committed batch into the report, the log and the progress (`before`: the
        report's new tables, new columns and rows loaded before the batch)."""
        report.files_loaded += len(batch.files)
        report.rejects += len(batch.rejects)
        report.lines_read += batch.lines
        report.duplicates += batch.duplicates
        report.files_failed.extend(batch.failed)
        _log_batch(schema, batch, report, *before)
        self._progress.files_committed = report.files_loaded
        self._progress.lines_committed = report.lines_read
        self._tell()
        if self.on_batch is not None:
            self.on_batch(report)

    def _record_plan(self, schema: str, batch: _Batch, report: SyncReport) -> None:
        """The batch's violations, one row per file, event, property and kind (a replay
        of a file records nothing twice), and its blocked events."""
        rows = []
        for (url, event, prop, kind), (example, count, first, last) in batch.violations.items():
            rows.append((schema, self._key(url), event, prop, kind, example, count, first, last))
            table = plan_table(event)
            report.violations[table] = report.violations.get(table, 0) + count
        for counts, into in (
            (batch.checked, report.plan_checked),
            (batch.violating, report.plan_violating),
        ):
            for event, n in counts.items():
                table = plan_table(event)
                into[table] = into.get(table, 0) + n
        self.warehouse.record_violations(schema, rows)
        blocked = {
            (self._key(url), line): (self._key(url), line, event, raw, orjson.dumps(v).decode())
            for url, line, event, raw, v in batch.blocked
        }
        self.warehouse.record_blocked(schema, list(blocked.values()))
        report.blocked_events += len(blocked)

    def begin(self, schema: str, replay: bool, record_files: bool) -> None:
        """Set up a load that commits FileReads read elsewhere (staged partitions)."""
        self._schema, self._replay, self._record_files = schema, replay, record_files
        self.writer.refresh(schema)

    def _key(self, url: str) -> str:
        return self._keys.get(url, url)

    def _keyed_rejects(self, rejects: list[Reject]) -> list[Reject]:
        """Rejects named by their file's ledger key, one per file and line (the key
        `_sluice.rejected_events` knows a reject by)."""
        out: dict[tuple[str, int], Reject] = {}
        for r in rejects:
            key = self._key(r.file)
            out.setdefault((key, r.line), Reject(key, r.line, r.raw, r.reason))
        return list(out.values())

    def _load_table(
        self, schema: str, table: str, rows: list[TableChunk], uuid_ts: str, report: SyncReport
    ) -> None:
        insert_cols, out = self.writer.prepare(
            schema, table, rows, fixed_columns(table), uuid_ts, report
        )
        inserted = self.warehouse.insert_new_rows(
            schema, table, insert_cols, out, fill_nulls=self._replay
        )
        self._count_loaded(table, len(out), inserted, report)

    def _count_loaded(self, table: str, offered: int, inserted: int, report: SyncReport) -> None:
        if table == "tracks" or not self._is_event_table(table):
            report.duplicates += offered - inserted
        report.rows_loaded[table] = report.rows_loaded.get(table, 0) + inserted

    def _load_encoded(
        self,
        schema: str,
        table: str,
        chunks: list[EncodedChunk],
        uuid_ts: str,
        report: SyncReport,
    ) -> None:
        """Readers' encoded rows: the batch's new columns typed from every file's
        evidence in archive order, then one bulk insert. A chunk whose reader typed a new
        column otherwise is laid out again here from its rows as read (a file's later
        parts as much as a later file: each part was typed from its own rows, the
        file's first part carries the whole file's evidence)."""
        # Every chunk's evidence, even of one whose rows were all duplicates: the types
        # must not depend on which files share a batch.
        evidence = [c.evidence for c in chunks]
        chunks = [c for c in chunks if c.rows]
        fixed = fixed_columns(table)
        if not chunks:  # as the tuple path does: the table and its columns all the same
            self.writer.ensure_from_evidence(schema, table, evidence, fixed, report)
            return
        columns = self.writer.ensure_from_evidence(schema, table, evidence, fixed, report)
        fitting = [c for c in chunks if all(columns.get(n) is t for n, t in c.types.items())]
        inserted = self.warehouse.insert_encoded(schema, table, fitting, fill_nulls=self._replay)
        offered = sum(c.rows for c in fitting)
        count_rescued(
            report,
            table,
            sum(len(c.rescued_at) for c in fitting),
            sum(c.rescued_cut for c in fitting),
        )
        if len(fitting) < len(chunks):
            kept = {id(c) for c in fitting}
            # Only a column new to the reader can be typed otherwise, and then it sent rows.
            again = [c.rows_as_read() for c in chunks if id(c) not in kept]
            if any(raw is None for raw in again):
                raise RuntimeError(f"{table}: a reader typed a known column otherwise")
            names, rows = self.writer.prepare(schema, table, again, fixed, uuid_ts, report)
            inserted += self.warehouse.insert_new_rows(
                schema, table, names, rows, fill_nulls=self._replay
            )
            offered += len(rows)
        self._count_loaded(table, offered, inserted, report)

    @staticmethod
    def _is_event_table(table: str) -> bool:
        return table not in TABLE_COLUMNS

    def _rebuild_profile(
        self,
        schema: str,
        profile: str,
        source: str,
        key: str,
        keys: set[str],
        new_ids: list[str],
        report: SyncReport,
    ) -> int:
        traits = [
            t
            for t in profile_traits(self.writer.known[source], source)
            if self.sync_filter.column_synced(profile, t)
        ]
        types = {t: self.writer.known[source][t] for t in traits}
        existing = self.writer.known.get(profile)
        # A trait whose newest value did not fit its column is kept in _rescued_data.
        rescued = RESCUED_COLUMN if RESCUED_COLUMN in self.writer.known[source] else None
        wanted = {**PROFILE_FIXED, **types}
        if rescued is not None:
            wanted[RESCUED_COLUMN] = ColumnType.TEXT
        if existing is None:
            self.warehouse.create_table(schema, profile, wanted)
            self.writer.known[profile] = wanted
            report.new_tables.append(profile)
        else:
            missing = {c: k for c, k in wanted.items() if c not in existing}
            if missing:
                self.warehouse.add_columns(schema, profile, missing)
                existing.update(missing)
                report.new_columns.extend(f"{profile}.{c}" for c in missing)
        spec = ProfileSpec(profile, source, key, traits, new_ids, rescued)
        return self.warehouse.rebuild_profiles(schema, spec, sorted(keys))


def _log_batch(
    schema: str,
    batch: _Batch,
    report: SyncReport,
    tables_before: int,
    columns_before: int,
    rows_before: dict[str, int],
) -> None:
    """What one committed batch did, after the commit (a log line never claims a batch
    that was rolled back)."""
    if not log.isEnabledFor(logging.INFO):
        return
    rows = {
        t: n - rows_before.get(t, 0)
        for t, n in sorted(report.rows_loaded.items())
        if n != rows_before.get(t, 0)
    }
    largest = sorted(rows.items(), key=lambda item: -item[1])[:LOGGED_TABLES]
    detail = ", ".join(f"{t} {n}" for t, n in largest)
    if len(rows) > LOGGED_TABLES:
        detail += f", {len(rows) - LOGGED_TABLES} more table(s)"
    log.info(
        "committed batch into %s: %d file(s), %d line(s), %d row(s)%s, %d duplicate(s) "
        "dropped, %d rejected",
        schema,
        len(batch.files),
        batch.lines,
        sum(rows.values()),
        f" ({detail})" if rows else "",
        batch.duplicates,
        len(batch.rejects),
    )
    new_tables = report.new_tables[tables_before:]
    if new_tables:
        log.info("new table(s) in %s: %s", schema, ", ".join(new_tables))
    new_columns = report.new_columns[columns_before:]
    if new_columns:
        log.info("new column(s) in %s: %s", schema, ", ".join(new_columns))
    for reject in batch.rejects[:LOGGED_REJECTS]:
        log.warning("rejected %s, line %d: %s", reject.file, reject.line, reject.reason)
    if len(batch.rejects) > LOGGED_REJECTS:
        log.warning(
            "and %d more rejected line(s) in this batch (see _sluice.rejected_events)",
            len(batch.rejects) - LOGGED_REJECTS,
        )
    for failure in batch.failed:
        log.warning(
            "file not loaded: %s, line %s: %s",
            failure.get("file"),
            failure.get("line"),
            failure.get("error"),
        )


def _offered_ids(batch: _Batch, table: str) -> list[str]:
    """Ids of the rows the batch offered to `table` (new or already there)."""
    ids = [i for chunk in batch.encoded.get(table, ()) for i in chunk.ids]
    for chunk in batch.by_table.get(table, ()):
        if chunk.rows:
            at = chunk.names.index("id")  # one column, not a transpose of them all
            ids.extend(row[at] for row in chunk.rows)
    return ids
