"""Reading archive files: line splitting, and reader processes that must give exactly
what reading in the loader's own process gives."""

from __future__ import annotations

import gzip
from pathlib import Path

import psycopg
import pytest

from loader.encode.file_reader import ReadOptions, read_file, read_files
from loader.sources import archive
from loader.sources.archive import ArchiveFile, CorruptFile, iter_lines, list_files
from loader.sync.pipeline import Loader
from tests.helpers import ExplodingFilter, identify, snapshot, track, write_ndjson


@pytest.mark.parametrize("gz", [True, False])
def test_lines_are_numbered_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool
) -> None:
    monkeypatch.setattr(archive, "_BLOCK_BYTES", 7)  # lines straddle many blocks
    body = b'{"a": 1}\r\n\n   \n{"b": "two words"}\n{"c": 3}'  # CRLF, blanks, no final \n
    path = tmp_path / ("f.ndjson.gz" if gz else "f.ndjson")
    path.write_bytes(gzip.compress(body) if gz else body)
    assert list(iter_lines(str(path))) == [
        (1, b'{"a": 1}'),
        (4, b'{"b": "two words"}'),
        (5, b'{"c": 3}'),
    ]


def test_corrupt_gzip_names_file_and_line(tmp_path: Path) -> None:
    good = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(50_000)))
    path = tmp_path / "broken.gz"
    path.write_bytes(good[: len(good) // 2] + b"\x00garbage")
    with pytest.raises(CorruptFile) as caught:
        for _ in iter_lines(str(path)):
            pass
    assert caught.value.file == str(path)
    assert caught.value.line > 1  # the lines before the damage were read
    assert "corrupt gzip" in str(caught.value)


def test_concatenated_gzip_members_read_as_one_file(tmp_path: Path) -> None:
    """`cat a.gz b.gz` is a valid gzip file (RFC 1952 members); bytes after the last
    member that are not gzip are a break after every line was read."""
    one = gzip.compress(b'{"a": 1}\n{"b": 2}\n')
    two = gzip.compress(b'{"c": 3}\n')
    path = tmp_path / "cat.ndjson.gz"
    path.write_bytes(one + two)
    assert [n for n, _ in iter_lines(str(path))] == [1, 2, 3]
    path.write_bytes(one + two + b"\x00\x00trailing")
    read = []
    with pytest.raises(CorruptFile) as caught:
        for item in iter_lines(str(path)):
            read.append(item)
    assert read == [(1, b'{"a": 1}'), (2, b'{"b": 2}'), (3, b'{"c": 3}')]
    assert caught.value.line == 4 and "not gzip" in caught.value.reason


def _archive(root: Path) -> Path:
    """Three files: cross-file duplicates, a malformed line, a corrupt file."""
    write_ndjson(
        root / "a" / "1.ndjson.gz",
        [track("t1", revenue=1), track("t2", revenue=2.5), b"not json", track("t1", revenue=1)],
    )
    write_ndjson(
        root / "b" / "2.ndjson.gz",
        [
            track("t2", revenue=2.5),  # duplicate of the first file's t2: first copy wins
            track("t3", "Signed Up", plan="pro"),
            identify("i1", "u1", "2026-11-01T10:00:00Z", "2026-11-01T10:00:01Z", plan="pro"),
        ],
    )
    (root / "c").mkdir()
    (root / "c" / "3.ndjson.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    write_ndjson(root / "d" / "4.ndjson.gz", [track(f"x{i}", n=i) for i in range(300)])
    return root


def test_reader_processes_return_what_reading_here_returns(tmp_path: Path) -> None:
    files = list_files(str(_archive(tmp_path)))
    options = ReadOptions()
    here = list(read_files(files, options, readers=0))
    there = list(read_files(files, options, readers=2))
    assert [r.url for r in there] == [f.url for f in files]  # archive order kept
    assert there == here
    assert here[0].duplicates == 1 and len(here[0].rejects) == 1
    assert here[2].failure is not None and "corrupt gzip" in here[2].failure["error"]


def test_an_error_in_a_reader_process_reaches_the_loader(tmp_path: Path) -> None:
    real = write_ndjson(tmp_path / "ok.ndjson.gz", [track("t1")])
    files = [ArchiveFile(str(real), 1), ArchiveFile(str(real), 1)]
    with pytest.raises(ValueError, match="boom in tracks"):
        list(read_files(files, ReadOptions(row_filter=ExplodingFilter()), readers=2))


class _LocalFilter(ExplodingFilter):
    """Defined in a test module a reader process cannot import."""


@pytest.mark.timeout(60)
def test_a_request_a_reader_cannot_unpickle_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """The reader's request thread died on it and both processes waited forever."""
    real = write_ndjson(tmp_path / "ok.ndjson.gz", [track("t1")])
    files = [ArchiveFile(str(real), 1), ArchiveFile(str(real), 1)]
    with pytest.raises(ModuleNotFoundError):
        list(read_files(files, ReadOptions(row_filter=_LocalFilter()), readers=2))


def test_a_missing_file_is_a_failure_of_that_file_alone(tmp_path: Path) -> None:
    real = write_ndjson(tmp_path / "ok.ndjson.gz", [track("t1")])
    files = [ArchiveFile(str(real), 1), ArchiveFile(str(tmp_path / "gone.ndjson.gz"), 1)]
    here, gone = read_files(files, ReadOptions(), readers=2)
    assert here.ids == ["t1"] and here.failure is None
    assert gone.failure == {
        "file": str(tmp_path / "gone.ndjson.gz"),
        "line": None,
        "error": "could not be read: it disappeared during the load (deleted or moved)",
        "partial": False,
    }
    assert not gone.ids and not gone.tables and not gone.rejects


def test_read_file_fills_the_corrected_timestamp(tmp_path: Path) -> None:
    message = track("t1")
    message.update(
        receivedAt="2026-11-01T10:00:10Z",
        sentAt="2026-11-01T10:00:05Z",
        originalTimestamp="2026-11-01T09:59:00Z",
    )
    path = write_ndjson(tmp_path / "f.ndjson.gz", [message])
    read = read_file(ArchiveFile(str(path), 1), ReadOptions())
    tracks = read.tables["tracks"]
    row = dict(zip(tracks.names, tracks.rows[0], strict=True))
    # received - (sent - original): it happened 65 s before it was sent, by server time.
    assert row["timestamp"] == "2026-11-01T09:59:05+00:00"


def test_loads_with_and_without_reader_processes_are_identical(open_wh, tmp_path: Path) -> None:
    source = str(_archive(tmp_path / "archive"))
    wh = open_wh()
    serial = Loader(wh, batch_lines=3, readers=0).load(source, "serial")
    parallel = Loader(wh, batch_lines=3, readers=2).load(source, "parallel")
    assert snapshot(wh, "serial") == snapshot(wh, "parallel")
    for field in ("rows_loaded", "duplicates", "rejects", "files_loaded", "lines_read"):
        assert getattr(serial, field) == getattr(parallel, field), field
    assert parallel.rows_loaded["tracks"] == 303 and parallel.duplicates == 2
    assert [f["file"] for f in parallel.files_failed] == [f"{source}/c/3.ndjson.gz"]


def test_a_concurrently_inserted_id_falls_back_to_the_staged_path(pg_dsn: str) -> None:
    """The direct COPY path checks ids first; if another writer inserts one of them in
    between, the unique violation is rolled back and the staged path inserts the rest."""
    from loader.rules.schema import ColumnType
    from loader.warehouses.postgres import PostgresWarehouse

    wh = PostgresWarehouse("pg", pg_dsn)
    wh.create_table("s", "t", {"id": ColumnType.TEXT, "n": ColumnType.BIGINT})
    real_execute = wh.conn.execute

    def racing_execute(sql, params=None, **kwargs):
        result = real_execute(sql, params, **kwargs)
        if sql.startswith("SELECT id FROM"):  # right after the probe saw no 'b'
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute("INSERT INTO s.t (id, n) VALUES ('b', 99)")
        return result

    wh.conn.execute = racing_execute  # type: ignore[method-assign]
    with wh.transaction():
        inserted = wh.insert_new_rows("s", "t", ["id", "n"], [("a", 1), ("b", 2), ("c", 3)])
    wh.conn.execute = real_execute  # type: ignore[method-assign]
    assert inserted == 2
    assert sorted(wh.query("SELECT id, n FROM s.t")) == [("a", 1), ("b", 99), ("c", 3)]
    wh.close()


@pytest.mark.timeout(120)
def test_requests_and_answers_larger_than_a_pipe_never_deadlock(tmp_path: Path) -> None:
    """A table with thousands of columns makes every request (the loader's schema, and
    a selective-sync filter) and every answer larger than a pipe's buffer: the loader
    blocked writing a request while the reader is blocked writing an answer must not
    happen."""
    from loader.rules.selective_sync import parse
    from loader.warehouses.duckdb import DuckDBWarehouse

    wide = {f"property_number_{n}": n for n in range(3000)}
    for f in range(6):
        write_ndjson(
            tmp_path / "a" / f"{f}.ndjson.gz",
            [track(f"m{f}-{i}", **wide) for i in range(20)],
        )
    text = (
        "targets:\n  t:\n    s:\n      properties:\n        order_completed: [property_number_1*]\n"
    )
    rules, issues = parse(text, "selective_sync.yml")
    assert not issues
    wh = DuckDBWarehouse("t", str(tmp_path / "w.duckdb"))
    try:
        loader = Loader(wh, batch_lines=20, readers=2, sync_filter=rules.filter_for("t", "s"))
        report = loader.load(str(tmp_path / "a"), "s")
        assert report.rows_loaded["order_completed"] == 120
        columns = wh.read_schema("s")["order_completed"]
        assert "property_number_2999" in columns and "property_number_1999" not in columns
    finally:
        wh.close()


def test_reader_processes_yield_the_cpu_to_the_loading_process(tmp_path: Path) -> None:
    """Readers work ahead of the loader; the loader and the warehouse backend it waits
    on are the serial lane, so readers run at a lower CPU priority."""
    import os

    from loader.encode.file_reader import READER_NICENESS, _ReaderProcess

    path = write_ndjson(tmp_path / "a.gz", [track("m1")])
    reader = _ReaderProcess()
    try:
        reader.send(ArchiveFile(str(path), 0), ReadOptions(), None)
        assert reader.receive().lines == 1
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        theirs = os.getpriority(os.PRIO_PROCESS, reader.process.pid)
        assert theirs == min(19, mine + READER_NICENESS)
    finally:
        reader.close()


def test_reader_processes_build_arrow_batches_without_loading_pandas(tmp_path: Path) -> None:
    """pyarrow would import pandas into a reader the first time it builds an array
    (55 MB a reader, never used): the reader refuses it and still encodes."""
    from loader.encode.arrow_batches import ArrowEncoder, read_table
    from loader.encode.file_reader import EncodeContext, _ReaderProcess

    path = write_ndjson(tmp_path / "a.gz", [track("m1", n=1), track("m2", n=2)])
    context = EncodeContext(known={}, uuid_ts="2026-11-01T10:00:00+00:00")
    reader = _ReaderProcess()
    try:
        reader.send(ArchiveFile(str(path), 0), ReadOptions(encoder=ArrowEncoder()), context)
        read = reader.receive()
        table = read_table([part.payload for part in read.encoded["order_completed"]])
        assert table.column("n").to_pylist() == [1, 2]
        maps = Path(f"/proc/{reader.process.pid}/maps").read_text()
        assert "pyarrow" in maps
        assert "/pandas/" not in maps
    finally:
        reader.close()
