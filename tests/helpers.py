"""Small helpers for writing archives and reading tables in tests."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
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


def sluice(
    *args: str, cwd: Path, env: dict | None = None, columns: int = 200
) -> subprocess.CompletedProcess:
    """The `sluice` command in a fresh interpreter, as a user runs it; `columns` is the
    terminal width rich wraps its output to (wide, so assertions meet whole sentences)."""
    return subprocess.run(
        [sys.executable, "-m", "loader.cli.app", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns), **(env or {})},
        timeout=300,
    )


def write_profiles(path: Path, kind: str, where: str) -> Path:
    """A profiles.yml whose one target `t` is a `kind` warehouse at `where` (a
    PostgreSQL DSN or a DuckDB file)."""
    field = f'dsn: "{where}"' if kind == "postgres" else f'path: "{where}"'
    path.write_text(f"default_target: t\ntargets:\n  t:\n    type: {kind}\n    {field}\n")
    return path


def write_duckdb_profiles(folder: Path) -> Path:
    """profiles.yml in `folder` whose default target is the DuckDB file wh.duckdb beside it
    (a path relative to profiles.yml, as a user writes it)."""
    path = folder / "profiles.yml"
    path.write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: wh.duckdb\n"
    )
    return path


def profiles_for(kind: str, tmp_path: Path, request: Any) -> tuple[Path, str]:
    """profiles.yml for a test parametrized over `kind` ("postgres": a fresh database
    from the pg_dsn fixture; "duckdb": a file in `tmp_path`), and where that warehouse is."""
    where = request.getfixturevalue("pg_dsn") if kind == "postgres" else str(tmp_path / "wh.duckdb")
    return write_profiles(tmp_path / "profiles.yml", kind, where), where


def rows(wh: Any, schema: str, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
    """A table's rows in a stable order, to compare with what a source holds."""
    return sorted(wh.query(f'SELECT {columns} FROM "{schema}"."{table}"'), key=str)


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
