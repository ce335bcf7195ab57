"""Stripe: customers, charges, invoices, subscriptions.

New objects come from each list endpoint (newest first, `starting_after` paging,
`created[gte]` the newest second of the last complete listing, the ids already taken in
that second skipped); changes and deletions from the events endpoint, with the same
inclusive boundary (Stripe stamps to the second: `created[gt]` would lose an event of the
cursor's second listed after the sync). A listing interrupted between pages resumes
from its `starting_after`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from loader.sources.cloud.engine import (
    DEFAULT_DEADLINES,
    DEFAULT_RETRY,
    ApiClient,
    Boundary,
    Deadlines,
    ObjectPage,
    RetryPolicy,
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
        deadlines: Deadlines = DEFAULT_DEADLINES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = ApiClient(
            self.name, {"Authorization": f"Bearer {api_key}"}, retry, deadlines=deadlines
        )

    def begin_sync(self) -> None:
        self.client.begin_sync()

    def _list(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.client.get_json(self.base_url + path, params)

    def pages(self, collection: str, cursor: dict[str, Any] | None) -> Iterator[ObjectPage]:
        path, event_type = COLLECTIONS[collection]
        state = dict(cursor or {})
        first_sync = not {"created", "created_gt", "scan"} & set(state)
        if "events" not in state and "events_gt" not in state:
            # Taken before the first listing, so a change made while it runs is an event
            # the next sync applies, never one that falls between the two.
            state["events"] = self._latest_event().to_state()
        state = yield from self._new_objects(path, collection, state)
        if first_sync:
            return  # the listing saw every object as it was when listed
        yield from self._changes(event_type, OBJECT_TYPES[collection], state)

    def _new_objects(
        self, path: str, collection: str, state: dict[str, Any]
    ) -> Generator[ObjectPage, None, dict[str, Any]]:
        """Objects created since the last complete listing; returns the state after it."""
        legacy = state.get("created_gt")
        created = Boundary.of(state.get("created"), None if legacy in (None, -1) else legacy)
        scan = state.get("scan") or {}
        # what this listing has taken so far (newest first: its boundary is on page 1)
        taken = Boundary.of(scan.get("taken"), scan.get("max_created")) if scan else created
        while True:
            params: dict[str, Any] = {"limit": PAGE}
            if collection == "subscriptions":
                params["status"] = "all"
            if created.at is not None:
                params["created[gte]"] = created.at
            if scan.get("starting_after"):
                params["starting_after"] = scan["starting_after"]
            body = self._list(path, params)
            listed = body.get("data") or []
            objects = [o for o in listed if created.fresh(o["created"], o["id"])]
            taken = taken.after((o["created"], o["id"]) for o in objects)
            state = {k: v for k, v in state.items() if k not in ("scan", "created_gt")}
            if body.get("has_more") and listed:
                scan = {"starting_after": listed[-1]["id"], "taken": taken.to_state()}
                state["scan"] = scan
            else:
                state["created"] = taken.to_state()
            yield ObjectPage(objects, dict(state))
            if "scan" not in state:
                return state

    def _latest_event(self) -> Boundary:
        body = self._list("/v1/events", {"limit": 1})
        data = body.get("data") or []
        return (
            Boundary(int(data[0]["created"]), frozenset({data[0]["id"]})) if data else Boundary(0)
        )

    def _changes(
        self, event_type: str, object_type: str, state: dict[str, Any]
    ) -> Iterator[ObjectPage]:
        """Events since the last sync, applied oldest first, in pages that end where the
        event time changes, so the saved boundary's seen ids are all of its second.

        Events about another kind of object (a subscription's event under `customer.*`)
        are skipped, but still advance the cursor so they are not fetched again."""
        boundary = Boundary.of(state.get("events"), state.get("events_gt", 0))
        events: list[dict[str, Any]] = []
        starting_after = None
        while True:
            params: dict[str, Any] = {
                "limit": PAGE,
                "type": event_type,
                "created[gte]": boundary.at,
            }
            if starting_after:
                params["starting_after"] = starting_after
            body = self._list("/v1/events", params)
            data = body.get("data") or []
            events.extend(e for e in data if boundary.fresh(e["created"], e["id"]))
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
            boundary = boundary.after((e["created"], e["id"]) for e in chunk)
            state = {k: v for k, v in state.items() if k != "events_gt"}
            state["events"] = boundary.to_state()
            yield ObjectPage(list(latest.values()), dict(state), deleted)
            start = end
