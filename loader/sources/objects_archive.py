"""Objects exported as files instead of served by an API: `<collection>/*.ndjson[.gz]`
(or `<collection>.ndjson`) under one folder or prefix, one object with an `id` per
line; `"_deleted": true` (or `"deleted": true`) marks a deletion. Files are taken in
path order; the cursor is the last file committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import fsspec
import orjson

from loader.rules.naming import snake_case
from loader.sources.archive import iter_lines, list_files, protocol_url
from loader.sources.cloud.engine import ObjectPage, SourceError


def _collection_of(url: str, root: str) -> str:
    relative = url[len(root) :].lstrip("/") if url.startswith(root) else url
    parts = PurePosixPath(relative).parts
    name = parts[0] if len(parts) > 1 else parts[-1].split(".", 1)[0]
    return snake_case(name)


class ObjectArchiveConnector:
    name = "objects"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self._files = list_files(self.url, storage_options)
        fs, _, paths = fsspec.get_fs_token_paths(self.url, storage_options=storage_options or {})
        root = protocol_url(fs, paths[0]) if paths else self.url
        self._by_collection: dict[str, list[str]] = {}
        for f in self._files:
            self._by_collection.setdefault(_collection_of(f.url, root), []).append(f.url)
        self.collections = tuple(sorted(self._by_collection))

    def pages(self, collection: str, cursor: dict[str, Any] | None) -> Iterator[ObjectPage]:
        last = (cursor or {}).get("last_file", "")
        for url in self._by_collection.get(collection, []):
            if url <= last:
                continue
            objects, deleted = [], set()
            for line_no, raw in iter_lines(url, self.storage_options):
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise SourceError(f"{url}: line {line_no}: not JSON ({exc})") from None
                if not isinstance(obj, dict) or obj.get("id") in (None, ""):
                    raise SourceError(f"{url}: line {line_no}: field 'id': missing")
                if obj.pop("_deleted", False) or obj.get("deleted") is True:
                    deleted.add(str(obj["id"]))
                objects.append(obj)
            yield ObjectPage(objects, {"last_file": url}, deleted)
