"""Zendesk Support: tickets and users through the cursor-based incremental exports,
organizations through the time-based one. Deleted tickets have status `deleted`,
deleted users `active: false`, deleted organizations a `deleted_at`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from loader.sources.cloud.engine import (
    DEFAULT_RETRY,
    ObjectPage,
    RetryPolicy,
    get_json,
    http_session,
)

CURSOR_EXPORTS = {
    "tickets": "/api/v2/incremental/tickets/cursor.json",
    "users": "/api/v2/incremental/users/cursor.json",
}
TIME_EXPORTS = {"organizations": "/api/v2/incremental/organizations.json"}


def _deleted(collection: str, obj: dict[str, Any]) -> bool:
    if collection == "tickets":
        return obj.get("status") == "deleted"
    if collection == "users":
        return obj.get("active") is False
    return obj.get("deleted_at") is not None


class ZendeskConnector:
    name = "zendesk"
    collections = ("tickets", "users", "organizations")

    def __init__(
        self, subdomain_url: str, email: str, api_token: str, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self.base_url = subdomain_url.rstrip("/")
        self.session = http_session({}, retry, auth=(f"{email}/token", api_token))

    def pages(self, collection: str, cursor: dict[str, Any] | None) -> Iterator[ObjectPage]:
        state = dict(cursor or {})
        while True:
            if collection in CURSOR_EXPORTS:
                params = {"cursor": state["cursor"]} if state.get("cursor") else {"start_time": 0}
                body = get_json(
                    self.session, self.name, self.base_url + CURSOR_EXPORTS[collection], params
                )
                state = {"cursor": body.get("after_cursor") or state.get("cursor")}
            else:
                params = {"start_time": int(state.get("start_time", 0))}
                body = get_json(
                    self.session, self.name, self.base_url + TIME_EXPORTS[collection], params
                )
                state = {"start_time": int(body.get("end_time") or params["start_time"])}
            objects = body.get(collection) or []
            deleted = {str(o["id"]) for o in objects if _deleted(collection, o)}
            yield ObjectPage(objects, dict(state), deleted)
            if body.get("end_of_stream", True) or not objects:
                return
