"""How a Sluice table appears in Dagster. Override `SluiceTranslator.get_asset_spec`
(use `spec.replace_attributes(...)`) to change keys, groups, tags or descriptions."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from loader.naming import snake_case
from loader.normalize import FIXED_TABLES

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
            metadata["dagster/column_schema"] = column_schema(info.columns)
        return dg.AssetSpec(
            key=self.get_asset_key(info),
            group_name=self.group_name(info.source, info.target),
            kinds={"sluice", info.target_type},
            tags={"sluice/source": snake_case(info.source), "sluice/table_type": kind},
            description=description,
            metadata=metadata,
            skippable=True,
        )


def column_schema(columns: dict[str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                kind,
                constraints=dg.TableColumnConstraints(
                    nullable=name != "id", unique=name == "id", other=["primary_key"]
                )
                if name == "id"
                else None,
            )
            for name, kind in columns.items()
        ]
    )
