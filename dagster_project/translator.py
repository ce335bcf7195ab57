"""How a Sluice table appears in Dagster. Override `SluiceTranslator.get_asset_spec`
(use `spec.replace_attributes(...)`) to change keys, groups, tags or descriptions."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from loader.rules.naming import snake_case
from loader.rules.normalize import FIXED_TABLES, RESCUED_COLUMN

REJECTS_TABLE = "rejected_events"


@dataclass(frozen=True)
class TableInfo:
    """One table a source produces in one target."""

    target: str
    target_type: str
    source: str
    schema: str
    table: str
    columns: dict[str, str] | None  # from the catalog; None until a sync has created it
    source_kind: str = "events"  # or the cloud source's kind (stripe, zendesk, ...)


class SluiceTranslator:
    def get_archive_key(self, source: str) -> dg.AssetKey:
        """The archive a source's tables are loaded from (upstream of all of them)."""
        return dg.AssetKey(["archive", snake_case(source)])

    def get_archive_spec(self, source: str, url: str) -> dg.AssetSpec:
        """An external asset: Sluice reads the archive and never writes it."""
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        return dg.AssetSpec(
            key=self.get_archive_key(source),
            group_name="archives",
            kinds={"s3" if protocol == "s3" else "gcs" if protocol == "gs" else "folder"},
            tags={"sluice/source": snake_case(source), "sluice/table_type": "archive"},
            description=(
                f"The Segment archive of {source}: NDJSON batches (gzip or not) by received "
                f"day, at {url}. Written by Segment (or a copy of its S3 destination); "
                "Sluice only reads it."
            ),
            metadata={"url": url},
        )

    def group_name(self, source: str, target: str) -> str:
        return f"{snake_case(source)}__{snake_case(target)}"

    def get_asset_key(self, info: TableInfo) -> dg.AssetKey:
        return dg.AssetKey([snake_case(info.target), info.schema, info.table])

    def get_asset_spec(self, info: TableInfo) -> dg.AssetSpec:
        if info.table == REJECTS_TABLE:
            kind, description = (
                "rejects",
                (
                    f"Lines of {info.source}'s archive that could not be loaded (file, line, "
                    f"raw text, reason), in _sluice.rejected_events."
                ),
            )
        elif info.source_kind != "events":
            kind, description = (
                "collection",
                (f"{info.source_kind} {info.table}, upserted by id (_deleted_at marks deletions)."),
            )
        elif info.table in FIXED_TABLES:
            kind, description = "core", f"Segment's {info.table} table for {info.source}."
        else:
            kind, description = "event", f"One row per '{info.table}' track event."
        metadata: dict[str, object] = {
            "dagster/table_name": f"{info.schema}.{info.table}",
        }
        if info.columns:
            metadata["dagster/column_schema"] = column_schema(
                info.columns, info.table, info.source_kind
            )
        return dg.AssetSpec(
            key=self.get_asset_key(info),
            group_name=self.group_name(info.source, info.target),
            kinds={"sluice", info.target_type},
            tags={"sluice/source": snake_case(info.source), "sluice/table_type": kind},
            description=description,
            metadata=metadata,
            skippable=True,
        )


# What Segment's own columns hold (segment-warehouse-schema.md), for column descriptions.
_COLUMN_DESCRIPTIONS = {
    "id": "Segment's messageId: one row per message; duplicates are dropped on load.",
    "anonymous_id": "The message's anonymousId: the browser or device before sign-in.",
    "user_id": "The message's userId, when the user is known.",
    "received_at": "When Segment's API received the message (UTC).",
    "sent_at": "When the library sent the message (the device's clock).",
    "timestamp": (
        "When the event happened, corrected for the device's clock skew "
        "(received_at - (sent_at - original_timestamp))."
    ),
    "original_timestamp": "When the event happened, by the device's clock.",
    "uuid_ts": "When Sluice loaded the row.",
    RESCUED_COLUMN: (
        "Values that did not fit their column's type, as JSON keyed by column name "
        "(nothing is dropped)."
    ),
    "event": "The event's name as a table name (snake_case), e.g. order_completed.",
    "event_text": "The event's name as sent, e.g. Order Completed.",
    "name": "The page's or screen's name.",
    "category": "The page's or screen's category.",
    "group_id": "The account's groupId.",
    "previous_id": "The id the user had before this alias call.",
    "_deleted_at": "When the object was deleted upstream; NULL while it exists.",
}
_OBJECT_COLUMNS = {
    "id": "The object's id; a later version of the object replaces the row.",
    "received_at": "When Sluice fetched this version of the object from the source.",
    "uuid_ts": "When Sluice loaded this version of the object.",
    "_deleted_at": _COLUMN_DESCRIPTIONS["_deleted_at"],
    RESCUED_COLUMN: _COLUMN_DESCRIPTIONS[RESCUED_COLUMN],
}
_PROFILE_IDS = {
    "users": "The user's userId; one row per user.",
    "accounts": "The account's groupId; one row per account.",
}
_PROPERTY_OWNERS = {
    "identifies": "A trait of the identify call (traits)",
    "users": "The user's latest value of this trait (from identifies)",
    "groups": "A trait of the group call (traits)",
    "accounts": "The account's latest value of this trait (from groups)",
    "pages": "A property of the page call (properties)",
    "screens": "A property of the screen call (properties)",
    "tracks": "A field of the track call",
    "aliases": "A field of the alias call",
}


def column_description(table: str, column: str, source_kind: str = "events") -> str:
    """Where a column's values come from, as a data engineer reads it in the UI."""
    if source_kind != "events":
        if column in _OBJECT_COLUMNS:
            return _OBJECT_COLUMNS[column]
        return f"The {source_kind} object's {column} field (nested fields joined with _)."
    if column == "id" and table in _PROFILE_IDS:
        return _PROFILE_IDS[table]
    if column in _COLUMN_DESCRIPTIONS:
        return _COLUMN_DESCRIPTIONS[column]
    if column.startswith("context_"):
        return "A field of the message's context, flattened (nested keys joined with _)."
    owner = _PROPERTY_OWNERS.get(table, "A property of the event (properties)")
    return f"{owner}, flattened (nested keys joined with _)."


def column_schema(
    columns: dict[str, str], table: str = "", source_kind: str = "events"
) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                kind,
                description=column_description(table, name, source_kind),
                constraints=dg.TableColumnConstraints(
                    nullable=name != "id", unique=name == "id", other=["primary_key"]
                )
                if name == "id"
                else None,
            )
            for name, kind in columns.items()
        ]
    )
