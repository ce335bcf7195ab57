"""Segment-spec destination: identify, track or group calls in the HTTP Tracking API's
batch format (``POST {endpoint}/v1/batch`` with ``{"batch": [...]}``, basic auth with the
write key as user name), to Segment or anything speaking its API.

Mapped fields become traits (identify, group) or properties (track); fields mapped to
``userId``, ``anonymousId`` or ``groupId`` go to the top level. Without such a mapping
the model's key is the userId (identify, track) or groupId (group). Each message's
``messageId`` is the record's stable id, so Segment deduplicates a re-delivery.
The Tracking API has no delete, so `mirror` is refused when the model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from pydantic import Field, field_validator, model_validator

from loader.reverse_etl.destinations import Destination, Record, SendResult
from loader.reverse_etl.destinations._http import HttpConfig, Outcome, deliver, dumps, post_json

TOP_LEVEL = ("userId", "anonymousId", "groupId")

try:
    _VERSION = version("sluice")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0.0.0"


class SegmentConfig(HttpConfig):
    type: Literal["segment"]
    endpoint: str = "https://api.segment.io"
    write_key_env: str = Field(default="SEGMENT_WRITE_KEY", description="env var with the key")
    call: Literal["identify", "track", "group"] = "identify"
    event: str | None = Field(default=None, description="event name (track only)")
    batch_size: int = Field(default=100, ge=1, le=500)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("endpoint must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _event_for_track(self) -> SegmentConfig:
        if self.call == "track" and not self.event:
            raise ValueError("call: track needs an `event:` name")
        if self.call != "track" and self.event:
            raise ValueError("`event:` is only used with call: track")
        return self


class SegmentDestination(Destination):
    config_class = SegmentConfig
    config: SegmentConfig
    supports_delete = False

    def describe(self) -> str:
        return f"segment {self.config.call} -> {self.config.endpoint}/v1/batch"

    @classmethod
    def check_fields(cls, config: Any, fields: Sequence[str], key_field: str) -> str | None:
        if config.call == "group" and not {"userId", "anonymousId"} & set(fields):
            return (
                "a group call needs a member: map a column to userId or anonymousId "
                "(the key is the groupId)"
            )
        return None

    def open(self) -> None:
        self.session = requests.Session()
        self.write_key = self.secret_from_env(self.config.write_key_env, "the Segment write key")

    def message(self, record: Record, now: str) -> dict[str, Any]:
        fields = dict(record.fields)
        top = {k: fields.pop(k) for k in TOP_LEVEL if k in fields}
        call = self.config.call
        ident = "groupId" if call == "group" else "userId"
        top.setdefault(ident, record.key)
        msg: dict[str, Any] = {
            "type": call,
            "messageId": record.id,
            "timestamp": now,
            "context": {"library": {"name": "sluice", "version": _VERSION}},
            **{k: (None if v is None else str(v)) for k, v in top.items()},
        }
        if call == "track":
            msg["event"] = self.config.event
            msg["properties"] = fields
        else:
            msg["traits"] = fields
        return msg

    def _post(self, records: Sequence[Record]) -> Outcome:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        body = dumps({"batch": [self.message(r, now) for r in records], "sentAt": now})
        return post_json(
            self.session,
            f"{self.config.endpoint}/v1/batch",
            body,
            self.config,
            auth=(self.write_key, ""),
            scrub=self.scrub,
        )

    def send(self, records: Sequence[Record]) -> SendResult:
        return deliver(records, self._post, self.describe())

    def close(self) -> None:
        if hasattr(self, "session"):
            self.session.close()


DESTINATION = SegmentDestination
