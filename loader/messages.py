"""Segment message validation and clock-skew correction.

A line either becomes a `Message` or a `Reject` with a reason naming the field, so
nothing is silently dropped and one bad line never fails its batch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

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


@dataclass(slots=True)
class Message:
    body: dict[str, Any]
    file: str
    line: int


# Python 3.11's fromisoformat reads a trailing "Z" itself; 3.10's needs "+00:00".
_fromisoformat = (
    datetime.fromisoformat
    if sys.version_info >= (3, 11)
    else lambda value: datetime.fromisoformat(value.replace("Z", "+00:00"))
)


def parse_timestamp(value: Any) -> datetime | None:
    """ISO-8601 to an aware UTC datetime; None when it is not one."""
    if type(value) is not str or len(value) < 10 or not value[:4].isdigit():
        return None
    try:
        parsed = _fromisoformat(value)
    except ValueError:
        return None
    zone = parsed.tzinfo
    if zone is timezone.utc:
        return parsed
    if zone is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


_LOWER_KINDS = {kind: kind for kind in CALL_TYPES}


def _check(body: dict[str, Any]) -> str | None:
    get = body.get
    kind = get("type")
    lowered = _LOWER_KINDS.get(kind) if type(kind) is str else None
    if lowered is None:
        if not isinstance(kind, str) or kind.lower() not in CALL_TYPES:
            return f"field 'type': unknown call type {kind!r}"
        lowered = kind.lower()
    mid = get("messageId")
    if not isinstance(mid, str) or not mid:
        return "field 'messageId': missing or not a non-empty string"
    if len(mid) > MAX_MESSAGE_ID_CHARS:
        return f"field 'messageId': longer than {MAX_MESSAGE_ID_CHARS} characters"
    for field in _OBJECT_FIELDS:
        value = get(field)
        if value is not None and type(value) is not dict and not isinstance(value, dict):
            return f"field '{field}': expected an object, got {type(value).__name__}"
    for field in _STRING_FIELDS:
        value = get(field)
        if value is not None and type(value) is not str and not isinstance(value, (str, int)):
            return f"field '{field}': expected a string, got {type(value).__name__}"
    times: dict[str, datetime] = {}
    for field in _TIME_FIELDS:
        value = get(field)
        if value is not None:
            # parse_timestamp, inlined (four per message); offsets are kept, not converted.
            parsed = None
            if type(value) is str and len(value) >= 10 and value[:4].isdigit():
                try:
                    parsed = _fromisoformat(value)
                except ValueError:
                    pass
            if parsed is None:
                return f"field '{field}': not an ISO-8601 timestamp: {value!r}"
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            times[field] = parsed
    if "receivedAt" not in times:
        return "field 'receivedAt': missing"
    if lowered == "track":
        if not get("event"):
            return "field 'event': a track call needs an event name"
    elif lowered == "group":
        if get("groupId") in (None, ""):
            return "field 'groupId': a group call needs a groupId"
    elif lowered == "alias" and get("previousId") in (None, ""):
        return "field 'previousId': an alias call needs a previousId"
    if get("userId") in (None, "") and get("anonymousId") in (None, ""):
        return "fields 'userId'/'anonymousId': one of them is required"
    if "timestamp" not in times:
        # Filled here from the values just parsed, rather than parsed again by normalize.
        corrected = _corrected(times)
        if corrected is not None:
            body["timestamp"] = corrected.astimezone(timezone.utc).isoformat()
    return None


def parse_line(raw: bytes, file: str, line: int) -> Message | Reject:
    """One archive line to a validated message, or a reject that says why."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Reject(file, line, raw.decode("utf-8", "replace"), f"not valid JSON: {exc}")
    if not isinstance(body, dict):
        return Reject(file, line, raw.decode("utf-8", "replace"), "not a JSON object")
    reason = _check(body)
    if reason is not None:
        return Reject(file, line, raw.decode("utf-8", "replace"), reason)
    return Message(body, file, line)


def corrected_timestamp(body: dict[str, Any]) -> datetime | None:
    """`timestamp` as Segment computes it when the archive lacks it:
    received_at - (sent_at - original_timestamp)."""
    if body.get("timestamp") is not None:
        return parse_timestamp(body["timestamp"])
    times = {}
    for field in ("receivedAt", "originalTimestamp", "sentAt"):
        parsed = parse_timestamp(body.get(field))
        if parsed is not None:
            times[field] = parsed
    return _corrected(times)


def _corrected(times: dict[str, datetime]) -> datetime | None:
    received = times.get("receivedAt")
    original = times.get("originalTimestamp")
    sent = times.get("sentAt")
    if received is not None and sent is not None and original is not None:
        return received - (sent - original)
    return original or received
