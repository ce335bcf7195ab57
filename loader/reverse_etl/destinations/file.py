"""File destination: NDJSON or CSV files in a local folder or an s3:// (any fsspec)
prefix.

Every batch is one new file, ``{path}/{model}/{run start}_{run id}_{part}.{ext}``,
written whole (locally to a temporary name, then renamed; object stores publish an
object only once it is complete), so a batch is delivered entirely or not at all and
files are never rewritten. Each row carries ``_op`` (upsert, insert, update or delete);
a delete row has only the key field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import fsspec
from pydantic import Field

from loader.reverse_etl.destinations import Destination, DestinationConfig, Record, SendResult
from loader.reverse_etl.destinations._http import dumps


class FileConfig(DestinationConfig):
    type: Literal["file"]
    path: str = Field(description="folder or prefix: ./exports, s3://bucket/prefix")
    format: Literal["ndjson", "csv"] = "ndjson"
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class FileDestination(Destination):
    config_class = FileConfig
    delivers_ids = False
    config: FileConfig

    def describe(self) -> str:
        return f"{self.config.format} files under {self.config.path.rstrip('/')}/{self.ctx.model}/"

    def open(self) -> None:
        self.fs, root = fsspec.core.url_to_fs(self.config.path, **self.config.storage_options)
        self.folder = f"{root.rstrip('/')}/{self.ctx.model}"
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if self.local:
            self.fs.makedirs(self.folder, exist_ok=True)
        # microseconds: file names sort in run order even for runs a moment apart
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.prefix = f"{stamp}_{self.ctx.run_id[:8]}"
        self.part = 0
        self.written: list[str] = []

    def _rows(self, records: Sequence[Record]) -> list[dict[str, Any]]:
        return [{"_op": r.op, **r.fields} for r in records]

    def _encode(self, records: Sequence[Record]) -> bytes:
        rows = self._rows(records)
        if self.config.format == "ndjson":
            return b"".join(dumps(row) + b"\n" for row in rows)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["_op", *self.ctx.field_types], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return out.getvalue().encode()

    def send(self, records: Sequence[Record]) -> SendResult:
        self.part += 1
        name = f"{self.folder}/{self.prefix}_{self.part:05d}.{self.config.format}"
        try:
            data = self._encode(records)
            if self.local:
                tmp = name + ".tmp"
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, name)
            else:
                self.fs.pipe_file(name, data)
        except Exception as exc:  # noqa: BLE001 - the batch failed; report it per record
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return SendResult({r.seq: f"{type(exc).__name__}: {first}" for r in records})
        self.written.append(name)
        return SendResult()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return dumps(value).decode()
    return value


DESTINATION = FileDestination
