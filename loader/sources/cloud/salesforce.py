"""Salesforce: Account, Contact, Opportunity and Lead by SOQL on SystemModstamp through
`queryAll` (so deleted records come back with IsDeleted), following nextRecordsUrl
(queryMore). The cursor is the newest SystemModstamp committed; a resumed sync asks
for `>=` it, so records sharing that instant are fetched again and upserted, not lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from loader.sources.cloud.engine import (
    DEFAULT_RETRY,
    ObjectPage,
    RetryPolicy,
    get_json,
    http_session,
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
    ) -> None:
        self.base_url = instance_url.rstrip("/")
        self.session = http_session({"Authorization": f"Bearer {access_token}"}, retry)
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}

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
        since = (cursor or {}).get("modstamp", EPOCH)
        url = f"{self.base_url}{API}/queryAll?q={quote(self.soql(collection, since))}"
        while True:
            body = get_json(self.session, self.name, url)
            records = body.get("records") or []
            objects = []
            for record in records:
                obj = {k: v for k, v in record.items() if k != "attributes"}
                objects.append(obj)
                since = max(since, obj["SystemModstamp"])
            deleted = {o["Id"] for o in objects if o.get("IsDeleted")}
            yield ObjectPage(objects, {"modstamp": since}, deleted)
            if body.get("done", True) or not body.get("nextRecordsUrl"):
                return
            url = self.base_url + body["nextRecordsUrl"]
