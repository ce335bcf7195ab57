"""Golden tests: full Segment messages -> the exact rows of each table, per call type."""

from __future__ import annotations

from typing import Any

import pytest

from loader.rules.messages import Reject, parse_line
from loader.rules.normalize import Row, rows_for
from loader.rules.schema import ColumnType, coerce, fits, infer_type, plan_columns

CONTEXT = {
    "library": {"name": "analytics.js", "version": "4.1.0"},
    "userAgent": "Mozilla/5.0",
    "ip": "10.0.0.1",
    "page": {"path": "/shop", "title": "Shop"},
    "campaign": {"source": "newsletter"},
}
CONTEXT_COLUMNS = {
    "context_library_name": "analytics.js",
    "context_library_version": "4.1.0",
    "context_user_agent": "Mozilla/5.0",
    "context_ip": "10.0.0.1",
    "context_page_path": "/shop",
    "context_page_title": "Shop",
    "context_campaign_source": "newsletter",
}
ENVELOPE = {
    "messageId": "m1",
    "anonymousId": "a1",
    "userId": "u1",
    "receivedAt": "2026-11-01T12:00:00.000Z",
    "sentAt": "2026-11-01T12:10:00.000Z",
    "originalTimestamp": "2026-11-01T12:09:00.000Z",
    "context": CONTEXT,
    "integrations": {"All": True},
    "writeKey": "wk",
    "projectId": "p",
    "version": 2,
    "channel": "client",
    "_metadata": {"bundled": ["x"]},
}
COMMON = {
    "id": "m1",
    "anonymous_id": "a1",
    "user_id": "u1",
    "received_at": "2026-11-01T12:00:00.000Z",
    "sent_at": "2026-11-01T12:10:00.000Z",
    # received_at - (sent_at - original_timestamp): the client clock was 10 minutes fast.
    "timestamp": "2026-11-01T11:59:00+00:00",
    "original_timestamp": "2026-11-01T12:09:00.000Z",
    **CONTEXT_COLUMNS,
}


def rows(message: dict[str, Any]) -> list[Row]:
    return rows_for({**ENVELOPE, **message})


def test_track_goes_to_tracks_without_properties_and_to_its_event_table() -> None:
    out = rows(
        {
            "type": "track",
            "event": "Order Completed",
            "properties": {
                "revenue": 12.5,
                "products": [{"product_id": "p1", "price": 3}],
                "address": {"street": "Main St", "geo": {"lat": 1.5}},
                "id": "prop-id",
                "event": "shadow",
                "received_at": "x",
            },
        }
    )
    assert [r.table for r in out] == ["tracks", "order_completed"]
    tracks, event = out
    assert tracks.values == {**COMMON, "event": "order_completed", "event_text": "Order Completed"}
    assert tracks.rescued == {}
    assert event.values == {
        **COMMON,
        "event": "order_completed",
        "event_text": "Order Completed",
        "revenue": 12.5,
        "products": '[{"product_id":"p1","price":3}]',
        "address_street": "Main St",
        "address_geo_lat": 1.5,
    }
    # Properties named like common columns never overwrite them; they are kept.
    assert event.rescued == {"id": "prop-id", "event": "shadow", "received_at": "x"}


def test_page_and_screen() -> None:
    (page,) = rows(
        {
            "type": "page",
            "name": "Home",
            "category": "Docs",
            "properties": {"url": "https://x.io/", "path": "/", "title": "Home", "name": "Home"},
        }
    )
    assert page.table == "pages"
    assert page.values == {
        **COMMON,
        "name": "Home",
        "category": "Docs",
        "url": "https://x.io/",
        "path": "/",
        "title": "Home",
    }
    (screen,) = rows({"type": "screen", "name": "Settings", "properties": {"tab": "billing"}})
    assert screen.table == "screens"
    assert screen.values == {**COMMON, "name": "Settings", "category": None, "tab": "billing"}


def test_identify_group_alias() -> None:
    (ident,) = rows(
        {"type": "identify", "traits": {"email": "a@x.io", "accountType": "pro", "user_id": 5}}
    )
    assert ident.table == "identifies"
    assert ident.values == {**COMMON, "email": "a@x.io", "account_type": "pro"}
    assert ident.rescued == {"user_id": 5}

    (group,) = rows({"type": "group", "groupId": 42, "traits": {"name": "Acme", "plan": "x"}})
    assert group.table == "groups"
    assert group.values == {**COMMON, "group_id": "42", "name": "Acme", "plan": "x"}

    (alias,) = rows({"type": "alias", "previousId": "a1"})
    assert alias.table == "aliases"
    assert alias.values == {**COMMON, "previous_id": "a1"}


def test_given_timestamp_is_kept_and_reserved_event_names_get_a_prefix() -> None:
    tracks, event = rows(
        {"type": "track", "event": "Pages", "timestamp": "2026-10-31T00:00:00Z", "properties": {}}
    )
    assert tracks.values["timestamp"] == "2026-10-31T00:00:00Z"
    assert event.table == "_pages"


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b"{not json", "not valid JSON"),
        (b'"a string"', "not a JSON object"),
        (b'{"type": "explode", "messageId": "m", "receivedAt": "2026-01-01T00:00:00Z"}', "'type'"),
        (b'{"type": "track", "event": "e", "receivedAt": "2026-01-01T00:00:00Z"}', "'messageId'"),
        (
            b'{"type": "track", "event": "e", "messageId": "' + b"x" * 101 + b'", "userId": "u",'
            b' "receivedAt": "2026-01-01T00:00:00Z"}',
            "'messageId'",
        ),
        (
            b'{"type": "track", "event": "e", "messageId": "m", "userId": "u",'
            b' "receivedAt": "2026-01-01T00:00:00Z", "properties": 3}',
            "'properties'",
        ),
        (
            b'{"type": "track", "event": "e", "messageId": "m", "userId": "u",'
            b' "receivedAt": "soon"}',
            "'receivedAt'",
        ),
        (
            b'{"type": "track", "messageId": "m", "userId": "u",'
            b' "receivedAt": "2026-01-01T00:00:00Z"}',
            "'event'",
        ),
        (
            b'{"type": "track", "event": "e", "messageId": "m",'
            b' "receivedAt": "2026-01-01T00:00:00Z"}',
            "'userId'/'anonymousId'",
        ),
    ],
)
def test_rejects_name_the_field(line: bytes, field: str) -> None:
    result = parse_line(line, "f.json", 7)
    assert isinstance(result, Reject)
    assert field in result.reason and result.line == 7 and result.file == "f.json"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, ColumnType.BOOLEAN),
        (3, ColumnType.BIGINT),
        # An integer beyond 64 bits still types a bigint (it is rescued from it).
        (2**70, ColumnType.BIGINT),
        (2.5, ColumnType.DOUBLE),
        ("2026-11-01T10:00:00Z", ColumnType.TIMESTAMP),
        ("2026-11-01 10:00", ColumnType.TIMESTAMP),
        # A date alone, or digits ISO's basic form would read, is text.
        ("2026-11-01", ColumnType.TEXT),
        ("2024010112345", ColumnType.TEXT),
        ("20240101T123456", ColumnType.TEXT),
        ("hello", ColumnType.TEXT),
        ("12", ColumnType.TEXT),
        (None, None),
    ],
)
def test_infer_type(value: Any, kind: ColumnType | None) -> None:
    assert infer_type(value) is kind


@pytest.mark.parametrize(
    ("value", "column", "expected"),
    [
        (3, ColumnType.DOUBLE, 3.0),
        (2**53, ColumnType.DOUBLE, float(2**53)),
        (2**53 + 2, ColumnType.DOUBLE, float(2**53 + 2)),  # a double holds it exactly
        (-(2**63), ColumnType.BIGINT, -(2**63)),
        (3.0, ColumnType.BIGINT, 3),
        (7, ColumnType.TEXT, "7"),
        (True, ColumnType.TEXT, "true"),
        ("x", ColumnType.TEXT, "x"),
        ("2026-11-01T10:00:00Z", ColumnType.TIMESTAMP, "2026-11-01T10:00:00+00:00"),
    ],
)
def test_lossless_conversions(value: Any, column: ColumnType, expected: Any) -> None:
    assert coerce(value, column) == expected


@pytest.mark.parametrize(
    ("value", "column"),
    [
        ("abc", ColumnType.BIGINT),
        (2.5, ColumnType.BIGINT),
        (True, ColumnType.BIGINT),
        ("yes", ColumnType.BOOLEAN),
        ("tomorrow", ColumnType.TIMESTAMP),
        (5, ColumnType.TIMESTAMP),
        ("1.5", ColumnType.DOUBLE),
        # Integers a column cannot hold exactly.
        (2**53 + 1, ColumnType.DOUBLE),
        (2**70 + 1, ColumnType.DOUBLE),
        (-(2**63) - 1, ColumnType.DOUBLE),
        (10**400, ColumnType.DOUBLE),
        (2**63, ColumnType.BIGINT),
        (-(2**63) - 1, ColumnType.BIGINT),
        (2.0**63, ColumnType.BIGINT),
        ("2026-11-01", ColumnType.TIMESTAMP),
        ("2024010112345", ColumnType.TIMESTAMP),
    ],
)
def test_values_that_do_not_fit(value: Any, column: ColumnType) -> None:
    assert not fits(coerce(value, column))


def test_ints_and_floats_in_the_creating_batch_make_a_double() -> None:
    columns, added = plan_columns(None, [{"q": 1}, {"q": 2.5}, {"s": "a"}], {})
    assert added == {"q": ColumnType.DOUBLE, "s": ColumnType.TEXT}
    # Once created, the type is fixed: a later batch adds nothing.
    _, later = plan_columns(columns, [{"q": "text now"}], {})
    assert later == {}
