"""DuckDB takes the readers' Arrow batches: the tables it ends with are the tables the
tuple path gives, and the tables PostgreSQL's COPY binary path gives, value for value
and type for type (a per-table content checksum, compared table by table)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from loader.encode.arrow_batches import ArrowEncoder, read_table
from loader.encode.encoded import EncodedChunk, encode_table
from loader.rules.normalize import TableChunk
from loader.rules.schema import ColumnType
from loader.sources.sample import write_archive
from loader.sync.pipeline import Loader
from loader.warehouses.base import WarehouseError
from loader.warehouses.duckdb import DuckDBWarehouse
from loader.warehouses.postgres import PostgresWarehouse
from tests.helpers import identify, track, write_ndjson

T = "2026-11-01T10:00:00Z"


class TupleDuckDB(DuckDBWarehouse):
    """DuckDB without a row encoder: readers hand over tuples, the reference."""

    capabilities = replace(DuckDBWarehouse.capabilities, row_encoder=None)


def _archive(root: Path, files: list[list[dict[str, Any]]]) -> Path:
    for n, messages in enumerate(files):
        write_ndjson(root / "segment-logs" / "src" / "1793491200000" / f"f{n:02d}.gz", messages)
    return root


def _number(v: Any) -> Any:
    """A JSON number by its value: jsonb stores 1e16 as 10000000000000000, DuckDB's JSON
    keeps the text it was given; both are the same number."""
    if isinstance(v, dict):
        return {k: _number(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_number(x) for x in v]
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
        number = Decimal(repr(v) if isinstance(v, float) else v)
        return str(number.normalize()) if number else "0"  # jsonb stores -0 as 0
    return v


def _value(v: Any) -> Any:
    """One stored value as both warehouses' drivers give it back, made comparable: JSON
    (`_rescued_data`: text from DuckDB, a dict from psycopg) parsed, times in UTC."""
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return _number(json.loads(v))
        except ValueError:
            return v
    if isinstance(v, (dict, list)):
        return _number(v)
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).isoformat()
    return v


def content(wh: Any, schema: str) -> dict[str, str]:
    """table -> checksum of its columns with their types and its rows (load-time
    columns left out), sorted by id; plus the rows themselves for a readable diff."""
    out: dict[str, Any] = {}
    for table, columns in sorted(wh.read_schema(schema).items()):
        names = sorted(c for c in columns if c not in ("uuid_ts", "loaded_at"))
        select = ", ".join(f'"{c}"' for c in names)
        rows = sorted(
            (tuple(json.dumps(_value(v), sort_keys=True, default=str) for v in r))
            for r in wh.query(f'SELECT {select} FROM "{schema}"."{table}"')
        )
        typed = [(c, columns[c].value) for c in names]
        text = json.dumps([typed, rows])
        out[table] = (hashlib.sha256(text.encode()).hexdigest()[:16], typed, rows)
    return out


def _same(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert sorted(left) == sorted(right)
    for table in left:
        if left[table][0] != right[table][0]:  # show what differs, not two hashes
            assert left[table][1:] == right[table][1:], table


def _load(wh: Any, archive: Path, schema: str, batch_lines: int = 10_000, readers: int = 2) -> Any:
    report = Loader(wh, batch_lines=batch_lines, readers=readers).load(str(archive), schema)
    report.schema, report.run_id, report.started_at, report.finished_at = "", "", "", ""
    report.duration_s = 0.0
    return report


def test_sample_project_gives_the_same_tables_on_duckdb_and_postgres(
    tmp_path: Path, pg_dsn: str
) -> None:
    write_archive(tmp_path / "archive", 6000, events_per_file=1000, malformed=True)
    duck = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    pg = PostgresWarehouse("pg", pg_dsn)
    try:
        duck_report = _load(duck, tmp_path / "archive", "s", batch_lines=2500)
        pg_report = _load(pg, tmp_path / "archive", "s", batch_lines=2500)
        assert duck_report.rows_loaded == pg_report.rows_loaded
        assert duck_report.rows_loaded["tracks"] > 1000
        assert (duck_report.duplicates, duck_report.rescued_values) == (
            pg_report.duplicates,
            pg_report.rescued_values,
        )
        _same(content(duck, "s"), content(pg, "s"))
    finally:
        duck.close()
        pg.close()


PROPERTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=4),
    st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-01T10:00:00+02:00", "2026-11-01"]),
    st.lists(st.integers(0, 3), max_size=2),
)
NAMES = st.sampled_from(["a", "b", "Select", "ünï", "x" * 70, "received_at"])
MESSAGE = st.tuples(
    st.integers(0, 12),  # messageId: few, so files repeat each other
    st.sampled_from(["Order Completed", "Signed Up", "order completed"]),
    st.dictionaries(NAMES, PROPERTY, max_size=4),
)


@settings(
    max_examples=8,
    deadline=None,
    # Each example is three loads: shrinking a failure would outlast the test's timeout,
    # and the failing example is printed whole.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=st.lists(st.lists(MESSAGE, min_size=1, max_size=6), min_size=1, max_size=4))
@example(files=[[(1, "Order Completed", {"a": 1})], [(2, "Order Completed", {"a": "x"})]])
@example(files=[[(0, "Order Completed", {"a": -(2**63) - 1})]])  # a trait past 64 bits
@example(
    files=[
        [(0, "Order Completed", {})],
        [(4, "Order Completed", {"b": False})],
        [(8, "x", {"b": -0.0})],
    ]
)
@example(files=[[(1, "Order Completed", {})], [(1, "Signed Up", {})]])  # a table all repeats
def test_any_archive_gives_the_same_tables_on_duckdb_arrow_tuples_and_postgres(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, files: list[list[Any]]
) -> None:
    """Type conflicts between and within files, unicode, reserved and over-long names,
    duplicates across files, identifies too: three loads, one result."""
    root = tmp_path_factory.mktemp("a")
    messages = [
        [  # the standard library writes integers past 64 bits, as some sources do
            json.dumps(
                track(f"m{mid}", event, **props)
                if mid % 4
                else identify(f"m{mid}", f"u{mid % 3}", T, T, **props)
            ).encode()
            for mid, event, props in f
        ]
        for f in files
    ]
    archive = _archive(root, messages)
    schema = f"h{hashlib.sha1(repr(files).encode()).hexdigest()[:10]}"
    duck = DuckDBWarehouse("d", ":memory:")
    ref = TupleDuckDB("d", ":memory:")
    pg = PostgresWarehouse("pg", pg_dsn)
    try:
        # In-process readers (they encode as reader processes do): 36 loads stay quick.
        reports = [_load(w, archive, schema, 3, readers=0) for w in (duck, ref, pg)]
        for report in reports:  # a table whose rows were all repeats: 0, or no entry
            report.rows_loaded = {t: n for t, n in report.rows_loaded.items() if n}
        assert reports[0] == reports[1]
        assert reports[0].rows_loaded == reports[2].rows_loaded
        duck_content = content(duck, schema)
        _same(duck_content, content(ref, schema))
        _same(duck_content, content(pg, schema))
    finally:
        pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for w in (duck, ref, pg):
            w.close()


def test_duplicates_within_across_batches_and_runs(tmp_path: Path) -> None:
    files = [
        [track(f"m{i}", n=i) for i in range(10)],
        [track("m9", n=-1), *[track(f"m{i}", n=i) for i in range(10, 20)]],
        [track(f"m{i}", n=i) for i in range(20, 30)],
        [track("m1", n=-1), *[track(f"m{i}", n=i) for i in range(30, 40)]],
    ]
    archive = _archive(tmp_path / "a", files)
    duck = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        report = _load(duck, archive, "s", batch_lines=10)
        assert report.rows_loaded["order_completed"] == 40
        assert report.duplicates == 2
        rows = dict(duck.fetchall("SELECT id, n FROM s.order_completed"))
        assert (rows["m1"], rows["m9"]) == (1, 9)
        write_ndjson(
            tmp_path / "a" / "segment-logs" / "src" / "1793577600000" / "g.gz",
            [track("m5", n=-5), track("m40", n=40)],
        )
        again = _load(duck, archive, "s")
        assert (again.rows_loaded["order_completed"], again.duplicates) == (1, 1)
        assert dict(duck.fetchall("SELECT id, n FROM s.order_completed"))["m5"] == 5
    finally:
        duck.close()


def test_replay_fills_nulls_through_the_arrow_path(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a", [[track("m1", a=1)], [track("m2", a=2)]])
    duck = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        Loader(duck, readers=2).load(str(archive), "s")
        duck.execute("UPDATE s.order_completed SET a = NULL WHERE id = 'm2'")
        report = Loader(duck, readers=2).replay(
            str(archive), "s", date(2026, 11, 1), date(2026, 11, 1)
        )
        assert report.status == "success"
        assert dict(duck.fetchall("SELECT id, a FROM s.order_completed")) == {"m1": 1, "m2": 2}
    finally:
        duck.close()


def test_an_id_reaching_the_insert_twice_is_never_loaded_twice(tmp_path: Path) -> None:
    """`id` stays unique in DuckDB without a key on the table: an id already there is
    left out, and an insert whose rows repeat an id is refused whole, rolling back its
    batch, on the Arrow path and on the tuple path alike."""
    duck = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        Loader(duck).load(str(_archive(tmp_path / "a", [[track("m1", n=1)]])), "s")
        table = "order_completed"
        assert duck.insert_encoded("s", table, [_chunk(["m1", "m2"], [5, 2])]) == 1
        with pytest.raises(WarehouseError, match="repeat an id"), duck.transaction():
            duck.insert_encoded("s", table, [_chunk(["m3"], [3])])
            duck.insert_encoded("s", table, [_chunk(["m4"], [4]), _chunk(["m4"], [5])])
        with pytest.raises(WarehouseError, match="repeat an id"):
            duck.insert_new_rows("s", table, ["id", "n"], [("m5", 1), ("m5", 2)])
        rows = duck.fetchall(f"SELECT id, n FROM s.{table} ORDER BY id")
        assert rows == [("m1", 1), ("m2", 2)]
    finally:
        duck.close()


def test_a_failed_insert_reports_its_own_error(tmp_path: Path) -> None:
    """A failed statement aborts DuckDB's transaction, which then refuses the insert's
    clean-up too: the error raised is the statement's (here a value too large for a
    column someone narrowed), and nothing of the batch is loaded."""
    import duckdb

    duck = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        Loader(duck).load(str(_archive(tmp_path / "a", [[track("m1", n=1)]])), "s")
        duck.execute("ALTER TABLE s.order_completed ALTER n TYPE INTEGER")
        later = _archive(tmp_path / "b", [[track("m2", n=2**40), track("m3", n=3)]])
        with pytest.raises(duckdb.ConversionException, match="out of range"):
            Loader(duck, readers=0).load(str(later), "s")
        assert duck.fetchall("SELECT id, n FROM s.order_completed") == [("m1", 1)]
    finally:
        duck.close()


def test_duckdb_event_tables_hold_no_in_memory_id_index(tmp_path: Path) -> None:
    """An ART index on id would have to fit in DuckDB's memory_limit whole: event tables
    are made without one, so a large warehouse keeps loading at the default limit."""
    duck = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        Loader(duck).load(str(_archive(tmp_path / "a", [[track("m1", n=1)]])), "s")
        keyed = duck.fetchall(
            "SELECT table_name FROM duckdb_constraints() WHERE schema_name = 's' "
            "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        )
        assert keyed == []
        assert duck.fetchall("SELECT count(*) FROM duckdb_indexes() WHERE schema_name = 's'") == [
            (0,)
        ]
    finally:
        duck.close()


def _chunk(ids: list[str], values: list[Any]) -> EncodedChunk:
    rows = [{"id": i, "received_at": T, "n": v} for i, v in zip(ids, values, strict=True)]
    fixed = {k: ColumnType.TIMESTAMP for k in ("received_at", "uuid_ts")}
    fixed["id"] = ColumnType.TEXT
    chunk = TableChunk.of_values(rows, [None] * len(rows))
    return encode_table("f", chunk, None, fixed, T, ArrowEncoder(), None)


@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_dropping_any_rows_of_an_arrow_chunk_leaves_exactly_the_others(
    dropped: list[bool],
) -> None:
    ids = [f"m{i}" for i in range(len(dropped))]
    chunk = _chunk(ids, list(range(len(ids))))
    assert chunk.arrow
    drop = {i for i, d in zip(ids, dropped, strict=True) if d}
    kept = chunk.without_ids(drop)
    table = read_table([kept.payload])
    assert table.column("id").to_pylist() == [i for i in ids if i not in drop] == kept.ids
    assert table.column("n").to_pylist() == [int(i[1:]) for i in kept.ids]
    assert kept.rows == len(ids) - len(drop)


def test_arrow_batches_carry_typed_columns() -> None:
    """Times as UTC microseconds, numbers as numbers: DuckDB scans them with no cast."""
    chunk = _chunk(["m1", "m2"], [1, None])
    table = read_table([chunk.payload])
    assert table.schema.field("received_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("n").type == pa.int64()
    assert table.column("received_at")[0].as_py() == datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
    assert table.column("n").to_pylist() == [1, None]


def test_a_value_that_is_not_text_in_a_text_column_is_refused() -> None:
    """What lets encode_table trust text columns: the encoder raises TypeError."""
    with pytest.raises(TypeError):
        ArrowEncoder().encode([("note", ColumnType.TEXT)], [[1]], 1)
