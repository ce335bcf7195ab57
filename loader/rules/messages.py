"""Segment message validation and clock-skew correction.

A line either becomes an `Envelope` or a `Reject` with a reason naming the field, so
nothing is silently dropped and one bad line never fails its batch.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

import msgspec
import orjson

from loader.rules.envelope import Envelope

CALL_TYPES = frozenset({"track", "page", "screen", "identify", "group", "alias"})
MAX_MESSAGE_ID_CHARS = 100

_OBJECT_FIELDS = ("properties", "traits", "context")
_STRING_FIELDS = ("userId", "anonymousId", "event", "name", "category", "groupId", "previousId")
_TIME_FIELDS = ("receivedAt", "sentAt", "timestamp", "originalTimestamp")


@dataclass(frozen=True, slots=True)
class Reject:
    file: str
    line: int
    raw: str
    reason: str

    def __reduce__(self) -> tuple[type[Reject], tuple[str, int, str, str]]:
        # See schema.ColumnEvidence.__reduce__: frozen and compiled, built whole.
        return Reject, (self.file, self.line, self.raw, self.reason)


# Python 3.11's fromisoformat reads a trailing "Z" itself; 3.10's needs "+00:00".
_fromisoformat = (
    datetime.fromisoformat
    if sys.version_info >= (3, 11)
    else lambda value: datetime.fromisoformat(value.replace("Z", "+00:00"))
)


def parse_timestamp(value: Any) -> datetime | None:
    """ISO-8601 to an aware UTC datetime; None when it is not one (or is one whose UTC
    time falls outside years 1 to 9999: such a property stays text, or is rescued)."""
    parsed = _time(value) if type(value) is str else None
    if parsed is None or parsed.tzinfo is timezone.utc:
        return parsed
    return _utc(parsed)


def _utc(parsed: datetime) -> datetime | None:
    """`parsed` in UTC, or None when that is before 0001-01-01 or after 9999-12-31
    (`0001-01-01T00:00:00+01:00`), which no datetime can hold."""
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        return None


def _out_of_range(parsed: datetime) -> bool:
    """Whether an event time cannot be written in UTC."""
    return parsed.year in _EDGE_YEARS and _utc(parsed) is None


def parse_date_time(value: Any) -> datetime | None:
    """parse_timestamp for a value that is to type a column: only an ISO-8601 / RFC 3339
    date-time in the extended form (`YYYY-MM-DD`, `T` or a space, `HH:MM`, then optional
    seconds, fraction and offset) is one. A date alone, or digits that the standard
    library would read in ISO's basic form (the order number `2024010112345` as
    2024-01-01 23:45), stay text: two order numbers must never become one instant."""
    if (
        type(value) is not str
        or len(value) < 16
        or value[4] != "-"
        or value[7] != "-"
        or value[13] != ":"
        or (value[10] != "T" and value[10] != " ")
    ):
        return None
    return parse_timestamp(value)


_LOWER_KINDS = {kind: kind for kind in CALL_TYPES}
_ENVELOPE_FIELDS = tuple(
    zip(Envelope.__struct_fields__, Envelope.__struct_encode_fields__, strict=True)
)  # (attribute, JSON key), in the order Envelope() takes them
_JSON_FIELDS = Envelope.__struct_fields__.index("received")
_DECODER = msgspec.json.Decoder(Envelope)


def _from_dict(body: dict[str, Any]) -> Envelope:
    values: list[Any] = [body.get(key) for _, key in _ENVELOPE_FIELDS[:_JSON_FIELDS]]
    return Envelope(*values)


def envelope_of(body: dict[str, Any]) -> Envelope:
    """A message already parsed as a dict, as an Envelope; no checks (see parse_line),
    and only `event_time` of the parsed times."""
    envelope = _from_dict(body)
    if type(envelope.type) is str:
        envelope.type = envelope.type.lower()
    envelope.event_time = corrected_timestamp(body)
    return envelope


def _shape_reason(body: dict[str, Any]) -> str | None:
    """Why a parsed line is not a message msgspec could decode: the JSON types of its
    fields. Only lines msgspec refused come here, so this may be slow."""
    get = body.get
    kind = get("type")
    if not isinstance(kind, str) or kind.lower() not in CALL_TYPES:
        return f"field 'type': unknown call type {kind!r}"
    mid = get("messageId")
    if not isinstance(mid, str) or not mid:
        return "field 'messageId': missing or not a non-empty string"
    for field in _OBJECT_FIELDS:
        value = get(field)
        if value is not None and not isinstance(value, dict):
            return f"field '{field}': expected an object, got {type(value).__name__}"
    for field in _STRING_FIELDS:
        value = get(field)
        if value is not None and not isinstance(value, (str, int)):
            return f"field '{field}': expected a string, got {type(value).__name__}"
    for field in _TIME_FIELDS:
        value = get(field)
        if value is not None and type(value) is not str:
            return f"field '{field}': not an ISO-8601 timestamp: {value!r}"
    return None


def _check(envelope: Envelope) -> str | None:
    """Why a well-shaped message is still not one Segment would load, or None; fills in
    the lower-cased `type` and the parsed times as it goes."""
    kind = envelope.type
    lowered = _LOWER_KINDS.get(kind)
    if lowered is None:
        lowered = kind.lower()
        if lowered not in CALL_TYPES:
            return f"field 'type': unknown call type {kind!r}"
        envelope.type = lowered
    mid = envelope.message_id
    if not mid:
        return "field 'messageId': missing or not a non-empty string"
    if len(mid) > MAX_MESSAGE_ID_CHARS:
        return f"field 'messageId': longer than {MAX_MESSAGE_ID_CHARS} characters"
    # Each text read off the envelope once (an attribute lookup each, compiled or not).
    received_at = envelope.received_at
    received = _time(received_at)
    if received is None:
        if received_at is None:
            return "field 'receivedAt': missing"
        return f"field 'receivedAt': not an ISO-8601 timestamp: {received_at!r}"
    sent = original = event_time = None
    sent_at = envelope.sent_at
    if sent_at is not None and (sent := _time(sent_at)) is None:
        return f"field 'sentAt': not an ISO-8601 timestamp: {sent_at!r}"
    timestamp = envelope.timestamp
    if timestamp is not None and (event_time := _time(timestamp)) is None:
        return f"field 'timestamp': not an ISO-8601 timestamp: {timestamp!r}"
    original_at = envelope.original_timestamp
    if original_at is not None and (original := _time(original_at)) is None:
        return f"field 'originalTimestamp': not an ISO-8601 timestamp: {original_at!r}"
    if (
        _edge_year(received_at)
        or _edge_year(sent_at)
        or _edge_year(timestamp)
        or _edge_year(original_at)
    ):
        reason = _range_reason(envelope, received, sent, event_time, original)
        if reason is not None:
            return reason
    if lowered == "track":
        if not envelope.event:
            return "field 'event': a track call needs an event name"
    elif lowered == "group":
        if envelope.group_id in (None, ""):
            return "field 'groupId': a group call needs a groupId"
    elif lowered == "alias" and envelope.previous_id in (None, ""):
        return "field 'previousId': an alias call needs a previousId"
    if envelope.user_id in (None, "") and envelope.anonymous_id in (None, ""):
        return "fields 'userId'/'anonymousId': one of them is required"
    if event_time is None:
        # Corrected here from the values just parsed, rather than parsed again later;
        # normalize writes it out as text only for a bulk path that takes text.
        event_time = _corrected(received, sent, original)
        if event_time is None:
            return _CORRECTED_OUT_OF_RANGE
        year = event_time.year
        if (year == 1 or year == 9999) and _out_of_range(event_time):
            return _CORRECTED_OUT_OF_RANGE
    envelope.received = received
    envelope.sent = sent
    envelope.event_time = event_time
    envelope.original = original
    return None


_RANGE = "out of range (before 0001-01-01 or after 9999-12-31 in UTC)"
_CORRECTED_OUT_OF_RANGE = (
    "fields 'receivedAt', 'sentAt', 'originalTimestamp': the corrected timestamp "
    f"receivedAt - (sentAt - originalTimestamp) is {_RANGE}"
)


# Only times in these years can fall outside years 1 to 9999 in UTC (offsets are under
# a day).
_EDGE_YEARS: Final = frozenset({1, 9999})


def _edge_year(text: str | None) -> bool:
    """Whether a time that parsed may be in year 1 or 9999: its text (ISO-8601, so the
    year is its first four digits) starts with 0 or 9. A character comparison, where a
    datetime's `.year` is an attribute lookup and a new int (valgrind, compiled: the four
    `.year` checks were 7% of parse_line's instructions)."""
    return text is not None and (text[0] == "0" or text[0] == "9")


def _range_reason(
    envelope: Envelope,
    received: datetime,
    sent: datetime | None,
    event_time: datetime | None,
    original: datetime | None,
) -> str | None:
    """Which event time cannot be written in UTC, if any (slow; edge years only)."""
    for field, parsed, text in (
        ("receivedAt", received, envelope.received_at),
        ("sentAt", sent, envelope.sent_at),
        ("timestamp", event_time, envelope.timestamp),
        ("originalTimestamp", original, envelope.original_timestamp),
    ):
        if parsed is not None and _out_of_range(parsed):
            return f"field '{field}': {_RANGE}: {text!r}"
    return None


def _time(value: str | None) -> datetime | None:
    """An aware datetime (no offset: UTC) from text known to be a str or None, its offset
    kept; None when it is not ISO-8601."""
    if value is None or len(value) < 10 or not value[:4].isdigit():
        return None
    try:
        parsed = _fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


_BACKSLASH: Final = 0x5C


def parse_line(raw: bytes, file: str, line: int) -> Envelope | Reject:
    """One archive line to a validated message, or a reject that says why.

    msgspec decodes and type-checks the envelope in one C pass; a line it refuses is
    parsed again by orjson, which names what is wrong with it (or accepts it: a boolean
    userId, say, which Segment takes as text).

    NUL characters (`\\u0000`) are removed before decoding, from every key and value:
    PostgreSQL and Redshift cannot store them, and every warehouse must get the same
    rows. JSON can only carry one escaped, so a line without a backslash (nearly every
    line) costs one memchr (`int in bytes`; `b"\\\\" in raw` first tries the bytes as an
    int and builds a TypeError: ten times the instructions)."""
    text = raw
    if _BACKSLASH in raw and b"\\u0000" in raw:
        text = _NUL_ESCAPE.sub(rb"\1", raw)
    try:
        envelope = _DECODER.decode(text)
    except msgspec.MsgspecError:
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc):
                return _reject(raw, file, line, _too_deep(text))
            return _reject(raw, file, line, f"not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _reject(raw, file, line, "not a JSON object")
        reason = _shape_reason(body)
        if reason is not None:
            return _reject(raw, file, line, reason)
        envelope = _from_dict(body)
    except RecursionError:
        return _reject(raw, file, line, _too_deep(text))
    reason = _check(envelope)
    if reason is not None:
        return _reject(raw, file, line, reason)
    return envelope


# A `\u0000` escape: preceded by an even run of backslashes (`\\\\u0000` is a backslash
# and the text "u0000", no NUL).
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def nesting_depth(raw: bytes) -> int:
    """How deeply a line's objects and arrays nest (strings skipped). Slow; for the
    reason of a reject only."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def too_deep_reason(depth: int) -> str:
    return (
        f"nested {depth} levels deep: objects and arrays nested about 1,000 levels or "
        "more cannot be read"
    )


def _too_deep(raw: bytes) -> str:
    return too_deep_reason(nesting_depth(raw))


def _reject(raw: bytes, file: str, line: int, reason: str) -> Reject:
    return Reject(file, line, storable_text(raw), reason)


# A reject keeps this much of its line (Segment's messages are at most 32 KB, so any
# real message is kept whole; a "line" of a binary file can be any size).
MAX_RAW_BYTES = 1 << 16


def storable_text(raw: bytes) -> str:
    """A line's bytes as text every warehouse can store: bytes that are not UTF-8 as
    `\\xNN` escapes, a NUL byte as `\\x00` (no text column takes one), and no more
    than MAX_RAW_BYTES of it (the whole line stays in its file, which the reject names)."""
    cut = len(raw) > MAX_RAW_BYTES
    text = (raw[:MAX_RAW_BYTES] if cut else raw).decode("utf-8", "backslashreplace")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return f"{text}... ({len(raw)} bytes in all)" if cut else text


def corrected_timestamp(body: dict[str, Any]) -> datetime | None:
    """`timestamp` as Segment computes it when the archive lacks it:
    received_at - (sent_at - original_timestamp)."""
    if body.get("timestamp") is not None:
        return parse_timestamp(body["timestamp"])
    return _corrected(
        parse_timestamp(body.get("receivedAt")),
        parse_timestamp(body.get("sentAt")),
        parse_timestamp(body.get("originalTimestamp")),
    )


def _corrected(
    received: datetime | None, sent: datetime | None, original: datetime | None
) -> datetime | None:
    """received - (sent - original); None when that falls outside what a datetime holds
    (`receivedAt` 9999-12-31 with `sentAt` 0001-01-01)."""
    if received is not None and sent is not None and original is not None:
        try:
            return received - (sent - original)
        except OverflowError:
            return None
    return original or received
