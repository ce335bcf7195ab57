"""List and stream archive files through fsspec: local paths, s3://, gs://.

Segment's layout (`segment-logs/<source-id>/<received-day-ms>/*.gz`) and plain
`.json`/`.ndjson` files, gzip or not. Lines are streamed, never read whole.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

ARCHIVE_SUFFIXES = (".gz", ".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz")


class CorruptFile(Exception):
    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}: line {line}: {reason}")
        self.file, self.line, self.reason = file, line, reason


@dataclass(frozen=True, order=True)
class ArchiveFile:
    url: str
    size: int


def _protocol_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def list_files(url: str, storage_options: dict | None = None) -> list[ArchiveFile]:
    """Every archive file under `url` (a file, a folder or a prefix), in archive order.

    Segment's folders are named by received day in ms, so path order is time order.
    """
    fs, _, paths = fsspec.get_fs_token_paths(url, storage_options=storage_options or {})
    if not paths or not fs.exists(paths[0]):
        raise FileNotFoundError(f"no archive at {url}")
    root = paths[0]
    if fs.isfile(root):
        return [ArchiveFile(_protocol_url(fs, root), fs.size(root))]
    found = fs.find(root, detail=True)
    files = [
        ArchiveFile(_protocol_url(fs, p), int(info.get("size") or 0))
        for p, info in found.items()
        if info.get("type") != "directory" and p.endswith(ARCHIVE_SUFFIXES)
    ]
    return sorted(files)


def iter_lines(url: str, storage_options: dict | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) for each non-empty line; CorruptFile on a broken gzip."""
    line_no = 0
    with fsspec.open(url, "rb", **(storage_options or {})) as raw:
        head = raw.read(2)
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
        try:
            for line_no, line in enumerate(stream, start=1):
                line = line.strip()
                if line:
                    yield line_no, line
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptFile(url, line_no + 1, f"corrupt gzip data: {exc}") from None
