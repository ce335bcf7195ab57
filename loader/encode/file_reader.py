"""One archive file -> validated, normalised rows, and the reader processes that do it.

Reading is the CPU-heavy half of a sync and touches no warehouse, so it runs in reader
processes beside the one that loads: while the loader coerces and COPYs one batch, the
readers parse the next files. Results come back in archive order, so "first copy of a
messageId wins" stays deterministic, and only a few files are in flight at a time, so
memory stays bounded by batch size.

A reader that encodes does so every PART_LINES lines, not once per file: a file's rows
as Python values are some ten times their encoded bytes, so a long file (Segment's can
hold 50,000 lines and more) would otherwise make a reader's peak its whole file's rows.
Each part is encoded against the tables as the loader knew them when the file was sent,
as a whole file would be, and the file's first part of a table carries the evidence of
the whole file (see `_file_evidence`): the loader then types new columns exactly as from
one chunk per file.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import IO, Any

import orjson

from loader.encode.encoded import EncodedChunk, RowEncoder, encode_table
from loader.rules.messages import Reject, nesting_depth, parse_line, storable_text, too_deep_reason
from loader.rules.normalize import (
    RowFilter,
    TableChunk,
    TableRows,
    event_table_name,
    fixed_columns,
    id_text,
    rows_into,
)
from loader.rules.schema import ColumnEvidence, ColumnType
from loader.rules.tracking_plan import TrackingPlan, Verdict, event_label
from loader.sources.archive import ArchiveFile, CorruptFile, iter_lines


@dataclass(slots=True)
class FileRead:
    """What one file holds, ready to merge into a batch: the messageIds of its valid
    lines (first copy within the file kept), their rows per table, and what failed.

    A gzip stream that breaks (truncated, damaged) keeps the lines read before the break
    and sets `failure` with `"partial": True` (the break is one of `rejects`); a file
    that cannot be read (vanished, unreadable) has `failure` with `"partial": False`
    and no rows, and is not to be recorded as loaded."""

    url: str
    lines: int = 0
    ids: list[str] = field(default_factory=list)
    tables: dict[str, TableChunk] = field(default_factory=dict)
    # Per table, the file's encoded parts in line order (one per PART_LINES lines that
    # hold rows of it); the first carries the whole file's evidence.
    encoded: dict[str, list[EncodedChunk]] = field(default_factory=dict)
    duplicates: int = 0
    rejects: list[Reject] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    failure: dict[str, Any] | None = None
    # What selective sync decided while reading (for the loader's report).
    decided: tuple[list[str], list[tuple[str, str]]] = ([], [])
    # Tracking plan: (event, property, kind) -> [example, count, first seen, last seen],
    # and the events it blocked (file, line, event, raw line, violations).
    violations: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)
    blocked: list[tuple[str, int, str, str, list[dict[str, Any]]]] = field(default_factory=list)
    # Per event (plan label): messages checked, and those with a violation.
    checked: dict[str, int] = field(default_factory=dict)
    violating: dict[str, int] = field(default_factory=dict)

    def packed(self) -> FileRead:
        """The read to be pickled (to the loader, or into a staging area), with each
        chunk's rows as read pickled apart: unpickled only if the loader needs them
        (EncodedChunk.packed)."""
        encoded = {table: [c.packed() for c in parts] for table, parts in self.encoded.items()}
        return replace(self, encoded=encoded)


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """Everything a reader needs besides the file; picklable for reader processes."""

    storage_options: dict[str, Any] | None = None
    row_filter: RowFilter | None = None
    users_on: bool = True
    accounts_on: bool = True
    # The warehouse's bulk format, when readers are to encode rows (loader.encode.encoded).
    encoder: RowEncoder | None = None
    text_width: int | None = None
    # The warehouse's row and _rescued_data widths (Capabilities), for row_layout.
    row_bytes: int | None = None
    rescued_bytes: int | None = None
    # The source's tracking plan; None keeps it off the per-event path entirely.
    plan: TrackingPlan | None = None
    # Lines per encoded part; None: this process's PART_LINES.
    part_lines: int | None = None


# Lines of a file whose rows are encoded together (when the reader encodes): a reader's
# peak memory is one part's rows as Python values plus its file's encoded bytes.
# Measured on a 50,000-line file with the tables known, a reader's peak above its
# imports: whole file 162 MB (PostgreSQL) / 244 MB (DuckDB), parts of 10,000 lines
# 57 / 115 MB, of 5,000 45 / 97 MB, of 2,000 37 / 88 MB; no slower to read, and 1M
# events of 10,000-line files load as fast as with one part per file.
PART_LINES = 5_000


@dataclass(frozen=True, slots=True)
class EncodeContext:
    """What encoding one file needs from the loader at the time it is sent: the table
    columns it knows, and the rows' `uuid_ts`."""

    known: dict[str, dict[str, ColumnType]]
    uuid_ts: str
    # Tables whose rows go back as tuples all the same (Warehouse.tables_taking_tuples).
    as_tuples: frozenset[str] = frozenset()


def read_file(
    archive_file: ArchiveFile, options: ReadOptions, context: EncodeContext | None = None
) -> FileRead:
    """Parse, validate and normalise every line of one file; with an encoder and a
    context, encode each table's rows too (`encoded` instead of `tables`)."""
    read = FileRead(archive_file.url)
    seen: set[str] = set()
    by_table: TableRows = {}
    row_filter = options.row_filter
    # Rows to be encoded here carry their common times parsed (the bulk format wants
    # datetimes); rows sent on as tuples carry the text, as every adapter takes it.
    as_datetimes = options.encoder is not None and context is not None and not context.as_tuples
    url = archive_file.url
    parts: _Parts | None = None
    part_lines = options.part_lines or PART_LINES
    part_end = -1  # never: rows not encoded here stay whole
    if options.encoder is not None and context is not None:
        parts = _Parts(read, options, options.encoder, context)
        part_end = part_lines
    try:
        for line_no, raw in iter_lines(url, options.storage_options):
            if read.lines == part_end and parts is not None:
                parts.encode(by_table)  # between two messages: the rows so far are whole
                part_end += part_lines
            read.lines += 1
            take_line(read, seen, by_table, raw, line_no, options, as_datetimes)
    except CorruptFile as exc:
        # Loaded up to the break; the break itself is one reject, keyed by file and line.
        read.failure = {"file": exc.file, "line": exc.line, "error": exc.reason, "partial": True}
        read.rejects.append(Reject(exc.file, exc.line, storable_text(exc.raw), exc.reason))
    except OSError as exc:
        # Not the data's fault (gone, unreadable, a dropped connection): nothing of the
        # file is kept, so the next run reads it whole.
        failed = FileRead(url, 0)
        failed.failure = {
            "file": url,
            "line": None,
            "error": _unreadable(exc),
            "partial": False,
        }
        return failed
    if row_filter is not None:
        read.decided = row_filter.decided_names()
    if parts is None:
        read.tables = {t: TableChunk.of_values(v, r) for t, (v, r) in by_table.items()}
        return read
    parts.encode(by_table)
    parts.finish()
    return read


def take_line(
    read: FileRead,
    seen: set[str],
    by_table: TableRows,
    raw: bytes,
    line_no: int,
    options: ReadOptions,
    as_datetimes: bool,
) -> bool:
    """One line of `read`'s file into `by_table` and `read` (its reject, duplicate, id,
    users/accounts key); whether its rows went in. The one per-line rule, shared by the
    reader processes and native mode's reference path."""
    url = read.url
    body = parse_line(raw, url, line_no)
    if type(body) is Reject:
        read.rejects.append(body)
        return False
    mid = body.message_id
    if mid in seen:
        read.duplicates += 1
        return False
    omitted: dict[str, Any] | None = None
    plan = options.plan
    if plan is not None:
        verdict = _apply_plan(plan, body, read, url, line_no, raw)
        if verdict is not None:
            if verdict.blocked:
                seen.add(mid)  # kept aside, not loaded: a replay reads it again
                return False
            if verdict.omit:
                omitted = _take_omitted(body, verdict.omit)
    try:
        rows_into(by_table, body, options.row_filter, as_datetimes)
        if omitted:
            _rescue_omitted(by_table, body, omitted)
    except RecursionError:  # decoded, but nested too deep to flatten here
        _drop_rows_of(by_table, mid)
        reason = too_deep_reason(nesting_depth(raw))
        read.rejects.append(Reject(url, line_no, storable_text(raw), reason))
        return False
    seen.add(mid)
    read.ids.append(mid)
    kind = body.type
    if kind == "identify":
        if options.users_on and body.user_id not in (None, ""):
            read.users.add(str(id_text(body.user_id)))  # as identifies.user_id holds it
    elif kind == "group" and options.accounts_on:
        read.accounts.add(str(id_text(body.group_id)))
    return True


class _Parts:
    """A file's rows encoded part by part into its FileRead (`encoded`); a table sent
    as tuples keeps its parts as tuples, joined into one chunk for `tables`."""

    __slots__ = ("read", "options", "encoder", "context", "names", "evidence", "tuples")

    def __init__(
        self, read: FileRead, options: ReadOptions, encoder: RowEncoder, context: EncodeContext
    ) -> None:
        self.read = read
        self.options = options
        self.encoder = encoder
        self.context = context
        # Per table: its names in order of first appearance in the file, and each
        # part's evidence (for `_file_evidence`).
        self.names: dict[str, dict[str, None]] = {}
        self.evidence: dict[str, list[dict[str, ColumnEvidence]]] = {}
        # Per table sent as tuples: its parts as tuples (far smaller than their dicts),
        # joined into one chunk at the end.
        self.tuples: dict[str, list[TableChunk]] = {}

    def encode(self, by_table: TableRows) -> None:
        """The rows so far of each table into one more part of it, and out of `by_table`.

        One table at a time, its rows dropped once encoded: a reader's peak memory is
        one part's rows plus one table's working copies, not every table's at once."""
        options, context, read = self.options, self.context, self.read
        for table in list(by_table):
            values, rescued = by_table.pop(table)
            chunk = TableChunk.of_values(values, rescued)
            del values
            if table in context.as_tuples:
                self.tuples.setdefault(table, []).append(chunk)
                continue
            encoded = encode_table(
                read.url,
                chunk,
                context.known.get(table),
                fixed_columns(table),
                context.uuid_ts,
                self.encoder,
                options.text_width,
                options.row_bytes,
                options.rescued_bytes,
            )
            read.encoded.setdefault(table, []).append(encoded)
            self.names.setdefault(table, {}).update(dict.fromkeys(chunk.names))
            self.evidence.setdefault(table, []).append(encoded.evidence)
            del chunk

    def finish(self) -> None:
        """The tables sent as tuples, each one chunk of the whole file; and the whole
        file's evidence into the first part of each table of several parts."""
        read = self.read
        for table, chunks in self.tuples.items():
            read.tables[table] = _joined(chunks)
        for table, chunks in read.encoded.items():
            if len(chunks) > 1:
                found = _file_evidence(self.names[table], self.evidence[table])
                if found != chunks[0].evidence:
                    chunks[0].evidence = found


def _joined(chunks: list[TableChunk]) -> TableChunk:
    """Consecutive parts of one table as the one chunk of their rows together: names in
    order of first appearance, a row lacking a name None there (as TableChunk.of_values)."""
    if len(chunks) == 1:
        return chunks[0]
    names = list(dict.fromkeys(chain.from_iterable(c.names for c in chunks)))
    width = len(names)
    rows: list[tuple[Any, ...]] = []
    rescued: list[dict[str, Any] | None] = []
    for chunk in chunks:
        have = len(chunk.names)
        if chunk.names == names[:have]:  # a prefix: padded
            pad = (None,) * (width - have)
            rows.extend(chunk.rows if not pad else (r + pad for r in chunk.rows))
        else:
            at = {name: i for i, name in enumerate(chunk.names)}
            picks = [at.get(name) for name in names]
            rows.extend(tuple(None if i is None else r[i] for i in picks) for r in chunk.rows)
        rescued.extend(chunk.rescued)
    return TableChunk(names, rows, rescued)


def _file_evidence(
    names: dict[str, None], parts: list[dict[str, ColumnEvidence]]
) -> dict[str, ColumnEvidence]:
    """The evidence one chunk of the whole file would carry, from its parts' (in line
    order; each encoded against the same known columns): per column, the first type of
    the first part where it has a value, with fractions if any part saw one; in order
    of the column's first appearance in the file."""
    if not any(parts):
        return {}
    present = set(chain.from_iterable(parts))
    merged: dict[str, ColumnEvidence] = {}
    for name in names:
        if name not in present:
            continue
        found = [p[name] for p in parts if name in p]
        first = found[0]
        saw_double = any(f.saw_double for f in found)
        merged[name] = (
            first if saw_double == first.saw_double else ColumnEvidence(first.first, saw_double)
        )
    return merged


def _apply_plan(
    plan: TrackingPlan, body: Any, read: FileRead, url: str, line_no: int, raw: bytes
) -> Verdict | None:
    """Check one message against the plan: count its violations and keep it aside
    when it is blocked."""
    kind = body.type
    props = body.properties if kind == "track" else body.traits
    label = event_label(kind, body.event)
    verdict = plan.check(kind, label, props)
    checked = read.checked
    checked[label] = checked.get(label, 0) + 1
    if verdict is None:
        return None
    read.violating[label] = read.violating.get(label, 0) + 1
    seen_at = body.received_at or ""
    violations = read.violations
    for v in verdict.violations:
        key = (label, v.property, v.kind)
        entry = violations.get(key)
        if entry is None:
            violations[key] = [_example(v.value), 1, seen_at, seen_at]
        else:
            entry[1] += 1
            if seen_at and (not entry[2] or seen_at < entry[2]):
                entry[2] = seen_at
            if seen_at > entry[3]:
                entry[3] = seen_at
    if verdict.blocked:
        listed = [v.as_dict() for v in verdict.violations]
        read.blocked.append((url, line_no, label, storable_text(raw), listed))
    return verdict


def _take_omitted(body: Any, omit: frozenset[str]) -> dict[str, Any]:
    """Take the properties (traits) the plan omits out of the message; their values."""
    kind = body.type
    props = (body.properties if kind == "track" else body.traits) or {}
    omitted = {k: props[k] for k in omit if k in props}
    kept = {k: v for k, v in props.items() if k not in omit}
    if kind == "track":
        body.properties = kept
    else:
        body.traits = kept
    return omitted


def _rescue_omitted(by_table: TableRows, body: Any, omitted: dict[str, Any]) -> None:
    """Put the values the plan omitted into the `_rescued_data` of the message's row
    (its event table, identifies or groups), under their original keys."""
    kind = body.type
    if kind == "track":
        table = event_table_name(event_label(kind, body.event))
    else:
        table = "identifies" if kind == "identify" else "groups"
    rows = by_table.get(table)
    if not rows or not rows[0] or rows[0][-1].get("id") != body.message_id:
        return  # the table is turned off by selective sync: nothing to rescue into
    rescued = rows[1][-1]
    if rescued is None:
        rescued = rows[1][-1] = {}
    rescued.update(omitted)


def _example(value: Any) -> str | None:
    """A violating value as _sluice.violations shows it: JSON text, cut to 200 chars."""
    if value is None:
        return None
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text[:200]


def _drop_rows_of(by_table: TableRows, mid: str) -> None:
    """Undo the rows one message had appended before its normalisation failed (each is
    the last of its table's rows: a `tracks` row is built before its event table's)."""
    for table in list(by_table):
        values, rescued = by_table[table]
        if values and values[-1].get("id") == mid:
            values.pop()
            rescued.pop()
            if not values:
                del by_table[table]


def _unreadable(exc: OSError) -> str:
    """Why a listed file could not be read, as a clause; a file gone since the listing
    (deleted or moved while the load ran) says so in those words."""
    if isinstance(exc, FileNotFoundError):
        return "could not be read: it disappeared during the load (deleted or moved)"
    return f"could not be read: {_os_error_text(exc)}"


def _os_error_text(exc: OSError) -> str:
    """An I/O error as one clause: `[Errno 2] No such file or directory: 'x'` reads as
    "no such file or directory" (the file is named by the caller)."""
    if exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def default_readers() -> int:
    """One reader per core: readers, loader and warehouse then share the cores (measured
    on 2 cores: 2 readers 31k events/s, 1 reader 25k, reading in-process 21k)."""
    return max(1, min(8, os.cpu_count() or 1))


class _ReaderProcess:
    """A `python -m loader.encode.file_reader` child fed (file, options) and answering FileReads
    over its pipes, length-prefixed pickles. A plain subprocess rather than
    multiprocessing: nothing of the parent (its __main__, threads, connections) is
    re-imported or forked, and the child exits when the parent's end of the pipe closes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loader.encode.file_reader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def send(
        self, archive_file: ArchiveFile, options: ReadOptions, context: EncodeContext | None
    ) -> None:
        assert self.process.stdin is not None
        _write_frame(self.process.stdin, (archive_file, options, context))

    def receive(self) -> FileRead:
        assert self.process.stdout is not None
        read = _read_frame(self.process.stdout)
        if read is None:
            code = self.process.wait()
            raise RuntimeError(f"an archive reader process exited with code {code}")
        if isinstance(read, BaseException):
            raise read
        return read

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _write_frame(stream: IO[bytes], obj: Any) -> None:
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - sent as the answer's error instead
        error = RuntimeError(f"an archive reader's answer could not be sent: {exc}")
        data = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    data = _read_frame_bytes(stream)
    return None if data is None else pickle.loads(data)


def _read_frame_bytes(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None  # the other side stopped mid-frame (Ctrl-C, a crash): the end
    return body


_FRAME = struct.Struct("<Q")


def read_files(
    files: Sequence[ArchiveFile],
    options: ReadOptions,
    readers: int,
    context: Callable[[], EncodeContext | None] = lambda: None,
) -> Iterator[FileRead]:
    """FileReads in archive order: in this process when `readers` is 0 or there is too
    little to share, else in `readers` processes, file i going to reader i mod n, with
    at most two files queued per reader (a reader blocks on its full pipe until the
    loader takes its result, so memory stays bounded). `context` is asked as each file
    is sent, so a file is encoded against the tables as the loader knows them then."""
    if readers <= 0 or len(files) < 2:
        for archive_file in files:
            yield read_file(archive_file, options, context())
        return
    pool = [_ReaderProcess() for _ in range(min(readers, len(files)))]
    sent = 0
    try:
        for received in range(len(files)):
            while sent < len(files) and sent < received + 2 * len(pool):
                pool[sent % len(pool)].send(files[sent], options, context())
                sent += 1
            yield pool[received % len(pool)].receive()
    finally:
        for reader in pool:
            reader.close()


# How much lower a reader's CPU priority is than the loading process's. The loading
# process and the warehouse's backend are one serial lane (rows are COPYed while the
# loader waits); readers work ahead with files queued, so they should take what CPU that
# lane leaves. Measured at 1M events into PostgreSQL on 2 cores: +3% to +9% events/s.
READER_NICENESS = 10


def _yield_cpu() -> None:
    nice = getattr(os, "nice", None)  # POSIX only
    if nice is not None:
        nice(READER_NICENESS)


class _NoPandas:
    """An import finder that refuses pandas. pyarrow imports pandas, if it can, the
    first time it builds an array from a Python list (to ask whether the list is a pandas
    object), and no public switch stops it: 55 MB more in each reader process, which
    never uses pandas. Refused, pyarrow takes it for absent and carries on."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("reader processes do not load pandas", name=name)
        return None


def _serve() -> None:
    """The reader process: answer each request on stdin with its FileRead on stdout."""
    sys.meta_path.insert(0, _NoPandas())
    # Ctrl-C reaches the whole process group: the loader alone handles it, and closes
    # this reader's pipe (which ends it) once it has stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the answer stream
    gc.disable()  # FileReads hold no cycles; see pipeline._cyclic_gc_paused
    _yield_cpu()
    # Requests are taken off the pipe as they come, by a thread: a request larger than
    # the pipe's buffer (the loader's schema, a selective-sync filter) must never wait
    # for an answer the loader is not reading yet because it is still writing that
    # request (both sides blocked on a full pipe).
    pending: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def take_requests() -> None:
        while True:
            try:
                data = _read_frame_bytes(requests)
            except OSError:
                data = None  # the loader's end is gone
            if data is None:
                pending.put(None)
                return
            try:
                pending.put(pickle.loads(data))
            except Exception as exc:  # noqa: BLE001 - this request's answer, not a hang
                pending.put(_picklable(exc))

    threading.Thread(target=take_requests, name="requests", daemon=True).start()
    try:
        while True:
            request = pending.get()
            if request is None:
                return
            if isinstance(request, Exception):
                answer: Any = request  # a request that could not be unpickled
            else:
                archive_file, options, context = request
                try:
                    answer = read_file(archive_file, options, context).packed()
                except Exception as exc:  # noqa: BLE001 - re-raised in the loader process
                    answer = _picklable(exc)
            _write_frame(answers, answer)
            answer = None
    except (BrokenPipeError, KeyboardInterrupt):
        # The loader stopped (an error, Ctrl-C) and closed its end: it reports why, and
        # a reader has nothing to add, least of all a traceback.
        os._exit(0)


def _picklable(exc: Exception) -> Exception:
    """The error itself when it pickles (the loader re-raises it as it was), else a
    RuntimeError with its text."""
    try:
        pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


if __name__ == "__main__":
    # Through the importable module, so the FileReads pickle as loader.encode.file_reader's.
    from loader.encode.file_reader import _serve as serve

    serve()
