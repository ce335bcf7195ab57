"""Native mode: the warehouse reads the raw lines and runs the rules as SQL; the tables
it ends with are the reference path's, value for value and type for type, whatever
the archive holds (type conflicts, unicode, reserved and over-long names, key
collisions, duplicates within and across files and batches, bad lines)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from loader.native.loader import NativeLoader
from loader.sources.sample import write_archive
from loader.sync.pipeline import Loader
from loader.warehouses.base import WarehouseError
from loader.warehouses.duckdb import DuckDBWarehouse
from loader.warehouses.postgres import PostgresWarehouse
from tests.helpers import identify, track, write_ndjson
from tests.test_duckdb_arrow_path import PROPERTY, _same, content

T = "2026-11-01T10:00:00Z"


def _both(archive: Path, schema: str, batch_lines: int, tmp: Path | None = None) -> list[Any]:
    """The reference load and the native load of `archive`: (report, content) each."""
    out = []
    for n, cls in enumerate((Loader, NativeLoader)):
        path = ":memory:" if tmp is None else str(tmp / f"w{n}.duckdb")
        wh = DuckDBWarehouse("d", path)
        try:
            report = cls(wh, batch_lines=batch_lines, readers=0).load(str(archive), schema)
            out.append((report, content(wh, schema), wh.loaded_files(schema)))
        finally:
            wh.close()
    return out


def test_sample_project_loads_the_same_natively(tmp_path: Path) -> None:
    write_archive(tmp_path / "archive", 6000, events_per_file=1000, malformed=True)
    (ref, ref_tables, ref_files), (nat, nat_tables, nat_files) = _both(
        tmp_path / "archive", "s", 2500, tmp_path
    )
    assert ref.rows_loaded["tracks"] > 1000
    assert nat.rows_loaded == ref.rows_loaded
    assert (nat.rejects, nat.files_loaded, nat.lines_read) == (
        ref.rejects,
        ref.files_loaded,
        ref.lines_read,
    )
    assert nat_files == ref_files
    _same(ref_tables, nat_tables)


KEYS = st.sampled_from(
    [
        "a",
        "b",
        "Select",
        "ünï",
        "x" * 70,
        "received_at",
        "orderId",
        "order_id",
        "Order ID",
        "context_x",
        "id",
        "event",
        'q"k',
        "a.b",
    ]
)
VALUE = st.one_of(
    PROPERTY,
    st.dictionaries(st.sampled_from(["b", "c", "B"]), PROPERTY, max_size=2),
    st.sampled_from(
        [
            "2026-11-01 10:00:00",
            "2026-11-01T10:00Z",
            "0001-01-01T00:00:00+01:00",
            "2026-11-01T24:00:00Z",  # DuckDB reads these, Python does not
            "2026-11-01T10:00:00+24:00",
            "2026-02-30T10:00:00Z",
            "2026-11-01T10:00:00.1234567Z",
        ]
    ),
)
MESSAGE = st.tuples(
    st.integers(0, 12),  # messageId: few, so files repeat each other
    st.sampled_from(["Order Completed", "Signed Up", "order completed", "pages"]),
    st.dictionaries(KEYS, VALUE, max_size=4),
    st.sampled_from(["ok", "ok", "ok", "bad json", "no id", "numeric user", "TRACK"]),
)


def _line(mid: int, event: str, props: dict[str, Any], shape: str) -> bytes:
    if mid % 5 == 0:
        body = identify(f"m{mid}", f"u{mid % 3}", T, T)
        body["traits"] = props
    else:
        body = track(f"m{mid}", event)
        body["properties"] = props
    if shape == "bad json":
        return json.dumps(body).encode()[:-3]
    if shape == "no id":
        body.pop("messageId")
    elif shape == "numeric user":
        body["userId"] = mid
    elif shape == "TRACK":
        body["type"] = body["type"].upper()
    return json.dumps(body).encode()


@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    files=st.lists(st.lists(MESSAGE, min_size=1, max_size=6), min_size=1, max_size=4),
    batch_lines=st.sampled_from([3, 1000]),
)
@example(
    files=[[(1, "Order Completed", {"a": 1}, "ok")], [(2, "Order Completed", {"a": "x"}, "ok")]],
    batch_lines=3,
)
@example(
    files=[
        [
            (1, "Order Completed", {"orderId": 1, "order_id": 2}, "ok"),
            (2, "Order Completed", {"orderId": 3}, "ok"),
        ]
    ],
    batch_lines=1000,
)
@example(
    files=[
        [(1, "Order Completed", {"a": 1.5}, "ok"), (2, "Order Completed", {"a": 2}, "ok")],
        [(3, "Order Completed", {"a": 2}, "ok")],
    ],
    batch_lines=1000,
)
@example(files=[[(2, "x", {"a": {"b": 1}}, "ok"), (3, "x", {"a": 5}, "ok")]], batch_lines=1000)
def test_any_archive_loads_the_same_natively(
    tmp_path_factory: pytest.TempPathFactory, files: list[list[Any]], batch_lines: int
) -> None:
    root = tmp_path_factory.mktemp("a")
    for n, messages in enumerate(files):
        lines = [_line(*m) for m in messages]
        write_ndjson(root / "segment-logs" / "src" / "1793491200000" / f"f{n:02d}.gz", lines)
    schema = f"h{hashlib.sha1(repr(files).encode()).hexdigest()[:10]}"
    (ref, ref_tables, ref_files), (nat, nat_tables, nat_files) = _both(root, schema, batch_lines)
    ref.rows_loaded = {t: n for t, n in ref.rows_loaded.items() if n}
    nat.rows_loaded = {t: n for t, n in nat.rows_loaded.items() if n}
    _same(ref_tables, nat_tables)
    assert nat.rejects == ref.rejects
    assert nat_files == ref_files
    assert nat.rows_loaded == ref.rows_loaded


def test_a_rerun_and_a_replay_change_nothing(tmp_path: Path) -> None:
    """Every table, every column (uuid_ts too) and `_sluice`, byte for byte."""
    from datetime import date

    from tests.test_ledger import everything

    write_archive(tmp_path / "archive", 1500, events_per_file=500, malformed=True)
    wh = DuckDBWarehouse("d", str(tmp_path / "w.duckdb"))
    try:
        loader = NativeLoader(wh, batch_lines=700, readers=0)
        first = loader.load(str(tmp_path / "archive"), "s")
        assert first.rejects > 0 and first.rows_loaded["tracks"] > 500
        before = everything(wh, "s")
        assert before["_sluice.rejected_events"] and before["_sluice.loaded_files"]
        again = loader.load(str(tmp_path / "archive"), "s")
        assert again.files_loaded == 0 and everything(wh, "s") == before
        loader.replay(str(tmp_path / "archive"), "s", date(2000, 1, 1), date(2100, 1, 1))
        assert everything(wh, "s") == before
    finally:
        wh.close()


def test_native_mode_on_a_warehouse_without_it_says_so(pg_dsn: str, tmp_path: Path) -> None:
    write_archive(tmp_path / "archive", 100, events_per_file=100)
    pg = PostgresWarehouse("pg", pg_dsn)
    try:
        with pytest.raises(WarehouseError, match="native mode is not available"):
            NativeLoader(pg, readers=0).load(str(tmp_path / "archive"), "native_refused")
    finally:
        pg.execute('DROP SCHEMA IF EXISTS "native_refused" CASCADE')
        pg.close()


def _hostile_lines() -> list[bytes]:
    ok = json.dumps(track("h-ok", "Order Completed", total=3)).encode()
    return [
        b"\xef\xbb\xbf" + json.dumps(track("h-bom", "Order Completed", total=1)).encode(),
        json.dumps(track("h-crlf", "Order Completed", total=2)).encode() + b"\r",
        b"",
        b"   \t ",
        b"  " + ok + b"  ",
        json.dumps(track("h-nul\u0000", "Order Completed", total=4, note="a\u0000b")).encode(),
        json.dumps(track("h-nan", "Order Completed")).encode()[:-2] + b', "x": NaN}}',
        json.dumps(track("h-big", "Order Completed", total=2**70)).encode(),
        json.dumps(track("h-exp", "Order Completed", total=1.5e300)).encode(),
        b'{"type": "track", "messageId": "h-utf8", "event": "E", "userId": "u", '
        b'"receivedAt": "2026-11-01T10:00:00Z", "properties": {"a": "\xff"}}',
        b'{"type": "track", "type": "page", "messageId": "h-dup", "event": "E", '
        b'"userId": "u", "receivedAt": "2026-11-01T10:00:00Z"}',
        # A field twice (the reference keeps the last copy), an unknown key twice (read
        # by neither path: the line stays the SQL's).
        b'{"type": "track", "messageId": "h-dupuser", "event": "E", "userId": "u", '
        b'"receivedAt": "2026-11-01T10:00:00Z", "userId": "v"}',
        b'{"type": "track", "messageId": "h-dupother", "event": "E", "userId": "u", '
        b'"x": 1, "receivedAt": "2026-11-01T10:00:00Z", "x": 2}',
        b'{"type": "track", "messageId": "h-dupprop", "event": "E", "userId": "u", '
        b'"receivedAt": "2026-11-01T10:00:00Z", "properties": {"a": 1, "a": "x"}}',
        b'{"type": "track", "messageId": "h-sur", "event": "E", "userId": "u", '
        b'"receivedAt": "2026-11-01T10:00:00Z", "properties": {"a": "\\ud800"}}',
        json.dumps(
            track("h-deep", "Order Completed", nest=json.loads("[" * 50 + "]" * 50))
        ).encode(),
        json.dumps(
            track("h-time", "Order Completed", received="2026-11-01 10:00:00+05:30")
        ).encode(),
        json.dumps(track("h-y1", "Order Completed", received="0001-01-01T00:00:00+01:00")).encode(),
        json.dumps(track("h-24", "Order Completed", received="2026-11-01T24:00:00Z")).encode(),
        json.dumps(track("h-feb", "Order Completed", received="2026-02-30T10:00:00Z")).encode(),
        json.dumps(
            track("h-off", "Order Completed", received="2026-11-01T10:00:00+24:00")
        ).encode(),
        b'{"type": "track", "messageId": "h-1500", "event": "E", "userId": "u", '
        b'"receivedAt": "2026-11-01T10:00:00Z", "properties": {"a": '
        + b'{"b": ' * 1500
        + b"1"
        + b"}" * 1501
        + b"}",
        b"[1, 2]",
        b"not json at all",
    ]


def test_hostile_lines_and_a_broken_gzip_file_load_the_same_natively(tmp_path: Path) -> None:
    """Whitespace, BOM and CRLF as the reference strips them, blank lines numbered and
    skipped, what DuckDB's JSON reads otherwise (NUL and surrogate escapes, NaN, 70-bit
    integers, huge exponents, invalid UTF-8, repeated keys), and a truncated gzip file
    whose lines before the break load."""
    day = tmp_path / "segment-logs" / "src" / "1793491200000"
    write_ndjson(day / "a.gz", _hostile_lines())
    whole = day / "b.gz"
    write_ndjson(whole, [json.dumps(track(f"b{i}", "Signed Up", n=i)).encode() for i in range(300)])
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) * 2 // 3])
    write_ndjson(day / "c.ndjson", _hostile_lines()[:6], gz=False)
    (ref, ref_tables, ref_files), (nat, nat_tables, nat_files) = _both(tmp_path, "s", 1000)
    assert ref.rejects >= 5 and ref.files_failed
    _same(ref_tables, nat_tables)
    assert (nat.rejects, nat.lines_read, nat_files) == (ref.rejects, ref.lines_read, ref_files)
    assert [f["line"] for f in nat.files_failed] == [f["line"] for f in ref.files_failed]


def test_selective_sync_turns_the_same_tables_and_columns_off_natively(tmp_path: Path) -> None:
    from loader.rules.selective_sync import load_file

    write_archive(tmp_path / "archive", 2000, events_per_file=500)
    path = tmp_path / "selective_sync.yml"
    path.write_text(
        "version: 1\ntargets:\n  d:\n    s:\n      collections: [pages]\n"
        "      properties:\n        order_completed: [revenue]\n        '*': [context_ip]\n"
    )
    rules = load_file(path)
    out = []
    for cls in (Loader, NativeLoader):
        wh = DuckDBWarehouse("d", ":memory:")
        try:
            loader = cls(wh, batch_lines=600, readers=0, sync_filter=rules.filter_for("d", "s"))
            loader.load(str(tmp_path / "archive"), "s")
            out.append(content(wh, "s"))
        finally:
            wh.close()
    assert "pages" not in out[1] and "order_completed" in out[1]
    order_columns = [c for c, _ in out[1]["order_completed"][1]]
    assert "revenue" not in order_columns and "currency" in order_columns
    assert "context_ip" not in [c for c, _ in out[1]["tracks"][1]]
    _same(out[0], out[1])


def test_every_statement_native_mode_sends_parses_in_its_dialect(tmp_path: Path) -> None:
    import sqlglot

    from loader.native import statements as ns

    write_archive(tmp_path / "archive", 1500, events_per_file=500, malformed=True)
    wh = DuckDBWarehouse("d", ":memory:")
    ns.SENT = []
    try:
        NativeLoader(wh, batch_lines=700, readers=0).load(str(tmp_path / "archive"), "s")
        sent = ns.SENT
    finally:
        ns.SENT = None
        wh.close()
    assert len(sent) > 20 and any(s.startswith("CREATE OR REPLACE TEMP TABLE") for s in sent)
    for sql in sent:
        sqlglot.parse_one(sql, read="duckdb", error_level=sqlglot.ErrorLevel.RAISE)


def test_sluice_sync_in_native_mode_loads_the_project_as_the_python_path(tmp_path: Path) -> None:
    """`mode: native` in sluice.yml: the same `sluice sync`, the same tables; and a
    tracking plan, which native mode does not check yet, is refused in plain words."""
    from tests.helpers import sluice

    tables = []
    for mode in ("python", "native"):
        init = sluice("init", mode, "--events", "2000", cwd=tmp_path)
        assert init.returncode == 0, init.stderr
        project = tmp_path / mode
        config = project / "sluice.yml"
        text = config.read_text()
        assert "    kind: events" in text
        config.write_text(
            text.replace("    kind: events", f"    mode: {mode}\n    kind: events", 1)
        )
        synced = sluice("sync", cwd=project)
        assert synced.returncode == 0, synced.stderr
        wh = DuckDBWarehouse("d", str(project / "sluice.duckdb"), read_only=True)
        try:
            tables.append(content(wh, "javascript_production"))
        finally:
            wh.close()
    assert len(tables[1]) > 10
    _same(tables[0], tables[1])
    config = tmp_path / "native" / "sluice.yml"
    config.write_text(
        config.read_text().replace(
            "    mode: native\n", "    mode: native\n    tracking_plan: t.yml\n"
        )
    )
    refused = sluice("sync", cwd=tmp_path / "native")
    assert refused.returncode == 2
    assert "mode: native does not check tracking plans yet" in refused.stderr
    assert "Traceback" not in refused.stderr


@given(
    st.lists(
        st.sampled_from([b"", b" ", b"\t\r", b"{}", b" x ", b"a\rb", b"\x0c", b"{}\r", b"\x0b{}"]),
        max_size=8,
    )
)
def test_lines_split_in_bulk_are_the_reference_readers_lines(pieces: list[bytes]) -> None:
    from loader.native.lines import lines_of

    text = b"\n".join(pieces)
    lines, to_strip, count = lines_of(text)
    got = [(n, raw.strip()) for n, raw in enumerate(lines.to_pylist(), 1) if raw.strip()]
    # A line is flagged exactly when stripping changes it, and holds no newline.
    assert all(
        flag == (raw != raw.strip()) and b"\n" not in raw
        for raw, flag in zip(lines.to_pylist(), to_strip.to_pylist(), strict=True)
    )
    expected = [(n, raw.strip()) for n, raw in enumerate(text.split(b"\n"), 1) if raw.strip()]
    assert got == expected and count == len(expected)


def test_native_batches_are_100000_lines_unless_the_user_sets_them(tmp_path: Path) -> None:
    """A native batch runs its statements whatever its size: with no batch_lines set it
    takes 100,000 lines (the Python path 20,000); a user's setting wins either way."""
    from loader.sync.pipeline import DEFAULT_BATCH_LINES

    wh = DuckDBWarehouse("t", str(tmp_path / "w.duckdb"))
    try:
        assert NativeLoader(wh).batch_lines == 100_000
        assert NativeLoader(wh, batch_lines=None).batch_lines == 100_000
        assert NativeLoader(wh, batch_lines=500).batch_lines == 500
        assert Loader(wh, batch_lines=None).batch_lines == DEFAULT_BATCH_LINES == 20_000
    finally:
        wh.close()
