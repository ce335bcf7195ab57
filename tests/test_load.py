"""End-to-end loads into real DuckDB and PostgreSQL: tables, dedupe, rejects, evolution."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import orjson

from loader.sync.pipeline import Loader
from tests.helpers import identify, snapshot, table_rows, track, write_ndjson


def test_sample_archive_loads_all_segment_tables(open_wh, sample_archive: Path) -> None:
    wh = open_wh()
    report = Loader(wh, batch_lines=2000).load(str(sample_archive), "javascript_production")
    assert report.status == "success"
    tables = wh.read_schema("javascript_production")
    for name in (
        "tracks",
        "pages",
        "screens",
        "identifies",
        "groups",
        "aliases",
        "users",
        "accounts",
        "order_completed",
    ):
        assert name in tables, name
    assert report.rejects == 1  # the sample's deliberately broken line
    ((tracks, distinct),) = table_rows(
        wh, "SELECT count(*), count(DISTINCT id) FROM javascript_production.tracks"
    )
    assert tracks == distinct == report.rows_loaded["tracks"]
    assert report.duplicates > 0  # the generator repeats ~2% of messages
    # Tracks holds no properties; the event table does, with Segment's flattening.
    assert "revenue" not in tables["tracks"]
    assert {
        "revenue",
        "shipping_method",
        "products",
        "context_library_name",
        "context_user_agent",
        "context_page_path",
        "context_campaign_source",
    } <= set(tables["order_completed"])
    assert tables["order_completed"]["revenue"].value == "double"
    assert tables["order_completed"]["in_stock"].value == "boolean"
    assert tables["identifies"]["created_at"].value == "timestamp"
    assert "anonymous_id" not in tables["users"]
    ((rejected,),) = table_rows(wh, "SELECT reason FROM _sluice.rejected_events")
    assert "not valid JSON" in rejected


def test_reload_and_overlapping_archive_are_idempotent(
    open_wh, sample_archive: Path, tmp_path: Path
) -> None:
    wh = open_wh()
    loader = Loader(wh, batch_lines=2000)
    loader.load(str(sample_archive), "src")
    first = snapshot(wh, "src")
    again = loader.load(str(sample_archive), "src")
    assert again.files_loaded == 0 and again.files_skipped == again.files_seen
    assert snapshot(wh, "src") == first
    # A copy of the archive elsewhere (a moved project) is the same archive: files are
    # known by their path from the folder holding the archive root.
    copy = tmp_path / "elsewhere" / sample_archive.name
    shutil.copytree(sample_archive, copy)
    copied = loader.load(str(copy), "src")
    assert copied.files_loaded == 0 and copied.files_skipped == copied.files_seen > 0
    # The same messages under other file names (an overlapping export) add nothing.
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        path.rename(path.with_name("export-" + path.name))
    overlap = loader.load(str(copy), "src")
    assert overlap.files_loaded == overlap.files_seen
    new_event_rows = {
        t: n for t, n in overlap.rows_loaded.items() if t not in ("users", "accounts")
    }
    assert sum(new_event_rows.values()) == 0
    assert snapshot(wh, "src") == first


def test_malformed_lines_are_rejected_with_file_line_and_reason(open_wh, tmp_path: Path) -> None:
    long_id = "x" * 101
    lines = [
        orjson.dumps(track("ok-1")),
        b"not json at all",
        b"[1, 2, 3]",
        orjson.dumps({**track("bad-type"), "type": "explode"}),
        orjson.dumps({k: v for k, v in track("n").items() if k != "messageId"}),
        orjson.dumps(track(long_id)),
        orjson.dumps({**track("bad-props"), "properties": [1, 2]}),
        orjson.dumps({**track("bad-time"), "receivedAt": "yesterday"}),
        orjson.dumps(track("ok-2")),
    ]
    path = write_ndjson(tmp_path / "a" / "events.ndjson", lines, gz=False)
    wh = open_wh()
    report = Loader(wh).load(str(tmp_path / "a"), "src")
    assert report.rejects == 7
    assert report.rows_loaded["tracks"] == 2
    rejects = table_rows(wh, "SELECT file, line, reason FROM _sluice.rejected_events ORDER BY line")
    assert [r[1] for r in rejects] == [2, 3, 4, 5, 6, 7, 8]
    # Named as the ledger names the file: its path under the archive root.
    assert all(r[0] == path.relative_to(tmp_path).as_posix() for r in rejects)
    reasons = [r[2] for r in rejects]
    assert "not valid JSON" in reasons[0]
    assert "not a JSON object" in reasons[1]
    assert "'type'" in reasons[2]
    assert "'messageId'" in reasons[3] and "'messageId'" in reasons[4]
    assert "'properties'" in reasons[5]
    assert "'receivedAt'" in reasons[6]


def test_corrupt_gzip_is_reported_and_other_files_load(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "arch"
    write_ndjson(root / "1.json.gz", [track("a1")])
    good = gzip.compress(b"".join(orjson.dumps(track(f"b{i}")) + b"\n" for i in range(500)))
    (root / "2.json.gz").write_bytes(good[: len(good) // 2])  # truncated upload
    write_ndjson(root / "3.json.gz", [track("c1")])
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert (
        report.status == "partial"
    )  # the lines before the break load (tests/test_hostile_input.py)
    assert [f["file"].endswith("2.json.gz") for f in report.files_failed] == [True]
    assert 2 < report.rows_loaded["tracks"] < 502
    reasons = [r[0] for r in table_rows(wh, "SELECT reason FROM _sluice.rejected_events")]
    assert any("corrupt gzip" in r for r in reasons)


def test_new_tables_and_columns_appear_mid_archive(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "arch"
    write_ndjson(root / "1.json", [track("a", revenue=10)], gz=False)
    write_ndjson(
        root / "2.json",
        [track("b", revenue=2.5, coupon="X"), track("c", event="Signed Up", plan="pro")],
        gz=False,
    )
    wh = open_wh()
    report = Loader(wh, batch_lines=1).load(str(root), "src")
    tables = wh.read_schema("src")
    assert "order_completed.coupon" in report.new_columns
    assert "signed_up" in tables and tables["signed_up"]["plan"].value == "text"
    # revenue was created as bigint by the first batch; 2.5 cannot fit and is rescued.
    assert tables["order_completed"]["revenue"].value == "bigint"
    rows = table_rows(
        wh, "SELECT id, revenue, CAST(_rescued_data AS text) FROM src.order_completed ORDER BY id"
    )
    assert rows[0][:2] == ("a", 10)
    assert rows[1][1] is None and orjson.loads(rows[1][2]) == {"revenue": 2.5}
    assert report.rescued_values == 1


def test_users_hold_latest_trait_by_event_time_with_late_arrivals(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "arch"
    write_ndjson(
        root / "1.json",
        [
            identify(
                "i1",
                "u1",
                "2026-11-01T10:00:00Z",
                "2026-11-01T10:00:01Z",
                plan="free",
                email="a@x.io",
            ),
            identify("i2", "u1", "2026-11-03T10:00:00Z", "2026-11-03T10:00:01Z", plan="pro"),
        ],
        gz=False,
    )
    # Arrives later but happened in between: must not overwrite plan, but sets city.
    write_ndjson(
        root / "2.json",
        [
            identify(
                "i3", "u1", "2026-11-02T10:00:00Z", "2026-11-04T10:00:00Z", plan="team", city="Lyon"
            ),
        ],
        gz=False,
    )
    wh = open_wh()
    Loader(wh, batch_lines=1).load(str(root), "src")
    assert table_rows(wh, "SELECT id, plan, email, city FROM src.users") == [
        ("u1", "pro", "a@x.io", "Lyon")
    ]


def test_profiles_updated_batch_by_batch_equal_a_full_recompute(open_wh, tmp_path: Path) -> None:
    """users is kept up to date from each batch's rows when they follow the profile's
    newest event (its mark), and recomputed from all rows otherwise (a late arrival, a
    user seen for the first time). One file per batch must give what one batch over
    everything gives."""
    day = "2026-11-0{}T{:02d}:00:00Z"
    files = [
        [identify("a", "u1", day.format(1, 10), day.format(1, 10), plan="free", email="a@x")],
        [identify("b", "u1", day.format(2, 10), day.format(2, 10), city="Lyon")],  # newer
        [identify("c", "u1", day.format(1, 9), day.format(3, 10), plan="old", zip="1")],  # late
        [identify("d", "u1", day.format(3, 10), day.format(3, 11), plan="pro")],  # newer
        [
            {
                **identify("e", "u1", day.format(4, 10), day.format(4, 10), email="b@x"),
                "timestamp": None,
                "originalTimestamp": None,
                "sentAt": None,
            },
            identify("f", "u2", day.format(4, 10), day.format(4, 10), plan="team"),
        ],
    ]
    for n, messages in enumerate(files):
        write_ndjson(tmp_path / "a" / f"{n}.json", messages, gz=False)
    wh = open_wh()
    Loader(wh, batch_lines=1).load(str(tmp_path / "a"), "per_batch")
    Loader(wh, batch_lines=100).load(str(tmp_path / "a"), "at_once")
    select = "SELECT id, plan, email, city, zip, received_at FROM {}.users ORDER BY id"
    per_batch = table_rows(wh, select.format("per_batch"))
    assert per_batch == table_rows(wh, select.format("at_once"))
    assert [row[:5] for row in per_batch] == [
        ("u1", "pro", "b@x", "Lyon", "1"),  # e's time is its received_at (Segment's rule)
        ("u2", "team", None, None, None),
    ]
    marks = dict(
        table_rows(
            wh,
            "SELECT key, CAST(mark_ts AS VARCHAR) FROM _sluice.profile_marks "
            "WHERE schema_name = 'per_batch'",
        )
    )
    assert set(marks) == {"u1", "u2"} and marks["u1"].startswith("2026-11-04 10:00:00")


def test_timestamp_is_corrected_for_client_clock_skew(open_wh, tmp_path: Path) -> None:
    msg = track("t1")
    msg.update(
        receivedAt="2026-11-01T12:00:00Z",
        sentAt="2026-11-01T12:10:00Z",  # client clock 10 minutes fast
        originalTimestamp="2026-11-01T12:09:00Z",
    )
    write_ndjson(tmp_path / "a" / "1.json", [msg], gz=False)
    wh = open_wh()
    Loader(wh).load(str(tmp_path / "a"), "src")
    ((ts,),) = table_rows(wh, 'SELECT CAST("timestamp" AS text) FROM src.tracks')
    assert ts.startswith("2026-11-01 11:59:00")


def test_integers_beyond_64_bits_are_kept_exactly(open_wh, tmp_path: Path) -> None:
    """msgspec reads integers of any size as integers: one beyond 64 bits types a new
    column as a bigint all the same (a double would not hold it, nor later integers,
    exactly), keeps its digits in an array's JSON text, and is rescued with its digits
    from its bigint column; nothing fails the file."""
    big = 2**70
    common = '"type":"track","userId":"u1","event":"Order Completed",' + (
        '"receivedAt":"2026-11-01T10:00:00Z"'
    )
    first = [
        f'{{"messageId":"m1",{common},"properties":{{"count":5,"ids":[{big},1]}}}}',
        f'{{"messageId":"m2",{common},"properties":{{"size":{big}}}}}',
    ]
    later = [f'{{"messageId":"m3",{common},"properties":{{"count":{big}}}}}']
    archive = tmp_path / "archive"
    for name, lines in (("a.json", first), ("b.json", later)):
        write_ndjson(archive / name, [line.encode() for line in lines], gz=False)
    wh = open_wh()
    Loader(wh, batch_lines=2).load(str(archive), "s")
    columns = wh.read_schema("s")["order_completed"]
    assert (columns["count"].value, columns["size"].value) == ("bigint", "bigint")
    rows = {
        r[0]: r[1:]
        for r in table_rows(
            wh, 'SELECT id, "count", ids, size, _rescued_data FROM s.order_completed'
        )
    }
    assert rows["m1"][:2] == (5, f"[{big},1]")

    def rescued(mid: str) -> dict:
        value = rows[mid][3]
        return value if isinstance(value, dict) else json.loads(value)

    assert rows["m2"][2] is None and rescued("m2") == {"size": big}
    assert rows["m3"][0] is None and rescued("m3") == {"count": big}
