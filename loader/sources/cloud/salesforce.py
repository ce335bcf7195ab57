"""Salesforce: Account, Contact, Opportunity and Lead by SOQL on SystemModstamp through
`queryAll` (so deleted records come back with IsDeleted), following nextRecordsUrl
(queryMore). The cursor is the newest SystemModstamp committed and the ids taken at it;
a resumed sync asks for `>=` it (to the second: SOQL's literal), so a record of that
instant saved after the sync is fetched, and those already taken are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from loader.sources.cloud.engine import (
    DEFAULT_DEADLINES,
    DEFAULT_RETRY,
    ApiClient,
    Boundary,
    Deadlines,
    ObjectPage,
    RetryPolicy,
)

API = "/services/data/v59.0"
OBJECTS = {
    "accounts": "Account",
    "contacts": "Contact",
    "opportunities": "Opportunity",
    "leads": "Lead",
}
DEFAULT_FIELDS = {
    "accounts": [
        "Id",
        "Name",
        "Type",
        "Industry",
        "BillingCity",
        "BillingCountry",
        "AnnualRevenue",
        "NumberOfEmployees",
        "OwnerId",
        "CreatedDate",
    ],
    "contacts": ["Id", "AccountId", "FirstName", "LastName", "Email", "Title", "CreatedDate"],
    "opportunities": [
        "Id",
        "AccountId",
        "Name",
        "StageName",
        "Amount",
        "CloseDate",
        "Probability",
        "IsClosed",
        "IsWon",
        "CreatedDate",
    ],
    "leads": [
        "Id",
        "FirstName",
        "LastName",
        "Company",
        "Email",
        "Status",
        "IsConverted",
        "CreatedDate",
    ],
}
EPOCH = "1970-01-01T00:00:00.000+0000"


def _soql_datetime(value: str) -> str:
    parsed = datetime.strptime(value.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SalesforceConnector:
    name = "salesforce"
    collections = tuple(OBJECTS)

    def __init__(
        self,
        instance_url: str,
        access_token: str,
        fields: dict[str, list[str]] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        deadlines: Deadlines = DEFAULT_DEADLINES,
    ) -> None:
        self.base_url = instance_url.rstrip("/")
        self.client = ApiClient(
            self.name, {"Authorization": f"Bearer {access_token}"}, retry, deadlines=deadlines
        )
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}

    def begin_sync(self) -> None:
        self.client.begin_sync()

    def soql(self, collection: str, since: str) -> str:
        """SOQL wants `YYYY-MM-DDThh:mm:ssZ`; cutting the milliseconds only widens `>=`."""
        since = _soql_datetime(since)
        wanted = [f for f in self.fields[collection] if f not in ("SystemModstamp", "IsDeleted")]
        columns = ", ".join([*wanted, "SystemModstamp", "IsDeleted"])
        return (
            f"SELECT {columns} FROM {OBJECTS[collection]} WHERE SystemModstamp >= {since} "
            "ORDER BY SystemModstamp ASC"
        )

    def pages(self, collection: str, cursor: dict[str, Any] | None) -> Iterator[ObjectPage]:
        state = cursor or {}
        boundary = Boundary(state.get("modstamp", EPOCH), frozenset(state.get("seen") or ()))
        url = f"{self.base_url}{API}/queryAll?q={quote(self.soql(collection, boundary.at))}"
        while True:
            body = self.client.get_json(url)
            objects = []
            for record in body.get("records") or []:
                obj = {k: v for k, v in record.items() if k != "attributes"}
                if boundary.fresh(obj["SystemModstamp"], obj["Id"]):
                    objects.append(obj)
            boundary = boundary.after((o["SystemModstamp"], o["Id"]) for o in objects)
            deleted = {o["Id"] for o in objects if o.get("IsDeleted")}
            page_cursor = {"modstamp": boundary.at, "seen": sorted(boundary.seen)}
            yield ObjectPage(objects, page_cursor, deleted)
            if body.get("done", True) or not body.get("nextRecordsUrl"):
                return
            url = self.base_url + body["nextRecordsUrl"]
