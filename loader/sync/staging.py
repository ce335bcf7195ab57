"""A partition's load in two steps, so a backfill can scale out on the executor it runs on.

**Stage** (no lock, any number at once, on any machine): read, validate, normalise and
encode one received day's files, and write each file's result to a staging area (a
local folder or the archive's object store, by URL through fsspec) with a manifest.
Stages touch no warehouse: what they encode against (the pending files, the tables'
columns) is fixed when the partitions are planned.

**Commit** (under the schema's lock, short): apply staged partitions in archive order,
through the same batch commits as a serial load, so "first value decides" and users'
latest traits come out as they would serially. A stage is refused, and staged again,
when its files changed since it was planned (a file rewritten, added or gone), when a
table it was encoded against changed, or when a staged file's checksum does not match.
A committed partition's staged data is deleted (with any older stage of that day).

A staged file is a pickle, as Dagster's own IO managers store step outputs: the
staging area must be writable by the deployment alone. The checksum of each file is
held by whoever commits (in the stage's result), so a file changed in the staging area
is refused before it is unpickled. Nothing staged holds a credential: storage options
and connection settings stay in the processes that use them.
"""

from __future__ import annotations

import hashlib
import pickle
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import fsspec
import orjson

from loader.encode.file_reader import EncodeContext, FileRead, ReadOptions, read_files
from loader.sources.archive import ArchiveFile, received_day
from loader.sync.pipeline import Loader, LoadProgress, SyncReport, pending_files

# 2: a FileRead's encoded rows are a list of parts per table; 3: their rows as read
# pickled apart (EncodedChunk.packed).
STAGE_FORMAT = 3
# Lines per transaction when committing staged data, larger than a serial load's batch:
# the commit holds the lock, so each transaction's fixed cost (DuckDB writes whole row
# groups only for ~122,880 rows or more per commit) delays every partition after it.
# Staged rows come encoded, so a batch costs their encoded bytes rather than Python
# rows (bench/backfill_bench.py: the committing process's peak memory).
STAGED_BATCH_LINES = 250_000
MANIFEST = "manifest.json"


class StageRefused(Exception):
    """A staged partition that no longer matches the archive or the warehouse."""


@dataclass(frozen=True)
class StageOrder:
    """One partition to stage, as planned: its files in archive order and what they are
    encoded against. `day` None is the archive's undated files (a pending run's)."""

    target: str
    schema: str
    day: date | None
    replay: bool
    files: tuple[ArchiveFile, ...]
    context: EncodeContext
    # A day split into several stages (plan_stages' files_per_stage): this one's number.
    part: int | None = None

    @property
    def label(self) -> str:
        day = self.day.isoformat() if self.day is not None else "undated"
        return day if self.part is None else f"{day}.{self.part:04d}"


@dataclass(frozen=True)
class StagedPartition:
    """A stage's result: where its files are, and the checksum of each, in file order."""

    order: StageOrder
    folder: str
    checksums: tuple[str, ...]
    lines: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class StagingArea:
    """Where stages are written: `url` (a folder, `s3://bucket/prefix`, `gs://...`)."""

    url: str
    storage_options: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, _, paths = fsspec.get_fs_token_paths(
            self.url, storage_options=self.storage_options or {}
        )
        return fs, paths[0].rstrip("/")

    def day_folder(self, target: str, schema: str, label: str) -> str:
        _, root = self.fs()
        return posixpath.join(root, _safe(target), _safe(schema), label)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plan_stages(
    loader: Loader,
    url: str,
    schema: str,
    days: tuple[date, date],
    replay: bool,
    report: SyncReport | None = None,
    files_per_stage: int | None = None,
) -> list[StageOrder]:
    """The partitions of `days` (one per received day that has files to load), in archive
    order. Reads the ledger and the tables' columns, without the lock; counts the files
    seen and skipped into `report`. `files_per_stage` splits a day of more files into
    stages of that many, in archive order (a day too large for one worker).

    This listing is the run's, as a serial load's listing at its start is: a file that
    arrives later stays pending for the next run."""
    if report is None:
        report = SyncReport("", schema, loader.warehouse.target_name, url, "")
    files = loader.files_of_days(url, days, replay, report)
    todo = files if replay else pending_files(loader.warehouse, url, schema, files)
    report.files_seen += len(files)
    report.files_skipped += len(files) - len(todo)
    loader.begin(schema, replay, record_files=True)
    context = loader.encode_context()
    by_day: dict[date | None, list[ArchiveFile]] = {}
    for f in todo:
        by_day.setdefault(received_day(f.url), []).append(f)
    target = loader.warehouse.target_name
    days_in_order: list[date | None] = sorted(d for d in by_day if d is not None)
    if None in by_day:  # pending on every day: loaded after the dated ones
        days_in_order.append(None)
    orders = []
    for day in days_in_order:
        day_files = by_day[day]
        size = files_per_stage or len(day_files)
        parts = [day_files[i : i + size] for i in range(0, len(day_files), size)]
        for n, part in enumerate(parts):
            number = n if len(parts) > 1 else None
            orders.append(StageOrder(target, schema, day, replay, tuple(part), context, number))
    return orders


def stage(
    order: StageOrder, options: ReadOptions, area: StagingArea, readers: int = 0
) -> StagedPartition:
    """Read, validate, normalise and encode the order's files into a new folder of the
    staging area, one file per archive file, then the manifest (a stage without one
    was cut short and is never committed)."""
    started = time.perf_counter()
    fs, _ = area.fs()
    folder = posixpath.join(
        area.day_folder(order.target, order.schema, order.label), uuid.uuid4().hex
    )
    fs.makedirs(folder, exist_ok=True)
    checksums = []
    lines = 0
    for i, read in enumerate(
        read_files(list(order.files), options, readers, lambda: order.context)
    ):
        data = pickle.dumps(read.packed(), protocol=pickle.HIGHEST_PROTOCOL)
        checksums.append(hashlib.sha256(data).hexdigest())
        lines += read.lines
        with fs.open(posixpath.join(folder, f"{i:06d}.read"), "wb") as out:
            out.write(data)
    manifest = {
        "format": STAGE_FORMAT,
        "target": order.target,
        "schema": order.schema,
        "day": order.label,
        "replay": order.replay,
        "files": [
            {"url": f.url, "key": f.ledger_key, "size": f.size, "version": f.version}
            for f in order.files
        ],
        "sha256": checksums,
    }
    with fs.open(posixpath.join(folder, MANIFEST), "wb") as out:
        out.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    seconds = time.perf_counter() - started
    return StagedPartition(order, folder, tuple(checksums), lines, seconds)


def refusal(
    staged: StagedPartition,
    listed: Sequence[ArchiveFile],
    current: Sequence[ArchiveFile],
    known: dict[str, dict[str, Any]],
) -> str | None:
    """Why a staged partition may not be committed now, or None: `current` is what of
    its files it would load now (pending, listed under the lock; `listed` with those
    already loaded), `known` the tables' columns now."""
    order = staged.order
    planned = {f.url: f for f in order.files}
    for f in current:
        was = planned[f.url]
        if was.size != f.size or was.version != f.version:
            return f"{f.url} changed after the partition was staged"
    gone = sorted(set(planned) - {f.url for f in listed})
    if gone:
        return f"{gone[0]} is gone from the archive"
    for table, columns in order.context.known.items():
        now = known.get(table)
        if now is None:
            return f"table {table} is gone from the warehouse"
        for column, kind in columns.items():
            if now.get(column) is not kind:
                return f"column {table}.{column} changed in the warehouse"
    return None


def staged_reads(
    staged: StagedPartition, area: StagingArea, wanted: set[str]
) -> Iterator[FileRead]:
    """The staged FileReads of the files in `wanted`, in file order, each checked against
    its checksum before it is unpickled."""
    fs, _ = area.fs()
    for i, (f, checksum) in enumerate(zip(staged.order.files, staged.checksums, strict=True)):
        if f.url not in wanted:
            continue
        path = posixpath.join(staged.folder, f"{i:06d}.read")
        try:
            with fs.open(path, "rb") as source:
                data = source.read()
        except FileNotFoundError:
            raise StageRefused(f"staged file {path} is gone") from None
        if hashlib.sha256(data).hexdigest() != checksum:
            raise StageRefused(f"staged file {path} does not match its checksum")
        read = pickle.loads(data)
        if not isinstance(read, FileRead) or read.url != f.url:
            raise StageRefused(f"staged file {path} is not the stage of {f.url}")
        if not all(isinstance(parts, list) for parts in read.encoded.values()):
            raise StageRefused(f"staged file {path} is of an earlier stage format")
        yield read


def discard_day(area: StagingArea, order: StageOrder) -> None:
    """Delete every stage of the order's day (this one, and any cut short before)."""
    fs, _ = area.fs()
    folder = area.day_folder(order.target, order.schema, order.label)
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


@dataclass
class CommitClock:
    """Where a staged load spent its time: holding the lock, and in all."""

    started: float = field(default_factory=time.perf_counter)
    locked_s: float = 0.0

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started


def commit_staged(
    loader: Loader,
    url: str,
    staged: StagedPartition,
    area: StagingArea,
    report: SyncReport,
    restage: Callable[[StageOrder], StagedPartition],
    clock: CommitClock | None = None,
) -> None:
    """Commit one staged partition under the schema's lock, after every partition before
    it: the same batches as a serial load of its files. A refused stage is staged again
    (`restage`, with the order planned anew under the lock) and committed."""
    order = staged.order
    wh = loader.warehouse
    schema = order.schema
    held = time.perf_counter()
    try:
        with wh.lock(schema):
            loader.begin(schema, order.replay, record_files=True)
            listed, current = _loadable_now(loader, url, order)
            # Files another load committed since the plan count as skipped.
            report.files_skipped += len({f.url for f in order.files} - {f.url for f in current})
            why = refusal(staged, listed, current, loader.writer.known)
            if why is None:
                try:
                    _commit_reads(loader, staged, area, current, report)
                except StageRefused as exc:
                    # Batches before the bad file stand: stage what is left to load.
                    why = str(exc)
                    loader.begin(schema, order.replay, record_files=True)
                    _, current = _loadable_now(loader, url, order)
            if why is not None:
                report.warnings.append(f"partition {order.label} staged again: {why}")
                again = StageOrder(
                    order.target,
                    schema,
                    order.day,
                    order.replay,
                    tuple(current),
                    loader.encode_context(),
                    order.part,
                )
                _commit_reads(loader, restage(again), area, current, report)
    finally:
        if clock is not None:
            clock.locked_s += time.perf_counter() - held
    discard_day(area, order)


def commit_in_order(
    loader: Loader,
    url: str,
    staged: Iterable[StagedPartition],
    area: StagingArea,
    report: SyncReport,
    workers: int | str,
    on_committed: Callable[[StageOrder, CommitClock], None] | None = None,
) -> None:
    """Commit staged partitions one by one in the order given (archive order), each as
    soon as `staged` yields it; a refused one is staged again here. Adds the partitions,
    stage seconds and lock-held seconds to the report (`report.staged`)."""
    clock = CommitClock()
    done: list[StagedPartition] = []

    def restage(order: StageOrder) -> StagedPartition:
        return stage(order, loader.read_options(), area, readers=loader.readers)

    for part in staged:
        commit_staged(loader, url, part, area, report, restage, clock)
        done.append(part)
        if on_committed is not None:
            on_committed(part.order, clock)
    report.staged = {
        "partitions": len(done),
        "workers": workers,
        "stage_s": round(sum(s.seconds for s in done), 3),
        "lock_held_s": round(clock.locked_s, 3),
    }


def _loadable_now(
    loader: Loader, url: str, order: StageOrder
) -> tuple[list[ArchiveFile], list[ArchiveFile]]:
    """The partition's files as listed now, and those of them it would load now."""
    days = (order.day, order.day) if order.day is not None else None
    listed = SyncReport("", order.schema, loader.warehouse.target_name, url, "")
    planned = {f.url for f in order.files}
    files = [f for f in loader.files_of_days(url, days, order.replay, listed) if f.url in planned]
    if order.replay:
        return files, files
    return files, pending_files(loader.warehouse, url, order.schema, files)


def _commit_reads(
    loader: Loader,
    staged: StagedPartition,
    area: StagingArea,
    current: Sequence[ArchiveFile],
    report: SyncReport,
) -> None:
    todo = list(current)
    if loader.turned_off_source(staged.order.schema, todo, report):
        return
    wanted = {f.url for f in todo}
    reads = staged_reads(staged, area, wanted)
    loader.commit_reads(
        staged.order.schema, todo, reads, report, max(loader.batch_lines, STAGED_BATCH_LINES)
    )


def progress_of(orders: Sequence[StageOrder]) -> LoadProgress:
    files = [f for o in orders for f in o.files]
    return LoadProgress(len(files), sum(f.size for f in files))
