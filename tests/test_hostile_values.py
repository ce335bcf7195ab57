"""Hostile names and values: nothing lost or changed without a trace.

Keys that share a column, integers no column type holds exactly, digit strings that
look like times, boolean ids, properties named like context columns, events wider than
a warehouse takes: each value lands in its column or in the row's `_rescued_data`
(under its original key), exactly once, and the report counts what was rescued.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.encode.row_layout import CUT_MARKER, fit_rescued
from loader.rules.messages import parse_date_time
from loader.rules.normalize import rows_for
from loader.rules.schema import ColumnType, infer_type, json_text
from loader.sync.pipeline import Loader
from tests.helpers import identify, snapshot, table_rows, track, write_ndjson

T = "2026-11-01T10:00:00Z"


def _event_row(properties: dict[str, Any], **message: Any) -> tuple[dict, dict]:
    msg = {**track("m1"), "properties": properties, **message}
    _, row = rows_for(msg)
    return row.values, row.rescued


def _write(path: Path, messages: list[dict[str, Any]]) -> None:
    """NDJSON by the standard library: orjson refuses integers beyond 64 bits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages))


def _rescued(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return value if isinstance(value, dict) else json.loads(value)


# --- 26.1: names that collide after snake_casing -----------------------------------


@pytest.mark.parametrize(
    ("properties", "column", "stored", "rescued"),
    [
        # The key that is the column's name already wins, wherever it stands.
        (
            {"orderId": "A", "order_id": "B", "Order ID": "C"},
            "order_id",
            "B",
            {"orderId": "A", "Order ID": "C"},
        ),
        ({"a": {"b": 1}, "a_b": 2}, "a_b", 2, {"a.b": 1}),
        ({"a_b": 2, "a": {"b": 1}}, "a_b", 2, {"a.b": 1}),
        ({"from": 1, "_from": 2, "from_": 3}, "_from", 2, {"from": 1, "from_": 3}),
        # Else the first in the message.
        ({"from": 1, "from_": 3}, "_from", 1, {"from_": 3}),
        ({"Order ID": "C", "orderId": "A"}, "order_id", "C", {"orderId": "A"}),
        # A null never takes the column from a value, and a null loser carries nothing.
        ({"order_id": None, "orderId": "A"}, "order_id", "A", {}),
    ],
)
def test_keys_sharing_a_column_keep_one_winner_and_rescue_the_others(
    properties: dict[str, Any], column: str, stored: Any, rescued: dict[str, Any]
) -> None:
    values, kept = _event_row(properties)
    assert values[column] == stored
    assert kept == rescued


def test_transliterated_names_no_longer_collide() -> None:
    values, kept = _event_row({"größe": 1, "grüße": 2, "prénom": "Zoé"})
    assert (values["grosse"], values["grusse"], values["prenom"]) == (1, 2, "Zoé")
    assert kept == {}


def test_reserved_names_are_rescued_under_their_original_keys() -> None:
    """`user_id` and `userId` both name the common column: both are kept, apart."""
    values, kept = _event_row({"user_id": "x", "userId": "y", "id": "p"})
    assert values["user_id"] == "u1" and values["id"] == "m1"
    assert kept == {"user_id": "x", "userId": "y", "id": "p"}


def test_context_keys_that_share_a_column_rescue_the_loser() -> None:
    msg = {**track("m1"), "context": {"userAgent": "A", "user_agent": "B"}}
    tracks, event = rows_for(msg)
    for row in (tracks, event):
        assert row.values["context_user_agent"] == "B"
        assert row.rescued == {"context.userAgent": "A"}


# --- 26.6: properties never write into context columns -----------------------------


def test_a_property_named_like_a_context_column_is_rescued() -> None:
    values, kept = _event_row({"context_ip": "6.6.6.6", "context": {"page": {"path": "/x"}}})
    assert "context_ip" not in values and "context_page_path" not in values
    assert kept == {"context_ip": "6.6.6.6", "context.page.path": "/x"}
    values, kept = _event_row({"context_ip": "6.6.6.6"}, context={"ip": "1.2.3.4"})
    assert values["context_ip"] == "1.2.3.4" and kept == {"context_ip": "6.6.6.6"}
    (ident,) = rows_for(identify("i1", "u1", T, T, context_ip="6.6.6.6"))
    assert "context_ip" not in ident.values and ident.rescued == {"context_ip": "6.6.6.6"}


# --- 26.5: boolean ids are JSON's text ---------------------------------------------


def test_boolean_and_number_ids_are_their_json_text() -> None:
    msg = {
        "type": "group",
        "messageId": "g1",
        "userId": True,
        "anonymousId": 42,
        "groupId": False,
        "receivedAt": T,
    }
    (group,) = rows_for(msg)
    assert group.values["user_id"] == "true"
    assert group.values["anonymous_id"] == "42"
    assert group.values["group_id"] == "false"
    tracks, event = rows_for({**track("t1", event=True)})  # type: ignore[arg-type]
    assert tracks.values["event_text"] == "true" and event.table == "_true"  # reserved


# --- 26.3: which strings are timestamps --------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["2024010112345", "20240101", "20240101T123456", "2024-01-01", "2024-W01-1", "2024-001"],
)
def test_digit_strings_and_dates_alone_are_not_timestamps(text: str) -> None:
    assert infer_type(text) is ColumnType.TEXT


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(None)
    ),
    st.sampled_from(["T", " "]),
    st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]),
    st.sampled_from(["", "Z", "+00:00", "-05:30", "+0200"]),
)
def test_extended_iso_date_times_are_timestamps(
    moment: datetime, sep: str, spec: str, offset: str
) -> None:
    text = moment.isoformat(sep=sep, timespec=spec) + offset
    parsed = parse_date_time(text)
    assert parsed is not None and parsed.tzinfo is timezone.utc
    assert infer_type(text) is ColumnType.TIMESTAMP


@given(st.text(alphabet="0123456789-:T +Z.", max_size=30))
def test_a_timestamp_has_separated_date_and_time_fields(text: str) -> None:
    """The boundary: whatever the standard library would read, only `YYYY-MM-DD`, `T` or
    a space, then `HH:MM` (and more) is a timestamp; every other string is text."""
    if parse_date_time(text) is not None:
        assert text[4] == "-" and text[7] == "-" and text[10] in "T " and text[13] == ":"
        assert text[:4].isdigit() and text[11:13].isdigit()
    if text.isdigit():
        assert infer_type(text) is ColumnType.TEXT


# --- 26.7: rescued text cut at the warehouse's width -------------------------------


@given(
    st.dictionaries(
        st.text(max_size=5),
        st.one_of(st.text(max_size=3000), st.integers(), st.lists(st.text(max_size=40))),
        max_size=6,
    ),
    st.integers(min_value=400, max_value=5000),
)
def test_rescued_text_is_cut_to_the_limit_and_stays_json(slot: dict, limit: int) -> None:
    text, cut = fit_rescued(slot, limit)
    assert len(text.encode()) <= limit
    back = json.loads(text)
    if cut == 0:
        assert back == slot
        return
    markers = [v for v in back.values() if isinstance(v, dict) and v.get(CUT_MARKER)]
    if CUT_MARKER in back:  # one marker for the whole object
        assert back["keys"] == len(slot) == cut
        return
    assert len(markers) == cut
    for key, value in back.items():
        original = json.dumps(slot[key], separators=(",", ":"), ensure_ascii=False)
        if isinstance(value, dict) and value.get(CUT_MARKER):
            assert value["length"] == len(original)
            assert original.startswith(value["head"])
            assert len(value["sha256"]) == 64
        else:
            assert value == slot[key]


# --- end to end, DuckDB and PostgreSQL ---------------------------------------------

BIG = [2**53 + 1, 2**70 + 1, -(2**63) - 1, 2**63, 2**64 + 7]


def test_hostile_values_land_once_on_the_warehouse(open_wh, tmp_path: Path) -> None:
    messages = [
        {
            **track("m1", orderId="A", order_id="B", **{"Order ID": "C"}),
            "userId": True,
        },
        track("m2", a={"b": 1}, a_b=2, größe=3, grüße=4, context_ip="6.6.6.6"),
        {
            **track("m3", ratio=0.5, count=1, order_no="2024010112345", seen="2026-11-01 10:00"),
            "context": {"ip": "1.2.3.4"},
        },
        # Integers neither a double nor a bigint column holds exactly.
        *[track(f"n{i}", ratio=big, count=big) for i, big in enumerate(BIG)],
        track("m4", order_no="2024010112346", seen="2026-11-01"),
    ]
    _write(tmp_path / "a" / "1.json", messages)
    wh = open_wh()
    report = Loader(wh, readers=0).load(str(tmp_path / "a"), "s")
    assert report.status == "success"
    columns = wh.read_schema("s")["order_completed"]
    assert columns["ratio"] is ColumnType.DOUBLE and columns["count"] is ColumnType.BIGINT
    assert columns["order_no"] is ColumnType.TEXT and columns["seen"] is ColumnType.TIMESTAMP
    rows = {
        r[0]: r[1:]
        for r in table_rows(
            wh,
            'SELECT id, user_id, order_id, a_b, grosse, grusse, ratio, "count", order_no, '
            "context_ip, _rescued_data FROM s.order_completed",
        )
    }
    assert rows["m1"][:2] == ("true", "B")
    assert _rescued(rows["m1"][-1]) == {"orderId": "A", "Order ID": "C"}
    assert rows["m2"][2:5] == (2, 3, 4) and rows["m2"][-2] is None
    assert _rescued(rows["m2"][-1]) == {"a.b": 1, "context_ip": "6.6.6.6"}
    assert rows["m3"][5:9] == (0.5, 1, "2024010112345", "1.2.3.4")
    assert rows["m4"][7] == "2024010112346" and _rescued(rows["m4"][-1]) == {"seen": "2026-11-01"}
    for i, big in enumerate(BIG):
        ratio, count, rescued = rows[f"n{i}"][5], rows[f"n{i}"][6], _rescued(rows[f"n{i}"][-1])
        fits_double = float(big) == big
        fits_bigint = -(2**63) <= big < 2**63
        assert ratio == (float(big) if fits_double else None)
        assert count == (big if fits_bigint else None)
        expected = {}
        if not fits_double:
            expected["ratio"] = big
        if not fits_bigint:
            expected["count"] = big
        assert rescued == expected  # the exact digits, not a double's
    (users,) = table_rows(wh, "SELECT user_id FROM s.tracks WHERE id = 'm1'")
    assert users == ("true",)
    # A: 2 + m2: 2 + m4: 1 + the integers: 2 for 2^70+1, -2^63-1, 2^64+7; 1 for the others.
    assert report.rescued_values == 2 + 2 + 1 + sum(
        (float(b) != b) + (not -(2**63) <= b < 2**63) for b in BIG
    )


# --- 20.3: types depend on the archive alone, never on batching --------------------


def _batching_archive(root: Path, files: list[list[dict[str, Any]]]) -> Path:
    for n, messages in enumerate(files):
        write_ndjson(root / "segment-logs" / "src" / "1793491200000" / f"f{n:02d}.gz", messages)
    return root


SMALL_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([2.5, 2**63, "x", "2026-11-01T10:00:00Z", True]),
)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["m1", "m2", "m3", "m4", "m5", "m6", "m7"]), SMALL_VALUES),
            min_size=1,
            max_size=3,
        ),
        min_size=2,
        max_size=3,
    )
)
def test_one_archive_gives_one_set_of_tables_at_any_batch_size(
    files: list[list[tuple[str, Any]]], pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """quantity's type comes from the first file where it has a value: the same tables
    at one file per batch, two, or all at once, duplicates across files included."""
    root = tmp_path_factory.mktemp("batching")
    messages = [[track(mid, quantity=value) for mid, value in f] for f in files]
    archive = _batching_archive(root / "archive", messages)
    wh = _shared_warehouses(pg_dsn, tmp_path_factory)[0]
    tables = []
    for batch_lines in (1, 3, 10_000):
        schema = f"{root.name}_{batch_lines}"
        Loader(wh, batch_lines=batch_lines, readers=0).load(str(archive), schema)
        tables.append((wh.read_schema(schema), snapshot(wh, schema)))
    assert tables[0] == tables[1] == tables[2]


def test_batch_size_never_changes_a_type_on_postgres(pg_dsn: str, tmp_path: Path) -> None:
    """The case that was found: ints in the first file, a fraction later. Both paths
    (reader-encoded rows and tuples) and three batch sizes give one set of tables."""
    from loader.warehouses.postgres import PostgresWarehouse

    files = [
        [track("m1", quantity=1), track("m2", quantity=2)],
        [track("m3", quantity=2.5), track("m1", quantity=0.5, late=1.5)],  # m1: a re-send
        [track("m4", quantity=3, late=2)],
    ]
    archive = _batching_archive(tmp_path / "a", files)
    wh = PostgresWarehouse("pg", pg_dsn)
    try:
        tables = []
        for n, batch_lines in enumerate((1, 2, 10_000)):
            Loader(wh, batch_lines=batch_lines, readers=0).load(str(archive), f"s{n}")
            tables.append((wh.read_schema(f"s{n}"), snapshot(wh, f"s{n}")))
        assert tables[0] == tables[1] == tables[2]
        schema, _ = tables[0]
        assert schema["order_completed"]["quantity"] is ColumnType.BIGINT
        assert schema["order_completed"]["late"] is ColumnType.DOUBLE  # from m1's re-send
    finally:
        wh.close()


# --- 20.7 / 20.19: events wider than the warehouse takes ---------------------------


def test_an_event_of_2000_properties_loads_within_the_column_limit(open_wh, tmp_path: Path) -> None:
    wide = {
        f"p{i:04d}": (i if i % 3 == 0 else f"v{i}" if i % 3 == 1 else i + 0.5) for i in range(2000)
    }
    write_ndjson(tmp_path / "a" / "1.json", [track("w1", **wide), track("w2", p0000=7)], gz=False)
    wh = open_wh()
    limit = wh.capabilities.max_columns
    assert limit is not None and limit <= 2000  # below the event and its common columns
    report = Loader(wh, readers=0).load(str(tmp_path / "a"), "s")
    assert report.status == "success"
    columns = wh.read_schema("s")["order_completed"]
    assert len(columns) == limit
    assert any("limit of" in w and "order_completed" in w for w in report.warnings)
    # Every property is in its column or in _rescued_data, once.
    kept = [c for c in columns if c.startswith("p")]
    select = ", ".join(f'"{c}"' for c in kept)
    (row,) = table_rows(wh, f"SELECT {select}, _rescued_data FROM s.order_completed WHERE id='w1'")
    stored = {c: v for c, v in zip(kept, row[:-1], strict=True) if v is not None}
    rescued = _rescued(row[-1])
    assert set(stored) | set(rescued) == set(wide) and not set(stored) & set(rescued)
    for name, value in {**stored, **rescued}.items():
        assert value == wide[name] or value == str(wide[name])
    assert report.rescued_values == len(rescued)
    assert len(rescued) >= 2000 - limit


# --- the sweep: every input value found exactly once --------------------------------

COLLIDING_KEYS = [
    "orderId",
    "order_id",
    "Order ID",
    "a_b",
    "from",
    "_from",
    "from_",
    "größe",
    "grüße",
    "grosse",
    "user_id",
    "userId",
    "id",
    "context_ip",
    "n",
    "N",
]
NESTED_KEYS = [("a", "b"), ("context", "ip"), ("Order", "ID")]
EXTREME = st.one_of(
    st.sampled_from(
        [
            2**53 + 1,
            2**53,
            2**63 - 1,
            2**63,
            -(2**63),
            -(2**63) - 1,
            2**70 + 1,
            10**30,
            0.5,
            1e300,
            -2.5,
            True,
            False,
            "2024010112345",
            "2026-11-01",
            "2026-11-01T10:00:00Z",
            "2026-11-01 10:00:00+02:00",
            "20240101T1234",
            "x",
            "",
        ]
    ),
    st.integers(min_value=-(2**65), max_value=2**65),
)


def _kind_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, repr(value))


@st.composite
def hostile_messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages = []
    for n in range(draw(st.integers(min_value=1, max_value=4))):
        keys = draw(st.lists(st.sampled_from(COLLIDING_KEYS), unique=True, max_size=6))
        nested = draw(st.lists(st.sampled_from(NESTED_KEYS), unique=True, max_size=2))
        values = draw(
            st.lists(
                EXTREME,
                min_size=len(keys) + len(nested),
                max_size=len(keys) + len(nested),
                unique_by=_kind_key,
            )
        )
        properties: dict[str, Any] = dict(zip(keys, values, strict=False))
        for (outer, inner), value in zip(nested, values[len(keys) :], strict=True):
            properties[outer] = {inner: value}
        messages.append(track(f"h{n}", **properties))
    return messages


def _leaves(properties: dict[str, Any], path: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in properties.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            out.extend(_leaves(value, where))
        else:
            out.append((where, value))
    return out


def _same(stored: Any, value: Any) -> bool:
    """Whether a stored column value is the input value, converted losslessly."""
    if isinstance(stored, bool):
        return type(value) is bool and stored == value
    if isinstance(stored, datetime):
        return isinstance(value, str) and parse_date_time(value) == stored
    if isinstance(stored, str):
        return stored == (value if isinstance(value, str) else json_text(value))
    return type(value) in (int, float) and stored == value


def _same_json(kept: Any, value: Any) -> bool:
    """A rescued value as read back is the input value (jsonb may give 1e300 back as
    an integer: the same number)."""
    if isinstance(kept, bool) or isinstance(value, bool):
        return type(kept) is type(value) and kept == value
    if isinstance(value, str) or isinstance(kept, str):
        return kept == value
    if isinstance(value, float) and isinstance(kept, int):
        return float(kept) == value
    return kept == value


def _check_exactly_once(wh: Any, schema: str, messages: list[dict[str, Any]], report: Any) -> None:
    columns = [c for c in wh.read_schema(schema).get("order_completed", {}) if c != "uuid_ts"]
    select = ", ".join(f'"{c}"' for c in columns)
    rows = {
        r[0]: dict(zip(columns, r, strict=True))
        for r in table_rows(wh, f'SELECT {select} FROM "{schema}".order_completed')
    }
    common = {"id", "anonymous_id", "user_id", "received_at", "sent_at", "timestamp"}
    common |= {"original_timestamp", "event", "event_text", "_rescued_data"}
    rescued_total = 0
    for msg in messages:
        row = rows[msg["messageId"]]
        assert row["user_id"] == "u1" and row["id"] == msg["messageId"]
        found = {c: v for c, v in row.items() if c not in common and v is not None}
        rescued = _rescued(row["_rescued_data"])
        rescued_total += len(rescued)
        leaves = [(path, value) for path, value in _leaves(msg["properties"]) if value is not None]
        for path, value in leaves:
            in_columns = [c for c, v in found.items() if _same(v, value)]
            in_rescued = [k for k, v in rescued.items() if _same_json(v, value)]
            assert len(in_columns) + len(in_rescued) == 1, (path, value, found, rescued)
            if in_columns:
                del found[in_columns[0]]
            else:
                del rescued[in_rescued[0]]
        assert found == {} and rescued == {}, (msg, found, rescued)
    assert report.rescued_values == rescued_total


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=hostile_messages())
def test_every_hostile_value_is_found_exactly_once(
    messages: list[dict[str, Any]], pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("hostile")
    _write(root / "a" / "1.json", messages)
    schema = f"h_{root.name[-12:].replace('-', '_')}"
    for wh in _shared_warehouses(pg_dsn, tmp_path_factory):
        report = Loader(wh, readers=0).load(str(root / "a"), schema)
        assert report.status == "success"
        _check_exactly_once(wh, schema, messages, report)


_OPENED: dict[str, list[Any]] = {}


def _shared_warehouses(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """One DuckDB file and one PostgreSQL database for all of a hypothesis test's
    examples (a schema each): opening and bookkeeping once keeps the test fast."""
    from loader.warehouses.duckdb import DuckDBWarehouse
    from loader.warehouses.postgres import PostgresWarehouse

    if pg_dsn not in _OPENED:
        for opened in _OPENED.values():
            for wh in opened:
                wh.close()
        _OPENED.clear()
        path = tmp_path_factory.mktemp("shared") / "wh.duckdb"
        _OPENED[pg_dsn] = [DuckDBWarehouse("d", str(path)), PostgresWarehouse("p", pg_dsn)]
    return _OPENED[pg_dsn]
