"""Stripe: customers, charges, invoices, subscriptions.

New objects come from each list endpoint (newest first, `starting_after` paging,
`created[gt]` since the last complete listing); changes and deletions from the events
endpoint. A listing interrupted between pages resumes from its `starting_after`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from loader.sources.cloud.engine import (
    DEFAULT_RETRY,
    ObjectPage,
    RetryPolicy,
    get_json,
    http_session,
)

COLLECTIONS: dict[str, tuple[str, str]] = {
    # collection -> (list path, event type pattern)
    "customers": ("/v1/customers", "customer.*"),
    "charges": ("/v1/charges", "charge.*"),
    "invoices": ("/v1/invoices", "invoice.*"),
    "subscriptions": ("/v1/subscriptions", "customer.subscription.*"),
}
# collection -> the `object` field of its objects. The event wildcards are wider than a
# collection (`customer.*` also matches `customer.subscription.*` and
# `customer.discount.*`, `charge.*` matches `charge.dispute.*` and `charge.refund.*`),
# so an event is applied only when its `data.object.object` is the collection's type.
OBJECT_TYPES: dict[str, str] = {
    "customers": "customer",
    "charges": "charge",
    "invoices": "invoice",
    "subscriptions": "subscription",
}
PAGE = 100


class StripeConnector:
    name = "stripe"
    collections = tuple(COLLECTIONS)

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.stripe.com",
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = http_session({"Authorization": f"Bearer {api_key}"}, retry)

    def _list(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        return get_json(self.session, self.name, self.base_url + path, params)

    def pages(self, collection: str, cursor: dict[str, Any] | None) -> Iterator[ObjectPage]:
        path, event_type = COLLECTIONS[collection]
        state = dict(cursor or {})
        first_sync = "created_gt" not in state and "scan" not in state
        if "events_gt" not in state:
            # Taken before the first listing, so a change made while it runs is an event
            # the next sync applies, never one that falls between the two.
            state["events_gt"] = self._latest_event_time()
        state = yield from self._new_objects(path, collection, state)
        if first_sync:
            return  # the listing saw every object as it was when listed
        yield from self._changes(event_type, OBJECT_TYPES[collection], state)

    def _new_objects(
        self, path: str, collection: str, state: dict[str, Any]
    ) -> Generator[ObjectPage, None, dict[str, Any]]:
        """Objects created since the last complete listing; returns the state after it."""
        high_water = int(state.get("created_gt", -1))
        scan = state.get("scan") or {}
        while True:
            params: dict[str, Any] = {"limit": PAGE}
            if collection == "subscriptions":
                params["status"] = "all"
            if high_water >= 0:
                params["created[gt]"] = high_water
            if scan.get("starting_after"):
                params["starting_after"] = scan["starting_after"]
            body = self._list(path, params)
            objects = body.get("data") or []
            newest = max([scan.get("max_created", high_water)] + [o["created"] for o in objects])
            if body.get("has_more") and objects:
                scan = {"starting_after": objects[-1]["id"], "max_created": newest}
                state = {**state, "scan": scan}
            else:
                state = {k: v for k, v in state.items() if k != "scan"}
                state["created_gt"] = newest
            yield ObjectPage(objects, dict(state))
            if "scan" not in state:
                return state

    def _latest_event_time(self) -> int:
        body = self._list("/v1/events", {"limit": 1})
        data = body.get("data") or []
        return int(data[0]["created"]) if data else 0

    def _changes(
        self, event_type: str, object_type: str, state: dict[str, Any]
    ) -> Iterator[ObjectPage]:
        """Events since the last sync, applied oldest first, in pages that end where the
        event time changes so a resumed sync neither skips nor repeats a second.

        Events about another kind of object (a subscription's event under `customer.*`)
        are skipped, but still advance the cursor so they are not fetched again."""
        since = int(state.get("events_gt", 0))
        events: list[dict[str, Any]] = []
        starting_after = None
        while True:
            params: dict[str, Any] = {"limit": PAGE, "type": event_type, "created[gt]": since}
            if starting_after:
                params["starting_after"] = starting_after
            body = self._list("/v1/events", params)
            data = body.get("data") or []
            events.extend(data)
            if not body.get("has_more") or not data:
                break
            starting_after = data[-1]["id"]
        events.sort(key=lambda e: (e["created"], e["id"]))
        start = 0
        while start < len(events):
            end = min(start + PAGE, len(events))
            while end < len(events) and events[end]["created"] == events[end - 1]["created"]:
                end += 1
            chunk = events[start:end]
            latest: dict[str, dict[str, Any]] = {}
            deleted: set[str] = set()
            for event in chunk:
                obj = event["data"]["object"]
                if obj.get("object") != object_type:
                    continue
                latest[obj["id"]] = obj
                if event["type"].endswith(".deleted"):
                    deleted.add(obj["id"])
                else:
                    deleted.discard(obj["id"])
            state = {**state, "events_gt": chunk[-1]["created"]}
            yield ObjectPage(list(latest.values()), dict(state), deleted)
            start = end
