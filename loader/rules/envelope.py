"""The message envelope msgspec decodes each line into.

Apart from loader.rules.messages, which mypyc compiles: a msgspec Struct must stay a class
msgspec builds, not one mypyc makes native.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

_Id = str | int | None


class Envelope(msgspec.Struct, rename="camel", gc=False):
    """The fields of a Segment message that its rows are built from, decoded and
    type-checked by msgspec in C straight from the line: the rest of a message
    (integrations, writeKey, _metadata...) is skipped, never materialised. Timestamps
    stay the text the message carried, for bulk paths that take text, and are kept
    parsed as well for those that take datetimes; `type` is lower-cased once checked."""

    type: str
    message_id: str
    received_at: str | None = None
    sent_at: str | None = None
    timestamp: str | None = None
    original_timestamp: str | None = None
    anonymous_id: _Id = None
    user_id: _Id = None
    event: _Id = None
    name: _Id = None
    category: _Id = None
    group_id: _Id = None
    previous_id: _Id = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    # The four times as _check parsed them (aware; `event_time` is `timestamp`, or the
    # corrected time when the message lacks one), for a bulk path that writes datetimes.
    # Set only by _check, under keys no line carries.
    received: datetime | None = msgspec.field(default=None, name="$sluice.received")
    sent: datetime | None = msgspec.field(default=None, name="$sluice.sent")
    event_time: datetime | None = msgspec.field(default=None, name="$sluice.event_time")
    original: datetime | None = msgspec.field(default=None, name="$sluice.original")
