"""parse_line decides like the rules say, whichever of its two paths a line takes.

msgspec decodes and checks most lines in C; a line it refuses is parsed again by orjson
and checked field by field. Hypothesis mixes every kind of JSON value into every field
the rules look at, and each line must be accepted or rejected exactly as a plain
reading of the rules (the oracle below) says, its rows must be those of the same message
read as a dict, and its parsed times must be the instants its text names.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loader.rules.messages import CALL_TYPES, Envelope, Reject, parse_line, parse_timestamp
from loader.rules.normalize import rows_for

STRING_FIELDS = ("userId", "anonymousId", "event", "name", "category", "groupId", "previousId")
TIME_FIELDS = ("receivedAt", "sentAt", "timestamp", "originalTimestamp")
OBJECT_FIELDS = ("properties", "traits", "context")


def _iso(value: Any) -> bool:
    if not isinstance(value, str) or len(value) < 10 or not value[:4].isdigit():
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def oracle_faults(message: dict[str, Any]) -> set[str]:
    """Every field that makes the message one Segment would not load (empty: valid)."""
    get = message.get
    faults: set[str] = set()
    kind = get("type")
    if not isinstance(kind, str) or kind.lower() not in CALL_TYPES:
        faults.add("type")
        kind = None
    else:
        kind = kind.lower()
    mid = get("messageId")
    if not isinstance(mid, str) or not mid or len(mid) > 100:
        faults.add("messageId")
    faults.update(f for f in OBJECT_FIELDS if get(f) is not None and not isinstance(get(f), dict))
    faults.update(
        f for f in STRING_FIELDS if get(f) is not None and not isinstance(get(f), (str, int))
    )
    faults.update(f for f in TIME_FIELDS if get(f) is not None and not _iso(get(f)))
    if get("receivedAt") is None:
        faults.add("receivedAt")
    if kind == "track" and not get("event"):
        faults.add("event")
    if kind == "group" and get("groupId") in (None, ""):
        faults.add("groupId")
    if kind == "alias" and get("previousId") in (None, ""):
        faults.add("previousId")
    if get("userId") in (None, "") and get("anonymousId") in (None, ""):
        faults.add("userId")
    return faults


def without_nuls(value: Any) -> Any:
    """The message as the rules read it: NUL characters removed from every key and
    string (no text column of PostgreSQL or Redshift can store one)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nuls(k): without_nuls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nuls(v) for v in value]
    return value


def _named_field(reason: str) -> str:
    return reason.split("'")[1]


ABSENT = object()
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
times = st.sampled_from(
    [
        "2026-11-01T12:00:00.000Z",
        "2026-11-01T12:00:00+02:00",
        "2026-11-01T12:00:00",
        "2026-11-01",
        "2026-11-01 12:00:00.123456-05:30",
        "soon",
        "2026-13-01T00:00:00Z",
        "",
    ]
)
field_values = {
    "type": st.sampled_from(["track", "Track", "PAGE", "screen", "identify", "group", "alias"])
    | st.sampled_from(["explode", "", 5, None]),
    "messageId": st.sampled_from(["m1", "", "x" * 100, "x" * 101, "é" * 100, 7, None]),
    **{f: st.one_of(times, json_values) for f in TIME_FIELDS},
    **{
        f: st.one_of(st.sampled_from(["u1", "Order Completed", ""]), json_values)
        for f in STRING_FIELDS
    },
    **{
        f: st.one_of(json_values, st.dictionaries(st.text(max_size=8), json_values, max_size=4))
        for f in OBJECT_FIELDS
    },
}
VALID = {
    "type": "track",
    "messageId": "m1",
    "receivedAt": "2026-11-01T12:00:00.000Z",
    "sentAt": "2026-11-01T12:10:00.000Z",
    "originalTimestamp": "2026-11-01T12:09:00.000Z",
    "userId": "u1",
    "event": "Order Completed",
    "groupId": "g1",
    "previousId": "p1",
    "properties": {"revenue": 3.5, "shipping": {"cost": 10}, "items": [1, 2]},
    "context": {"ip": "10.0.0.1", "library": {"name": "analytics.js"}},
    "integrations": {"All": True},
}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with some fields replaced, removed or left as they are."""
    message = dict(VALID)
    for name in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=4, unique=True)):
        value = draw(st.one_of(st.just(ABSENT), field_values[name]))
        if value is ABSENT:
            message.pop(name, None)
        else:
            message[name] = value
    return message


@settings(max_examples=600, deadline=None)
@given(messages())
@example({**VALID, "properties": {"\x00": None}})  # a key that is only a NUL
@example({**VALID, "properties": {"a\x00b": "c\x00d"}, "event": "\x00"})
def test_accepts_and_rejects_as_the_rules_say(message: dict[str, Any]) -> None:
    raw = orjson.dumps(message)
    faults = oracle_faults(without_nuls(message))
    result = parse_line(raw, "f.json", 3)
    if faults:
        assert isinstance(result, Reject), f"accepted a message faulty in {faults}"
        assert _named_field(result.reason) in faults, result.reason
        assert (result.file, result.line, result.raw) == ("f.json", 3, raw.decode())
        return
    assert isinstance(result, Envelope), result.reason
    # The rows are those of the same message (its NULs removed) parsed as a dict (the
    # path tests and other callers take), and the parsed times name the same instants
    # as the text.
    assert rows_for(result) == rows_for(without_nuls(orjson.loads(raw)))
    for row in rows_for(result):
        texts = [*row.values, *row.rescued, *(v for v in row.values.values() if isinstance(v, str))]
        assert not any("\x00" in t for t in texts), row
    text_rows = rows_for(result)
    time_rows = rows_for(result, as_datetimes=True)
    assert [r.table for r in time_rows] == [r.table for r in text_rows]
    for as_text, as_times in zip(text_rows, time_rows, strict=True):
        for column in ("received_at", "sent_at", "timestamp", "original_timestamp"):
            text, parsed = as_text.values[column], as_times.values[column]
            assert (parsed is None) == (text is None)
            if parsed is not None:
                assert parsed.tzinfo is not None and parsed == parse_timestamp(text)
        others = {k: v for k, v in as_text.values.items() if not k.endswith(("_at", "stamp"))}
        assert {k: as_times.values[k] for k in others} == others


def test_a_boolean_or_numeric_user_id_is_loaded_as_text() -> None:
    for value, text in ((True, "true"), (False, "false"), (42, "42")):  # JSON's text
        line = orjson.dumps({**VALID, "userId": value})
        (tracks, _) = rows_for(parse_line(line, "f", 1))
        assert tracks.values["user_id"] == text


def test_fields_not_used_by_any_table_are_not_checked() -> None:
    line = orjson.dumps({**VALID, "integrations": 5, "version": "two", "writeKey": [1]})
    assert isinstance(parse_line(line, "f", 1), Envelope)


def test_a_missing_timestamp_is_corrected_for_client_clock_skew() -> None:
    line = orjson.dumps({k: v for k, v in VALID.items() if k != "timestamp"})
    envelope = parse_line(line, "f", 1)
    assert isinstance(envelope, Envelope)
    # received 12:00, sent 12:10 by a clock that said 12:09 at the event: 11:59 UTC.
    expected = datetime(2026, 11, 1, 11, 59, tzinfo=timezone.utc)
    assert envelope.event_time == expected
    (tracks, _) = rows_for(envelope)
    assert tracks.values["timestamp"] == "2026-11-01T11:59:00+00:00"
    (tracks, _) = rows_for(envelope, as_datetimes=True)
    assert tracks.values["timestamp"] == expected


def test_keys_named_like_the_parsed_times_cannot_set_them() -> None:
    line = orjson.dumps({**VALID, "$sluice.received": "1999-01-01T00:00:00Z"})
    envelope = parse_line(line, "f", 1)
    assert isinstance(envelope, Envelope)
    assert envelope.received == datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
