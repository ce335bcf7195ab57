"""A file's text as an Arrow array of its lines, split in C (numpy, bytes.replace), for
the warehouse to read: item n is line n + 1, as the reference reader numbers lines.

The newlines are cut out here, once per file (one memchr-speed copy of the text), and
each line is flagged when it starts or ends with other whitespace: the SQL then strips
only those few lines, as `bytes.strip()` strips, instead of trimming every line (a
trim per line was a third of DuckDB's time on the envelope statement, and its filter
ran it twice)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)  # bytes.strip()'s


class Lines(NamedTuple):
    """One file's lines (without their newline), which of them have whitespace to
    strip, and how many are not blank (what the reference counts as a file's lines)."""

    lines: pa.Array
    to_strip: pa.Array
    count: int


def lines_of(text: bytes) -> Lines:
    if not text:
        return Lines(pa.array([], pa.large_binary()), pa.array([], pa.bool_()), 0)
    data = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    if starts[-1] == len(data):  # the text ends with a newline: no line after it
        starts, ends = starts[:-1], ends[:-1]
    count = len(starts)
    # Line k starts after k newlines, which the copy no longer holds.
    kept = text.replace(b"\n", b"") if len(newlines) else text
    offsets = np.concatenate((starts - np.arange(count), [len(kept)])).astype(np.int64)
    sizes = ends - starts
    filled = np.flatnonzero(sizes > 0)
    to_strip = np.zeros(count, dtype=bool)
    to_strip[filled] = np.isin(data[starts[filled]], _WHITESPACE) | np.isin(
        data[ends[filled] - 1], _WHITESPACE
    )
    # Blank: empty, or every byte whitespace (only a line to strip can be: few).
    blank = count - len(filled)
    blank += sum(1 for i in np.flatnonzero(to_strip) if not text[starts[i] : ends[i]].strip())
    lines = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(kept)]
    )
    return Lines(lines, pa.array(to_strip), count - blank)


def as_text(lines: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(each line as text, NULL where it is not UTF-8; the raw bytes of those lines
    alone, NULL elsewhere): the warehouse reads text without checking it again, and a
    line that is not text stays as it was for the reference path."""
    try:
        return lines.cast(pa.large_string()), pa.nulls(len(lines), pa.large_binary())
    except pa.ArrowInvalid:
        texts: list[str | None] = []
        raws: list[bytes | None] = []
        for line in lines.to_pylist():
            try:
                texts.append(line.decode("utf-8"))
                raws.append(None)
            except UnicodeDecodeError:
                texts.append(None)
                raws.append(line)
        return pa.array(texts, pa.large_string()), pa.array(raws, pa.large_binary())
