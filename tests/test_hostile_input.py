"""Hostile input never blocks an archive: NUL characters, times that overflow, JSON nested
a thousand deep, a byte order mark, a truncated gzip, a file deleted mid-load. Each loads
through the real pipeline into DuckDB and PostgreSQL; the valid lines of the same file
load, and each bad line is one reject naming its file, line and what is wrong."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.sync.pipeline import Loader
from tests.helpers import snapshot, table_rows, track, write_ndjson


def _rejects(wh: Any) -> list[tuple[Any, ...]]:
    return table_rows(
        wh, "SELECT file, line, raw, reason FROM _sluice.rejected_events ORDER BY file, line"
    )


def _ids(wh: Any, table: str = "tracks", schema: str = "src") -> list[str]:
    return sorted(r[0] for r in table_rows(wh, f'SELECT id FROM "{schema}"."{table}"'))


def test_nul_characters_are_removed_and_their_lines_load(open_wh, tmp_path: Path) -> None:
    """PostgreSQL refused a whole batch over one `\\u0000`; it is now removed from every
    key and value, on every warehouse alike, and an escaped backslash before "u0000" is
    text, not a NUL."""
    with_nul = {
        **track("nul-1", "Sign\u0000ed Up", note="a\u0000b", **{"ke\u0000y": 1}),
        "userId": "u\u00001",
        "anonymousId": "\u0000anon",
        "context": {"ip": "1.2.3.4\u0000"},
    }
    not_nul = track("text-1", path="C:\\u0000dir")  # a backslash, then the text u0000
    root = tmp_path / "a"
    write_ndjson(root / "1.ndjson.gz", [track("ok-1"), with_nul, not_nul, track("ok-2")])
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert report.status == "success" and report.rejects == 0
    assert _ids(wh) == ["nul-1", "ok-1", "ok-2", "text-1"]
    ((user, anon, event, event_text, ip),) = table_rows(
        wh,
        "SELECT user_id, anonymous_id, event, event_text, context_ip FROM src.tracks "
        "WHERE id = 'nul-1'",
    )
    assert (user, anon, event, event_text, ip) == (
        "u1",
        "anon",
        "signed_up",
        "Signed Up",
        "1.2.3.4",
    )
    ((note, key),) = table_rows(wh, "SELECT note, key FROM src.signed_up")
    assert (note, key) == ("ab", 1)
    ((path,),) = table_rows(wh, "SELECT path FROM src.order_completed WHERE id = 'text-1'")
    assert path == "C:\\u0000dir"


def test_raw_nul_bytes_and_binary_files_become_storable_rejects(open_wh, tmp_path: Path) -> None:
    """A malformed line holding a NUL byte (or bytes that are not UTF-8), and a binary
    file named `.gz`, are rejects whose raw text every warehouse can store."""
    root = tmp_path / "a"
    huge = b"\x00" * 300_000  # a binary "line": its reject keeps the first 64 KiB
    lines = [track("ok-1"), b'{"type": "track", \x00 "bad": \xff}', track("ok-2"), huge]
    write_ndjson(root / "1.ndjson", lines, gz=False)
    (root / "2.gz").write_bytes(b"PK\x03\x04\x00\x00\x14\x00\xff\xfe binary\nzip\x00data")
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert _ids(wh) == ["ok-1", "ok-2"]
    rejects = _rejects(wh)
    assert [(Path(f).name, line) for f, line, _, _ in rejects] == [
        ("1.ndjson", 2),
        ("1.ndjson", 4),
        ("2.gz", 1),
        ("2.gz", 2),
    ]
    assert rejects[1][2] == "\\x00" * 65536 + "... (300000 bytes in all)"
    assert rejects[0][2] == '{"type": "track", \\x00 "bad": \\xff}'
    assert all("\\x00" in raw and "\x00" not in raw for _, _, raw, _ in rejects)
    assert rejects[2][2].endswith("\\x00\\xff\\xfe binary")
    assert all("not valid JSON" in reason for *_, reason in rejects)
    assert report.rejects == 4 and report.status == "success"


def test_event_times_out_of_range_are_rejected_and_property_times_kept(
    open_wh, tmp_path: Path
) -> None:
    """An OverflowError in clock-skew correction or in typing failed the sync; now an
    event time outside years 1 to 9999 (in UTC) is a reject naming its field, and such a
    property is text."""
    skewed = {**track("skew", received="9999-12-31T23:59:59Z"), "sentAt": "0001-01-01T00:00:00Z"}
    early = {**track("early"), "receivedAt": "0001-01-01T00:00:00+01:00"}
    late_sent = {**track("late-sent"), "sentAt": "9999-12-31T23:00:00-05:00"}
    late_prop = track("late-prop", "Renewed", until="9999-12-31T23:00:00-05:00")
    root = tmp_path / "a"
    write_ndjson(root / "1.ndjson.gz", [track("ok-1"), skewed, early, late_sent, late_prop])
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert report.status == "success"
    assert _ids(wh) == ["late-prop", "ok-1"]
    reasons = {line: reason for _, line, _, reason in _rejects(wh)}
    assert sorted(reasons) == [2, 3, 4]
    assert "'receivedAt', 'sentAt', 'originalTimestamp'" in reasons[2]
    assert "corrected timestamp" in reasons[2] and "out of range" in reasons[2]
    assert reasons[3].startswith("field 'receivedAt': out of range")
    assert "0001-01-01T00:00:00+01:00" in reasons[3]
    assert reasons[4].startswith("field 'sentAt': out of range")
    assert wh.read_schema("src")["renewed"]["until"].value == "text"
    ((until,),) = table_rows(wh, "SELECT until FROM src.renewed")
    assert until == "9999-12-31T23:00:00-05:00"


def test_a_timestamp_column_rescues_a_value_out_of_range(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "a"
    write_ndjson(
        root / "1.ndjson.gz",
        [
            track("t1", "Renewed", until="2027-01-01T00:00:00Z"),
            track("t2", "Renewed", until="9999-12-31T23:00:00-05:00"),
        ],
    )
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert report.status == "success" and report.rescued_values == 1
    assert wh.read_schema("src")["renewed"]["until"].value == "timestamp"
    ((until, rescued),) = table_rows(
        wh, "SELECT until, _rescued_data FROM src.renewed WHERE id = 't2'"
    )
    assert until is None
    rescued = rescued if isinstance(rescued, dict) else orjson.loads(rescued)
    assert rescued == {"until": "9999-12-31T23:00:00-05:00"}


def _nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if kind == "object" else [value]
    return value


@pytest.mark.parametrize("kind", ["object", "array"])
def test_json_nested_a_thousand_deep_is_one_reject(open_wh, tmp_path: Path, kind: str) -> None:
    """A RecursionError from the decoder (or from flattening) failed the sync with no
    file or line; such a line is now a reject naming its depth, at whatever depth the
    decoder or the flattening gives up."""
    root = tmp_path / "a"
    deep = [
        orjson.dumps(track(f"deep-{depth}", x=1))[:-2]
        + b',"deep":'
        + b"[" * depth
        + b"1"
        + b"]" * depth
        + b"}}"
        if kind == "array"
        else orjson.dumps(track(f"deep-{depth}", x=1))[:-2]
        + b',"deep":'
        + b'{"a":' * depth
        + b"1"
        + b"}" * depth
        + b"}}"
        for depth in (990, 1000, 5000)
    ]
    write_ndjson(
        root / "1.ndjson.gz", [track("ok-1"), *deep, track("ok-2", deep=_nested(50, kind))]
    )
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert report.status == "success"
    assert _ids(wh) == ["ok-1", "ok-2"]
    rejects = _rejects(wh)
    assert [line for _, line, _, _ in rejects] == [2, 3, 4]
    for (_, _, _, reason), depth in zip(rejects, (990, 1000, 5000), strict=True):
        assert f"nested {depth + 2} levels deep" in reason


def test_a_leading_byte_order_mark_is_dropped(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "a"
    body = b"\xef\xbb\xbf" + orjson.dumps(track("first")) + b"\n" + orjson.dumps(track("second"))
    (root).mkdir()
    (root / "1.ndjson").write_bytes(body)
    (root / "2.ndjson.gz").write_bytes(gzip.compress(body.replace(b"first", b"third")))
    wh = open_wh()
    report = Loader(wh).load(str(root), "src")
    assert report.rejects == 0
    assert _ids(wh) == ["first", "second", "third"]


def _truncated_gzip(path: Path, lines: int, cut: int) -> tuple[int, int]:
    """A gzip of `lines` messages with its last `cut` bytes missing; returns how many
    whole lines the remaining bytes hold and the size of what remains."""
    body = b"".join(orjson.dumps(track(f"m{i:04}", n=i)) + b"\n" for i in range(lines))
    data = gzip.compress(body)[:-cut]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    readable = zlib.decompressobj(wbits=31).decompress(data)
    return readable.count(b"\n"), len(data)


def test_a_truncated_gzip_loads_what_it_holds_and_the_run_is_partial(
    open_wh, tmp_path: Path
) -> None:
    """All or nothing before: 997 readable lines dropped, one reject at "line 1", and the
    run said success. Now the lines before the break load, the break is one reject with
    the line and byte offsets, the run is `partial`, and a rerun changes nothing."""
    root = tmp_path / "a"
    write_ndjson(root / "1.ndjson.gz", [track("before")])
    whole, size = _truncated_gzip(root / "2.ndjson.gz", 1000, 300)
    write_ndjson(root / "3.ndjson.gz", [track("after")])
    assert 900 < whole < 1000
    wh = open_wh()
    report = Loader(wh, batch_lines=250).load(str(root), "src")
    assert report.status == "partial"
    assert _ids(wh) == sorted(["before", "after", *(f"m{i:04}" for i in range(whole))])
    ((failed),) = report.files_failed
    assert failed["file"].endswith("2.ndjson.gz") and failed["partial"] is True
    assert failed["line"] == whole + 1
    ((file, line, raw, reason),) = _rejects(wh)
    assert file.endswith("2.ndjson.gz") and line == whole + 1
    assert f"({size} compressed bytes read)" in reason and "decompressed bytes" in reason
    assert raw and orjson.dumps(track(f"m{whole:04}", n=whole)).startswith(raw.encode())
    (stored,) = wh.recent_runs(1)
    assert stored["status"] == "partial" and stored["files_failed"] == [failed]
    first = snapshot(wh, "src")

    again = Loader(wh).load(str(root), "src")
    assert again.status == "success" and again.files_loaded == 0
    assert snapshot(wh, "src") == first
    assert len(_rejects(wh)) == 1


def test_a_partial_load_exits_1_with_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: w.duckdb\n"
    )
    whole, _ = _truncated_gzip(tmp_path / "archive" / "1.ndjson.gz", 400, 200)
    write_ndjson(tmp_path / "archive" / "2.ndjson.gz", [track("after")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loader.cli.app",
            "load",
            "archive",
            "--schema",
            "web",
            "--readers",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "partial" in result.stdout and f"loaded up to line {whole + 1}" in result.stdout
    assert "is partial: 1 file(s) not loaded to the end" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_file_deleted_during_a_load_is_one_clean_failure(
    open_wh, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Reader processes printed tracebacks and the load died; now a vanished file is a
    failure of that file alone, the run is partial, and a rerun finishes cleanly."""
    root = tmp_path / "a"
    for f in range(8):
        write_ndjson(root / f"{f}.ndjson.gz", [track(f"m{f}-{i}") for i in range(50)])

    def delete_later_files(report: Any) -> None:
        if report.files_loaded == 1:
            for f in range(4, 8):
                (root / f"{f}.ndjson.gz").unlink()

    wh = open_wh()
    loader = Loader(wh, batch_lines=50, readers=2, on_batch=delete_later_files)
    report = loader.load(str(root), "src")
    assert report.status == "partial"
    assert sorted(Path(f["file"]).name for f in report.files_failed) == [
        f"{f}.ndjson.gz" for f in range(4, 8)
    ]
    assert all(
        f["partial"] is False
        and f["error"] == "could not be read: it disappeared during the load (deleted or moved)"
        for f in report.files_failed
    )
    assert report.files_loaded == 4 and len(_ids(wh)) == 200
    assert "Traceback" not in capfd.readouterr().err
    # Nothing of them was recorded: once they are back, the next run loads them.
    for f in range(4, 8):
        write_ndjson(root / f"{f}.ndjson.gz", [track(f"m{f}-{i}") for i in range(50)])
    rerun = Loader(wh, readers=2).load(str(root), "src")
    assert rerun.status == "success" and rerun.files_loaded == 4 and len(_ids(wh)) == 400


_VALID = st.builds(
    lambda i, props: track(f"valid-{i}", **props),
    st.integers(0, 10**6),
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=5),
        st.one_of(st.integers(-1000, 1000), st.text(max_size=10), st.booleans()),
        max_size=3,
    ),
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_BAD = st.one_of(
    st.binary(min_size=1, max_size=60),
    _JSON.map(orjson.dumps),
    st.dictionaries(st.sampled_from(["type", "messageId", "receivedAt", "userId"]), _JSON).map(
        orjson.dumps
    ),
)


_RUNS = itertools.count()


def _one_line(raw: bytes) -> bytes:
    return raw.replace(b"\n", b" ").replace(b"\r", b" ")


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    valid=st.lists(_VALID, min_size=1, max_size=6, unique_by=lambda m: m["messageId"]),
    bad=st.lists(_BAD, min_size=1, max_size=6),
    gz=st.booleans(),
)
def test_random_bad_lines_never_block_the_valid_ones(
    tmp_path_factory: pytest.TempPathFactory,
    pg_dsn: str,
    valid: list[dict[str, Any]],
    bad: list[bytes],
    gz: bool,
) -> None:
    """Random bytes and random JSON among valid messages: every valid message loads, and
    every other non-blank line is exactly one reject with a reason, on PostgreSQL (the
    strictest about text) and DuckDB."""
    from loader.rules.messages import parse_line
    from loader.warehouses.duckdb import DuckDBWarehouse
    from loader.warehouses.postgres import PostgresWarehouse

    root = tmp_path_factory.mktemp("fuzz")
    lines: list[bytes] = []
    for i, message in enumerate(valid):
        lines.append(orjson.dumps(message))
        if i < len(bad):
            lines.append(_one_line(bad[i]))
    lines.extend(_one_line(b) for b in bad[len(valid) :])
    write_ndjson(root / "a" / "1.ndjson.gz", lines, gz=gz)
    # A random "bad" line can happen to be a valid message; it must then load.
    expected_ids = {m["messageId"] for m in valid}
    expected_rejects = 0
    for line in lines:
        if not line.strip() or line in {orjson.dumps(m) for m in valid}:
            continue
        parsed = parse_line(line.strip(), "f", 1)
        if hasattr(parsed, "reason"):
            expected_rejects += 1
        elif parsed.type == "track":
            expected_ids.add(parsed.message_id)
    schema = f"fuzz_{next(_RUNS)}"
    for wh in (
        PostgresWarehouse("pg", pg_dsn),
        DuckDBWarehouse("duck", str(root / "w.duckdb")),
    ):
        try:
            report = Loader(wh, readers=0).load(str(root / "a"), schema)
            assert report.status == "success"
            assert expected_ids <= set(_ids(wh, schema=schema))
            rejects = table_rows(
                wh,
                f"SELECT line, reason FROM _sluice.rejected_events WHERE schema_name = '{schema}'",
            )
            assert len(rejects) == report.rejects == expected_rejects
            assert len({line for line, _ in rejects}) == len(rejects)
            assert all(reason for _, reason in rejects)
        finally:
            wh.close()
