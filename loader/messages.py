"""Segment message validation and clock-skew correction.

A line either becomes an `Envelope` or a `Reject` with a reason naming the field, so
nothing is silently dropped and one bad line never fails its batch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import orjson

from loader.envelope import Envelope

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
    """ISO-8601 to an aware UTC datetime; None when it is not one."""
    parsed = _time(value) if type(value) is str else None
    if parsed is None or parsed.tzinfo is timezone.utc:
        return parsed
    return parsed.astimezone(timezone.utc)


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
    received = _time(envelope.received_at)
    if received is None:
        if envelope.received_at is None:
            return "field 'receivedAt': missing"
        return f"field 'receivedAt': not an ISO-8601 timestamp: {envelope.received_at!r}"
    sent = original = event_time = None
    if envelope.sent_at is not None and (sent := _time(envelope.sent_at)) is None:
        return f"field 'sentAt': not an ISO-8601 timestamp: {envelope.sent_at!r}"
    if envelope.timestamp is not None and (event_time := _time(envelope.timestamp)) is None:
        return f"field 'timestamp': not an ISO-8601 timestamp: {envelope.timestamp!r}"
    if (
        envelope.original_timestamp is not None
        and (original := _time(envelope.original_timestamp)) is None
    ):
        value = envelope.original_timestamp
        return f"field 'originalTimestamp': not an ISO-8601 timestamp: {value!r}"
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
    envelope.received = received
    envelope.sent = sent
    envelope.event_time = event_time
    envelope.original = original
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


def parse_line(raw: bytes, file: str, line: int) -> Envelope | Reject:
    """One archive line to a validated message, or a reject that says why.

    msgspec decodes and type-checks the envelope in one C pass; a line it refuses is
    parsed again by orjson, which names what is wrong with it (or accepts it: a boolean
    userId, say, which Segment takes as text)."""
    try:
        envelope = _DECODER.decode(raw)
    except msgspec.MsgspecError:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _reject(raw, file, line, f"not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _reject(raw, file, line, "not a JSON object")
        reason = _shape_reason(body)
        if reason is not None:
            return _reject(raw, file, line, reason)
        envelope = _from_dict(body)
    reason = _check(envelope)
    if reason is not None:
        return _reject(raw, file, line, reason)
    return envelope


def _reject(raw: bytes, file: str, line: int, reason: str) -> Reject:
    return Reject(file, line, raw.decode("utf-8", "replace"), reason)


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
    if received is not None and sent is not None and original is not None:
        return received - (sent - original)
    return original or received
