"""A reader that encodes does so every PART_LINES lines of a file, not once per file:
the tables a load ends with must not depend on where a file's parts begin and end.

Each archive here spans many parts of PART_LINES = 7 (a first value in one part
contradicted in the next, a column first seen in a later part, a messageId repeated
across parts, a broken line in a middle part, identifies, a gzip cut mid-file, a table
sent as tuples), and is loaded twice into one warehouse: parted, and with PART_LINES
larger than any file (one part per file, as before parts). Both schemas must hold the
same tables: columns in order with their types, rows, `_rescued_data`, rejects, and the
same report."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from loader.encode import file_reader
from loader.encode.file_reader import EncodeContext, ReadOptions, read_file
from loader.sources.archive import ArchiveFile
from loader.sync.pipeline import Loader
from loader.warehouses.duckdb import DuckDBWarehouse
from loader.warehouses.postgres import PostgresWarehouse
from tests.helpers import identify, track, write_ndjson
from tests.test_duckdb_arrow_path import _value

PART = 7
WHOLE = 1_000_000
DAY = "segment-logs/src/1793491200000"


def _at(i: int) -> str:
    return f"2026-11-01T10:{i // 60:02d}:{i % 60:02d}Z"


def _t(mid: str, i: int, **properties: Any) -> dict[str, Any]:
    return track(mid, "Order Completed", _at(i), **properties)


def _typed_then_contradicted() -> list[list[Any]]:
    """Part 1 types `price` bigint, `seen_at` timestamp, `amount` bigint; part 2 sends
    text, text, and fractions (which make `amount` a double, as in one chunk)."""
    first = [_t(f"a{i}", i, price=i, seen_at=_at(i), amount=i) for i in range(PART)]
    second = [_t(f"a{i}", i, price=f"p{i}", seen_at="soon", amount=i + 0.5) for i in range(7, 14)]
    third = [_t(f"a{i}", i, price=i, seen_at=_at(i), amount=i) for i in range(14, 24)]
    later = [_t(f"b{i}", 30 + i, price=1.5, amount="x") for i in range(12)]
    return [first + second + third, later]


def _column_in_a_later_part() -> list[list[Any]]:
    """`late` is null throughout part 1 (no evidence there) and first has a value in
    part 2, after `early` shows up: the table's columns keep the order of one chunk.
    `coupon` first appears in part 3, typed by its first value, contradicted in part 4."""
    rows: list[Any] = [_t(f"c{i}", i, late=None, n=i) for i in range(PART)]
    rows.append(_t("c7", 7, early="e"))
    rows += [_t(f"c{i}", i, late=i, early="e") for i in range(8, 14)]
    rows += [_t(f"c{i}", i, coupon=True) for i in range(14, 21)]
    rows += [_t(f"c{i}", i, coupon="C10") for i in range(21, 28)]
    return [rows, [_t(f"d{i}", 40 + i, coupon=False, late="text") for i in range(10)]]


def _repeated_ids() -> list[list[Any]]:
    """A messageId sent again in a later part of its file (first copy wins, with a new
    column in the copy only), and a second file whose first part repeats ids of the
    first file with other values."""
    rows = [_t(f"r{i}", i, v=i) for i in range(20)]
    rows[10] = _t("r3", 10, v="again", only_in_copy=1)
    rows[16] = _t("r15", 16, v=99)  # r15 comes after its copy: this one wins
    second = [_t(f"r{i}", 50 + i, v=f"x{i}", dup_col=1.5) for i in range(PART)]
    second += [_t(f"s{i}", 60 + i, v=i, dup_col=2) for i in range(9)]
    return [rows, second]


def _broken_line() -> list[list[Any]]:
    """A line that is not JSON, and one that is no message, in a middle part."""
    rows: list[Any] = [_t(f"k{i}", i, v=i) for i in range(21)]
    rows[9] = b'{"type": "track", "messageId": "broken'
    rows[12] = b"[1, 2, 3]"
    return [rows, [_t(f"l{i}", 30 + i, v=str(i)) for i in range(8)]]


def _identifies() -> list[list[Any]]:
    """Identifies spanning parts, a trait typed in part 1 and contradicted in part 2, a
    trait first seen in part 3, and tracks between them: users from the latest traits."""
    rows: list[Any] = []
    for i in range(30):
        user = f"u{i % 4}"
        if i % 3 == 0:
            rows.append(track(f"t{i}", "Signed In", _at(i), n=i))
        elif i < PART:
            rows.append(identify(f"i{i}", user, _at(i), _at(i), plan=i, name=f"n{i}"))
        elif i < 2 * PART:
            rows.append(identify(f"i{i}", user, _at(i), _at(i), plan=f"p{i}", name=None))
        else:
            rows.append(identify(f"i{i}", user, _at(i), _at(i), plan=i, vip=i % 2 == 0))
    second = [identify(f"j{i}", f"u{i % 3}", _at(40 + i), _at(40 + i), plan=0.5) for i in range(9)]
    return [rows, second]


def _truncated_gzip(root: Path) -> None:
    """A gzip cut in its fourth part, between files that load whole."""
    body = b"".join(
        orjson.dumps(_t(f"g{i}", i, v=i if i < 10 else f"t{i}", w=1.5)) + b"\n" for i in range(60)
    )
    data = gzip.compress(body)[:-150]
    path = root / DAY / "f01.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


ARCHIVES = {
    "typed_then_contradicted": _typed_then_contradicted,
    "column_in_a_later_part": _column_in_a_later_part,
    "repeated_ids": _repeated_ids,
    "broken_line": _broken_line,
    "identifies": _identifies,
}


def _archive(root: Path, name: str) -> Path:
    if name == "truncated_gzip":
        write_ndjson(root / DAY / "f00.gz", [_t(f"h{i}", i, v=i) for i in range(9)])
        _truncated_gzip(root)
        write_ndjson(root / DAY / "f02.gz", [_t(f"z{i}", 90 + i, v="z") for i in range(9)])
        return root
    for n, messages in enumerate(ARCHIVES[name]()):
        write_ndjson(root / DAY / f"f{n:02d}.gz", messages)
    return root


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if kind == "postgres":
        return PostgresWarehouse("pg", request.getfixturevalue("pg_dsn"))
    return DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))


def _tables(wh: Any, schema: str) -> dict[str, Any]:
    """Every table: its columns in order with their types, and its rows (sorted, values
    made comparable, `_rescued_data` parsed); load-time columns left out."""
    out: dict[str, Any] = {}
    for table, columns in sorted(wh.read_schema(schema).items()):
        names = [c for c in columns if c not in ("uuid_ts", "loaded_at")]
        select = ", ".join(f'"{c}"' for c in names)
        rows = sorted(
            tuple(json.dumps(_value(v), sort_keys=True, default=str) for v in r)
            for r in wh.query(f'SELECT {select} FROM "{schema}"."{table}"')
        )
        out[table] = ([(c, columns[c].value) for c in names], rows)
    return out


def _load(
    wh: Any, archive: Path, schema: str, part_lines: int, readers: int, mp: pytest.MonkeyPatch
) -> dict[str, Any]:
    mp.setattr(file_reader, "PART_LINES", part_lines)
    report = Loader(wh, batch_lines=10_000, readers=readers).load(str(archive), schema)
    rejects = sorted(
        (r["file"], r["line"], r["reason"], r["raw"]) for r in wh.recent_rejects(schema, limit=1000)
    )
    return {
        "tables": _tables(wh, schema),
        "rejects": rejects,
        "report": (
            report.status,
            report.rows_loaded,
            report.duplicates,
            report.rejects,
            report.rescued_values,
            report.lines_read,
            report.files_loaded,
            sorted(report.new_columns),
            sorted(report.new_tables),
            [(f["file"], f["line"], f["partial"]) for f in report.files_failed],
        ),
    }


def _same(parted: dict[str, Any], whole: dict[str, Any]) -> None:
    assert sorted(parted["tables"]) == sorted(whole["tables"])
    for table, (columns, rows) in whole["tables"].items():
        assert parted["tables"][table][0] == columns, table
        assert parted["tables"][table][1] == rows, table
    assert parted["rejects"] == whole["rejects"]
    assert parted["report"] == whole["report"]


@pytest.mark.parametrize("readers", [0, 2])
@pytest.mark.parametrize("name", [*ARCHIVES, "truncated_gzip"])
@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_parted_file_loads_as_one_chunk(
    kind: str,
    name: str,
    readers: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = _archive(tmp_path / "archive", name)
    wh = _open(kind, tmp_path, request)
    try:
        parted = _load(wh, archive, "parted", PART, readers, monkeypatch)
        whole = _load(wh, archive, "whole", WHOLE, readers, monkeypatch)
    finally:
        wh.close()
    _same(parted, whole)
    assert any(rows for _, rows in whole["tables"].values())


def test_the_cases_are_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archives above really exercise what they are named for (else the
    comparisons would pass for nothing)."""
    wh = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        for name in [*ARCHIVES, "truncated_gzip"]:
            archive = _archive(tmp_path / name, name)
            _load(wh, archive, name, PART, 0, monkeypatch)
        known = wh.read_schema("typed_then_contradicted")["order_completed"]
        assert [known[c].value for c in ("price", "seen_at", "amount")] == [
            "bigint",
            "timestamp",
            "double",
        ], known
        late = list(wh.read_schema("column_in_a_later_part")["order_completed"])
        assert late.index("late") < late.index("early") < late.index("coupon")
        rescued = wh.query(
            'SELECT count(*) FROM "typed_then_contradicted"."order_completed" '
            "WHERE _rescued_data IS NOT NULL"
        )
        assert next(iter(rescued))[0] >= 7
        assert "users" in wh.read_schema("identifies")
        v = dict(wh.query('SELECT id, v FROM "repeated_ids"."order_completed"'))
        assert (v["r3"], v["r15"], v["r0"]) == (3, 15, 0)
        assert len(wh.recent_rejects("broken_line")) == 2
        assert len(wh.recent_rejects("truncated_gzip")) == 1
    finally:
        wh.close()


def test_a_long_file_is_encoded_in_parts(tmp_path: Path) -> None:
    """A reader that encodes hands each table's rows over in parts of PART_LINES lines,
    in line order; the first part carries the whole file's evidence."""
    path = write_ndjson(tmp_path / "f.gz", _typed_then_contradicted()[0])
    options = ReadOptions(encoder=DuckDBWarehouse.capabilities.row_encoder, part_lines=PART)
    read = read_file(ArchiveFile(str(path), 1), options, EncodeContext({}, _at(0)))
    parts = read.encoded["order_completed"]
    assert [p.rows for p in parts] == [7, 7, 7, 3]
    assert [i for p in parts for i in p.ids] == read.ids
    assert [len(p) for p in (read.encoded["tracks"],)] == [4]
    assert all(p.arrow for p in parts)
    first = parts[0].evidence
    assert first["amount"].column_type.value == "double"  # fractions come in part 2
    assert parts[0].types["amount"].value == "bigint"  # ...which part 1 did not see
    assert parts[1].types["price"].value == "text"

    whole = read_file(
        ArchiveFile(str(path), 1),
        ReadOptions(encoder=options.encoder, part_lines=WHOLE),
        EncodeContext({}, _at(0)),
    )
    assert [len(p) for p in whole.encoded.values()] == [1, 1]
    assert whole.encoded["order_completed"][0].evidence == first
    assert list(whole.encoded["order_completed"][0].evidence) == list(first)
    assert whole.ids == read.ids and whole.lines == read.lines


def test_without_an_encoder_a_file_is_read_whole(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "f.gz", _typed_then_contradicted()[0])
    read = read_file(ArchiveFile(str(path), 1), ReadOptions(part_lines=PART))
    assert not read.encoded
    assert len(read.tables["order_completed"].rows) == 24


def test_a_table_sent_as_tuples_loads_as_one_chunk(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table with a column someone altered (binary COPY does not write numeric) goes
    to the loader as tuples, not encoded: its rows from a parted file are the same."""
    archive = tmp_path / "archive"
    write_ndjson(archive / DAY / "f00.gz", [_t(f"a{i}", i, v=i, w="x") for i in range(9)])
    wh = PostgresWarehouse("pg", pg_dsn)
    try:
        for schema in ("parted", "whole"):
            _load(wh, archive, schema, WHOLE, 0, monkeypatch)
            wh.execute(f'ALTER TABLE "{schema}"."order_completed" ALTER COLUMN v TYPE numeric')
        rows: list[Any] = [_t(f"b{i}", 20 + i, v=i, w=f"w{i}") for i in range(9)]
        rows += [_t(f"b{i}", 20 + i, w=i, late=1) for i in range(9, 16)]
        rows += [_t(f"b{i}", 20 + i, late=2.5, v=2.5, z=None) for i in range(16, 26)]
        rows[12] = _t("b3", 32, v=-1)
        write_ndjson(archive / DAY / "f01.gz", rows)
        write_ndjson(archive / DAY / "f02.gz", [_t(f"c{i}", 50 + i, late="t") for i in range(15)])
        parted = _load(wh, archive, "parted", PART, 2, monkeypatch)
        whole = _load(wh, archive, "whole", WHOLE, 2, monkeypatch)
        assert "order_completed" in wh.tables_taking_tuples("parted")
    finally:
        wh.close()
    _same(parted, whole)
    columns, loaded = parted["tables"]["order_completed"]
    assert ("late", "double") in columns and len(loaded) == 9 + 25 + 15
