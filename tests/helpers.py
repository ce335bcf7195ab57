"""Small helpers for writing archives and reading tables in tests."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson


def write_ndjson(path: Path, messages: list[Any], gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = b"".join((m if isinstance(m, bytes) else orjson.dumps(m)) + b"\n" for m in messages)
    if gz:
        with gzip.open(path, "wb") as out:
            out.write(lines)
    else:
        path.write_bytes(lines)
    return path


def table_rows(wh: Any, sql: str) -> list[tuple[Any, ...]]:
    return list(wh.query(sql))


def snapshot(wh: Any, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (without load-time columns), for comparing two loads."""
    out = {}
    for table, columns in wh.read_schema(schema).items():
        cols = [c for c in columns if c != "uuid_ts"]
        select = ", ".join(f'"{c}"' for c in cols)
        out[table] = sorted(
            (
                tuple(str(v) for v in r)
                for r in wh.query(f'SELECT {select} FROM "{schema}"."{table}"')
            ),
        )
    return out


def track(
    mid: str,
    event: str = "Order Completed",
    received: str = "2026-11-01T10:00:00Z",
    **properties: Any,
) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": mid,
        "userId": "u1",
        "event": event,
        "receivedAt": received,
        "sentAt": received,
        "originalTimestamp": received,
        "properties": properties,
    }


def identify(mid: str, user: str, timestamp: str, received: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": mid,
        "userId": user,
        "timestamp": timestamp,
        "receivedAt": received,
        "traits": traits,
    }


class ExplodingFilter:
    """A selective-sync filter that fails: an error no reader expects (importable, so
    it pickles into reader processes)."""

    def table_synced(self, table: str) -> bool:
        raise ValueError(f"boom in {table}")

    def columns_kept(self, table: str) -> dict[str, bool]:
        return {}

    def decided_names(self) -> tuple[list[str], list[tuple[str, str]]]:
        return [], []
