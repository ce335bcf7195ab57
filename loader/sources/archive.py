"""List and stream archive files through fsspec: local paths, s3://, gs://.

Segment's layout (`segment-logs/<source-id>/<received-day-ms>/*.gz`) and plain
`.json`/`.ndjson` files, gzip or not. Lines are streamed, never read whole.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import IO

import fsspec
from isal import igzip_lib

ARCHIVE_SUFFIXES = (".gz", ".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz")


class CorruptFile(Exception):
    """A file's data breaks at `line` (a truncated or damaged gzip stream): the lines
    before it were read; `raw` is the cut-off start of the line where it broke."""

    def __init__(self, file: str, line: int, reason: str, raw: bytes = b"") -> None:
        super().__init__(f"{file}: line {line}: {reason}")
        self.file, self.line, self.reason, self.raw = file, line, reason, raw


@dataclass(frozen=True, order=True)
class ArchiveFile:
    url: str
    size: int
    # What `_sluice` knows the file by (see list_files); "" for the URL itself.
    key: str = ""
    # The store's mark of this content (an object's ETag or generation, a local file's
    # mtime): a staged file whose mark changed is read again (loader.sync.staging).
    version: str = field(default="", compare=False)

    @property
    def ledger_key(self) -> str:
        return self.key or self.url


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def protocol_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


_DAY_MS = re.compile(r"^\d{12,14}$")
_ISO_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def received_day(url: str) -> date | None:
    """The received day a file's path names, or None.

    Segment names each folder by its received day in epoch milliseconds; other archives
    often carry an ISO day (`dt=2026-11-01/`, `2026-11-01.ndjson`). The innermost match
    wins.
    """
    for part in reversed(url.replace("\\", "/").split("/")):
        if _DAY_MS.match(part):
            return datetime.fromtimestamp(int(part) / 1000, tz=timezone.utc).date()
        match = _ISO_DAY.search(part)
        if match:
            try:
                return date(*(int(g) for g in match.groups()))
            except ValueError:
                continue
    return None


def list_files(url: str, storage_options: dict | None = None) -> list[ArchiveFile]:
    """Every archive file under `url` (a file, a folder or a prefix), in archive order.

    Segment's folders are named by received day in ms, so path order is time order.
    A local file's `key` (what `_sluice` records it by) is its path from the folder
    that holds the archive root, so it starts with the root's own name
    (`archive/segment-logs/...`; a single file: `<its folder>/<its name>`): a project
    moved or copied elsewhere is the same archive, and two folders loaded into one
    schema (`exports/a/`, `exports/b/`) never take each other's files for their own.
    An object-store file's key is its URL.
    """
    fs, _, paths = fsspec.get_fs_token_paths(url, storage_options=storage_options or {})
    if not paths or not fs.exists(paths[0]):
        raise FileNotFoundError(f"no archive at {url}")
    root = paths[0]
    local = _is_local(fs)

    def archive_file(path: str, info: dict, base: str) -> ArchiveFile:
        full = protocol_url(fs, path)
        key = posixpath.relpath(path, base) if local else full
        return ArchiveFile(full, int(info.get("size") or 0), key, content_version(info))

    if fs.isfile(root):
        folder = posixpath.dirname(root)
        return [archive_file(root, fs.info(root), posixpath.dirname(folder))]
    found = fs.find(root, detail=True)
    base = posixpath.dirname(root.rstrip("/")) or "/"
    files = [
        archive_file(p, info, base)
        for p, info in found.items()
        if info.get("type") != "directory" and p.endswith(ARCHIVE_SUFFIXES)
    ]
    return sorted(files)


# What object stores and file systems name a content's version by, best first.
_VERSION_KEYS = ("generation", "md5Hash", "ETag", "etag", "VersionId", "LastModified", "mtime")


def content_version(info: dict) -> str:
    """A file's version as its store reports it in a listing, "" when it reports none."""
    for name in _VERSION_KEYS:
        value = info.get(name)
        if value not in (None, ""):
            return f"{name}={value}"
    return ""


_BLOCK_BYTES = 1 << 18
_READ_BYTES = 1 << 17  # compressed bytes read at a time
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class _BrokenGzip(Exception):
    pass


class _Gunzip:
    """A gzip stream's decompressed blocks, as far as they go: ISA-L's inflate (a third
    of zlib's CPU per byte) driven here rather than through a gzip file object, which
    drops the data of the read that meets a truncation. `compressed` counts the bytes
    read, for the reject that says where the data broke."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.compressed = 0

    def _read(self) -> bytes:
        chunk = self.raw.read(_READ_BYTES)
        self.compressed += len(chunk)
        return chunk

    def blocks(self) -> Iterator[bytes]:
        inflate = _new_member()
        while True:
            if inflate.eof:  # a member ended; another may follow (concatenated gzip)
                rest = inflate.unused_data or self._read()
                if not rest:
                    return
                if not rest.startswith(_GZIP_MAGIC[: len(rest)]):
                    raise _BrokenGzip(
                        "a complete gzip member is followed by bytes that are not gzip"
                    )
                inflate = _new_member()
                data = rest
            elif inflate.needs_input:
                data = self._read()
                if not data:
                    raise _BrokenGzip("the data ends before its end marker (a truncated file)")
            else:
                data = b""
            try:
                block = inflate.decompress(data, _BLOCK_BYTES)
            except igzip_lib.IsalError as exc:
                raise _BrokenGzip(str(exc)) from None
            if block:
                yield block


def _new_member() -> igzip_lib.IgzipDecompressor:
    return igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)


def _plain_blocks(raw: IO[bytes]) -> Iterator[bytes]:
    while block := raw.read(_BLOCK_BYTES):
        yield block


def file_text(url: str, storage_options: dict | None = None) -> tuple[bytes, CorruptFile | None]:
    """A file's whole text (its BOM dropped), for a reader that splits and strips it in
    bulk, numbering lines as iter_lines does; where a gzip stream breaks, the text of
    the lines before the break and the break itself (its cut-off line as `raw`)."""
    blocks: list[bytes] = []
    with fsspec.open(url, "rb", **(storage_options or {})) as raw:
        head = raw.read(2)
        raw.seek(0)
        gunzip = _Gunzip(raw) if head == _GZIP_MAGIC else None
        try:
            for block in gunzip.blocks() if gunzip is not None else _plain_blocks(raw):
                blocks.append(block)
        except _BrokenGzip as exc:
            assert gunzip is not None
            text = _without_bom(b"".join(blocks))
            whole = text.rfind(b"\n") + 1
            reason = (
                f"corrupt gzip data: {exc}, after {len(text)} decompressed bytes "
                f"({gunzip.compressed} compressed bytes read); the lines before this one "
                "were read"
            )
            line = text.count(b"\n", 0, whole) + 1
            return text[:whole], CorruptFile(url, line, reason, text[whole:].strip())
    return _without_bom(b"".join(blocks)), None


def _without_bom(text: bytes) -> bytes:
    return text[len(_BOM) :] if text.startswith(_BOM) else text


def iter_lines(url: str, storage_options: dict | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) for each non-empty line; CorruptFile where a gzip stream
    breaks (after the lines before the break), naming the line and the byte offsets.

    Decompressed blocks are split with bytes.split (one C call per block instead of a
    readline per line); memory is one block plus one partial line. A UTF-8 byte order
    mark at the start of the file's text is dropped (editors on Windows write one).
    I/O errors (a vanished file, a dropped connection) propagate as they are."""
    line_no = 0
    with fsspec.open(url, "rb", **(storage_options or {})) as raw:
        head = raw.read(2)
        raw.seek(0)
        gunzip = _Gunzip(raw) if head == _GZIP_MAGIC else None
        partial = b""
        text_bytes = 0
        try:
            for block in gunzip.blocks() if gunzip is not None else _plain_blocks(raw):
                if not text_bytes and block.startswith(_BOM):
                    block = block[len(_BOM) :]
                text_bytes += len(block)
                lines = (partial + block).split(b"\n") if partial else block.split(b"\n")
                partial = lines.pop()
                for line in lines:
                    line_no += 1
                    line = line.strip()
                    if line:
                        yield line_no, line
        except _BrokenGzip as exc:
            assert gunzip is not None
            reason = (
                f"corrupt gzip data: {exc}, after {text_bytes} decompressed bytes "
                f"({gunzip.compressed} compressed bytes read); the lines before this one "
                "were read"
            )
            raise CorruptFile(url, line_no + 1, reason, partial.strip()) from None
        line_no += 1
        partial = partial.strip()
        if partial:
            yield line_no, partial
