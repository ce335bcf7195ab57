"""Rows encoded by reader processes (PostgreSQL's binary COPY) load exactly what the
tuple path loads: types decided by the first file a column has values in, awkward values
intact, duplicates dropped within a batch, across batches and against earlier syncs."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from loader.encode.encoded import EncodedChunk
from loader.rules.normalize import TableChunk
from loader.rules.schema import ColumnEvidence, column_evidence
from loader.sync.pipeline import Loader
from loader.warehouses.postgres import PostgresWarehouse
from tests.helpers import identify, snapshot, table_rows, track, write_ndjson

T = "2026-11-01T10:00:00Z"

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-01", "not a time"]),
)


@given(st.lists(st.lists(VALUES, max_size=8), max_size=4))
def test_evidence_of_files_is_the_first_file_with_a_value(files: list[list[Any]]) -> None:
    """What lets readers type columns file by file, and batching not matter: merging the
    files' evidence in archive order, in any grouping, gives the evidence of the first
    file where the column has a value."""
    found = [e for e in map(column_evidence, files) if e is not None]
    expected = found[0] if found else None
    for split in range(len(found) + 1):
        left, right = found[:split], found[split:]
        parts = [p for p in (left, right) if p]
        merged = [functools.reduce(ColumnEvidence.then, p) for p in parts]
        assert (functools.reduce(ColumnEvidence.then, merged) if merged else None) == expected


def _archive(root: Path, files: list[list[dict[str, Any]]]) -> Path:
    for n, messages in enumerate(files):
        write_ndjson(root / "segment-logs" / "src" / "1793491200000" / f"f{n:02d}.gz", messages)
    return root


class TuplePostgres(PostgresWarehouse):
    """The same adapter without a row encoder: readers hand over tuples (the path every
    other adapter takes), the reference the encoded path must match."""

    capabilities = replace(PostgresWarehouse.capabilities, row_encoder=None)


def _both(archive: Path, pg_dsn: str, batch_lines: int = 10_000) -> tuple:
    """Schema `s` loaded with reader processes encoding rows, schema `t` with tuples,
    and their reports."""
    pg = PostgresWarehouse("pg", pg_dsn)
    assert pg.capabilities.row_encoder is not None
    pg_report = Loader(pg, batch_lines=batch_lines, readers=2).load(str(archive), "s")
    ref = TuplePostgres("pg", pg_dsn)
    ref_report = Loader(ref, batch_lines=batch_lines, readers=2).load(str(archive), "t")
    assert snapshot(pg, "s") == snapshot(ref, "t")
    for report in (pg_report, ref_report):
        report.schema, report.run_id, report.started_at, report.finished_at = "", "", "", ""
        report.duration_s = 0.0
    assert pg_report == ref_report
    return pg, pg_report, ref, ref_report


def test_new_column_typed_by_the_first_file_of_the_batch(tmp_path: Path, pg_dsn: str) -> None:
    """File 1 shows `quantity` as text first, file 2 as numbers: the column is text in
    both loads, file 2's numbers are kept as their text (not coerced twice)."""
    archive = _archive(
        tmp_path / "a",
        [
            [track("m1", quantity="many"), track("m2", quantity=3)],
            [track("m3", quantity=2.5), track("m4", quantity=7)],
            [track("m5", ratio=1), track("m6", ratio=2.5, gift=True)],
        ],
    )
    pg, pg_report, ref, ref_report = _both(archive, pg_dsn)
    try:
        assert pg.read_schema("s")["order_completed"]["quantity"].value == "text"
        assert pg.read_schema("s")["order_completed"]["ratio"].value == "double"
        rows = dict(table_rows(pg, "SELECT id, quantity FROM s.order_completed"))
        assert rows == {"m1": "many", "m2": "3", "m3": "2.5", "m4": "7", "m5": None, "m6": None}
    finally:
        pg.close()
        ref.close()


def test_awkward_values_round_trip_through_binary_copy(tmp_path: Path, pg_dsn: str) -> None:
    awkward = {
        "note": 'tab\there, newline\nthere, back\\slash, "quotes", ünïcödé, emoji 🎉',
        "blank": "",
        "big": 2**62,
        "bigger": 1e20,
        "tiny": -0.000001,
        "flag": False,
        "seen_at": "2026-11-01T10:00:00+02:00",
        "items": [1, "two", {"three": 3}],
    }
    later = {
        "note": 5,  # a number in a text column: its JSON text
        "blank": None,
        "big": 1.5,  # a fraction in a bigint column: rescued
        "bigger": 3,
        "tiny": 1,
        "flag": "yes",  # rescued
        "seen_at": "2026-11-01T08:00:00",  # no offset: UTC
        "items": [],
    }
    archive = _archive(tmp_path / "a", [[track("m1", **awkward)], [track("m2", **later)]])
    # One file per batch: the second meets the columns the first created.
    pg, pg_report, ref, ref_report = _both(archive, pg_dsn, batch_lines=1)
    try:
        assert pg_report.rescued_values == 2
        ((note, blank, seen_at, rescued),) = table_rows(
            pg,
            "SELECT note, blank, seen_at::text, _rescued_data FROM s.order_completed "
            "WHERE id = 'm1'",
        )
        assert (note, blank) == (awkward["note"], "")
        assert seen_at == "2026-11-01 08:00:00+00"
        assert rescued is None
        ((later_note, later_seen_at, later_rescued),) = table_rows(
            pg,
            "SELECT note, seen_at::text, _rescued_data FROM s.order_completed WHERE id = 'm2'",
        )
        assert (later_note, later_seen_at) == ("5", "2026-11-01 08:00:00+00")
        assert later_rescued == {"big": 1.5, "flag": "yes"}
    finally:
        pg.close()
        ref.close()


def test_duplicates_within_across_batches_and_runs(tmp_path: Path, pg_dsn: str) -> None:
    """A re-send in the next file, two batches later, and in a later sync: each id is
    loaded once, first copy wins, and every repeat is counted."""
    first = [track(f"m{i}", n=i) for i in range(10)]
    files = [
        first,
        [track("m9", n=-1), *[track(f"m{i}", n=i) for i in range(10, 20)]],  # next file
        [track(f"m{i}", n=i) for i in range(20, 30)],
        [track("m1", n=-1), *[track(f"m{i}", n=i) for i in range(30, 40)]],  # 2 batches on
    ]
    archive = _archive(tmp_path / "a", files)
    pg, pg_report, ref, ref_report = _both(archive, pg_dsn, batch_lines=10)
    try:
        assert pg_report.rows_loaded["order_completed"] == 40
        assert pg_report.duplicates == 2
        assert dict(table_rows(pg, "SELECT id, n FROM s.order_completed"))["m1"] == 1
        # A later archive overlapping the loaded one: only new ids go in.
        write_ndjson(
            tmp_path / "a" / "segment-logs" / "src" / "1793577600000" / "g.gz",
            [track("m5", n=-5), track("m40", n=40)],
        )
        again = Loader(pg, readers=2).load(str(tmp_path / "a"), "s")
        assert again.rows_loaded["order_completed"] == 1
        assert again.duplicates == 1
        assert dict(table_rows(pg, "SELECT id, n FROM s.order_completed"))["m5"] == 5
    finally:
        pg.close()
        ref.close()


def test_replay_fills_nulls_through_the_encoded_path(tmp_path: Path, pg_dsn: str) -> None:
    archive = _archive(tmp_path / "a", [[track("m1", a=1)], [track("m2", a=2)]])
    pg = PostgresWarehouse("pg", pg_dsn)
    try:
        Loader(pg, readers=2).load(str(archive), "s")
        pg.conn.execute("UPDATE s.order_completed SET a = NULL WHERE id = 'm2'")
        from datetime import date

        report = Loader(pg, readers=2).replay(
            str(archive), "s", date(2026, 11, 1), date(2026, 11, 1)
        )
        assert report.status == "success"
        assert dict(table_rows(pg, "SELECT id, a FROM s.order_completed")) == {"m1": 1, "m2": 2}
    finally:
        pg.close()


def test_dropping_rows_keeps_the_rest_of_the_payload_aligned() -> None:
    chunk = EncodedChunk(
        url="f",
        columns=("id",),
        payload=b"aaBBBcccc",
        row_ends=[2, 5, 9],
        ids=["a", "b", "c"],
        types={},
        evidence={},
        rescued_at=[1, 2, 2],
    )
    kept = chunk.without_ids({"b"})
    assert (kept.payload, kept.row_ends, kept.ids) == (b"aacccc", [2, 6], ["a", "c"])
    assert kept.rescued_at == [1, 1]
    assert chunk.without_ids(set()) is chunk


@given(st.lists(st.sets(st.sampled_from("abcdef")), max_size=3))
def test_rows_as_read_kept_packed_lose_the_same_rows_as_when_kept_unpacked(
    drops: list[set[str]],
) -> None:
    """A staged chunk keeps its rows as read pickled; dropping duplicates from it (once
    or batch after batch) then unpacking gives what dropping from the rows did."""
    ids = list("abcdef")
    raw = TableChunk(["id", "n"], [(i, n) for n, i in enumerate(ids)], [None] * 6)
    ends = list(range(1, 7))
    chunk = EncodedChunk("f", ("id",), b"abcdef", ends, ids, {}, {}, [], raw)
    packed = chunk.packed()
    assert packed.raw is None and packed.raw_packed is not None
    for drop in drops:
        chunk, packed = chunk.without_ids(drop), packed.without_ids(drop)
    assert packed.ids == chunk.ids and packed.payload == chunk.payload
    unpacked, plain = packed.rows_as_read(), chunk.rows_as_read()
    assert unpacked is not None and plain is not None
    assert (unpacked.names, unpacked.rows, unpacked.rescued) == (
        plain.names,
        plain.rows,
        plain.rescued,
    )
    # Still typed from the file as read, dropped rows and all.
    as_read = unpacked.as_read or unpacked
    assert as_read.rows == raw.rows


@given(
    st.lists(st.binary(max_size=5), max_size=30),
    st.data(),
)
def test_dropping_any_rows_leaves_exactly_the_others(
    rows: list[bytes], data: st.DataObject
) -> None:
    """Runs of kept rows are cut out whole; every kept row keeps its bytes, its id and
    its rescued values, wherever the dropped rows fall (first, last, adjacent, all)."""
    ids = [f"m{i}" for i in range(len(rows))]
    drop = set(data.draw(st.lists(st.sampled_from(ids), unique=True) if ids else st.just([])))
    rescued_at = sorted(data.draw(st.lists(st.integers(0, len(rows) - 1)) if rows else st.just([])))
    ends, at = [], 0
    for row in rows:
        at += len(row)
        ends.append(at)
    chunk = EncodedChunk("f", ("id",), b"".join(rows), ends, ids, {}, {}, rescued_at)
    kept = chunk.without_ids(drop | {"not-in-chunk"})
    keep = [i for i, row_id in enumerate(ids) if row_id not in drop]
    assert kept.ids == [ids[i] for i in keep]
    assert [
        kept.payload[s:e] for s, e in zip([0, *kept.row_ends], kept.row_ends, strict=False)
    ] == [rows[i] for i in keep]
    assert kept.rescued_at == [keep.index(i) for i in rescued_at if i in keep]


def test_a_column_altered_to_another_type_takes_text_copy(tmp_path: Path, pg_dsn: str) -> None:
    """Binary COPY needs each column's exact type: after an analyst changes `revenue` to
    numeric and adds a json column of their own, later loads of that table still work
    (through text COPY) while the other tables stay on the binary path."""
    archive = tmp_path / "a"
    _archive(archive, [[track("m1", revenue=10, note="a"), track("s1", "Signed Up", plan="x")]])
    pg = PostgresWarehouse("pg", pg_dsn)
    try:
        Loader(pg, readers=0).load(str(archive), "s")
        pg.conn.execute("ALTER TABLE s.order_completed ALTER COLUMN revenue TYPE numeric(12,2)")
        pg.conn.execute("ALTER TABLE s.order_completed ADD COLUMN extra json")
        write_ndjson(
            archive / "segment-logs" / "src" / "1793577600000" / "g.gz",
            [track("m2", revenue=2.5, note="b"), track("s2", "Signed Up", plan="y")],
        )
        report = Loader(pg, readers=0).load(str(archive), "s")
        assert report.status == "success"
        assert pg.tables_taking_tuples("s") == {"order_completed"}
        rows = table_rows(pg, "SELECT id, revenue::text, note FROM s.order_completed ORDER BY id")
        assert rows == [("m1", "10.00", "a"), ("m2", "2.50", "b")]
        assert table_rows(pg, "SELECT id, plan FROM s.signed_up ORDER BY id") == [
            ("s1", "x"),
            ("s2", "y"),
        ]
    finally:
        pg.close()


def test_postgres_tables_key_ids_in_byte_order_and_index_time_by_block_range(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The id key uses the C collation (inserts compare ids without strcoll) and
    received_at has a BRIN index (cheap to keep up as events arrive in time order); ids
    still join to the text columns that name them (identifies.user_id to users.id)."""
    archive = _archive(
        tmp_path / "a",
        [[track("m1"), track("m2"), identify("m3", "Zoë", T, T, plan="pro")]],
    )
    pg = PostgresWarehouse("pg", pg_dsn)
    try:
        Loader(pg, readers=0).load(str(archive), "s")
        collations = dict(
            table_rows(
                pg,
                "SELECT table_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = 's' AND column_name = 'id'",
            )
        )
        assert set(collations.values()) == {"C"} and {"tracks", "users"} <= set(collations)
        indexes = [
            d
            for (d,) in table_rows(
                pg,
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 's' AND tablename = 'tracks'",
            )
        ]
        assert any("USING brin (received_at)" in d for d in indexes), indexes
        joined = table_rows(
            pg, "SELECT u.id, i.id FROM s.users u JOIN s.identifies i ON i.user_id = u.id"
        )
        assert joined == [("Zoë", "m3")]
        assert [r for (r,) in table_rows(pg, "SELECT id FROM s.tracks ORDER BY id")] == [
            "m1",
            "m2",
        ]
    finally:
        pg.close()


def test_text_columns_are_checked_only_when_the_encoder_refuses_a_value() -> None:
    """Text columns go to binary COPY unchecked; a chunk holding a number or a boolean in
    one is laid out again with every value checked, ending exactly as if checked first."""
    from loader.encode.copy_binary import CopyBinaryEncoder
    from loader.encode.encoded import encode_table
    from loader.rules.normalize import TableChunk, fixed_columns
    from loader.rules.schema import ColumnType

    fixed = fixed_columns("order_completed")
    known = {"note": ColumnType.TEXT, "count": ColumnType.BIGINT}
    base = {"id": "m1", "received_at": "2026-11-01T10:00:00+00:00"}

    def encoded(notes: list[object], encoder: object) -> EncodedChunk:
        rows = [{**base, "id": f"m{i}", "note": note, "count": 1} for i, note in enumerate(notes)]
        chunk = TableChunk.of_values(rows, [None] * len(rows))
        return encode_table("f", chunk, known, fixed, T, encoder, None)

    class Checked(CopyBinaryEncoder):
        __slots__ = ()
        refuses_non_text = False

    for notes in (["a", None, "b"], ["a", 7, True, 2.5, None]):
        trusted, checked = encoded(notes, CopyBinaryEncoder()), encoded(notes, Checked())
        assert (trusted.payload, trusted.row_ends, trusted.rescued_at) == (
            checked.payload,
            checked.row_ends,
            checked.rescued_at,
        )
    assert encoded(["a", 7, True], CopyBinaryEncoder()).rescued_at == []  # 7 -> "7", not lost


@given(
    st.lists(
        st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]), max_size=20)),
        min_size=1,
        max_size=8,
    )
)
def test_readers_text_fast_path_writes_the_bytes_psycopg_writes_with_no_connection(
    texts: list[str | None],
) -> None:
    """Readers give psycopg a never-connected libpq handle so its text dumper copies each
    str's UTF-8 buffer; the payload must be byte for byte what the plain path writes."""
    from psycopg import postgres
    from psycopg._copy_base import format_row_binary
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    from loader.encode.copy_binary import _ADAPTERS, CopyBinaryEncoder
    from loader.rules.schema import ColumnType

    payload, ends = CopyBinaryEncoder().encode(
        [("note", ColumnType.TEXT), ("other", ColumnType.TEXT)], [texts, texts[::-1]], len(texts)
    )
    plain = Transformer(_ADAPTERS)
    plain.set_dumper_types([postgres.types["text"].oid] * 2, Format.BINARY)
    expected = bytearray()
    for row in zip(texts, texts[::-1], strict=True):
        format_row_binary(row, plain, expected)
    assert payload == bytes(expected)
    assert ends[-1] == len(payload)


@given(
    st.lists(st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 9), max_size=6), max_size=8)
)
def test_rows_of_any_names_line_up_by_name(values: list[dict[str, int]]) -> None:
    """A table's rows laid out as tuples: every name any row has, in first-seen order,
    and each row's value under its own name (None where the row lacks it)."""
    from loader.rules.normalize import TableChunk

    chunk = TableChunk.of_values(values, [None] * len(values))
    names = list(dict.fromkeys(name for row in values for name in row))
    assert chunk.names == names
    assert [dict(zip(names, row, strict=True)) for row in chunk.rows] == [
        {name: row.get(name) for name in names} for row in values
    ]
